"""The listening persona's conversation, running, for tests: a scripted microphone in, its events out.

`loop_make()` starts a real `Conversation` (Silero VAD, SmartTurn, the offline recogniser, the
built-in brain, espeak-ng) on the demo persona Mara's knowledge, hearing a `ScriptedMicrophone`;
its voice is pulled from the paced track in real time as aiortc would, and a `RecordingListener`
keeps every event it reports with its time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from calls.pipeline.conversation import Conversation, ConversationConfig, ConversationListener
from calls.pipeline.transport import MicrophoneDrain, PacedAudioTrack
from personas.management.commands.seed_demo import MARA, MARA_KNOWLEDGE
from tests.fakes.spoken import RATE, ScriptedMicrophone, spoken_pcm, with_room


class RecordingListener(ConversationListener):
    """Keeps every report with its time; `wait_for` waits for one."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def _add(self, name: str, **data: Any) -> None:
        self.events.append((time.monotonic(), name, data))
        self._changed.set()

    def names(self) -> list[str]:
        return [name for _, name, _ in self.events]

    def of(self, name: str) -> list[dict[str, Any]]:
        return [data for _, event, data in self.events if event == name]

    def first_at(self, name: str, after: float = 0.0) -> float | None:
        return next((at for at, event, _ in self.events if event == name and at >= after), None)

    async def wait_for(self, name: str, *, after: float = 0.0, within: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            for at, event, data in self.events:
                if event == name and at >= after:
                    return data
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name} within {within} s; saw {self.names()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def on_user_speech_started(self) -> None:
        self._add("speech.started")

    async def on_user_speech_ended(self) -> None:
        self._add("speech.ended")

    async def on_user_speaking(self, *, text: str) -> None:
        self._add("user.speaking", text=text)

    async def on_user_message(self, *, text: str) -> None:
        self._add("user.message", text=text)

    async def on_eager_turn(self, *, text: str, probability: float) -> None:
        self._add("eager.turn", text=text, probability=probability)

    async def on_turn_end(self, *, text: str, probability: float) -> None:
        self._add("turn.end", text=text, probability=probability)

    async def on_turn_continued(self) -> None:
        self._add("turn.continued")

    async def on_bot_speaking(self, *, message_id: str, text: str) -> None:
        self._add("bot.speaking", message_id=message_id, text=text)

    async def on_bot_word(
        self, *, message_id: str, word: str, index: int, correlation_id: str | None
    ) -> None:
        self._add("bot.word", message_id=message_id, word=word)

    async def on_bot_finished(self, **data: Any) -> None:
        self._add("bot.finished", **data)

    async def on_bot_interrupted(self, **data: Any) -> None:
        self._add("bot.interrupted", **data)

    async def on_tool_call(self, **data: Any) -> None:
        self._add("llm.tool_call", **data)


class Loop:
    """A running conversation with a scripted microphone and a speaker pulling its voice."""

    def __init__(
        self, conversation: Conversation, microphone: ScriptedMicrophone, listener: RecordingListener
    ):
        self.conversation = conversation
        self.microphone = microphone
        self.listener = listener
        self.loud_at: list[float] = []  # when the track chose voice pieces to send
        self._speaker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.conversation.start()
        self.conversation.peer_ready()
        self._speaker = asyncio.create_task(self._pull_voice())

    async def _pull_voice(self) -> None:
        track = self.conversation.track
        while True:
            before = track.samples_played
            await track.recv()
            if track.samples_played > before:
                # When the track chose the piece, not when this task got to run again: under load
                # the two can be far apart, and only the first says whether the pause held.
                self.loud_at.append(track.last_voice_at or time.monotonic())

    async def say(self, text: str, **room: Any) -> tuple[float, float]:
        """Speak into the microphone; returns (when speech starts, when it ends) on the loop clock."""
        return self.play(await spoken_pcm(text), **room)

    def play(self, sound: np.ndarray, **room: Any) -> tuple[float, float]:
        """Play any sound into the microphone (48 kHz samples at int16 scale: speech, a cough);
        returns (when it starts, when it ends) on the loop clock."""
        lead = room.get("lead_seconds", 0.3)
        samples = with_room(sound, lead_seconds=lead, tail_seconds=room.get("tail_seconds", 0.2))
        queued_at = time.monotonic()
        self.microphone.say(samples)
        return queued_at + lead, queued_at + lead + sound.size / RATE

    async def stop(self) -> None:
        if self._speaker is not None:
            self._speaker.cancel()
        await self.conversation.stop()
        self.microphone.stop()


async def loop_make(**overrides: Any) -> Loop:
    """A started Loop on Mara's knowledge (the caller stops it)."""
    config = ConversationConfig(
        listening=True,
        agent="mara",
        name=MARA["name"],
        greeting="",
        skip_greeting=True,
        knowledge=tuple(MARA_KNOWLEDGE),
        **overrides,
    )
    microphone = ScriptedMicrophone()
    drain = MicrophoneDrain()
    drain.track = microphone
    listener = RecordingListener()
    conversation = Conversation(
        config=config, track=PacedAudioTrack(encode=False), microphone=drain, listener=listener
    )
    loop = Loop(conversation, microphone, listener)
    await loop.start()
    return loop
