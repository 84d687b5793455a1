"""The offline recognisers' common part: each utterance is a stream, settled in the VAD's wait.

`StreamingSTTService` sits right after the transport input (before the user aggregator, whose
VAD frames it receives). Each utterance is an `UtteranceStream` (Whisper's on a decoding
thread, pocketsphinx's on a worker process), fed the audio as it arrives, starting with a
little audio from before the VAD noticed the speech. Every `interim_seconds` the words two
partial results in a row agree on are pushed as interim transcripts (they only ever grow).
Once the speech has paused for `SETTLE_SECONDS` the stream is settled: its decoding runs while
the VAD still waits out its stop time, so at its stop the result is pushed at once as one
finalized transcript (none if nothing was recognised), and before that the settled words go
to `on_settled` (the turn logic starts the reply on them while the VAD waits). If the user
goes on instead, the utterance is decoded again whole.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Protocol

from pipecat.audio.vad.vad_analyzer import VADState
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import STTService
from pipecat.utils.time import time_now_iso8601

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# Audio kept from before the VAD's start of speech and decoded with it (seconds): the VAD
# fires ~0.12 s after the onset, and the recogniser wants ~0.3 s of room before the words.
# It is counted back from the audio position where the VAD decided, not from this service's
# own: the recogniser comes first in the pipeline and may have taken more audio meanwhile.
PRE_ROLL_SECONDS = 0.45
# Recent audio kept for the pre-roll (seconds): the pre-roll and how far this service may be
# ahead of the VAD when it decides.
HISTORY_SECONDS = 3.0
# While the user speaks, a partial result is asked for this often (seconds; a subclass may
# ask less often when a partial result costs more).
INTERIM_SECONDS = 0.2
# Audio after the VAD's first silent window before the stream is settled (seconds): the VAD
# says the user stopped after `turns.VAD_STOP_SECONDS` (0.2 s) of silence; the decoding is
# done within that wait. Sooner would settle (and decode again) at more of the short dips
# inside sentences.
SETTLE_SECONDS = 0.06
# The final transcript is given up on after this long (seconds): a recogniser that slow is stuck.
FINAL_TIMEOUT_SECONDS = 5.0
# What this service promises the turn logic: end of speech → final transcript, p99 (seconds).
FINAL_LATENCY_P99_SECONDS = 0.3


class RecogniserUnavailable(Exception):
    """The recogniser serving a stream died or was shut down."""


class UtteranceStream(Protocol):
    """One utterance: audio in, partial, settled and final results out."""

    closed: bool

    def feed(self, pcm: bytes) -> None: ...
    async def partial(self) -> str: ...
    def settle(self) -> None: ...
    @property
    def settled(self) -> bool: ...
    async def settled_text(self) -> str | None: ...
    def resume(self) -> None: ...
    async def final(self) -> dict[str, Any]: ...
    def cancel(self) -> None: ...


async def settled_text_of(future: asyncio.Future[dict[str, Any]] | None) -> str | None:
    """A settled decode's words once it is done; None without one, or when it was dropped
    (the speaker went on) or failed."""
    if future is None:
        return None
    await asyncio.wait([future])
    if future.cancelled() or future.exception() is not None:
        return None
    return str(future.result().get("text", ""))


def stable_prefix(previous: list[str], latest: list[str]) -> list[str]:
    """The words two consecutive partial results agree on, from the start."""
    agreed: list[str] = []
    for before, now in zip(previous, latest, strict=False):
        if before != now:
            break
        agreed.append(now)
    return agreed


class StreamingSTTService(STTService):
    """An offline recogniser fed each utterance as a stream, settled in the VAD's wait.

    Subclasses say how a stream is opened (`_open_stream`) and how often interim words are
    asked for (`interim_seconds`).
    """

    interim_seconds = INTERIM_SECONDS

    def __init__(self, *, model: str, language: str = "en-US", **kwargs: Any) -> None:
        super().__init__(
            ttfs_p99_latency=FINAL_LATENCY_P99_SECONDS,
            settings=STTSettings(model=model, language=language),
            **kwargs,
        )
        # Recent audio: (its position in this call's audio, in bytes; the bytes).
        self._history: collections.deque[tuple[int, bytes]] = collections.deque()
        self._received = 0  # bytes of audio this service has received
        # Where the VAD is in the same audio (bytes), when it tells of a new state; the
        # conversation wires it to the VAD's count. None: level with this service.
        self.vad_position: Callable[[], int] | None = None
        self._speech_from: int | None = None  # where the pre-roll of the next stream starts
        self._stream: UtteranceStream | None = None
        self._previous: list[str] = []
        self._emitted: list[str] = []
        self._last_interim_at = 0.0
        self._interim_task: asyncio.Task[None] | None = None
        self._final_tasks: set[asyncio.Task[None]] = set()
        # Seconds from each VADUserStoppedSpeakingFrame to its final transcript (bench/, tests).
        self.final_latencies: list[float] = []
        self.last_result: dict[str, Any] | None = None
        # Where the stream is settled: the VAD's first silent window in this utterance, plus
        # SETTLE_SECONDS (a position in bytes); None while the user speaks.
        self._settle_at: int | None = None
        self.settles = self.resumes = 0  # counts, for benchmarks
        # Told the settled words of the speech before a pause, before the VAD's stop: what the
        # final transcript will say unless the user goes on (`ParleyTurnStopStrategy`).
        self.on_settled: Callable[[str], Awaitable[None]] | None = None

    def _open_stream(self) -> UtteranceStream:
        """A stream for a new utterance (raises `RecogniserUnavailable` when there is none)."""
        raise NotImplementedError

    def _agreed(self, previous: list[str], latest: list[str]) -> list[str]:
        """The words of the latest partial result that may be shown: those the one before agrees on."""
        return stable_prefix(previous, latest)

    def _result_kept(self, result: dict[str, Any]) -> None:
        """An utterance's final result, for what the next one may carry over."""

    def vad_state_changed(self, state: VADState) -> None:
        """From the VAD (`InlineSileroVADAnalyzer.state_listeners`), as each state is entered."""
        stream = self._stream
        position = self._received if self.vad_position is None else min(self.vad_position(), self._received)
        if state == VADState.STOPPING:
            self._settle_at = position + int(SETTLE_SECONDS * SAMPLE_RATE) * 2
        elif state == VADState.SPEAKING:
            self._settle_at = None
            if stream is None or stream.closed:  # a new utterance: its start frame follows
                self._speech_from = max(0, position - int(PRE_ROLL_SECONDS * SAMPLE_RATE) * 2)
            elif stream.settled:
                stream.resume()  # a pause inside the sentence: decode it whole again
                self.resumes += 1
                self._previous = []

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        self._keep(audio)
        stream = self._stream
        if stream is not None and not stream.closed:
            stream.feed(audio)
            if self._settle_at is not None and not stream.settled and self._received >= self._settle_at:
                stream.settle()
                self.settles += 1
                if self.on_settled is not None:
                    self.create_task(self._tell_settled(stream), f"{self}::settled")
            now = time.monotonic()
            idle = self._interim_task is None or self._interim_task.done()
            settled = stream.settled
            if (
                self._user_speaking
                and idle
                and not settled
                and now - self._last_interim_at >= self.interim_seconds
            ):
                self._last_interim_at = now
                self._interim_task = self.create_task(self._interim(stream), f"{self}::interim")
        if False:  # an async generator that yields nothing: the transcripts come from tasks
            yield None

    def _keep(self, audio: bytes) -> None:
        self._history.append((self._received, audio))
        self._received += len(audio)
        oldest = self._received - int(HISTORY_SECONDS * SAMPLE_RATE) * 2
        while self._history and self._history[0][0] + len(self._history[0][1]) <= oldest:
            self._history.popleft()

    def _audio_since(self, position: int) -> bytes:
        """The audio received from `position` (bytes into the call's audio) to now."""
        pieces = []
        for start, audio in self._history:
            if start + len(audio) > position:
                pieces.append(audio[max(0, position - start) :])
        return b"".join(pieces)

    async def _handle_vad_user_started_speaking(self, frame: VADUserStartedSpeakingFrame) -> None:
        await super()._handle_vad_user_started_speaking(frame)
        if self._stream is not None and not self._stream.closed:
            self._stream.cancel()
        try:
            self._stream = self._open_stream()
        except RecogniserUnavailable as error:
            logger.warning("speech recognition unavailable: %s", error)
            self._stream = None
            return
        # From PRE_ROLL_SECONDS before where the VAD decided to all this service has received.
        pre_roll_bytes = int(PRE_ROLL_SECONDS * SAMPLE_RATE) * 2
        speech_from = self._speech_from if self._speech_from is not None else self._received - pre_roll_bytes
        self._speech_from = None
        self._stream.feed(self._audio_since(max(0, speech_from)))
        self._settle_at = None
        self._previous, self._emitted = [], []
        self._last_interim_at = time.monotonic()

    async def _handle_vad_user_stopped_speaking(self, frame: VADUserStoppedSpeakingFrame) -> None:
        await super()._handle_vad_user_stopped_speaking(frame)
        self._settle_at = None
        stream, self._stream = self._stream, None
        if stream is None or stream.closed:
            return
        task = self.create_task(self._final(stream, time.monotonic()), f"{self}::final")
        self._final_tasks.add(task)
        task.add_done_callback(self._final_tasks.discard)

    async def _interim(self, stream: UtteranceStream) -> None:
        asked_at = time.monotonic()
        try:
            words = (await stream.partial()).split()
        except RecogniserUnavailable:
            return
        if not words:  # the recogniser was busy, or a newer request overtook this one
            return
        agreed = self._agreed(self._previous, words)
        logger.debug(
            "partial %r in %.0f ms, agreed with the one before: %r",
            " ".join(words),
            (time.monotonic() - asked_at) * 1000,
            " ".join(agreed),
        )
        self._previous = words
        if stream is not self._stream or not self._user_speaking:
            return  # the final transcript is on its way
        if len(agreed) > len(self._emitted) and agreed[: len(self._emitted)] == self._emitted:
            self._emitted = agreed
            await self.push_frame(
                InterimTranscriptionFrame(" ".join(agreed), self._user_id, time_now_iso8601())
            )

    async def _tell_settled(self, stream: UtteranceStream) -> None:
        text = await stream.settled_text()
        # Not if the user went on (the stream was resumed) or the VAD's stop came first: the
        # final transcript is then what counts.
        if text and self.on_settled is not None and stream is self._stream and stream.settled:
            await self.on_settled(text)

    async def _final(self, stream: UtteranceStream, stopped_at: float) -> None:
        try:
            result = await asyncio.wait_for(stream.final(), FINAL_TIMEOUT_SECONDS)
        except (RecogniserUnavailable, TimeoutError) as error:
            logger.warning("speech recognition failed, this utterance is lost: %s", error or "timed out")
            stream.cancel()
            return
        latency = time.monotonic() - stopped_at
        self.final_latencies.append(latency)
        self.last_result = result
        self._result_kept(result)
        logger.debug(
            "recognised %r (%s) %.0f ms after the end of speech; %s",
            result["text"],
            result["model"],
            latency * 1000,
            {key: value for key, value in result.items() if key not in ("text", "model")},
        )
        if result["text"]:
            await self.push_frame(
                TranscriptionFrame(result["text"], self._user_id, time_now_iso8601(), finalized=True)
            )

    async def _close_streams(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None
        for task in [self._interim_task, *self._final_tasks]:
            if task is not None and not task.done():
                await self.cancel_task(task)

    async def stop(self, frame: EndFrame) -> None:
        if self._final_tasks:  # a graceful end still delivers the last transcript
            await asyncio.wait(set(self._final_tasks), timeout=FINAL_TIMEOUT_SECONDS)
        await self._close_streams()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        await self._close_streams()
        await super().cancel(frame)
