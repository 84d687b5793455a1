"""The event vocabulary: every event type is published through the one service and checked."""

from __future__ import annotations

import asyncio
import threading

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from calls import events
from calls.models import CallEvent
from calls.publishing import (
    acall_event_publish,
    call_event_broadcast_soon,
    call_event_publish,
    group_for_organization,
)
from calls.services import call_end, call_start

# Generous: only a broken broadcast path takes this long.
RECEIVE_TIMEOUT_SECONDS = 5.0

SAMPLES: dict[str, events.Event] = {
    "call.started": events.CallStarted(
        direction="inbound", transport="webrtc", started_at="2026-01-01T00:00:00Z"
    ),
    "call.ended": events.CallEnded(
        reason="hangup",
        direction="inbound",
        transport="webrtc",
        ended_at="2026-01-01T00:01:00Z",
        duration=60.0,
    ),
    "speech.started": events.SpeechStarted(),
    "speech.ended": events.SpeechEnded(),
    "user.speaking": events.UserSpeaking(text="when do"),
    "user.message": events.UserMessage(text="When do you open?", message_id="msg_1"),
    "eager.turn": events.EagerTurn(text="When do you open?", probability=0.62),
    "turn.end": events.TurnEnd(text="When do you open?", probability=0.91),
    "turn.continued": events.TurnContinued(),
    "bot.speaking": events.BotSpeaking(message_id="msg_2", text="We open at seven."),
    "bot.word": events.BotWord(message_id="msg_2", word="We"),
    "bot.finished": events.BotFinished(message_id="msg_2"),
    "bot.interrupted": events.BotInterrupted(
        message_id="msg_2", played_ms=640, words_spoken=2, last_word="open"
    ),
    "message.confirmed": events.MessageConfirmed(message_id="msg_3", text="We open at seven."),
    "reply.rejected": events.ReplyRejected(message_id="msg_5", in_reply_to="msg_1", reason="a newer message"),
    "reply.aborted": events.ReplyAborted(message_id="msg_6", reason="turn.continued"),
    "llm.tool_call": events.LlmToolCall(
        msg_id="msg_4", tool_calls=[events.ToolCall(id="t1", name="lookup_order", arguments='{"id": 7}')]
    ),
    "session.idle_warning": events.SessionIdleWarning(remaining_seconds=15, idle_timeout_seconds=60),
    "session.timeout": events.SessionTimeout(reason="idle_timeout"),
    "whatsapp.session_started": events.WhatsAppSessionStarted(
        session_id="wa_1", contact_phone="+15550001", contact_name="Ana"
    ),
    "whatsapp.message": events.WhatsAppMessageReceived(
        session_id="wa_1",
        from_address="+15550001",
        name_="Ana",
        type="audio",
        text="hi",
        message_id="wamid.1",
    ),
    "whatsapp.response": events.WhatsAppResponse(session_id="wa_1", to_address="+15550001", text="Hello!"),
    "whatsapp.status": events.WhatsAppStatus(status="read", recipient="+15550001", message_id="wamid.2"),
    "audio.metrics": events.AudioMetrics(
        source="user", energy_db=-32.5, rms=0.05, peak=0.2, is_speech=True, vad_prob=0.93
    ),
}

# The field names of the agent seed, spelled exactly so.
SEED_FIELDS = {
    "user.speaking": {"text"},
    "user.message": {"text", "messageId"},
    "eager.turn": {"text", "probability"},
    "turn.end": {"text", "probability"},
    "bot.speaking": {"messageId", "text"},
    "bot.word": {"messageId", "word"},
    "bot.finished": {"messageId"},
    "bot.interrupted": {"messageId", "playedMs", "wordsSpoken", "lastWord"},
    "message.confirmed": {"messageId", "text"},
    "reply.rejected": {"messageId", "inReplyTo", "reason"},
    "reply.aborted": {"messageId", "reason"},
    "llm.tool_call": {"msgId", "toolCalls"},
    "session.idle_warning": {"remainingSeconds", "idleTimeoutSeconds"},
    "session.timeout": {"reason"},
    "whatsapp.session_started": {"sessionId", "contactPhone", "contactName"},
    "whatsapp.message": {"sessionId", "from", "name", "type", "text", "messageId"},
    "whatsapp.response": {"sessionId", "to", "text"},
    "whatsapp.status": {"status", "recipient", "messageId"},
    "audio.metrics": {"source", "energyDb", "rms", "peak", "isSpeech", "vadProb"},
}

EPHEMERAL = {"user.speaking", "bot.word", "audio.metrics"}


def test_the_samples_cover_the_whole_vocabulary():
    assert set(SAMPLES) == set(events.EVENT_TYPES)
    assert {name for name, cls in events.EVENT_TYPES.items() if not cls.kept} == EPHEMERAL


# Fields Parley adds to the seed's, documented in the README: which message a response is (for
# its statuses) and who wrote it (the persona, staff in a takeover, or an app).
PARLEY_FIELDS = {"whatsapp.response": {"messageId", "author"}, "user.message": {"channel"}}


@pytest.mark.parametrize("name", sorted(SEED_FIELDS))
def test_payload_fields_are_spelled_as_the_seed(name):
    assert set(SAMPLES[name].payload()) == SEED_FIELDS[name] | PARLEY_FIELDS.get(name, set())


def test_unknown_fields_and_types_are_refused():
    with pytest.raises(events.EventValidationError, match="x: Extra inputs"):
        events.event_validate(
            "bot.word", {"callId": "CA1", "agent": "mara", "messageId": "m", "word": "a", "x": 1}
        )
    with pytest.raises(events.EventValidationError, match="unknown event type"):
        events.event_validate("bot.sang", {"callId": "CA1", "agent": "mara"})
    with pytest.raises(events.EventValidationError, match="agent"):
        events.event_validate("speech.started", {"callId": "CA1"})
    with pytest.raises(events.EventValidationError, match="probability"):
        events.event_validate("turn.end", {"callId": "CA1", "agent": "m", "text": "t", "probability": 2})
    with pytest.raises(ValueError):
        events.UserMessage(text="hi", message_id="m", mood="happy")


@pytest.mark.django_db(transaction=True)
async def test_every_event_type_published_matches_the_vocabulary(persona_a, make_call):
    """Publish each type through the one service; check the stored and broadcast frames."""
    call = await database_sync_to_async(make_call)(persona_a)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    group = group_for_organization(persona_a.organization_id)
    await layer.group_add(group, channel)
    try:
        for name, event in SAMPLES.items():
            stored = await acall_event_publish(call=call, event=event)
            message = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT_SECONDS)
            assert message["event"] == name
            assert message["data"]["callId"] == call.id and message["data"]["agent"] == "mara"
            events.event_validate(name, message["data"])
            if name in EPHEMERAL:
                assert stored is None and message["cursor"] is None
            else:
                assert stored is not None and message["cursor"] == stored.cursor
                assert stored.data == message["data"]
    finally:
        await layer.group_discard(group, channel)

    def stored_rows():
        return list(CallEvent.objects.filter(call=call).order_by("cursor"))

    rows = await database_sync_to_async(stored_rows)()
    assert [row.type for row in rows] == [name for name in SAMPLES if name not in EPHEMERAL]
    for row in rows:
        events.event_validate(row.type, row.data)


@pytest.mark.django_db
def test_call_start_and_end_publish_once_with_the_transcript(persona_a, make_call):
    from calls.models import Message

    call = make_call(persona_a, from_address="browser", metadata={"page": "demo"})
    call_start(call=call)
    call_start(call=call)
    Message.objects.create(call=call, message_id="m1", role="user", text="Hi")
    Message.objects.create(
        call=call,
        message_id="m2",
        role="persona",
        text="Hello there friend",
        spoken_text="Hello",
        interrupted=True,
    )
    ended = call_end(call=call, reason="idle_timeout")
    call_end(call=call, reason="hangup")
    assert ended.end_reason == "idle_timeout" and ended.duration_seconds is not None
    types = list(CallEvent.objects.filter(call=call).values_list("type", flat=True))
    assert types == ["call.started", "call.ended"]
    data = CallEvent.objects.get(call=call, type="call.ended").data
    assert data["transcript"][1] == {
        "messageId": "m2",
        "role": "persona",
        "text": "Hello",
        "interrupted": True,
    }
    assert data["metadata"] == {"page": "demo"}
    with pytest.raises(ValueError, match="unknown end reason"):
        call_end(call=call, reason="tired")


@pytest.mark.django_db(transaction=True)
async def test_a_rolled_back_transaction_broadcasts_nothing(persona_a, make_call):
    from django.db import transaction

    call = await database_sync_to_async(make_call)(persona_a)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    group = group_for_organization(persona_a.organization_id)
    await layer.group_add(group, channel)

    class Abort(Exception):
        pass

    def publish_then_roll_back():
        with pytest.raises(Abort), transaction.atomic():
            call_event_publish(call=call, event=events.SpeechStarted())
            raise Abort
        call_event_publish(call=call, event=events.SpeechEnded())
        return CallEvent.objects.filter(type="speech.started").exists()

    assert await database_sync_to_async(publish_then_roll_back)() is False
    message = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT_SECONDS)
    assert message["event"] == "speech.ended"
    await layer.group_discard(group, channel)


@pytest.mark.django_db(transaction=True)
async def test_broadcasts_of_writes_on_the_database_thread_arrive_in_order(persona_a, make_call):
    """The database thread hands its broadcasts to the loop without waiting; they keep their order."""
    call = await database_sync_to_async(make_call)(persona_a)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    group = group_for_organization(persona_a.organization_id)
    await layer.group_add(group, channel)
    words = [f"word{i}" for i in range(20)]

    def publish_all() -> None:
        for word in words:
            call_event_publish(call=call, event=events.BotWord(message_id="msg_1", word=word))
        call_event_publish(call=call, event=events.SpeechStarted())  # an ephemeral one too

    await database_sync_to_async(publish_all)()
    received = [
        (await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT_SECONDS))["data"]
        for _ in range(len(words) + 1)
    ]
    assert [data.get("word") for data in received] == [*words, None]
    await layer.group_discard(group, channel)


@pytest.mark.django_db(transaction=True)
async def test_kept_events_published_at_once_are_stored_in_one_trip_in_call_order_and_a_failure_stays_with_its_caller(
    persona_a, make_call, monkeypatch
):
    from django.core.exceptions import ValidationError

    import calls.publishing

    call = await database_sync_to_async(make_call)(persona_a)
    trips: list[int] = []
    publish_each = calls.publishing._publish_each

    def counting_trips(pending, rung):
        trips.append(len(pending))
        return publish_each(pending, rung)

    monkeypatch.setattr(calls.publishing, "_publish_each", counting_trips)
    outcomes = await asyncio.gather(
        *(
            acall_event_publish(
                call=call,
                event=events.UserMessage(text=f"at once {index}", message_id=f"msg_{index}"),
                at="not a moment" if index == 3 else None,  # type: ignore[arg-type]
            )
            for index in range(10)
        ),
        return_exceptions=True,
    )
    assert trips == [10]
    assert isinstance(outcomes[3], ValidationError)
    stored = [outcome for index, outcome in enumerate(outcomes) if index != 3]
    assert [row.cursor for row in stored] == sorted(row.cursor for row in stored)

    def texts_in_the_log() -> list[str]:
        return [row.data["text"] for row in CallEvent.objects.filter(call=call).order_by("cursor")]

    assert await database_sync_to_async(texts_in_the_log)() == [f"at once {i}" for i in range(10) if i != 3]


@pytest.mark.django_db(transaction=True)
def test_a_trip_of_live_call_events_costs_the_same_few_statements_however_many_it_stores(
    persona_a, persona_b, make_call, monkeypatch
):
    """One multi-row insert, not a savepoint, insert, lookup and release per event: on a busy
    server each statement waits for the interpreter's lock. Each broadcast still names the
    organization's event just before it."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    import calls.publishing

    calls_ = [make_call(persona_a), make_call(persona_b), make_call(persona_a)]
    before = {
        persona.organization_id: call_event_publish(
            call=call, event=events.UserMessage(text="before", message_id="msg_before")
        ).cursor
        for persona, call in ((persona_a, calls_[0]), (persona_b, calls_[1]))
    }
    broadcasts = []
    monkeypatch.setattr(calls.publishing, "_broadcast_sync", broadcasts.append)
    loop = asyncio.new_event_loop()
    try:

        def trip(count: int) -> tuple[list, int]:
            pending = [
                calls.publishing._PendingPublish(
                    calls_[index % 3],
                    events.UserMessage(text=f"line {index}", message_id=f"msg_{index}"),
                    None,
                    loop.create_future(),
                )
                for index in range(count)
            ]
            with CaptureQueriesContext(connection) as queries:
                outcomes = calls.publishing._publish_each(pending, lambda: None)
            return outcomes, len(queries.captured_queries)

        outcomes, statements_for_3 = trip(3)
        more_outcomes, statements_for_12 = trip(12)
    finally:
        loop.close()

    assert statements_for_12 == statements_for_3 <= 6
    stored = outcomes + more_outcomes
    assert all(isinstance(row, CallEvent) for row in stored)
    assert [row.data["text"] for row in CallEvent.objects.filter(type="user.message").order_by("cursor")][
        2:
    ] == [f"line {index}" for index in (*range(3), *range(12))]
    previous = dict(before)
    for broadcast in broadcasts:  # in commit order, each chained to its organization's last
        assert broadcast.previous == previous[broadcast.organization_id]
        previous[broadcast.organization_id] = broadcast.cursor
    assert len(broadcasts) == 15


@pytest.mark.django_db(transaction=True)
async def test_stored_events_stop_counting_as_on_their_way_before_the_thread_tidies_its_connection(
    persona_a, make_call, monkeypatch
):
    """The stream hub holds a burst while events are on their way; once stored and rung they
    are not, even if the database thread is still closing its connection."""
    import calls.publishing
    from calls.doorbells import rings_expected
    from tests.fakes.live_call import eventually

    call = await database_sync_to_async(make_call)(persona_a)
    tidying, release = threading.Event(), threading.Event()
    tidy = calls.publishing._event_store_tidy

    def slow_tidy() -> None:
        tidying.set()
        release.wait(RECEIVE_TIMEOUT_SECONDS)
        tidy()

    monkeypatch.setattr(calls.publishing, "_event_store_tidy", slow_tidy)
    publish = asyncio.create_task(
        acall_event_publish(call=call, event=events.UserMessage(text="Hello", message_id="msg_1"))
    )
    try:
        assert await asyncio.to_thread(tidying.wait, RECEIVE_TIMEOUT_SECONDS)
        await eventually(lambda: rings_expected() == 0, "the stored event no longer counts as on its way")
        assert not publish.done()  # the thread is still tidying
    finally:
        release.set()
    assert (await publish).data["text"] == "Hello"
    assert rings_expected() == 0


@pytest.mark.django_db(transaction=True)
async def test_an_ephemeral_event_broadcast_soon_arrives_in_order_and_a_kept_one_is_refused(
    persona_a, make_call
):
    """`audio.metrics` goes out without waiting and without a task each, in the order given."""
    call = await database_sync_to_async(make_call)(persona_a)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    group = group_for_organization(persona_a.organization_id)
    await layer.group_add(group, channel)
    levels = [-60.0, -30.5, -12.25]
    for energy_db in levels:
        call_event_broadcast_soon(
            call=call,
            event=events.AudioMetrics(
                source="user", energy_db=energy_db, rms=0.1, peak=0.2, is_speech=False, vad_prob=0.0
            ),
        )
    with pytest.raises(ValueError):
        call_event_broadcast_soon(call=call, event=events.SpeechStarted())
    received = [await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT_SECONDS) for _ in levels]
    assert [message["data"]["energyDb"] for message in received] == levels
    for message in received:
        assert message["cursor"] is None
        events.event_validate("audio.metrics", message["data"])
    await layer.group_discard(group, channel)
