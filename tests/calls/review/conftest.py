"""Call-review fixtures: a voice call as the pipeline records one (turns, a cut-off, a tool call and
its result, a typed line, each answer's latency).

`reviewed_call_create` is also what the browser test opens.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from calls.models import Call, CallEvent, CallStatus, EndReason, Message, Transport
from calls.review.models import ToolResult, TurnLatency
from personas.models import Persona

GREETING = "Hi, I'm Mara at Linden Street Bakery. What can I do for you?"
SPOKEN_QUESTION = "Do you have any sourdough left today?"
CUT_OFF_MEANT = "We have two loaves of rye and one sourdough, and the seeded one comes out at four."
CUT_OFF_SPOKEN = "We have two loaves of rye"
TYPED_LINE = "Please hold the sourdough for Ingrid"
HELD_REPLY = "Done, it's on hold for Ingrid until six."
# The stages of the two answers, as the live call recorded them (vad, transcript, turn, brain, audio):
# the spoken question's (1300 ms: its speech ended at 7.8 s, the answer's voice began at 9.1 s)
# and the typed line's, slow (2000 ms, over PARLEY_SLOW_TURN_MS) for the tool it waited on.
SPOKEN_ANSWER_STAGES = (200, 400, 150, 380, 170)
TYPED_ANSWER_STAGES = (None, None, None, 1860, 140)


def record_event(call: Call, at: datetime, name: str, **data: Any) -> CallEvent:
    """Store an event of the call as the publish path would (envelope and payload, its time)."""
    return CallEvent.objects.create(
        organization=call.organization,
        persona=call.persona,
        call=call,
        type=name,
        data={"callId": call.id, **data, "agent": call.persona.slug},
        created_at=at,
    )


def reviewed_call_create(persona: Persona) -> Call:
    """A 41-second voice call: greeting, a spoken question, an answer cut off, a tool call, a
    typed line and the answer to it, then a hang-up. Each answer has its recorded latency, the
    tool call its result."""
    started = timezone.now() - timedelta(minutes=5)
    call = Call.objects.create(
        organization=persona.organization,
        persona=persona,
        transport=Transport.WEBRTC,
        status=CallStatus.ENDED,
        started_at=started,
        ended_at=started + timedelta(seconds=41),
        duration_seconds=41.0,
        end_reason=EndReason.HANGUP,
        from_address="visitor@example.com",
    )

    def at(seconds: float) -> datetime:
        return started + timedelta(seconds=seconds)

    def line(message_id: str, role: str, text: str, start: float, **fields: Any) -> None:
        fields.setdefault("spoken_text", text)
        Message.objects.create(
            call=call, message_id=message_id, role=role, text=text, started_at=at(start), **fields
        )

    record_event(
        call, at(0), "call.started", direction="inbound", transport="webrtc", startedAt=at(0).isoformat()
    )
    record_event(call, at(0.5), "bot.speaking", messageId="msg_greet", text=GREETING)
    line("msg_greet", Message.Role.PERSONA, GREETING, 4)
    record_event(call, at(4), "bot.finished", messageId="msg_greet")
    record_event(call, at(6), "speech.started")
    record_event(call, at(8), "speech.ended")
    record_event(call, at(8.4), "user.message", messageId="msg_q", text=SPOKEN_QUESTION)
    line("msg_q", Message.Role.USER, SPOKEN_QUESTION, 8.4, channel=Message.Channel.SPOKEN)
    record_event(call, at(9.1), "bot.speaking", messageId="msg_cut", text=CUT_OFF_MEANT)
    record_event(call, at(11), "speech.started")
    record_event(call, at(11.2), "bot.interrupted", messageId="msg_cut", playedMs=1900, wordsSpoken=6)
    record_event(call, at(11.25), "turn.continued")
    line("msg_cut", Message.Role.PERSONA, CUT_OFF_MEANT, 11.2, spoken_text=CUT_OFF_SPOKEN, interrupted=True)
    record_event(call, at(12), "speech.ended")
    record_event(call, at(20), "user.message", messageId="msg_typed", text=TYPED_LINE)
    line("msg_typed", Message.Role.USER, TYPED_LINE, 20, channel=Message.Channel.TYPED)
    record_event(
        call,
        at(20.6),
        "llm.tool_call",
        msgId="msg_tool",
        toolCalls=[
            {"id": "call_1", "name": "hold_item", "arguments": '{"item": "sourdough", "name": "Ingrid"}'}
        ],
    )
    ToolResult.objects.create(
        call=call,
        tool_call_id="call_1",
        message_id="msg_tool",
        name="hold_item",
        kind="server",
        result={"held": True, "until": "18:00"},
        started_at=at(20.6),
        finished_at=at(21.3),
    )
    record_event(call, at(22), "bot.speaking", messageId="msg_held", text=HELD_REPLY)
    line("msg_held", Message.Role.PERSONA, HELD_REPLY, 25)
    for message_id, user_message_id, channel, start, stages in (
        ("msg_cut", "msg_q", "spoken", 7.8, SPOKEN_ANSWER_STAGES),
        ("msg_held", "msg_typed", "typed", 20.0, TYPED_ANSWER_STAGES),
    ):
        vad, transcript, turn, brain, audio = stages
        TurnLatency.objects.create(
            call=call,
            message_id=message_id,
            user_message_id=user_message_id,
            channel=channel,
            started_at=at(start),
            vad_ms=vad,
            transcript_ms=transcript,
            turn_ms=turn,
            brain_ms=brain,
            audio_ms=audio,
            total_ms=sum(stage for stage in stages if stage is not None),
        )
    record_event(
        call,
        at(41),
        "call.ended",
        reason="hangup",
        direction="inbound",
        transport="webrtc",
        endedAt=at(41).isoformat(),
        duration=41.0,
    )
    return call


@pytest.fixture(name="record_event")
def record_event_fixture() -> Callable[..., CallEvent]:
    return record_event


@pytest.fixture
def reviewed_call(persona_a) -> Call:
    return reviewed_call_create(persona_a)
