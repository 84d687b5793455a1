"""Publishing conversation events: the one place that stores and broadcasts them.

Kept events are inserted into the call log, which assigns their cursor, and broadcast only
after the transaction commits. Cursors must grow in commit order, or a reader resuming
after cursor N could miss an N-1 that committed late; on PostgreSQL an advisory
transaction lock serialises event inserts for that reason (SQLite serialises all writes).
Ephemeral events are broadcast only. Broadcasts go to three Channels groups — the
organization, the persona and the call — and straight to this process's stream hub
(`calls.doorbells`). They are a doorbell, not the record: channel layers deliver at most
once. A kept event's doorbell carries the event and the organization's cursor before it, so
a reader whose last cursor is that one takes the event from the bell, and any other reads
the gap back from the database.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import get_channel_layer
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from calls import events
from calls.doorbells import (
    BROADCAST_TYPE,
    group_for_call,
    group_for_organization,
    group_for_persona,
    local_ring,
    rings_expected_change,
)
from calls.models import Call, CallEvent, Transport
from calls.selectors import organization_event_cursor_before

logger = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every process that writes events.
EVENT_LOG_LOCK_KEY = 0x5061726C6579  # "Parley"


@dataclass(frozen=True)
class Broadcast:
    """What goes to the groups: enough for a reader to filter, and to see a gap, without a query."""

    event: str
    cursor: int | None
    data: dict[str, Any]
    organization_id: int
    persona_id: int
    call_id: str
    # The cursor of the organization's kept event just before this one (0: none), so a reader
    # that last saw another cursor knows it missed a doorbell. None for ephemeral events.
    previous: int | None = None

    def as_message(self) -> dict[str, Any]:
        return {
            "type": BROADCAST_TYPE,
            "event": self.event,
            "cursor": self.cursor,
            "previous": self.previous,
            "data": self.data,
            "organization": self.organization_id,
            "persona": self.persona_id,
            "call": self.call_id,
        }

    @property
    def groups(self) -> tuple[str, ...]:
        # The organization's first: the event streams of other processes listen there.
        return (
            group_for_organization(self.organization_id),
            group_for_persona(self.persona_id),
            group_for_call(self.call_id),
        )


def _ring_here(broadcast: Broadcast) -> dict[str, Any]:
    """Ring this process's streams now; returns the message for the channel layer.

    The message carries the origin of the hub that heard it here, so that hub skips the
    layer's copy of the same doorbell.
    """
    message = broadcast.as_message()
    origin = local_ring(message)
    return message if origin is None else {**message, "origin": origin}


async def _layer_send(broadcast: Broadcast, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    for group in broadcast.groups:
        try:
            await layer.group_send(group, message)
        except Exception:  # a broadcast is a doorbell: readers recover from the log
            logger.exception("broadcast of %s to %s failed", broadcast.event, group)


async def _broadcast_async(broadcast: Broadcast) -> None:
    await _layer_send(broadcast, _ring_here(broadcast))


# Broadcasts handed from database threads to the event loop, sent in order by one task.
_pending_broadcasts: deque[tuple[Broadcast, dict[str, Any]]] = deque()
_broadcast_sender: asyncio.Task[None] | None = None


async def _broadcasts_send() -> None:
    while _pending_broadcasts:
        await _layer_send(*_pending_broadcasts.popleft())


def _broadcast_enqueue(broadcast: Broadcast) -> None:
    """On the event loop: ring this process's streams at once, and queue the layer's broadcast.

    The local ring does not wait behind earlier broadcasts' round trips to the channel layer.
    """
    global _broadcast_sender
    _pending_broadcasts.append((broadcast, _ring_here(broadcast)))
    loop = asyncio.get_running_loop()
    # A sender left on another loop (one that closed mid-send, as in tests) is replaced.
    if _broadcast_sender is None or _broadcast_sender.done() or _broadcast_sender.get_loop() is not loop:
        _broadcast_sender = loop.create_task(_broadcasts_send())


def _broadcast_sync(broadcast: Broadcast) -> None:
    """From a thread: on the event loop the thread works for, without waiting for it.

    `database_sync_to_async` runs every write of the process on one thread, so a write that
    waited for the loop to deliver its broadcast (what `async_to_sync` does) held up every
    other session's writes for a loop round trip; with many live calls the loop is busy and
    session starts queued behind the persona's word events. The loop is the one asgiref
    recorded for this thread; a plain sync caller (a management command, a sync test) has
    none and waits as before.
    """
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if loop is not None and getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) == os.getpid():
        try:
            loop.call_soon_threadsafe(_broadcast_enqueue, broadcast)
            return
        except RuntimeError:  # the loop closed (shutdown): fall back to waiting
            pass
    async_to_sync(_broadcast_async)(broadcast)


def _hooks_hand_sync(*, slug: str, call_id: str, name: str, data: dict[str, Any]) -> None:
    """From a thread: one event to the persona's in-process hooks (`calls.agents.hooks`), on the
    event loop the thread works for. Hooks live on the server's loop: a caller with none (a
    management command) hands nothing."""
    from calls.agents.hooks import hooks_dispatch, hooks_present

    if not hooks_present(slug):
        return
    dispatch = functools.partial(hooks_dispatch, call_id=call_id, slug=slug, name=name, data=data)
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if loop is None or getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) != os.getpid():
        logger.debug("%s of call %s not handed to hooks: no event loop here", name, call_id)
        return
    try:
        # In a context of their own: the thread's (asgiref's executor marks) would make the
        # hooks' own database calls refuse to run.
        loop.call_soon_threadsafe(dispatch, context=contextvars.Context())
    except RuntimeError:  # the loop closed (shutdown)
        pass


def _lock_event_log() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [EVENT_LOG_LOCK_KEY])


def call_events_lock() -> None:
    """Inside a transaction: take the event log's lock now, before any row lock.

    For a transaction that publishes several events and also waits on rows other writers hold
    (WhatsApp processing): taking the log's lock only at its first event, while holding rows
    another such transaction waits for, is a deadlock on PostgreSQL.
    """
    _lock_event_log()


def _call_parts(call: Call) -> tuple[int, int, str]:
    # persona.slug is needed for the envelope; callers pass calls with persona loaded.
    return call.organization_id, call.persona_id, call.persona.slug


def call_event_publish(*, call: Call, event: events.Event, at: datetime | None = None) -> CallEvent | None:
    """Store (if kept) and broadcast one event of a call. Returns the stored row, if any.

    `at`: when it happened (default: now). Inside an outer transaction the broadcast waits for
    its commit; a rollback sends nothing.
    """
    organization_id, persona_id, agent = _call_parts(call)
    data = events.event_frame(event=event, call_id=call.id, agent=agent)
    if call.transport == Transport.WHATSAPP:
        # A live call's session hands its events to in-process hooks; a WhatsApp thread has none.
        transaction.on_commit(
            lambda: _hooks_hand_sync(slug=agent, call_id=call.id, name=event.name, data=data)
        )
    if not event.kept:
        _broadcast_sync(Broadcast(event.name, None, data, organization_id, persona_id, call.id))
        return None
    with transaction.atomic():
        _lock_event_log()
        row = CallEvent.objects.create(
            organization_id=organization_id,
            persona_id=persona_id,
            call_id=call.id,
            type=event.name,
            data=data,
            created_at=at or timezone.now(),
        )
        # Under the lock (or SQLite's write lock), so no other event can come between the two.
        previous = organization_event_cursor_before(organization_id=organization_id, cursor=row.cursor)
        broadcast = Broadcast(event.name, row.cursor, data, organization_id, persona_id, call.id, previous)
        transaction.on_commit(lambda: _broadcast_sync(broadcast))
    return row


async def acall_event_publish(
    *, call: Call, event: events.Event, at: datetime | None = None
) -> CallEvent | None:
    """The async twin for the pipeline and consumers: ephemeral events skip the thread hop.

    Kept events wait in line for the database thread, which stores all those waiting in one
    trip and one transaction, in the order they came (see `_EventStore`). An awaiting
    task that is cancelled does not unpublish its event.
    """
    if event.kept:
        return await call_event_submit(call=call, event=event, at=at)
    organization_id, persona_id, agent = _call_parts(call)
    data = events.event_frame(event=event, call_id=call.id, agent=agent)
    await _broadcast_async(Broadcast(event.name, None, data, organization_id, persona_id, call.id))
    return None


def call_event_submit(
    *, call: Call, event: events.Event, at: datetime | None = None
) -> asyncio.Future[CallEvent | None]:
    """On the event loop: hand a kept event to the store now; the future is its stored row.

    Events are stored in the order they are submitted, so a caller that submits one event
    after another need not wait for the first to be stored (a live call's events come in
    bursts: `bot.speaking`, `message.confirmed`...).
    """
    if not event.kept:
        raise ValueError(f"{event.name} is ephemeral: publish it with acall_event_publish")
    future: asyncio.Future[CallEvent | None] = asyncio.get_running_loop().create_future()
    rings_expected_change(+1)
    _event_store.submit(_PendingPublish(call, event, at, future))
    return future


# Layer broadcasts waiting to be sent beyond which `call_event_broadcast_soon` sends an event
# to this process's streams only: a channel layer that stalls (Redis down) must not pile up a
# live level meter's readings, 20 a second per call, that nobody needs late.
MAX_PENDING_BROADCASTS_FOR_EPHEMERAL = 1000


def call_event_broadcast_soon(*, call: Call, event: events.Event) -> None:
    """Broadcast an ephemeral event without waiting, from the event loop (`audio.metrics`).

    This process's streams hear it at once; the channel layer's copy goes out behind the
    broadcasts before it, sent in order by the process's one sender. Nothing waits for it and
    no task is made per event.
    """
    if event.kept:
        raise ValueError(f"{event.name} is kept: publish it with acall_event_publish")
    organization_id, persona_id, agent = _call_parts(call)
    data = events.event_frame(event=event, call_id=call.id, agent=agent)
    broadcast = Broadcast(event.name, None, data, organization_id, persona_id, call.id)
    if len(_pending_broadcasts) >= MAX_PENDING_BROADCASTS_FOR_EPHEMERAL:
        _ring_here(broadcast)
        return
    _broadcast_enqueue(broadcast)


def call_write_submit(write: Callable[[], Any]) -> asyncio.Future[Any]:
    """On the event loop: run `write` (a write of a live call's rows: its transcript, a turn's
    latency, a tool's result) on the event store's thread, after the events and writes handed to
    the store before it; the future is what it returned (or raised).

    A live call's writes go to the store with its events, not to the thread every other
    database call of the process waits in line for: an event behind a transcript row would
    wait there too (at 20 live calls, turn.end waited a median 30 ms behind user.message's row,
    bench/agents.py --stages).
    """
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    _event_store.submit(_PendingPublish(None, None, None, future, write))
    return future


@dataclass(frozen=True)
class _PendingPublish:
    """A kept event waiting for the store, or (`write`) a write of the call's rows."""

    call: Call | None
    event: events.Event | None
    at: datetime | None
    future: asyncio.Future[Any]
    write: Callable[[], Any] | None = None


def _publish_each(
    pending: list[_PendingPublish], rung: Callable[[], None]
) -> list[CallEvent | Exception | None]:
    """Store the events in one transaction (one commit, one flush of the database's log for
    all), each in a savepoint of its own, so one that fails leaves the others stored.

    `rung` is called once the commit has handed their doorbells to the loop, before the thread
    tidies its connection: the hub need not hold a burst for that.
    """
    outcomes: list[CallEvent | Exception | None] = []
    try:
        together = _publish_together(pending)
        if together is not None:
            return together
        with transaction.atomic():
            for each in pending:
                try:
                    outcomes.append(call_event_publish(call=each.call, event=each.event, at=each.at))
                except Exception as error:  # that publish's caller gets it; the others go on
                    outcomes.append(error)
    except Exception as error:  # the commit failed: none of them is stored
        return [error] * len(pending)
    finally:
        rung()
    return outcomes


def _publish_together(pending: list[_PendingPublish]) -> list[CallEvent | Exception | None] | None:
    """Store the events of live calls in one multi-row INSERT: four statements a trip, not four
    an event (a savepoint, the insert, the cursor before it, the release). On a busy server
    each statement hands the interpreter's lock to the event loop's thread and waits to get
    it back, so a trip of 3 events took 14 waits. None if it could not: the caller stores them
    one by one (a WhatsApp thread's events also go to hooks; one that fails must not take the
    others with it).
    """
    if any(each.call.transport == Transport.WHATSAPP for each in pending):
        return None
    outcomes: list[CallEvent | Exception | None] = []
    rows: list[CallEvent] = []
    agents: list[str] = []
    now = timezone.now()
    for each in pending:
        try:
            organization_id, persona_id, agent = _call_parts(each.call)
            data = events.event_frame(event=each.event, call_id=each.call.id, agent=agent)
        except Exception as error:  # that publish's caller gets it; the others go on
            outcomes.append(error)
            continue
        row = CallEvent(
            organization_id=organization_id,
            persona_id=persona_id,
            call_id=each.call.id,
            type=each.event.name,
            data=data,
            created_at=each.at or now,
        )
        rows.append(row)
        agents.append(agent)
        outcomes.append(row)
    if not rows:
        return outcomes
    try:
        with transaction.atomic():
            _lock_event_log()
            CallEvent.objects.bulk_create(rows)
            cursors = [row.cursor for row in rows]
            if None in cursors or cursors != sorted(set(cursors)):
                raise _TogetherRefused  # no cursors back, or not in order: one by one
            broadcasts = []
            previous: dict[int, int] = {}  # the organization's cursor before each row
            for row in rows:
                if row.organization_id not in previous:  # under the log's lock: nothing between
                    previous[row.organization_id] = organization_event_cursor_before(
                        organization_id=row.organization_id, cursor=row.cursor
                    )
                broadcasts.append(
                    Broadcast(
                        row.type,
                        row.cursor,
                        row.data,
                        row.organization_id,
                        row.persona_id,
                        row.call_id,
                        previous[row.organization_id],
                    )
                )
                previous[row.organization_id] = row.cursor
            transaction.on_commit(lambda: [_broadcast_sync(broadcast) for broadcast in broadcasts])
    except Exception:
        return None
    return outcomes


class _TogetherRefused(Exception):
    pass


class _EventStore:
    """The process's thread that stores kept events, all those waiting in each trip.

    A trip and a transaction per event cost each of them a thread hop, a connection opened and
    closed (SQLite checkpoints its WAL at each close) and a commit (PostgreSQL flushes its log
    at each): ten events published at once took 45 ms (SQLite) to 75 ms (PostgreSQL) to
    store, one after the other (bench/streams.py). Events wait on a thread of their own, not
    on the one every other database call of the process waits in line for: at 20 live calls
    that wait was most of an event's delay to an app (p99 21 ms of 34, bench/agents.py
    --stages). The thread takes what came during a trip as soon as the trip ends, without a
    round trip through the event loop (on a busy loop, several milliseconds each). On SQLite
    it keeps its connection while events come (opening one costs ~2 ms, and closing it
    checkpoints the log) and closes it once they stop; on PostgreSQL the pool makes opening
    cheap, so it hands the connection back after each trip as every other caller does.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._waiting: list[_PendingPublish] = []
        self._thread: threading.Thread | None = None
        self._pid = 0

    def submit(self, item: _PendingPublish) -> None:
        with self._condition:
            self._waiting.append(item)
            thread = self._thread
            if thread is None or not thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="parley-events", daemon=True)
                self._thread.start()
            self._condition.notify()

    def _run(self) -> None:
        connected = False
        while True:
            with self._condition:
                if not self._waiting:
                    # While connected, wait only so long: then let the connection go (outside
                    # the lock: closing SQLite's checkpoints its log, and publishers wait on it).
                    self._condition.wait(EVENT_STORE_IDLE_CLOSE_SECONDS if connected else None)
                waiting, self._waiting = self._waiting, []
            if not waiting:
                if connected:
                    _connection_close()
                    connected = False
                continue
            connected = True
            for loop, pending in _by_loop(waiting):
                _event_store_trip(loop, pending)


def _by_loop(waiting: list[_PendingPublish]) -> list[tuple[asyncio.AbstractEventLoop, list[_PendingPublish]]]:
    """The waiting events by the loop that published them (a server has one; tests have many)."""
    groups: dict[asyncio.AbstractEventLoop, list[_PendingPublish]] = {}
    for each in waiting:
        groups.setdefault(each.future.get_loop(), []).append(each)
    return list(groups.items())


def _runs(pending: list[_PendingPublish]) -> list[list[_PendingPublish]]:
    """`pending` cut where it turns from events to writes or back, in order."""
    runs: list[list[_PendingPublish]] = []
    for each in pending:
        if runs and (runs[-1][0].write is None) == (each.write is None):
            runs[-1].append(each)
        else:
            runs.append([each])
    return runs


def _writes_run(pending: list[_PendingPublish]) -> list[Any]:
    outcomes: list[Any] = []
    for each in pending:
        assert each.write is not None
        try:
            outcomes.append(each.write())
        except Exception as error:  # that write's caller gets it; the others go on
            outcomes.append(error)
    return outcomes


def _event_store_trip(loop: asyncio.AbstractEventLoop, pending: list[_PendingPublish]) -> None:
    """On the store's thread: store `pending` and tell their publishers, on their loop.

    Events are stored together up to the next write, which runs after them, and so on.
    """

    def on_loop(callback: Callable[..., None], *args: Any) -> None:
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed (shutdown, or a test's): nobody waits there
            pass

    # The doorbells of the events stored go to the loop they came from (`_broadcast_sync`).
    SyncToAsync.threadlocal.main_event_loop = loop
    SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()
    runs = _runs(pending)
    # What each run of events still counts in `rings_expected` (a run of writes: nothing).
    expected = [[0 if run[0].write is not None else len(run)] for run in runs]
    outcomes: list[Any] = []
    try:
        for run, run_expected in zip(runs, expected, strict=True):
            try:
                if run[0].write is not None:
                    outcomes.extend(_writes_run(run))
                    continue
                # `rung` runs after the commit handed the doorbells to the loop.
                settle = functools.partial(_rings_expected_settle, run_expected)
                outcomes.extend(_publish_each(run, functools.partial(on_loop, settle)))
            except BaseException as error:  # no caller may wait forever
                outcomes.extend([error] * len(run))
    finally:
        try:
            _event_store_tidy()
        except Exception:
            logger.exception("the event store could not tidy its connection")
        for run_expected in expected:  # a run that failed before its commit: now
            on_loop(_rings_expected_settle, run_expected)
    on_loop(_publishes_settle, pending, outcomes)


def _publishes_settle(pending: list[_PendingPublish], outcomes: list[Any]) -> None:
    for each, outcome in zip(pending, outcomes, strict=True):
        _publish_settle(each.future, outcome)


EVENT_STORE_IDLE_CLOSE_SECONDS = 2.0
_event_store = _EventStore()


def _event_store_tidy() -> None:
    """After a trip, on the store's thread: hand back (PostgreSQL) or keep (SQLite) its connection."""
    if connection.vendor != "sqlite":
        close_old_connections()
    elif connection.errors_occurred and not connection.is_usable():
        connection.close()


def _connection_close() -> None:
    connection.close()  # this thread's connection: the proxy is read where it runs


def _rings_expected_settle(expected: list[int]) -> None:
    """On the loop: a trip's events no longer count as on their way (once, whoever comes first)."""
    rings_expected_change(-expected[0])
    expected[0] = 0


def _publish_settle(future: asyncio.Future[Any], outcome: Any) -> None:
    # A caller that was cancelled (or whose loop closed, as in tests) is told nothing; its event
    # is stored all the same.
    if future.done() or future.get_loop().is_closed():
        return
    if isinstance(outcome, asyncio.CancelledError):
        future.cancel()
    elif isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
