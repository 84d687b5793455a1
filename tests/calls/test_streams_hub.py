"""The stream hub: one subscription and one read per organization and process, whatever the number of streams.

These tests open real streams through the ASGI application (tests/calls/test_streams.py's
clients) and check what the hub does for all of them: how often the event log is read, how
many channel-layer subscriptions there are, what happens when doorbells are lost, come twice
or come out of order, and when a stream is too slow to keep up.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.db.backends.utils import CursorWrapper

from calls import events
from calls.doorbells import group_for_organization
from calls.models import Call, CallEvent
from calls.publishing import acall_event_publish
from calls.streams import EventFeed, StreamEvent, StreamRequest, stream_hubs
from tests.calls.test_streams import (
    RECEIVE_TIMEOUT_SECONDS,
    bearer,
    open_stream,
    publish,
    said,
    texts,
    websocket,
)

pytestmark = pytest.mark.django_db(transaction=True)

# Longer than any test: what these tests receive comes from doorbells, not from the poll.
NO_POLL_SECONDS = 600.0


@pytest.fixture
def call_a(make_call, persona_a) -> Call:
    return make_call(persona_a)


@pytest.fixture
def call_lena(make_call, make_persona, org_a) -> Call:
    return make_call(make_persona(org_a, "lena"))


@pytest.fixture
def without_poll(settings) -> None:
    settings.PARLEY_STREAM_POLL_SECONDS = NO_POLL_SECONDS


@pytest.fixture
def event_log_reads(monkeypatch) -> Iterator[list[str]]:
    """Every read of the event log after a cursor, from any thread (the database thread too)."""
    reads: list[str] = []
    execute = CursorWrapper.execute

    def counting_execute(self: CursorWrapper, sql: str, params: Any = None) -> Any:
        if '"calls_callevent"' in sql and '"cursor" >' in sql and sql.lstrip().upper().startswith("SELECT"):
            reads.append(sql)
        return execute(self, sql, params)

    monkeypatch.setattr(CursorWrapper, "execute", counting_execute)
    yield reads


def hub_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("event-hub-")]


@pytest.fixture
def group_members(monkeypatch) -> dict[str, set[str]]:
    """The channels in each group, as joined and left through the channel layer (any backend)."""
    members: dict[str, set[str]] = {}
    layer = get_channel_layer()
    group_add, group_discard = layer.group_add, layer.group_discard

    async def add(group: str, channel: str) -> None:
        members.setdefault(group, set()).add(channel)
        await group_add(group, channel)

    async def discard(group: str, channel: str) -> None:
        members.get(group, set()).discard(channel)
        await group_discard(group, channel)

    monkeypatch.setattr(layer, "group_add", add)
    monkeypatch.setattr(layer, "group_discard", discard)
    return members


def rows_after(cursor: int) -> list[CallEvent]:
    return list(CallEvent.objects.filter(cursor__gt=cursor).order_by("cursor"))


# --- One subscription, one read --------------------------------------------------------


async def test_all_streams_of_an_organization_share_one_channel_layer_subscription_which_ends_with_the_last(
    key_a, call_a, group_members
):
    streams = [await open_stream(headers=bearer(key_a)) for _ in range(5)]
    socket = await websocket(headers=bearer(key_a))
    group = group_for_organization(call_a.organization_id)
    assert len(group_members[group]) == 1

    for stream in streams:
        await stream.close()
    await socket.disconnect()
    assert group_members[group] == set()
    assert hub_tasks() == []


async def test_live_events_reach_every_stream_with_at_most_one_read_of_the_log_per_event(
    key_a, call_a, without_poll, event_log_reads
):
    streams = [await open_stream(headers=bearer(key_a)) for _ in range(10)]
    event_log_reads.clear()
    for index in range(5):
        await publish(call_a, said(f"live-{index}"))
    for stream in streams:
        assert texts(await stream.events(5)) == [f"live-{index}" for index in range(5)]
    # One stream per doorbell read the log, 50 reads here; in order, the doorbell brings the event.
    assert len(event_log_reads) <= 5
    for stream in streams:
        await stream.close()


# --- Lost, repeated and overtaking doorbells ---------------------------------------------


async def test_a_missed_doorbell_is_read_from_the_log_as_soon_as_the_next_one_rings(
    key_a, call_a, without_poll
):
    stream = await open_stream(headers=bearer(key_a))
    await publish(call_a, said("rung"))
    assert texts([await stream.next_event()]) == ["rung"]

    def insert_without_broadcast() -> CallEvent:
        return CallEvent.objects.create(
            organization_id=call_a.organization_id,
            persona_id=call_a.persona_id,
            call_id=call_a.id,
            type="user.message",
            data={"callId": call_a.id, "text": "silent", "messageId": "msg_s", "agent": "mara"},
        )

    silent = await database_sync_to_async(insert_without_broadcast)()
    after = await publish(call_a, said("next"))
    frames = await stream.events(2)
    assert [(frame.id, frame.data["text"]) for frame in frames] == [
        (str(silent.cursor), "silent"),
        (str(after.cursor), "next"),
    ]
    await stream.close()


async def test_lost_doorbells_still_give_every_stream_every_event_once_in_cursor_order(
    key_a, call_a, call_lena, monkeypatch
):
    """Every third doorbell is lost on both paths; the next one's `previous`, or the poll, finds it."""
    import calls.publishing

    ring = calls.publishing.local_ring
    counter = itertools.count()

    def lossy_ring(message: Any) -> str | None:
        if message["cursor"] is not None and next(counter) % 3 == 2:
            return stream_hubs().origin  # as if heard here: the hub skips the layer's copy too
        return ring(message)

    monkeypatch.setattr(calls.publishing, "local_ring", lossy_ring)
    everything = await open_stream(headers=bearer(key_a))
    only_lena = await open_stream(query={"agents": "lena"}, headers=bearer(key_a))

    await asyncio.gather(
        *(
            acall_event_publish(call=call, event=said(f"{call.persona.slug}-{index}"))
            for index in range(15)
            for call in (call_a, call_lena)
        )
    )
    stored = await database_sync_to_async(rows_after)(0)
    received = await everything.events(len(stored))
    assert [int(frame.id) for frame in received] == [row.cursor for row in stored]
    lena = [row for row in stored if row.data["agent"] == "lena"]
    assert [int(frame.id) for frame in await only_lena.events(len(lena))] == [row.cursor for row in lena]

    await publish(call_a, said("last"))  # nothing was delivered twice before it
    assert texts([await everything.next_event()]) == ["last"]
    await everything.close()
    await only_lena.close()


async def test_the_channel_layers_copy_of_a_doorbell_heard_in_process_is_not_delivered_twice(
    key_a, call_a, without_poll, monkeypatch
):
    import calls.publishing

    copies: list[dict[str, Any]] = []
    both_sent = asyncio.Event()
    layer_send = calls.publishing._layer_send

    async def keeping_copies(broadcast: Any, message: dict[str, Any]) -> None:
        await layer_send(broadcast, message)
        if broadcast.call_id == call_a.id:  # not an earlier test's, still on its way
            copies.append(message)
            if len(copies) == 2:
                both_sent.set()

    monkeypatch.setattr(calls.publishing, "_layer_send", keeping_copies)
    stream = await open_stream(headers=bearer(key_a))
    await publish(call_a, events.BotWord(message_id="m1", word="once"))
    kept = await publish(call_a, said("kept once"))
    frames = await stream.events(2)
    assert [(frame.event, frame.id) for frame in frames] == [
        ("bot.word", None),
        ("user.message", str(kept.cursor)),
    ]
    # The stream had them from the local ring. The layer's copies go out after it, behind any
    # broadcast still queued (an earlier test's, whose loop closed before they were sent).
    await asyncio.wait_for(both_sent.wait(), RECEIVE_TIMEOUT_SECONDS)
    assert all(copy["origin"] == stream_hubs().origin for copy in copies)

    # The same doorbells again from another process (no origin), the kept one first: it is
    # known by its cursor; the ephemeral one from elsewhere is news, and once it is here the
    # kept one has been dealt with (one channel, in order).
    layer = get_channel_layer()
    for copy in reversed(copies):
        await layer.group_send(
            group_for_organization(call_a.organization_id), {**copy, "origin": "elsewhere"}
        )
    frame = await stream.next_event()
    assert (frame.event, frame.data["word"]) == ("bot.word", "once")
    await publish(call_a, said("marker"))
    assert texts([await stream.next_event()]) == ["marker"]
    await stream.close()


async def test_a_doorbell_that_overtakes_an_earlier_one_makes_the_hub_read_both_in_cursor_order(
    key_a, call_a, without_poll
):
    """Process B commits after A but rings first: the hub reads the gap; A's late bell changes nothing."""
    stream = await open_stream(headers=bearer(key_a))

    def insert(text: str) -> CallEvent:
        return CallEvent.objects.create(
            organization_id=call_a.organization_id,
            persona_id=call_a.persona_id,
            call_id=call_a.id,
            type="user.message",
            data={"callId": call_a.id, "text": text, "messageId": f"msg_{text}", "agent": "mara"},
        )

    first = await database_sync_to_async(insert)("first")
    second = await database_sync_to_async(insert)("second")
    layer = get_channel_layer()
    group = group_for_organization(call_a.organization_id)
    for row, previous in ((second, first.cursor), (first, first.cursor - 1)):
        await layer.group_send(
            group,
            {
                "type": "event.message",
                "event": row.type,
                "cursor": row.cursor,
                "previous": previous,
                "data": row.data,
                "organization": row.organization_id,
                "origin": "another-process",
            },
        )
    assert texts(await stream.events(2)) == ["first", "second"]
    await publish(call_a, said("third"))
    assert texts([await stream.next_event()]) == ["third"]
    await stream.close()


# --- Replay and slow readers --------------------------------------------------------------


async def test_streams_opened_at_different_cursors_while_events_flow_each_get_exactly_what_follows_theirs(
    key_a, call_a
):
    rows = [await publish(call_a, said(f"old-{index}")) for index in range(6)]

    async def keep_publishing() -> None:
        for index in range(6):
            await publish(call_a, said(f"new-{index}"))

    publisher = asyncio.create_task(keep_publishing())
    streams = [
        await open_stream(query={"after": str(row.cursor)}, headers=bearer(key_a)) for row in rows[::2]
    ]
    await publisher
    for row, stream in zip(rows[::2], streams, strict=True):
        expected = await database_sync_to_async(rows_after)(row.cursor)
        frames = await stream.events(len(expected))
        assert [int(frame.id) for frame in frames] == [each.cursor for each in expected]
    for stream in streams:
        await stream.close()


async def test_a_reader_too_slow_for_its_queue_reads_what_was_dropped_from_the_log(
    org_a, call_a, without_poll, monkeypatch, caplog
):
    monkeypatch.setattr("calls.streams.hub.MAX_PENDING_BATCHES", 2)
    released = asyncio.Event()
    received: list[StreamEvent] = []
    all_received = asyncio.Event()
    rows: list[CallEvent] = []

    async def slow_emit(batch: list[StreamEvent]) -> None:
        await released.wait()
        received.extend(batch)
        if len(received) >= len(rows):
            all_received.set()

    feed = EventFeed(request=StreamRequest(organization_id=org_a.id, agents=None, after=None), emit=slow_emit)
    await feed.open()
    feed.start()
    for index in range(8):  # one batch each: the reader holds the first, two wait, the rest are dropped
        rows.append(await publish(call_a, said(f"event-{index}")))
        await asyncio.sleep(0.01)
    released.set()
    await asyncio.wait_for(all_received.wait(), RECEIVE_TIMEOUT_SECONDS)
    assert [event.cursor for event in received] == [row.cursor for row in rows]
    assert "is behind; dropping events" in caplog.text
    await feed.close()


async def test_a_lone_reader_gets_each_event_at_once_and_many_readers_get_a_burst_in_one_batch(
    org_a, call_a, without_poll, monkeypatch
):
    """While this process is still storing events the hub holds a burst, but only for as many
    readers as make handing it out costly: a lone app gets each event without the wait."""
    on_their_way = [1]  # events still being stored, as the hub sees it: never none until told
    monkeypatch.setattr("calls.streams.hub.rings_expected", lambda: on_their_way[0])
    monkeypatch.setattr("calls.streams.hub.BURST_HOLD_SECONDS", NO_POLL_SECONDS)
    batches: list[list[StreamEvent]] = []
    arrived = asyncio.Event()

    async def emit(batch: list[StreamEvent]) -> None:
        batches.append(batch)
        arrived.set()

    feed = EventFeed(request=StreamRequest(organization_id=org_a.id, agents=None, after=None), emit=emit)
    await feed.open()
    feed.start()
    row = await publish(call_a, said("at once"))
    await asyncio.wait_for(arrived.wait(), RECEIVE_TIMEOUT_SECONDS)
    assert [[event.cursor for event in batch] for batch in batches] == [[row.cursor]]

    monkeypatch.setattr("calls.streams.hub.BURST_HOLD_MIN_READERS", 1)  # as if it had many readers
    batches.clear()
    arrived.clear()
    rows = [await publish(call_a, said(f"held-{index}")) for index in range(3)]
    await asyncio.sleep(0.2)
    assert batches == []  # held while events are on their way
    on_their_way[0] = 0
    await asyncio.wait_for(arrived.wait(), RECEIVE_TIMEOUT_SECONDS)
    assert [[event.cursor for event in batch] for batch in batches] == [[each.cursor for each in rows]]
    await feed.close()


async def test_open_streams_hold_no_database_connection(key_a, persona_a):
    """Each read of the database closes what it opened: no idle connection while streams are open."""
    streams = [await open_stream(headers=bearer(key_a)) for _ in range(3)]
    socket = await websocket(headers=bearer(key_a))

    def database_thread_connected() -> bool:
        return connection.connection is not None

    assert await sync_to_async(database_thread_connected, thread_sensitive=True)() is False
    for stream in streams:
        await stream.close()
    await socket.disconnect()


async def test_a_stream_closed_while_an_anyio_cancel_scope_cancels_it_still_leaves_the_hub(org_a, call_a):
    """An ASGI server that runs the application in an anyio cancel scope (schemathesis' test
    transport, hypercorn) cancels at every await of the clean-up: the stream leaves its hub
    all the same, and the hub stops with its last reader instead of reading the log forever."""
    import anyio

    feed = EventFeed(
        request=StreamRequest(organization_id=org_a.id, agents=None, after=None), emit=asyncio.sleep
    )
    await feed.open()
    feed.start()
    assert stream_hubs().hub(org_a.id) is not None
    with anyio.CancelScope() as scope:
        scope.cancel()
        await feed.close()
    assert stream_hubs().hub(org_a.id) is None
    for _ in range(100):  # the hub's stop runs on as a task of its own
        if not hub_tasks():
            break
        await asyncio.sleep(0.01)
    assert hub_tasks() == []


async def test_an_answering_agent_socket_torn_down_under_an_anyio_cancel_scope_still_leaves_the_hub(
    org_a, call_a
):
    """The agent socket's clean-up first removes its answering entry (an await), then closes its
    feed: cancelled at that first await, the feed still leaves its hub."""
    import anyio

    from calls.agents.consumers import AgentConsumer

    consumer = AgentConsumer()
    consumer.app_id = "app_test"
    consumer.organization_id = org_a.id
    consumer.answering = ["mara"]
    consumer.feed = EventFeed(
        request=StreamRequest(organization_id=org_a.id, agents=None, after=None), emit=asyncio.sleep
    )
    await consumer.feed.open()
    consumer.feed.start()
    assert stream_hubs().hub(org_a.id) is not None
    with anyio.CancelScope() as scope:
        scope.cancel()
        await consumer._unsubscribe()
    assert consumer.feed is None
    assert stream_hubs().hub(org_a.id) is None
