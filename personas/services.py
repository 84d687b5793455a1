"""Writes for tenants and personas: API keys, session tokens (single use) and stream tokens."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from personas.models import ApiKey, Organization, Persona, SessionToken
from personas.tokens import (
    SESSION_AUDIENCE,
    STREAM_AUDIENCE,
    TokenError,
    token_account_id,
    token_decode,
    token_encode,
    token_id,
)

API_KEY_PREFIX = "prl_"
# Writing last_used_at on every request would make each API call a write; a minute is plenty.
API_KEY_TOUCH_INTERVAL = timedelta(seconds=60)
MIN_API_KEY_LENGTH = 24


def api_key_hash(raw_key: str) -> str:
    # API keys carry 190+ bits of randomness: a plain SHA-256 is enough, no slow KDF needed.
    return hashlib.sha256(raw_key.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedApiKey:
    api_key: ApiKey
    raw_key: str  # shown once, never stored


def api_key_create(*, organization: Organization, name: str, raw_key: str | None = None) -> IssuedApiKey:
    """Create a key; `raw_key` fixes its value (demo data), otherwise a random one is made."""
    if raw_key is None:
        raw_key = f"{API_KEY_PREFIX}{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"
    elif len(raw_key) < MIN_API_KEY_LENGTH:
        raise ValueError(f"an API key must be at least {MIN_API_KEY_LENGTH} characters long")
    api_key = ApiKey.objects.create(
        organization=organization,
        name=name,
        prefix=raw_key[:12],
        key_hash=api_key_hash(raw_key),
    )
    return IssuedApiKey(api_key=api_key, raw_key=raw_key)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key with this value (its last use recorded), or None."""
    if not raw_key or len(raw_key) > 200:
        return None
    api_key = (
        ApiKey.objects.select_related("organization")
        .filter(key_hash=api_key_hash(raw_key), revoked_at__isnull=True)
        .first()
    )
    if api_key is None:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > API_KEY_TOUCH_INTERVAL:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key


# --- Session tokens ---------------------------------------------------------------------


class SessionLimitReached(Exception):
    """The organization already has as many live sessions as it may."""


def session_token_issue(
    *,
    organization: Organization,
    persona: Persona,
    kind: str,
    persona_config: dict[str, Any] | None = None,
    session_options: dict[str, Any] | None = None,
    client_label: str = "",
    api_key: ApiKey | None = None,
    ttl_seconds: int | None = None,
) -> str:
    """Record and sign a single-use session token for one persona of one organization
    (valid `ttl_seconds`, at most PARLEY_SESSION_TOKEN_TTL_SECONDS)."""
    from calls.selectors import live_call_count  # calls depends on personas, not the reverse

    if persona.organization_id != organization.pk:
        raise PermissionError("persona belongs to another organization")
    if live_call_count(organization=organization) >= organization.session_limit:
        raise SessionLimitReached(
            f"the organization has {organization.session_limit} live session(s), its limit"
        )
    now = timezone.now()
    ttl = min(
        ttl_seconds or settings.PARLEY_SESSION_TOKEN_TTL_SECONDS, settings.PARLEY_SESSION_TOKEN_TTL_SECONDS
    )
    record = SessionToken.objects.create(
        jti=uuid.uuid4().hex,
        organization=organization,
        persona=persona,
        api_key=api_key,
        kind=kind,
        persona_config=persona_config or {},
        session_options=session_options or {},
        client_label=client_label,
        issued_at=now,
        expires_at=now + timedelta(seconds=ttl),
    )
    claims: dict[str, Any] = {
        "type": kind,
        "accountId": str(organization.public_id),
        "personaId": persona.slug,
        "jti": record.jti,
        "iat": int(now.timestamp()),
        "exp": int(record.expires_at.timestamp()),
        "aud": SESSION_AUDIENCE,
    }
    if kind == SessionToken.Kind.EPHEMERAL:
        claims["personaConfig"] = record.persona_config
    return token_encode(claims)


def session_token_check(*, token: str) -> SessionToken:
    """Verify a session token and return its unused record, without consuming it."""
    claims = token_decode(token, audience=SESSION_AUDIENCE)
    record = (
        SessionToken.objects.select_related("organization", "persona").filter(jti=token_id(claims)).first()
    )
    if record is None or record.organization.public_id != token_account_id(claims):
        raise TokenError("token is not known to this server")
    if record.used_at is not None:
        raise TokenError("token has already been used")
    if record.expires_at <= timezone.now():
        raise TokenError("token has expired")
    return record


def session_token_consume(*, token: str) -> SessionToken:
    """Verify and consume a session token: exactly one caller ever succeeds."""
    record = session_token_check(token=token)
    with transaction.atomic():
        claimed = SessionToken.objects.filter(pk=record.pk, used_at__isnull=True).update(
            used_at=timezone.now()
        )
    if claimed != 1:
        raise TokenError("token has already been used")
    record.refresh_from_db(fields=["used_at"])
    return record


# --- Stream tokens ----------------------------------------------------------------------


@dataclass(frozen=True)
class StreamGrant:
    """What a stream token (or API key) lets a reader see."""

    organization_id: int
    agents: frozenset[str] | None  # None: every persona of the organization


def stream_token_issue(
    *, organization: Organization, agents: list[str] | None = None, ttl_seconds: int | None = None
) -> tuple[str, int]:
    """A short-lived token for browsers' EventSource; reusable until it expires.

    `agents=None` grants every persona of the organization; an empty list is refused rather
    than silently widened to everything.
    """
    if agents is not None and not agents:
        raise ValueError("agents must name at least one persona, or be None for all of them")
    if ttl_seconds is not None and ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    ttl = min(
        ttl_seconds or settings.PARLEY_STREAM_TOKEN_TTL_SECONDS, settings.PARLEY_STREAM_TOKEN_TTL_SECONDS
    )
    now = timezone.now()
    expires = int(now.timestamp()) + ttl
    claims: dict[str, Any] = {
        "type": "stream",
        "accountId": str(organization.public_id),
        "jti": uuid.uuid4().hex,
        "iat": int(now.timestamp()),
        "exp": expires,
        "aud": STREAM_AUDIENCE,
    }
    if agents:
        claims["agents"] = sorted(set(agents))
    return token_encode(claims), expires


def stream_token_verify(*, token: str) -> StreamGrant:
    claims = token_decode(token, audience=STREAM_AUDIENCE)
    organization = Organization.objects.filter(public_id=token_account_id(claims)).first()
    if organization is None:
        raise TokenError("token is not known to this server")
    agents = claims.get("agents")
    if agents is not None and (not isinstance(agents, list) or not all(isinstance(a, str) for a in agents)):
        raise TokenError("token is invalid")
    return StreamGrant(organization_id=organization.pk, agents=frozenset(agents) if agents else None)
