"""Barge-in: the user speaking over the persona pauses its voice, then interrupts it or lets it resume."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    TranscriptionFrame,
    UserBackchannelFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from calls.pipeline.turns.stop_strategy import UserSideListener
from calls.pipeline.turns.vad import (
    VAD_CONFIDENCE,
    VAD_START_SECONDS,
    VAD_STOP_SECONDS,
    InlineSileroVADAnalyzer,
)
from calls.pipeline.turns.words import is_backchannel, is_echo, normalized_words

logger = logging.getLogger(__name__)

# Speech over the persona is spotted before the VAD's start time has passed: this many
# consecutive Silero windows (32 ms each) at or above the VAD confidence pause the voice at once
# (a false alarm costs a short pause, undone when the VAD does not confirm it).
EARLY_ONSET_WINDOWS = 1
# An early pause with no VAD start within this long was a blip (a knock, a breath): resume.
EARLY_PAUSE_CONFIRM_SECONDS = 0.35
# Speech over the persona that lasts this long is an interruption whatever it says.
BARGE_IN_COMMIT_SECONDS = 0.7
# Speech over the persona shorter than this, of one or two words, is taken for an aside
# ("okay", "mm-hmm", misheard or not) unless it asks to stop.
BRIEF_SPEECH_SECONDS = 0.6
STOP_WORDS = frozenset({"stop", "wait", "no", "hold", "hang", "sorry", "excuse", "pardon", "what"})
# An interim transcript of speech over the persona interrupts it at once from this many words.
BARGE_IN_INTERIM_WORDS = 3
# After speech over the persona stops, how long to wait for its transcript before resuming.
BARGE_IN_TRANSCRIPT_WAIT_SECONDS = 0.6
# Speech over the persona must be this much louder (RMS) than what the microphone picked up
# while the persona spoke and the user did not: its echo, learnt per call. A browser's echo
# canceller leaves little of it, so a user at any normal level gets through; a speakerphone
# without one leaves a lot, and the user has to speak up. (Digital levels of the voice played
# and of the microphone are not comparable: a close-talking voice at -15 dBFS is ~0.25 of the
# persona's.)
ECHO_MARGIN = 2.0
# The microphone's level while the persona speaks is kept this long (seconds) ...
ECHO_HISTORY_SECONDS = 1.5
# ... leaving out the newest (seconds), which may already be the user's first words.
ECHO_HISTORY_SKIP_SECONDS = 0.25
# Until this much of it was heard (seconds), the echo is guessed from the voice's own level:
# microphone audio quieter than ECHO_LEVEL_RATIO of it is taken for echo. Short: users often
# speak over a greeting's first words.
ECHO_LEARN_SECONDS = 0.2
ECHO_LEVEL_RATIO = 0.35
# How much of the persona's recent voice the echo check looks at, in seconds: its echo comes
# back after the round trip and the device's own delay.
LEVEL_WINDOW_SECONDS = 0.3
# How much recent microphone audio it looks at: only the newest, or the room's quiet before
# the first words would drown them and speech would pass for echo until it filled the window
# (measured: the pause came ~100 ms after Silero's onset with 0.3 s). Two Silero windows.
MIC_LEVEL_WINDOW_SECONDS = 0.064


class LevelMeter:
    """RMS of the most recent audio, over a short window (16-bit mono PCM)."""

    def __init__(self, window_seconds: float = LEVEL_WINDOW_SECONDS) -> None:
        self._window = window_seconds
        self._pieces: deque[tuple[float, float, int]] = deque()  # (time, sum of squares, samples)

    def push(self, pcm: bytes, at: float) -> None:
        samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
        if samples.size:
            self._pieces.append((at, float(np.dot(samples, samples)), samples.size))
        while self._pieces and self._pieces[0][0] < at - self._window:
            self._pieces.popleft()

    def level(self, now: float, window: float | None = None) -> float:
        """RMS (0..1) of the audio pushed in the last `window` seconds (at most the meter's own)."""
        window = self._window if window is None else min(window, self._window)
        total = count = 0.0
        for at, squares, samples in self._pieces:
            if at > now - window - 1e-9:
                total += squares
                count += samples
        return float(np.sqrt(total / count)) / 32768.0 if count else 0.0


class OnsetDetector:
    """Speech onset from Silero's own confidence, window by window, ahead of the VAD's start time.

    The aggregator's VAD says "speaking" only after `VAD_START_SECONDS` of speech; to pause the
    persona within ~100 ms, `VoiceGuard` runs a second Silero (its own recurrent state) on the
    same audio while the persona speaks and reacts to the first windows of speech.
    """

    def __init__(self, windows: int = EARLY_ONSET_WINDOWS) -> None:
        self._needed = windows
        # Loaded here (the pipeline is built off the event loop), not at the first frame.
        self._vad = InlineSileroVADAnalyzer(params=VADParams(confidence=VAD_CONFIDENCE))
        self._rate = 0
        self._buffer = bytearray()
        self._run = 0

    def reset(self) -> None:
        self._buffer.clear()
        self._run = 0

    @property
    def windows_scored(self) -> int:
        """Windows Silero was run on (quiet ones are not: `ONSET_QUIET_DBFS`)."""
        return self._vad.windows_scored

    def push(self, pcm: bytes, sample_rate: int) -> bool:
        """Feed 16-bit mono audio; True when the latest windows are speech."""
        if sample_rate != self._rate:
            if sample_rate not in (8000, 16000):
                return False  # Silero's rates; the pipeline's input is 16 kHz
            self._vad.set_sample_rate(sample_rate)
            self._rate = sample_rate
            self.reset()
        self._buffer.extend(pcm)
        size = self._vad.num_frames_required() * 2
        onset = False
        while len(self._buffer) >= size:
            window = bytes(self._buffer[:size])
            del self._buffer[:size]
            if self._vad.onset_confidence(window) >= VAD_CONFIDENCE:
                self._run += 1
                onset = onset or self._run >= self._needed
            else:
                self._run = 0
        return onset


class VoiceGuard(FrameProcessor):
    """Barge-in: the persona's voice pauses when the user speaks over it, and stops if it was meant.

    Between the recogniser and the user aggregator. `voice` is the paced audio track (with
    `pause()`, `resume()`, `paused` and a `level_at()` of what it played), `reply_active()`
    says whether the persona is speaking or about to, `interrupt()` stops its voice for good
    (bot.interrupted, then turn.continued, follow once the `InterruptionFrame` this guard then
    pushes downstream has passed: ahead of the transcript that caused it, so the reply to that
    transcript is not the one dropped),
    `persona_words()` gives what it has said lately (for the echo check).
    """

    def __init__(
        self,
        *,
        voice: Any,
        reply_active: Callable[[], bool],
        interrupt: Callable[[], Awaitable[None]],
        persona_words: Callable[[], list[str]],
        listener: UserSideListener,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="VoiceGuard")
        self._voice = voice
        self._reply_active = reply_active
        self._interrupt = interrupt
        self._persona_words = persona_words
        self._listener = listener
        self._clock = clock
        self._mic = LevelMeter()
        # (clock, microphone level) while the persona spoke and the user did not: its echo.
        self._echo: deque[tuple[float, float]] = deque()
        self._onset = OnsetDetector()
        self._holding = False  # the voice is paused for speech over it
        self._held_since = 0.0
        self._user_speaking = False
        self._speech_started_at = 0.0
        self._speech_seconds = 0.0  # of the latest speech, once it stopped
        self._heard = ""
        self._timer: asyncio.Task[None] | None = None
        # When the latest barge-in paused the voice (clock), for benchmarks.
        self.last_pause_at: float | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            now = self._clock()
            self._mic.push(frame.audio, now)
            active = self._reply_active()
            self._learn_echo(now, active)
            if self._holding or self._user_speaking or not active:
                self._onset.reset()
            elif self._onset.push(frame.audio, frame.sample_rate):
                self._onset.reset()
                if self._pause_for_speech(now):
                    # Only the first windows: the VAD must confirm it soon, or it was a blip.
                    self._restart_timer(EARLY_PAUSE_CONFIRM_SECONDS, self._resume_unless_speaking)
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._user_speaking = True
            self._speech_started_at = self._clock()
            await self._on_user_started()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._user_speaking = False
            # How long the user spoke: the VAD starts late by its start time, stops late by its stop time.
            self._speech_seconds = (
                self._clock() - self._speech_started_at + VAD_START_SECONDS - VAD_STOP_SECONDS
            )
            if self._holding:
                self._restart_timer(BARGE_IN_TRANSCRIPT_WAIT_SECONDS, self._resume_if_nothing)
        elif isinstance(frame, InterimTranscriptionFrame) and direction == FrameDirection.DOWNSTREAM:
            # Interims are early guesses: only a few words of them interrupt at once (a misheard
            # "okay" must not); otherwise the final transcript or the commit timer decides.
            if (
                self._holding
                and len(normalized_words(frame.text)) >= BARGE_IN_INTERIM_WORDS
                and self._substantive(frame.text)
            ):
                await self._commit()
        elif isinstance(frame, TranscriptionFrame) and direction == FrameDirection.DOWNSTREAM:
            over_persona = self._holding or self._reply_active()
            if over_persona and not (self._substantive(frame.text) and not self._brief_aside(frame.text)):
                # An acknowledgement or the persona's own echo: it stays out of the turn.
                if self._holding:
                    await self._resume()
                await self.push_frame(
                    UserBackchannelFrame(text=frame.text, user_id=frame.user_id, timestamp=frame.timestamp),
                    direction,
                )
                return
            if self._holding:
                await self._commit()
            elif over_persona:
                # Words over the persona whose pause was undone before they were recognised
                # (the transcript came late), or over a reply still being composed: the user
                # said something, and it is what gets answered.
                await self._interrupt_reply()
        await self.push_frame(frame, direction)

    @property
    def holding(self) -> bool:
        """The persona's voice is paused for speech over it."""
        return self._holding

    def _substantive(self, text: str) -> bool:
        return not is_backchannel(text) and not is_echo(text, self._persona_words())

    def _brief_aside(self, text: str) -> bool:
        """A word or two in under `BRIEF_SPEECH_SECONDS` over the persona, not a request to stop.

        Short acknowledgements are what the recogniser gets wrong most ("okay" → "oh can"):
        how long the speech lasted says as much as the words.
        """
        words = normalized_words(text)
        return (
            self._speech_seconds < BRIEF_SPEECH_SECONDS
            and len(words) <= 2
            and not any(word in STOP_WORDS for word in words)
        )

    async def _on_user_started(self) -> None:
        if self._holding:
            # Paused early on the onset, and the VAD confirms speech: it is a barge-in if it goes
            # on (counted from the VAD's start, like speech the VAD alone caught).
            self._restart_timer(BARGE_IN_COMMIT_SECONDS, self._commit_if_still_speaking)
            return
        if not self._reply_active():
            return
        if self._pause_for_speech(self._clock()):
            self._restart_timer(BARGE_IN_COMMIT_SECONDS, self._commit_if_still_speaking)

    def _learn_echo(self, now: float, reply_active: bool) -> None:
        if reply_active and not self._user_speaking and not self._holding and self._voice.level_at(now) > 0:
            self._echo.append((now, self._mic.level(now, window=MIC_LEVEL_WINDOW_SECONDS)))
            # The last ECHO_HISTORY_SECONDS heard (not of the clock: while the user speaks over
            # the persona, what was heard before is what its echo is).
            while self._echo and self._echo[0][0] < now - ECHO_HISTORY_SECONDS:
                self._echo.popleft()

    def is_echo_level(self, now: float) -> bool:
        """The microphone's newest audio is no louder than the persona's voice coming back."""
        mic_level = self._mic.level(now, window=MIC_LEVEL_WINDOW_SECONDS)
        cutoff = now - ECHO_HISTORY_SKIP_SECONDS
        if self._user_speaking:  # the VAD noticed the speech late: leave out its first words
            cutoff = min(cutoff, self._speech_started_at - VAD_START_SECONDS - ECHO_HISTORY_SKIP_SECONDS)
        heard = [(at, level) for at, level in self._echo if at <= cutoff]
        if heard and heard[-1][0] - heard[0][0] >= ECHO_LEARN_SECONDS - 1e-9:
            return mic_level < ECHO_MARGIN * max(level for _, level in heard)
        voice_level = self._voice.level_at(now)
        return voice_level > 0 and mic_level < ECHO_LEVEL_RATIO * voice_level

    def _pause_for_speech(self, now: float) -> bool:
        """Pause the voice for speech over it, unless that speech is the voice's own echo."""
        if self.is_echo_level(now):
            logger.debug("speech over the persona at the echo's level: not paused")
            return False
        logger.debug("speech over the persona: voice paused")
        self._holding = True
        self._held_since = now
        self.last_pause_at = now
        self._voice.pause()
        return True

    async def _resume_unless_speaking(self) -> None:
        if self._holding and not self._user_speaking:
            await self._resume()

    def _restart_timer(self, delay: float, action: Callable[[], Awaitable[None]]) -> None:
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()

        async def fire() -> None:
            await asyncio.sleep(delay)
            self._timer = None
            await action()

        self._timer = self.create_task(fire(), f"{self}::barge_in_timer")

    async def _commit_if_still_speaking(self) -> None:
        if self._holding and self._user_speaking:
            await self._commit()

    async def _resume_if_nothing(self) -> None:
        if self._holding and not self._user_speaking:
            await self._resume()

    async def _resume(self) -> None:
        logger.debug("voice resumed")
        self._holding = False
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        self._timer = None
        self._voice.resume()

    async def _commit(self) -> None:
        if not self._holding:
            return
        self._holding = False
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        self._timer = None
        await self._interrupt_reply()

    async def _interrupt_reply(self) -> None:
        logger.debug("barge-in: the reply is interrupted")
        await self._interrupt()
        await self.push_frame(InterruptionFrame(), FrameDirection.DOWNSTREAM)

    async def cleanup(self) -> None:
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        await super().cleanup()
