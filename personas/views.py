"""The browser chat page of a persona, and the endpoint that gives it a fresh session token.

The page's session token is minted here, server-side, for the persona's own organization:
no API key ever reaches the browser. Each Start asks `POST /p/<slug>/token` (same-origin,
CSRF-protected, rate-limited per visitor) for a single-use token; loading the page mints none.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from personas.models import Persona, SessionToken, default_avatar_look
from personas.services import SessionLimitReached, session_token_issue
from personas.tokens import SESSION_AUDIENCE, token_decode, token_id

PAGE_CLIENT_LABEL = "parley-page"
# Fresh tokens one visitor may ask for, per persona, per window: a person restarts a
# conversation a few times a minute at most; a script minting tokens in a loop is stopped.
TOKEN_REQUESTS_PER_WINDOW = 12
TOKEN_RATE_WINDOW_SECONDS = 60
# A page's token is used at once (Start asks for it): kept for a minute, not hoarded for an hour.
PAGE_TOKEN_TTL_SECONDS = 60
# Sessions one visitor may hold at once per organization, started or about to be (tokens not yet
# used): a person has one conversation open, a few tabs at most; a script cannot take the
# organization's live-session slots from everyone else.
PAGE_SESSIONS_PER_VISITOR = 3
HEX_COLOR = re.compile(r"#[0-9a-fA-F]{3,8}")
BUSY_MESSAGE = "{name} is busy with other conversations right now. Please try again in a minute."


def active_persona_or_404(slug: str) -> Persona:
    return get_object_or_404(Persona.objects.select_related("organization"), slug=slug, is_active=True)


def page_token_issue(persona: Persona) -> str:
    """A stateful session token for this persona, as the page's own backend would mint it."""
    return session_token_issue(
        organization=persona.organization,
        persona=persona,
        kind="stateful",
        client_label=PAGE_CLIENT_LABEL,
        ttl_seconds=PAGE_TOKEN_TTL_SECONDS,
    )


def _visitor_key(request: HttpRequest, persona: Persona) -> str:
    return f"parley:page-sessions:{persona.organization_id}:{client_address(request)}"


def visitor_sessions_held(request: HttpRequest, persona: Persona) -> int:
    """This visitor's page sessions of the organization that hold, or may soon hold, a slot: live
    calls, and tokens not used yet. The visitor's tokens are remembered in the cache."""
    from calls.models import LIVE_STATUSES, Call

    jtis = cache.get(_visitor_key(request, persona)) or []
    if not jtis:
        return 0
    now = timezone.now()
    unused = SessionToken.objects.filter(jti__in=jtis, used_at__isnull=True, expires_at__gt=now).count()
    live = Call.objects.filter(session_token__jti__in=jtis, status__in=LIVE_STATUSES).count()
    return unused + live


def visitor_session_remember(request: HttpRequest, persona: Persona, token: str) -> None:
    key = _visitor_key(request, persona)
    jtis = [
        *(cache.get(key) or [])[-(4 * PAGE_SESSIONS_PER_VISITOR) :],
        token_id(token_decode(token, audience=SESSION_AUDIENCE)),
    ]
    cache.set(key, jtis, timeout=settings.PARLEY_SESSION_TOKEN_TTL_SECONDS)


def poster_colors(persona: Persona) -> dict[str, str]:
    """The avatar's colours for the page's placeholder portrait; anything not a hex colour is ignored."""
    colors = default_avatar_look()
    for key, value in (persona.avatar_look or {}).items():
        if key in colors and isinstance(value, str) and HEX_COLOR.fullmatch(value):
            colors[key] = value
    return colors


def client_address(request: HttpRequest) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is whatever the client says unless a proxy rewrites it.
    return request.META.get("REMOTE_ADDR") or "unknown"


def token_rate_exceeded(request: HttpRequest, persona: Persona) -> bool:
    """Count this request in a fixed window; True once the window's budget is spent."""
    key = f"parley:page-token:{persona.pk}:{client_address(request)}"
    if cache.add(key, 1, timeout=TOKEN_RATE_WINDOW_SECONDS):
        return False
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr: this request opens a new window
        cache.add(key, 1, timeout=TOKEN_RATE_WINDOW_SECONDS)
        return False
    return count > TOKEN_REQUESTS_PER_WINDOW


@never_cache
@require_GET
def persona_page(request: HttpRequest, slug: str) -> HttpResponse:
    """`GET /p/<slug>/`: talk to a persona in the browser (video, voice and text)."""
    from calls.selectors import live_call_count

    persona = active_persona_or_404(slug)
    # No token is minted here: anyone may load the page, as often as they like. Start asks for
    # one (`persona_page_token`: CSRF-protected and rate-limited per visitor).
    error = ""
    if live_call_count(organization=persona.organization) >= persona.organization.session_limit:
        error = BUSY_MESSAGE.format(name=persona.name)
    portrait_url = persona.avatar_portrait.url if persona.avatar_portrait else ""
    page_config: dict[str, Any] = {
        "tokenUrl": reverse("persona-page-token", kwargs={"slug": persona.slug}),
        "persona": {"slug": persona.slug, "name": persona.name},
        "error": error,
    }
    look = poster_colors(persona)
    return render(
        request,
        "personas/persona_page.html",
        {
            "persona": persona,
            "page_config": page_config,
            "portrait_url": portrait_url,
            "look": look,
            "error": error,
        },
    )


@never_cache
@require_POST
def persona_page_token(request: HttpRequest, slug: str) -> JsonResponse:
    """`POST /p/<slug>/token`: a fresh single-use session token for the page (CSRF-protected)."""
    persona = active_persona_or_404(slug)
    if token_rate_exceeded(request, persona):
        return JsonResponse(
            {"error": "rate_limited", "message": "Too many new sessions; wait a minute and try again."},
            status=429,
        )
    if visitor_sessions_held(request, persona) >= PAGE_SESSIONS_PER_VISITOR:
        return JsonResponse(
            {
                "error": "too_many_sessions",
                "message": "You already have conversations open here; end one, or wait a minute.",
            },
            status=429,
        )
    try:
        session_token = page_token_issue(persona)
    except SessionLimitReached:
        return JsonResponse(
            {"error": "busy", "message": BUSY_MESSAGE.format(name=persona.name)},
            status=429,
        )
    visitor_session_remember(request, persona, session_token)
    return JsonResponse({"sessionToken": session_token})
