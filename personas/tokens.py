"""Signing and checking Parley's JWTs (session tokens and stream tokens): HS256, one algorithm.

The official Anam SDK decodes a session token's payload without verifying it and reads
`type` ("stateful" | "ephemeral") and `accountId`; everything else is Parley's own.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from typing import Any

import jwt
from django.conf import settings

ALGORITHM = "HS256"
ISSUER = "parley"
SESSION_AUDIENCE = "parley:session"
STREAM_AUDIENCE = "parley:stream"
# A token id as Parley makes them (uuid4 hex), with room to spare.
_JTI = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Clocks of the minting backend and of Parley may differ a little.
CLOCK_SKEW_SECONDS = 10


class TokenError(Exception):
    """A token that cannot be used; the message says why, for the client."""


def signing_key() -> bytes:
    configured = settings.PARLEY_TOKEN_SIGNING_KEY
    if configured:
        return configured.encode()
    # Derived, not reused: the Django secret key is never itself an HMAC key for tokens.
    return hmac.new(settings.SECRET_KEY.encode(), b"parley-token-signing-v1", hashlib.sha256).digest()


def token_encode(claims: dict[str, Any]) -> str:
    return jwt.encode({"iss": ISSUER, **claims}, signing_key(), algorithm=ALGORITHM)


def token_decode(token: str, *, audience: str) -> dict[str, Any]:
    """Verify signature, algorithm, expiry, issuer and audience; raise TokenError otherwise."""
    if not token or token.count(".") != 2:
        raise TokenError("token is malformed")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError("token is malformed") from None
    if header.get("alg") != ALGORITHM:
        raise TokenError(f"token algorithm {header.get('alg')!r} is not accepted")
    try:
        return jwt.decode(
            token,
            signing_key(),
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=ISSUER,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": ["exp", "iat", "jti", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token has expired") from None
    except jwt.InvalidAudienceError:
        raise TokenError("token is not meant for this endpoint") from None
    except jwt.InvalidSignatureError:
        raise TokenError("token signature is invalid") from None
    except jwt.MissingRequiredClaimError as error:
        raise TokenError(f"token lacks the {error.claim!r} claim") from None
    except jwt.PyJWTError:
        raise TokenError("token is invalid") from None


def token_account_id(claims: dict[str, Any]) -> uuid.UUID:
    """The organization a verified token names (`accountId`); TokenError if it is not a UUID.

    Checked here, not by the database: a validly signed token with a malformed claim is an
    unknown token (401), never a query error.
    """
    account_id = claims.get("accountId")
    try:
        if not isinstance(account_id, str):
            raise ValueError(account_id)
        return uuid.UUID(account_id)
    except ValueError:
        raise TokenError("token is not known to this server") from None


def token_id(claims: dict[str, Any]) -> str:
    """A verified token's `jti`; TokenError if it is not shaped as Parley makes them."""
    jti = claims.get("jti")
    if not isinstance(jti, str) or not _JTI.fullmatch(jti):
        raise TokenError("token is not known to this server")
    return jti
