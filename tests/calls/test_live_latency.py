"""What a live session stores of its turns as they happen: each answer's latency stage by stage,
whether the visitor spoke or typed, and what its tool calls came to.

The session gets the listener calls in the order the pipeline makes them, on a scripted clock;
no media, no pipeline.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from pipecat.audio.vad.vad_analyzer import VADState

from calls.live import LiveSession, _build_config
from calls.models import EndReason, Message
from calls.pipeline.latency import TurnLatencyClock
from calls.pipeline.tools import PendingToolCall
from calls.review.models import ToolResult, TurnLatency

pytestmark = pytest.mark.django_db(transaction=True)


class ScriptedClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _signal(action_type: str, payload: Any) -> None:
    """The session's signalling socket, which these tests do not need."""


async def live_session(persona, make_call, clock: ScriptedClock) -> LiveSession:
    call = await database_sync_to_async(make_call)(persona)
    config = await database_sync_to_async(_build_config)(call)
    live = LiveSession(call=call, config=config)
    live.attach(_signal)
    live.latency = TurnLatencyClock(clock=clock)
    return live


async def stored(live: LiveSession) -> None:
    """Every write the session queued has run."""
    if live._publish_tail is not None:
        await asyncio.wait([live._publish_tail])


async def test_a_spoken_turn_answered_is_stored_with_every_stage_adding_up_to_its_total(persona_a, make_call):
    clock = ScriptedClock(50.0)
    live = await live_session(persona_a, make_call, clock)
    try:
        await live.on_user_speech_started()
        live.latency.vad_state_changed(VADState.STOPPING)  # 50.0: the voice stopped
        clock.now = 50.2
        await live.on_user_speech_ended()
        clock.now = 50.5
        await live.on_user_message(text="Are you open on Monday?")
        clock.now = 50.6
        await live.on_turn_end(text="Are you open on Monday?", probability=0.9)
        clock.now = 50.9
        live.latency.text_ready("Yes, from eight. ")
        live.latency.on_piece(pcm=b"", started_at=51.0, speaking=True)
        await live.on_bot_speaking(message_id="msg_answer", text="Yes, from eight.")
        await live.on_bot_word(message_id="msg_answer", word="Yes,", index=0, correlation_id=None)
        await live.on_bot_finished(
            message_id="msg_answer",
            text="Yes, from eight.",
            spoken="Yes, from eight.",
            index=3,
            correlation_id=None,
        )
        await stored(live)
    finally:
        await live.end(reason=EndReason.HANGUP)

    row = await database_sync_to_async(TurnLatency.objects.get)(call_id=live.call.pk)
    user_line = await database_sync_to_async(Message.objects.get)(call_id=live.call.pk, role="user")
    assert row.message_id == "msg_answer" and row.channel == "spoken"
    assert row.user_message_id == user_line.message_id
    assert (row.vad_ms, row.transcript_ms, row.turn_ms, row.brain_ms, row.audio_ms) == (
        200,
        300,
        100,
        300,
        100,
    )
    assert row.total_ms == 1000 == row.vad_ms + row.transcript_ms + row.turn_ms + row.brain_ms + row.audio_ms
    assert user_line.channel == Message.Channel.SPOKEN


async def test_a_typed_line_is_recorded_as_typed_and_its_answer_has_no_listening_stages(persona_a, make_call):
    clock = ScriptedClock(10.0)
    live = await live_session(persona_a, make_call, clock)

    class Typed:  # the conversation's side of a typed line: a reply comes later
        speaking = False

        async def user_text(self, text: str) -> None: ...

        async def stop(self) -> None: ...

    live.conversation = Typed()  # type: ignore[assignment]
    try:
        await live.user_typed("Please hold the sourdough")
        clock.now = 10.4
        live.latency.text_ready("Done, it's on hold.", whole=True)
        live.latency.on_piece(pcm=b"", started_at=10.7, speaking=True)
        await live.on_bot_speaking(message_id="msg_held", text="Done, it's on hold.")
        await live.on_bot_interrupted(
            message_id="msg_held",
            text="Done, it's on hold.",
            spoken="Done,",
            index=1,
            played_ms=300,
            correlation_id=None,
        )
        await stored(live)
    finally:
        await live.end(reason=EndReason.HANGUP)

    row = await database_sync_to_async(TurnLatency.objects.get)(call_id=live.call.pk)
    line = await database_sync_to_async(Message.objects.get)(call_id=live.call.pk, role="user")
    assert line.channel == Message.Channel.TYPED and row.user_message_id == line.message_id
    assert row.channel == "typed"
    assert (row.vad_ms, row.transcript_ms, row.turn_ms) == (None, None, None)
    assert (row.brain_ms, row.audio_ms, row.total_ms) == (400, 300, 700)


async def test_tool_results_and_errors_are_stored_as_the_call_learns_them(persona_a, make_call):
    live = await live_session(persona_a, make_call, ScriptedClock(0.0))
    try:
        weather = PendingToolCall(
            tool_call_id="call_w",
            name="get_weather",
            kind="client",
            arguments={"city": "Oslo"},
            message_id="msg_t",
        )
        stock = PendingToolCall(
            tool_call_id="call_s", name="stock", kind="server", arguments={}, message_id="msg_t"
        )
        await live.on_tool_call_completed(call=weather, result={"sky": "sunny"})
        await live.on_tool_call_failed(call=stock, error="tool stock has no handler (no result within 15 s)")
        await stored(live)
    finally:
        await live.end(reason=EndReason.HANGUP)

    results = await database_sync_to_async(lambda: list(ToolResult.objects.filter(call_id=live.call.pk)))()
    by_id = {result.tool_call_id: result for result in results}
    assert by_id["call_w"].result == {"sky": "sunny"} and by_id["call_w"].error == ""
    assert by_id["call_w"].name == "get_weather" and by_id["call_w"].kind == "client"
    assert by_id["call_w"].message_id == "msg_t" and by_id["call_w"].started_at is not None
    assert by_id["call_s"].result is None and "no handler" in by_id["call_s"].error


async def test_a_persona_line_is_stored_from_when_it_began_to_be_spoken_to_its_end(persona_a, make_call):
    from django.utils import timezone

    live = await live_session(persona_a, make_call, ScriptedClock(10.0))
    try:
        await live.on_bot_speaking(message_id="msg_long", text="We are open from eight.")
        began = timezone.now()
        await asyncio.sleep(0.3)  # it is being spoken
        await live.on_bot_finished(
            message_id="msg_long",
            text="We are open from eight.",
            spoken="We are open from eight.",
            index=5,
            correlation_id=None,
        )
        await stored(live)
        line = await database_sync_to_async(Message.objects.get)(message_id="msg_long")
        assert line.started_at <= began
        assert line.ended_at is not None and (line.ended_at - line.started_at).total_seconds() >= 0.3
    finally:
        await live.end(reason=EndReason.HANGUP)
