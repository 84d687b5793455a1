"""The conversation selector reads a call as it happened, from its transcript and event log."""

from __future__ import annotations

import pytest

from calls.models import Message, Transport
from calls.review.selectors import (
    ConversationNote,
    ConversationToolCall,
    ConversationTurn,
    call_conversation,
    offset_label,
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
    assert not tool_call.result_recorded


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
