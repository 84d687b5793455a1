"""One reader's feed: the replay after its cursor from the database, then live events from the hub.

The feed joins its organization's hub before anything else, so events passed on from then on
wait in its subscription while it replays; the replay reads the log until it has caught up,
and the live events it then takes skip the cursors it already sent. Kept events therefore go
out in cursor order with no gap and no duplicate; ephemeral events go out as they come.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from calls.streams.authorisation import StreamRequest
from calls.streams.hub import StreamEvent, StreamHubs, Subscription, events_after, stream_hubs
from webapp.database import closing_connections

logger = logging.getLogger(__name__)

# How long closing a feed waits for its tasks to finish being cancelled, in seconds.
TASK_CANCEL_TIMEOUT_SECONDS = 5.0
# After a failed read of the log (a database hiccup), the wait before reading again, in seconds.
LOG_READ_RETRY_SECONDS = 1.0


def _log_task_failure(task: asyncio.Task[None]) -> None:
    # A feed task ends only by cancellation; anything else stopped a stream and must be seen.
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s stopped", task.get_name(), exc_info=task.exception())


class EventFeed:
    """One reader's events, replay then live, handed to `emit` in batches, in cursor order.

    Use: `await open()` (joins the hub, fixes the start cursor), then `start()` once the
    transport can send, and `await close()` at the end. Only the pump task emits events; the
    emit lock also covers `keepalive`, so nothing is ever written to the reader concurrently.
    """

    def __init__(
        self,
        *,
        request: StreamRequest,
        emit: Callable[[list[StreamEvent]], Awaitable[None]],
        keepalive: Callable[[], Awaitable[None]] | None = None,
        keepalive_seconds: float | None = None,
    ) -> None:
        self.request = request
        self.last_cursor = 0
        self._emit = emit
        self._keepalive = keepalive
        self._keepalive_seconds = keepalive_seconds or settings.PARLEY_SSE_PING_SECONDS
        self._emit_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._hubs: StreamHubs | None = None
        self._subscription: Subscription | None = None
        self._closed = False

    async def open(self) -> None:
        """Join the organization's hub, then fix the start cursor: any later event reaches us."""
        self._hubs = stream_hubs()
        self._subscription = await self._hubs.subscribe(
            organization_id=self.request.organization_id, agents=self.request.agents
        )
        after = self.request.after
        self.last_cursor = self._subscription.start_cursor if after is None else after

    def start(self) -> None:
        """Start the pump (replay, then live) and the keepalive, if any."""
        if self._closed or self._tasks or self._subscription is None:
            return
        self._spawn(self._pump(self._subscription), "event-feed-pump")
        if self._keepalive is not None:
            self._spawn(self._keep_alive(), "event-feed-keepalive")

    async def close(self) -> None:
        """Cancel every task and leave the hub. Safe to call more than once."""
        self._closed = True
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        # Leave the hub before the first wait: a feed closed while its own task is being
        # cancelled by an anyio cancel scope (every await raises) must not stay subscribed.
        subscription, self._subscription = self._subscription, None
        stopping = None
        if subscription is not None and self._hubs is not None:
            stopping = self._hubs.leave(subscription)
        if tasks:
            await asyncio.wait(tasks, timeout=TASK_CANCEL_TIMEOUT_SECONDS)
        if stopping is not None:
            await asyncio.shield(stopping)

    # --- inside -------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_log_task_failure)
        self._tasks.add(task)

    async def _pump(self, subscription: Subscription) -> None:
        if self.request.after is not None:
            await self._read_log()  # the replay; live events wait in the subscription
        while True:
            events = await subscription.next_events()
            fresh = []
            for event in events:
                if event.cursor is None:
                    fresh.append(event)
                elif event.cursor > self.last_cursor:
                    fresh.append(event)
                    self.last_cursor = event.cursor
            if fresh:
                async with self._emit_lock:
                    await self._emit(fresh)
            if subscription.behind:  # events were dropped while this reader was slow
                subscription.behind = False
                await self._read_log()

    async def _read_log(self) -> None:
        """Emit every kept event after the last cursor, page by page, from the database.

        Retries until it has read up to the end: live events must not go out past a hole.
        """
        failures = 0
        while True:
            try:
                page, more = await database_sync_to_async(closing_connections(events_after))(
                    organization_id=self.request.organization_id,
                    after=self.last_cursor,
                    agents=self.request.agents,
                )
            except Exception:
                if not failures:  # once per outage, not once a second
                    logger.exception("event feed could not read the event log; retrying")
                failures += 1
                await asyncio.sleep(LOG_READ_RETRY_SECONDS)
                continue
            if page:
                async with self._emit_lock:
                    await self._emit(page)
                self.last_cursor = page[-1].cursor or self.last_cursor
            if not more:
                return

    async def _keep_alive(self) -> None:
        assert self._keepalive is not None
        while True:
            await asyncio.sleep(self._keepalive_seconds)
            async with self._emit_lock:
                await self._keepalive()
