"""Event readers, whatever the transport: who may read, from which cursor, and a feed that never gaps.

The database is the record, a broadcast is a doorbell. A feed joins its organization's group
first, then reads its start cursor, so every event committed after that cursor rings a bell
it will hear. Each kept-event doorbell (and a periodic poll, for bells a channel layer
dropped) makes it read the event log after its last cursor and emit what it finds in cursor
order; so a replay followed by live events has no gap and no duplicate. Ephemeral events
exist only as doorbells and are emitted as they come, if the reader wants that persona.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.conf import settings

from calls.selectors import EVENT_PAGE_SIZE, call_events_after, latest_event_cursor
from calls.services import BROADCAST_TYPE, group_for_organization
from personas.selectors import persona_list
from personas.services import api_key_authenticate, stream_token_verify
from personas.tokens import TokenError
from webapp.inputs import InputRefused, cursor_parse

logger = logging.getLogger(__name__)

# `?agents=` is a short list of slugs; a long one is a mistake, not a use case.
MAX_AGENTS = 100
# Doorbells waiting for a slow reader. Past this, new ones are dropped: ephemeral events are
# at-most-once anyway, and the poll still finds every kept event in the log.
MAX_PENDING_DOORBELLS = 1000
# How long closing a feed waits for its tasks to finish being cancelled, in seconds.
TASK_CANCEL_TIMEOUT_SECONDS = 5.0

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


@dataclass(frozen=True)
class StreamEvent:
    """One event as a reader receives it; ephemeral events have no cursor."""

    event: str
    cursor: int | None
    data: dict[str, Any]


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
    return await database_sync_to_async(stream_request_authorise)(headers=headers, query=query)


# --- The feed ---------------------------------------------------------------------------


def _log_task_failure(task: asyncio.Task[None]) -> None:
    # A feed task ends only by cancellation; anything else stopped a stream and must be seen.
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s stopped", task.get_name(), exc_info=task.exception())


def _events_after(*, organization_id: int, after: int, agents: Iterable[str] | None) -> list[StreamEvent]:
    return [
        StreamEvent(event=row.type, cursor=row.cursor, data=row.data)
        for row in call_events_after(
            organization_id=organization_id, after=after, agents=agents, limit=EVENT_PAGE_SIZE
        )
    ]


class EventFeed:
    """One reader's events, replay then live, handed to `emit` in cursor order.

    Use: `await open()` (joins the group, fixes the start cursor), then `start()` once the
    transport can send, `doorbell(message)` for each group message, `await close()` at the end.
    Only the pump task reads and emits events, in the order their doorbells rang; the emit
    lock also covers `keepalive`, so nothing is ever written to the reader concurrently.
    """

    def __init__(
        self,
        *,
        request: StreamRequest,
        channel_layer: Any,
        channel_name: str | None,
        emit: Callable[[StreamEvent], Awaitable[None]],
        keepalive: Callable[[], Awaitable[None]] | None = None,
        keepalive_seconds: float | None = None,
        poll_seconds: float | None = None,
    ) -> None:
        self.request = request
        self.last_cursor = 0
        self._channel_layer = channel_layer
        self._channel_name = channel_name
        self._group = group_for_organization(request.organization_id)
        self._emit = emit
        self._keepalive = keepalive
        self._keepalive_seconds = keepalive_seconds or settings.PARLEY_SSE_PING_SECONDS
        self._poll_seconds = poll_seconds or settings.PARLEY_STREAM_POLL_SECONDS
        self._doorbells: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=MAX_PENDING_DOORBELLS)
        self._emit_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._joined = False
        self._closed = False
        self._dropping = False

    async def open(self) -> None:
        """Join the group, then fix the start cursor: any later event rings a bell we hear."""
        if self._channel_layer is not None and self._channel_name is not None:
            self._joined = True  # before the await, so close() leaves even a half-done join
            await self._channel_layer.group_add(self._group, self._channel_name)
        if self.request.after is not None:
            self.last_cursor = self.request.after
        else:
            self.last_cursor = await database_sync_to_async(latest_event_cursor)()

    def start(self) -> None:
        """Start the pump (replay, then live) and the keepalive, if any."""
        if self._closed or self._tasks:
            return
        self._spawn(self._pump(), "event-feed-pump")
        if self._keepalive is not None:
            self._spawn(self._keep_alive(), "event-feed-keepalive")

    async def doorbell(self, message: Mapping[str, Any]) -> None:
        """A group message arrived; never waits, so the consumer keeps handling its client."""
        if self._closed or message.get("type") != BROADCAST_TYPE:
            return
        try:
            self._doorbells.put_nowait(dict(message))
        except asyncio.QueueFull:
            if not self._dropping:  # once per overload, not once per dropped doorbell
                logger.warning("an event feed of %s is behind; dropping doorbells", self._group)
            self._dropping = True
        else:
            self._dropping = False

    async def close(self) -> None:
        """Cancel every task and leave the group. Safe to call more than once."""
        self._closed = True
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=TASK_CANCEL_TIMEOUT_SECONDS)
        if self._joined:
            self._joined = False
            await self._channel_layer.group_discard(self._group, self._channel_name)

    # --- inside -------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_log_task_failure)
        self._tasks.add(task)

    def _wants(self, message: Mapping[str, Any]) -> bool:
        if message.get("organization") != self.request.organization_id:
            return False
        agents = self.request.agents
        return agents is None or (message.get("data") or {}).get("agent") in agents

    async def _pump(self) -> None:
        # The first catch-up is the replay (or, live-only, whatever committed since `open`).
        next_poll = 0.0
        while True:
            wait_seconds = max(0.0, next_poll - time.monotonic())
            try:
                message = await asyncio.wait_for(self._doorbells.get(), timeout=wait_seconds)
            except TimeoutError:
                message = None
            if message is None or time.monotonic() >= next_poll:
                # A timer, not "no doorbell for a while": a steady flow of ephemeral events
                # must not postpone finding a kept event whose own doorbell was lost.
                await self._catch_up()
                next_poll = time.monotonic() + self._poll_seconds
            if message is None or not self._wants(message):
                continue
            cursor = message.get("cursor")
            if cursor is None:
                event = StreamEvent(event=message["event"], cursor=None, data=message["data"])
                async with self._emit_lock:
                    await self._emit(event)
            elif cursor > self.last_cursor:
                await self._catch_up()
                next_poll = time.monotonic() + self._poll_seconds

    async def _catch_up(self) -> None:
        """Emit every kept event after the last cursor, page by page, from the database."""
        while True:
            try:
                page = await database_sync_to_async(_events_after)(
                    organization_id=self.request.organization_id,
                    after=self.last_cursor,
                    agents=self.request.agents,
                )
            except Exception:  # a database hiccup: the next doorbell or poll tries again
                logger.exception("event feed could not read the event log; retrying later")
                return
            async with self._emit_lock:
                for event in page:
                    await self._emit(event)
                    if event.cursor is not None:
                        self.last_cursor = event.cursor
            if len(page) < EVENT_PAGE_SIZE:
                return

    async def _keep_alive(self) -> None:
        assert self._keepalive is not None
        while True:
            await asyncio.sleep(self._keepalive_seconds)
            async with self._emit_lock:
                await self._keepalive()
