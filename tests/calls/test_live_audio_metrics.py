"""A live session's `audio.metrics`: both sources about ten times a second while audio flows, if
the persona sends them, and nothing at all if it does not.

The session's conversation is real (Silero VAD, the offline recogniser, espeak-ng), without a
peer connection: a scripted microphone plays speech over room noise into it, and its voice is
pulled from the paced track in real time as aiortc would. What the session broadcasts is read
from the call's Channels group, as the event streams read it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from calls import events
from calls.doorbells import group_for_call
from calls.live import LiveSession, _build_config
from calls.models import EndReason
from calls.pipeline.conversation import Conversation
from calls.pipeline.transport import PacedAudioTrack
from tests.fakes.spoken import ScriptedMicrophone, spoken_pcm, with_room

pytestmark = pytest.mark.django_db(transaction=True)

# How long the readings are counted, in seconds of audio flowing.
LISTEN_SECONDS = 4.0
# Each source reports every 100 ms of its audio: ~40 in the window. Generous bounds: the machine
# may be loaded (late readings come in a burst, still counted), and the window's edges cut.
EXPECTED_PER_SOURCE = (20, 60)


async def _signal(action_type: str, payload: Any) -> None:
    """The session's signalling socket, which this test does not need."""


async def session_broadcasts(persona, make_call, *, metrics: bool) -> list[dict[str, Any]]:
    """Run a session for `LISTEN_SECONDS` with the user speaking and the persona speaking;
    returns the events broadcast meanwhile, as the call's group received them."""
    persona.send_audio_metrics = metrics
    await database_sync_to_async(persona.save)()
    call = await database_sync_to_async(make_call)(persona)
    config = await database_sync_to_async(_build_config)(call)
    config = dataclasses.replace(config, listening=True, skip_greeting=True)
    live = LiveSession(call=call, config=config)
    live.attach(_signal)
    live.audio_track = PacedAudioTrack(encode=False)  # nobody decodes it here
    microphone = ScriptedMicrophone()
    live.microphone.track = microphone
    live.conversation = Conversation(
        config=config, track=live.audio_track, microphone=live.microphone, listener=live
    )

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group_for_call(call.id), channel)
    received: list[dict[str, Any]] = []

    async def receive() -> None:  # drained as it comes: the in-memory layer's channels are small
        while True:
            received.append(await layer.receive(channel))

    async def speaker() -> None:
        while True:
            await live.audio_track.recv()

    tasks = [asyncio.create_task(receive()), asyncio.create_task(speaker())]
    try:
        await live.conversation.start()
        live.conversation.peer_ready()
        microphone.say(with_room(await spoken_pcm("Are you open on Monday?"), lead_seconds=0.3))
        await live.conversation.say("Good morning, this is the bakery.")
        await asyncio.sleep(LISTEN_SECONDS)
        await live.end(reason=EndReason.HANGUP)
        await asyncio.sleep(0.5)  # the last broadcasts arrive
    finally:
        for task in tasks:
            task.cancel()
        await live.end(reason=EndReason.HANGUP)
        microphone.stop()
    return [message for message in received if message["call"] == call.id]


async def test_a_session_with_metrics_on_broadcasts_both_sources_about_ten_times_a_second(
    persona_a, make_call
):
    started = time.monotonic()
    broadcasts = await session_broadcasts(persona_a, make_call, metrics=True)
    metrics = [message for message in broadcasts if message["event"] == "audio.metrics"]
    print(f"{len(metrics)} audio.metrics in {time.monotonic() - started:.1f} s (with start and end)")
    for message in metrics:  # the seed's shape, as the streams send it
        assert message["cursor"] is None  # ephemeral: not stored
        data = message["data"]
        events.event_validate("audio.metrics", data)
        assert data["agent"] == "mara" and data["callId"] == message["call"]
    user = [message["data"] for message in metrics if message["data"]["source"] == "user"]
    bot = [message["data"] for message in metrics if message["data"]["source"] == "bot"]
    low, high = EXPECTED_PER_SOURCE
    assert low <= len(user) <= high, len(user)
    assert low <= len(bot) <= high, len(bot)
    # The user's speech: the VAD heard it (its own confidence), and it is louder than the room.
    assert any(data["isSpeech"] and data["vadProb"] > 0.5 for data in user), user
    assert max(data["energyDb"] for data in user) > min(data["energyDb"] for data in user) + 20
    # The persona's voice played (vadProb 1.0 while it does), with silence around it.
    assert any(data["isSpeech"] and data["vadProb"] == 1.0 and data["rms"] > 0.01 for data in bot), bot
    assert any(not data["isSpeech"] and data["vadProb"] == 0.0 for data in bot), bot
    assert {"speech.started", "bot.speaking"} <= {message["event"] for message in broadcasts}
    # Nothing of the call comes after its end.
    names = [message["event"] for message in broadcasts]
    assert names[-1] == "call.ended", names[-5:]


async def test_a_session_with_metrics_off_broadcasts_none(persona_a, make_call):
    broadcasts = await session_broadcasts(persona_a, make_call, metrics=False)
    assert "speech.started" in {message["event"] for message in broadcasts}  # audio did flow
    assert not [message for message in broadcasts if message["event"] == "audio.metrics"]
