"""The conversation selector reads a call as it happened, from its transcript and event log."""

from __future__ import annotations

from datetime import timedelta

import pytest

from calls.models import Message, Transport
from calls.review.models import ToolResult, TurnLatency
from calls.review.selectors import (
    ConversationNote,
    ConversationToolCall,
    ConversationTurn,
    call_conversation,
    call_latency,
    calls_slow,
    offset_label,
    percentile,
)
from tests.calls.review.conftest import (
    CUT_OFF_MEANT,
    CUT_OFF_SPOKEN,
    GREETING,
    HELD_REPLY,
    SPOKEN_QUESTION,
    TYPED_LINE,
)

pytestmark = pytest.mark.django_db


def test_a_call_reads_as_turns_tool_calls_and_notes_in_order(reviewed_call):
    items = call_conversation(reviewed_call)

    shape = [(item.kind, getattr(item, "speaker", None) or getattr(item, "name", None)) for item in items]
    assert shape == [
        ("note", "call.started"),
        ("turn", "persona"),
        ("turn", "visitor"),
        ("turn", "persona"),
        ("note", "turn.continued"),
        ("turn", "visitor"),
        ("tool_call", "hold_item"),
        ("turn", "persona"),
        ("note", "call.ended"),
    ]
    turns = [item for item in items if isinstance(item, ConversationTurn)]
    assert [turn.text for turn in turns] == [GREETING, SPOKEN_QUESTION, CUT_OFF_MEANT, TYPED_LINE, HELD_REPLY]


def test_a_persona_turn_is_placed_when_it_began_to_speak(reviewed_call):
    greeting = next(item for item in call_conversation(reviewed_call) if isinstance(item, ConversationTurn))
    # bot.speaking at 0.5 s, though the row was written when it finished (4 s).
    assert greeting.offset_seconds == pytest.approx(0.5)
    assert greeting.offset_label == "+0:00.5"


def test_an_interruption_keeps_what_was_spoken_apart_from_what_was_meant(reviewed_call):
    cut = next(item for item in call_conversation(reviewed_call) if getattr(item, "interrupted", False))
    assert cut.text == CUT_OFF_MEANT
    assert cut.spoken_text == CUT_OFF_SPOKEN
    assert cut.unspoken_text == "and one sourdough, and the seeded one comes out at four."
    assert cut.played_ms == 1900


def test_a_typed_turn_is_told_apart_from_a_spoken_one(reviewed_call):
    visitor = {
        item.text: item.channel
        for item in call_conversation(reviewed_call)
        if isinstance(item, ConversationTurn) and item.speaker == "visitor"
    }
    assert visitor == {SPOKEN_QUESTION: "spoken", TYPED_LINE: "typed"}


def test_how_a_line_came_is_read_from_the_line_as_recorded_not_guessed(reviewed_call, record_event):
    # Speech heard a second before the typed line: the old guess would call it spoken.
    typed = Message.objects.get(call=reviewed_call, message_id="msg_typed")
    record_event(reviewed_call, typed.started_at - timedelta(seconds=1), "speech.ended")

    items = {
        item.message_id: item
        for item in call_conversation(reviewed_call)
        if isinstance(item, ConversationTurn)
    }

    assert items["msg_typed"].channel == "typed"


def test_lines_recorded_before_their_channel_was_are_placed_by_the_events(reviewed_call):
    Message.objects.filter(call=reviewed_call).update(channel="")

    visitor = {
        item.text: item.channel
        for item in call_conversation(reviewed_call)
        if isinstance(item, ConversationTurn) and item.speaker == "visitor"
    }

    # Speech was heard before the question; only the barge-in's, long over, before the typed line.
    assert visitor == {SPOKEN_QUESTION: "spoken", TYPED_LINE: "typed"}


def test_a_tool_call_shows_its_name_and_arguments(reviewed_call):
    (tool_call,) = [
        item for item in call_conversation(reviewed_call) if isinstance(item, ConversationToolCall)
    ]
    assert tool_call.name == "hold_item"
    assert tool_call.tool_call_id == "call_1"
    assert tool_call.arguments_pretty == '{"item": "sourdough", "name": "Ingrid"}'
    assert tool_call.offset_seconds == pytest.approx(20.6)
    assert tool_call.result_recorded and tool_call.result == {"held": True, "until": "18:00"}
    assert tool_call.flags == []


def test_a_tool_error_is_shown_and_flagged_and_a_call_with_no_result_says_so(reviewed_call):
    ToolResult.objects.filter(call=reviewed_call).update(result=None, error="tool hold_item has no handler")
    (tool_call,) = [
        item for item in call_conversation(reviewed_call) if isinstance(item, ConversationToolCall)
    ]
    assert tool_call.error == "tool hold_item has no handler" and tool_call.flags == ["tool error"]

    ToolResult.objects.filter(call=reviewed_call).delete()
    (tool_call,) = [
        item for item in call_conversation(reviewed_call) if isinstance(item, ConversationToolCall)
    ]
    assert not tool_call.result_recorded and tool_call.flags == []


def test_each_answer_carries_its_recorded_latency_and_the_call_its_median_and_p95(reviewed_call):
    latency = call_latency(reviewed_call)

    assert [(turn.message_id, turn.channel, turn.total_ms) for turn in latency.turns] == [
        ("msg_cut", "spoken", 1300),
        ("msg_held", "typed", 2000),
    ]
    spoken, typed = latency.turns
    assert [stage.ms for stage in spoken.stages] == [200, 400, 150, 380, 170]
    assert sum(stage.ms for stage in spoken.stages) == spoken.total_ms
    assert [stage.ms for stage in typed.stages] == [None, None, None, 1860, 140]
    # Spoken turns make the voice-to-voice figures; the typed one has its own median.
    assert (latency.spoken_median_ms, latency.spoken_p95_ms, latency.typed_median_ms) == (1300, 1300, 2000)
    assert latency.scale_ms == 2000 and latency.threshold_percent == 75.0
    assert spoken.flags == ["cut off"] and typed.flags == ["slow"]
    persona = {
        item.message_id: item
        for item in call_conversation(reviewed_call)
        if isinstance(item, ConversationTurn)
    }
    assert persona["msg_held"].latency == typed and persona["msg_held"].flags == ["slow"]
    assert persona["msg_cut"].flags == ["cut off"] and persona["msg_greet"].latency is None


def test_median_and_p95_over_many_turns(make_call, persona_a):
    call = make_call(persona_a)
    totals = [
        400,
        500,
        600,
        700,
        800,
        900,
        1000,
        1100,
        1200,
        1300,
        1400,
        1500,
        1600,
        1700,
        1800,
        1900,
        2000,
        2100,
        2200,
        5000,
    ]
    for index, total in enumerate(totals):
        TurnLatency.objects.create(
            call=call,
            message_id=f"msg_{index}",
            channel="spoken",
            started_at=call.created_at + timedelta(seconds=10 * index),
            vad_ms=200,
            transcript_ms=total - 200,
            total_ms=total,
        )

    latency = call_latency(call)

    assert latency.spoken_median_ms == 1350  # between the 10th and 11th of 20
    assert latency.spoken_p95_ms == 2200  # the 19th of 20: one outlier above it
    assert latency.slow_count == 8  # 1600 ms and over
    assert percentile([], 0.95) is None and percentile([7], 0.95) == 7


def test_the_slow_filter_reads_the_recorded_totals(reviewed_call, make_call, persona_a, settings):
    quick = make_call(persona_a)
    TurnLatency.objects.create(
        call=quick, message_id="m", channel="spoken", started_at=quick.created_at, audio_ms=300, total_ms=300
    )
    calls = type(reviewed_call).objects.all()
    assert set(calls_slow(calls, slow=True)) == {reviewed_call}
    assert set(calls_slow(calls, slow=False)) == {quick}
    settings.PARLEY_SLOW_TURN_MS = 250
    assert set(calls_slow(calls, slow=True)) == {reviewed_call, quick}


def test_the_end_reason_closes_the_conversation(reviewed_call):
    ended = call_conversation(reviewed_call)[-1]
    assert isinstance(ended, ConversationNote)
    assert ended.detail == {"reason": "hangup"}
    assert ended.text == "Call ended: the visitor hung up"


def test_a_call_without_events_still_reads_from_its_transcript(make_call, persona_a):
    call = make_call(persona_a, transport=Transport.CHAT, end_reason="idle_timeout")
    Message.objects.create(call=call, message_id="m1", role=Message.Role.USER, text="hello")
    Message.objects.create(call=call, message_id="m2", role="assistant", text="hi there")

    items = call_conversation(call)

    assert [(item.kind, getattr(item, "speaker", "")) for item in items] == [
        ("turn", "visitor"),
        ("turn", "persona"),
        ("note", ""),
    ]
    assert items[0].channel == "typed"  # a chat call is typed throughout
    assert items[-1].text == "Call ended: the visitor said nothing for too long"


def test_offsets_read_as_minutes_and_seconds():
    assert offset_label(None) == "-"
    assert offset_label(75.25) == "+1:15.2"
    assert offset_label(-0.5) == "-0:00.5"
    assert offset_label(3599.9) == "+59:59.9"
    assert offset_label(21 * 3600 + 38 * 60 + 20.4) == "+21:38:20"
