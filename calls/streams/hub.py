"""The process's stream hub: one channel-layer subscription per organization, fanned out to its readers.

A process may hold hundreds of streams of one organization. Their hub joins the organization's
group once and handles each doorbell once for all of them. A kept event whose doorbell says
the cursor before it (`previous`) is one the hub has already passed on is taken from the
doorbell; after a gap (a doorbell the layer dropped, or a later one overtaking it) the hub
reads the gap from the event log, once. A periodic read finds events whose lost doorbell was
the last one. Each reader holds a `Subscription`: its personas' share of every batch, in cursor
order, queued without waiting, so a slow reader holds up nobody.

Doorbells from this process come straight from `calls.publishing` (`calls.doorbells.local_ring`);
the channel layer's copy of them carries this hub's origin and is skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from calls.doorbells import BROADCAST_TYPE, group_for_organization, local_listener_set, rings_expected
from calls.selectors import EVENT_PAGE_SIZE, call_events_after, organization_latest_event_cursor
from webapp.database import closing_connections

logger = logging.getLogger(__name__)

# Batches waiting for a slow reader. Past this it is behind: later batches are dropped and it
# reads its kept events back from the log (ephemeral events are at most once anyway).
MAX_PENDING_BATCHES = 1000
# How long stopping a hub waits for its tasks to finish being cancelled, in seconds.
TASK_CANCEL_TIMEOUT_SECONDS = 5.0
# After the channel layer failed to deliver (Redis restarting), the wait before trying again, in seconds.
RECEIVE_RETRY_SECONDS = 1.0
# While this process is still storing events, how long the hub may hold what it has, so that a
# burst goes out in a few writes per stream rather than one per event (in seconds), and how
# often it looks again. Passing one event on to 200 streams keeps the loop ~10 ms busy, time
# the database thread, which stores the burst's next events, waits for the GIL.
BURST_HOLD_SECONDS = 0.010
BURST_HOLD_STEP_SECONDS = 0.001
# With fewer readers than this the hub passes events on at once: handing a batch to a few
# streams costs the loop next to nothing, and each step of a hold waits a whole turn of a loop
# that may be busy with live calls (20 calls in one process: the hub's part of an event's
# delivery to one app was 53 ms at p99 with the hold, bench/agents.py --stages).
BURST_HOLD_MIN_READERS = 16


@dataclass(frozen=True)
class StreamEvent:
    """One event as a reader receives it; ephemeral events have no cursor."""

    event: str
    cursor: int | None
    data: dict[str, Any]

    @cached_property
    def data_json(self) -> str:
        """`data` as compact JSON, encoded once for all the readers it goes to.

        Compact JSON has no raw newlines, so it fits one SSE `data:` line.
        """
        return json.dumps(self.data, separators=(",", ":"), ensure_ascii=False)


def _log_task_failure(task: asyncio.Task[None]) -> None:
    # These tasks end only by cancellation; anything else stopped streams and must be seen.
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s stopped", task.get_name(), exc_info=task.exception())


def events_after(
    *, organization_id: int, after: int, agents: frozenset[str] | None
) -> tuple[list[StreamEvent], bool]:
    """One page of kept events after `after`, oldest first, and whether more may follow.

    Synchronous: it reads the database.
    """
    rows = call_events_after(
        organization_id=organization_id, after=after, agents=agents, limit=EVENT_PAGE_SIZE
    )
    page = [StreamEvent(event=row.type, cursor=row.cursor, data=row.data) for row in rows]
    return page, len(page) == EVENT_PAGE_SIZE


class Subscription:
    """One reader's place at its organization's hub: its personas and the events waiting for it."""

    def __init__(self, *, organization_id: int, agents: frozenset[str] | None) -> None:
        self.organization_id = organization_id
        self.agents = agents  # None: every persona
        # The hub's cursor when the reader joined: every later kept event comes through here.
        self.start_cursor = 0
        # Batches were dropped: the reader must read the log after its last cursor.
        self.behind = False
        self._pending: deque[list[StreamEvent]] = deque()
        self._wakeup = asyncio.Event()

    def offer(self, events: list[StreamEvent]) -> None:
        """From the hub: queue this reader's share of a batch. Never waits."""
        agents = self.agents
        wanted = (
            events if agents is None else [event for event in events if event.data.get("agent") in agents]
        )
        if not wanted:
            return
        if len(self._pending) >= MAX_PENDING_BATCHES:
            if not self.behind:  # once per overload, not once per dropped batch
                logger.warning("a stream of organization %s is behind; dropping events", self.organization_id)
            self.behind = True
        else:
            self._pending.append(wanted)
        self._wakeup.set()

    async def next_events(self) -> list[StreamEvent]:
        """Everything queued since the last call, oldest first; waits until there is something
        (or until the reader fell behind, when it may be nothing)."""
        while not self._pending and not self.behind:
            self._wakeup.clear()
            await self._wakeup.wait()
        events = [event for batch in self._pending for event in batch]
        self._pending.clear()
        return events


class OrganizationHub:
    """The organization's doorbells for this process, turned into events in cursor order for its readers."""

    def __init__(self, *, organization_id: int, origin: str, after: asyncio.Task[None] | None) -> None:
        self.organization_id = organization_id
        self.subscriptions: set[Subscription] = set()
        # The last kept event passed on (or, at the start, the newest in the log).
        self.cursor = 0
        self._origin = origin
        self._group = group_for_organization(organization_id)
        self._layer = get_channel_layer()
        self._channel: str | None = None
        # Why the last attempt to join the group failed (None: it is joined).
        self.join_error: Exception | None = None
        self._poll_seconds = settings.PARLEY_STREAM_POLL_SECONDS
        # Doorbells in arrival order; None asks for a read of the log.
        self._inbox: asyncio.Queue[Mapping[str, Any] | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._start = self._spawn(self._started(after), "event-hub-start")

    async def ready(self) -> None:
        """Wait until the hub listens and knows its cursor (raises if it could not start)."""
        await asyncio.shield(self._start)

    def hear(self, message: Mapping[str, Any]) -> None:
        """A doorbell of this organization, from this process or the channel layer. Never waits."""
        self._inbox.put_nowait(message)

    async def stop(self) -> None:
        """Cancel the tasks and leave the group."""
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=TASK_CANCEL_TIMEOUT_SECONDS)
        if self._channel is not None and self._layer is not None:
            try:
                await self._layer.group_discard(self._group, self._channel)
            except Exception:
                logger.warning("leaving %s failed", self._group, exc_info=True)

    # --- inside -------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_log_task_failure)
        task.add_done_callback(self._tasks.discard)
        self._tasks.add(task)
        return task

    async def _started(self, after: asyncio.Task[None] | None) -> None:
        if after is not None:  # the organization's previous hub, still leaving the group
            await asyncio.wait([after])
        # Join first, then read the cursor: every event committed after it rings a bell we hear.
        await self._join()
        if self.join_error is not None:  # its first reader is refused (and stops it)
            return
        self.cursor = await database_sync_to_async(closing_connections(organization_latest_event_cursor))(
            organization_id=self.organization_id
        )
        self._spawn(self._process(), "event-hub-process")
        self._spawn(self._poll(), "event-hub-poll")

    async def _join(self) -> None:
        """Join the organization's group; a failure is logged and retried at the next poll.

        Also re-joins an existing membership: a restarted Redis may have forgotten it.
        """
        if self._layer is None:
            return
        try:
            if self._channel is None:
                self._channel = await self._layer.new_channel()
                self._spawn(self._receive(self._channel), "event-hub-receive")
            await self._layer.group_add(self._group, self._channel)
        except Exception as error:
            if self.join_error is None:  # once per outage; the poll reads the log meanwhile
                logger.warning("joining %s failed; retrying at each poll", self._group, exc_info=True)
            self.join_error = error
        else:
            if self.join_error is not None:
                logger.info("joined %s again", self._group)
            self.join_error = None

    async def _receive(self, channel: str) -> None:
        assert self._layer is not None
        while True:
            try:
                message = await self._layer.receive(channel)
            except Exception:  # the layer lost its connection; the poll reads what we miss
                logger.warning("receiving on %s failed; retrying", self._group, exc_info=True)
                await asyncio.sleep(RECEIVE_RETRY_SECONDS)
                continue
            if message.get("type") == BROADCAST_TYPE and message.get("origin") != self._origin:
                self.hear(message)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            await self._join()
            self.read_log_soon()

    def read_log_soon(self) -> None:
        """Have the log read after the hub's cursor, in turn with the doorbells (the poll)."""
        self._inbox.put_nowait(None)

    async def _process(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            messages = [await self._inbox.get()]
            batch: list[StreamEvent] = []
            hold_until = loop.time() + BURST_HOLD_SECONDS
            held = False
            while True:
                while not self._inbox.empty():  # all that arrived meanwhile: one batch, one write per reader
                    messages.append(self._inbox.get_nowait())
                for message in messages:
                    batch += await self._events_of(message)
                messages = []
                if (
                    not batch
                    or len(self.subscriptions) < BURST_HOLD_MIN_READERS
                    or not rings_expected()
                    or loop.time() >= hold_until
                ):
                    break
                # First one turn of the loop: a trip that just rang is over by then.
                await asyncio.sleep(BURST_HOLD_STEP_SECONDS if held else 0)
                held = True
            if batch:
                for subscription in self.subscriptions:
                    subscription.offer(batch)

    async def _events_of(self, message: Mapping[str, Any] | None) -> list[StreamEvent]:
        if message is None:
            return await self._read_log()
        if message.get("organization") != self.organization_id:
            return []
        cursor = message.get("cursor")
        event = StreamEvent(event=message["event"], cursor=cursor, data=message["data"])
        if cursor is None:
            return [event]
        if cursor <= self.cursor:  # passed on already, read from the log or heard twice
            return []
        previous = message.get("previous")
        if isinstance(previous, int) and previous <= self.cursor:
            # Nothing of this organization lies between `previous` and `cursor`.
            self.cursor = cursor
            return [event]
        return await self._read_log()  # a gap: the log has it all, this event included

    async def _read_log(self) -> list[StreamEvent]:
        found: list[StreamEvent] = []
        while True:
            try:
                page, more = await database_sync_to_async(closing_connections(events_after))(
                    organization_id=self.organization_id, after=self.cursor, agents=None
                )
            except Exception:  # a database hiccup: the next gap or poll reads again
                logger.exception("the stream hub could not read the event log; retrying later")
                return found
            found += page
            if page:
                self.cursor = page[-1].cursor or self.cursor
            if not more:
                return found


class StreamHubs:
    """The hubs of one event loop (a Daphne process runs one): one per organization with readers."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.origin = uuid.uuid4().hex
        self._hubs: dict[int, OrganizationHub] = {}
        self._stopping: dict[int, asyncio.Task[None]] = {}
        local_listener_set(loop=loop, origin=self.origin, ring=self.ring)

    def hub(self, organization_id: int) -> OrganizationHub | None:
        return self._hubs.get(organization_id)

    def ring(self, message: Mapping[str, Any]) -> None:
        """A doorbell published in this process: straight to its organization's hub, if any."""
        hub = self._hubs.get(message.get("organization"))
        if hub is not None and message.get("type") == BROADCAST_TYPE:
            hub.hear(message)

    async def subscribe(self, *, organization_id: int, agents: frozenset[str] | None) -> Subscription:
        """A reader joins its organization's hub (started for the first); live events come after
        its `start_cursor`.

        While the hub cannot join its group (Redis is down), a new reader is refused with that
        error (the consumers answer 503); the readers it has keep reading, from the log.
        """
        hub = self._hubs.get(organization_id)
        if hub is None:
            hub = OrganizationHub(
                organization_id=organization_id,
                origin=self.origin,
                after=self._stopping.get(organization_id),
            )
            self._hubs[organization_id] = hub
        subscription = Subscription(organization_id=organization_id, agents=agents)
        hub.subscriptions.add(subscription)
        try:
            await hub.ready()
            if hub.join_error is not None:
                raise hub.join_error
        except BaseException:
            await self.unsubscribe(subscription)
            raise
        subscription.start_cursor = hub.cursor
        return subscription

    def leave(self, subscription: Subscription) -> asyncio.Task[None] | None:
        """A reader leaves, at once: nothing here waits, so a reader that is being cancelled
        (an anyio cancel scope raises at every await) leaves all the same. The last one to leave
        starts stopping the hub, and gets that task. Safe to call more than once."""
        organization_id = subscription.organization_id
        hub = self._hubs.get(organization_id)
        if hub is None or subscription not in hub.subscriptions:
            return None
        hub.subscriptions.discard(subscription)
        if hub.subscriptions:
            return None
        del self._hubs[organization_id]
        # A task, so that a hub started meanwhile for the organization can wait for it.
        stopping = asyncio.create_task(hub.stop(), name="event-hub-stop")
        self._stopping[organization_id] = stopping

        def stopped(task: asyncio.Task[None]) -> None:
            if self._stopping.get(organization_id) is task:
                del self._stopping[organization_id]

        stopping.add_done_callback(stopped)
        return stopping

    async def unsubscribe(self, subscription: Subscription) -> None:
        """A reader leaves (`leave`), and waits for the hub to stop if it was the last."""
        stopping = self.leave(subscription)
        if stopping is not None:
            await asyncio.shield(stopping)


_hubs: StreamHubs | None = None


def stream_hubs() -> StreamHubs:
    """The running loop's hubs (a new set for a new loop, as each test has)."""
    global _hubs
    loop = asyncio.get_running_loop()
    if _hubs is None or _hubs.loop is not loop:
        _hubs = StreamHubs(loop)
    return _hubs
