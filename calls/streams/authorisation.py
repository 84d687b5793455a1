"""Who may read the event stream, and what: credentials (API key or stream token), personas, cursor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async

from personas.selectors import persona_list
from personas.services import api_key_authenticate, stream_token_verify
from personas.tokens import TokenError
from webapp.database import closing_connections
from webapp.inputs import InputRefused, cursor_parse

# `?agents=` is a short list of slugs; a long one is a mistake, not a use case.
MAX_AGENTS = 100

REQUIRED_CREDENTIALS = (
    "credentials required: send 'Authorization: Bearer <API key>' or '?token=<stream token>'"
)


class StreamRefused(Exception):
    """A reader that may not open a stream; `status` is the HTTP status, `detail` says why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    @property
    def close_code(self) -> int:
        """The websocket close code: 4000 + the HTTP status (4400, 4401, 4403)."""
        return 4000 + self.status


@dataclass(frozen=True)
class StreamRequest:
    """An authorised reader: one organization, maybe some personas, maybe a resume cursor."""

    organization_id: int
    agents: frozenset[str] | None  # None: every persona of the organization
    after: int | None  # None: live only, from now


# --- Reading the request ----------------------------------------------------------------


def scope_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """An ASGI scope's headers by lower-case name (the last one wins when repeated)."""
    return {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers") or []
    }


def scope_query(scope: Mapping[str, Any]) -> dict[str, list[str]]:
    return parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


def _single(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise StreamRefused(400, f"{name}: give it once")
    return values[0]


def stream_cursor_parse(*, value: str, name: str) -> int:
    """A resume cursor, read by the one cursor parser (the REST event list uses it too)."""
    try:
        return cursor_parse(value, field=name)
    except InputRefused as refusal:
        raise StreamRefused(400, refusal.detail) from None


def _resume_cursor(*, headers: Mapping[str, str], query: Mapping[str, list[str]]) -> int | None:
    # An EventSource reconnects to the same URL (with its original ?after=) and adds the id it
    # saw last as Last-Event-ID: the header is the newer position, so it wins (a bad ?after= is
    # still refused, whatever the header says).
    after = _single(query, "after")
    cursor = None if after is None else stream_cursor_parse(value=after, name="after")
    last_event_id = headers.get("last-event-id", "").strip(" \t")  # HTTP's optional whitespace
    if last_event_id:
        return stream_cursor_parse(value=last_event_id, name="Last-Event-ID")
    return cursor


def _requested_agents(query: Mapping[str, list[str]]) -> list[str] | None:
    values = query.get("agents")
    if values is None:
        return None
    slugs = sorted({slug.strip() for value in values for slug in value.split(",") if slug.strip()})
    if not slugs:
        raise StreamRefused(400, "agents: give one or more persona slugs separated by commas")
    if len(slugs) > MAX_AGENTS:
        raise StreamRefused(400, f"agents: at most {MAX_AGENTS} personas")
    return slugs


def _grant_for(
    *, headers: Mapping[str, str], query: Mapping[str, list[str]]
) -> tuple[int, frozenset[str] | None]:
    authorization = headers.get("authorization", "").strip()
    token = _single(query, "token")
    if authorization and token is not None:
        raise StreamRefused(400, "send either an Authorization header or ?token=, not both")
    if authorization:
        scheme, _, raw_key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not raw_key.strip():
            raise StreamRefused(401, "Authorization header must be 'Bearer <API key>'")
        api_key = api_key_authenticate(raw_key=raw_key.strip())
        if api_key is None:
            raise StreamRefused(401, "API key is invalid or revoked (a stream token goes in ?token=)")
        return api_key.organization_id, None
    if token is not None:
        try:
            grant = stream_token_verify(token=token.strip())
        except TokenError as error:
            raise StreamRefused(401, f"token: {error}") from None
        return grant.organization_id, grant.agents
    raise StreamRefused(401, REQUIRED_CREDENTIALS)


def stream_request_authorise(*, headers: Mapping[str, str], query: Mapping[str, list[str]]) -> StreamRequest:
    """Who is reading and what: raise StreamRefused (401 credentials, 400 parameters, 403 scope).

    An API key sees its whole organization; a stream token may be limited to some personas;
    `?agents=` narrows either and never widens it. Synchronous: it reads the database.
    """
    organization_id, granted = _grant_for(headers=headers, query=query)
    after = _resume_cursor(headers=headers, query=query)
    requested = _requested_agents(query)
    if requested is None:
        return StreamRequest(organization_id=organization_id, agents=granted, after=after)
    existing = set(
        persona_list(organization_id=organization_id)
        .filter(slug__in=requested)
        .values_list("slug", flat=True)
    )
    for slug in requested:
        if slug not in existing or (granted is not None and slug not in granted):
            raise StreamRefused(
                403, f"agents: {slug!r} is not a persona of this organization or not in the token's scope"
            )
    return StreamRequest(organization_id=organization_id, agents=frozenset(requested), after=after)


async def astream_request_authorise(*, scope: Mapping[str, Any]) -> StreamRequest:
    """`stream_request_authorise` for a consumer: reads its scope, runs the ORM off the loop."""
    headers, query = scope_headers(scope), scope_query(scope)
    return await database_sync_to_async(closing_connections(stream_request_authorise))(
        headers=headers, query=query
    )
