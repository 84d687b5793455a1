"""Spoken test audio made with espeak-ng: what a user says into the microphone.

The persona speaks with a female espeak voice; the "user" here is a different (male) voice, a
little slower, with a quiet noise floor so the audio is never pure digital silence (which
recognisers and VADs treat unlike any real microphone).
"""

from __future__ import annotations

import asyncio
import time
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from pipecat.frames.frames import SystemFrame

RATE = 48_000
PIECE = 960  # 20 ms at 48 kHz
USER_VOICE = "en-us"
NOISE_RMS = 30.0  # of 32768: about -60 dBFS, a quiet room


def noise(seconds: float, seed: int = 7, *, samples: int | None = None) -> np.ndarray:
    """Room noise: `seconds` of it, or exactly `samples` samples."""
    rng = np.random.default_rng(seed)
    count = samples if samples is not None else int(seconds * RATE)
    return rng.normal(0.0, NOISE_RMS, count).astype(np.float32)


async def spoken_pcm(text: str, *, voice: str = USER_VOICE, rate_wpm: int = 160) -> np.ndarray:
    """`text` spoken by espeak-ng: float32 samples at 48 kHz (int16 scale), no padding.

    Not the same samples at every call: espeak keeps state between utterances, so the same
    text comes out slightly different depending on what the process had it say before.
    """
    from calls.pipeline.speech.espeak import EspeakSynthesizer

    synthesizer = EspeakSynthesizer.shared()
    pieces = [
        np.frombuffer(chunk.pcm, dtype=np.int16).astype(np.float32)
        async for chunk in synthesizer.synthesize(text, voice=voice, rate_wpm=rate_wpm)
    ]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


def with_room(
    speech: np.ndarray, *, lead_seconds: float = 0.6, tail_seconds: float = 1.5, seed: int = 7
) -> np.ndarray:
    """Speech with silence before and after, and the noise floor under all of it."""
    lead = int(lead_seconds * RATE)
    total = np.zeros(lead + speech.size + int(tail_seconds * RATE), dtype=np.float32)
    total[lead : lead + speech.size] = speech
    total += noise(0.0, seed=seed, samples=total.size)
    return total


def to_int16(samples: np.ndarray) -> bytes:
    return np.clip(samples, -32768, 32767).astype(np.int16).tobytes()


def wav_write(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(to_int16(samples))
    return path


class ScriptedMicrophone(MediaStreamTrack):
    """A microphone track for pipeline tests: plays queued audio in real time, then room noise.

    `say(samples)` queues 48 kHz float32 samples (int16 scale); `recv()` hands out 20 ms
    frames on the wall clock, exactly as aiortc's receiver would after Opus decoding.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue = np.zeros(0, dtype=np.float32)
        self._echo = np.zeros(0, dtype=np.float32)
        self._floor = noise(2.0, seed=11)
        self._floor_at = 0
        # Where in `floor` the latest frame was taken from, when it was the room alone (nothing
        # queued, no echo); else None. A client may replay that stretch's packets (`floor`).
        self.floor_offset: int | None = None
        self._sent = 0
        self._start: float | None = None
        self.finished = asyncio.Event()  # set whenever the queue runs dry
        # When the last queued piece was handed out (monotonic, wall): the real end of what was
        # said, later than planned when the sender's loop is late.
        self.dry_at: tuple[float, float] | None = None

    @property
    def floor(self) -> np.ndarray:
        """The room's noise, played in a loop whenever nothing is queued (the same for every
        microphone)."""
        return self._floor

    def say(self, samples: np.ndarray) -> float:
        """Queue speech; returns its duration in seconds."""
        self._queue = np.concatenate([self._queue, samples.astype(np.float32)])
        self.finished.clear()
        return samples.size / RATE

    def mix_in(self, samples: np.ndarray) -> None:
        """Queue sound heard in the room under whatever is said (the speaker's echo)."""
        self._echo = np.concatenate([self._echo, samples.astype(np.float32)])

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        delay = self._start + self._sent / RATE - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self.floor_offset = None
        if self._queue.size:
            piece, self._queue = self._queue[:PIECE], self._queue[PIECE:]
            if piece.size < PIECE:
                piece = np.concatenate([piece, np.zeros(PIECE - piece.size, dtype=np.float32)])
            if not self._queue.size:
                self.finished.set()
                self.dry_at = (time.monotonic(), time.time())
        else:
            if self._floor_at + PIECE > self._floor.size:
                self._floor_at = 0
            piece = self._floor[self._floor_at : self._floor_at + PIECE]
            self.floor_offset = None if self._echo.size else self._floor_at
            self._floor_at += PIECE
        if self._echo.size:
            echo, self._echo = self._echo[:PIECE], self._echo[PIECE:]
            piece = piece.copy()
            piece[: echo.size] += echo
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(to_int16(piece), dtype=np.int16).reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = RATE
        frame.pts = self._sent
        frame.time_base = Fraction(1, RATE)
        self._sent += PIECE
        return frame


PIPELINE_RATE = 16_000


def at_pipeline_rate(samples: np.ndarray) -> bytes:
    """48 kHz samples as the transport hands them to the pipeline: 16 kHz int16, resampled by
    PyAV 20 ms at a time (`calls.pipeline.transport`)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=PIPELINE_RATE)
    pcm = np.frombuffer(to_int16(samples), dtype=np.int16)
    pcm = np.concatenate([pcm, np.zeros(-pcm.size % PIECE, dtype=np.int16)])
    out: list[bytes] = []
    for at in range(0, pcm.size, PIECE):
        frame = av.AudioFrame.from_ndarray(pcm[at : at + PIECE].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = at
        frame.time_base = Fraction(1, RATE)
        out.extend(resampled.to_ndarray().tobytes() for resampled in resampler.resample(frame))
    return b"".join(out)


# When Silero VAD (calls.pipeline.turns) reports speech: after this much speech, and after
# this much silence (seconds).
VAD_START_AFTER_SECONDS = 0.12
VAD_STOP_AFTER_SECONDS = 0.2


@dataclass
class VADStateMark(SystemFrame):
    """Where Silero's VAD enters a state (`InlineSileroVADAnalyzer.state_listeners`), in
    `heard_frames`' list: `tests.fakes.hearing.MarkedSphinxSTTService` calls the recogniser's
    `vad_state_changed` for it, as the VAD does in the pipeline."""

    state: Any = None


# Silero's confidence falls below the VAD's threshold this long after the last word (seconds).
VAD_SILENCE_NOTICED_SECONDS = 0.05


async def heard_frames(
    text: str,
    *,
    lead_seconds: float = 0.6,
    tail_seconds: float = 0.8,
    seed: int = 7,
    pauses: tuple[float, ...] = (),
    speech: np.ndarray | None = None,
    paced: bool = True,
    stop_after: float = VAD_STOP_AFTER_SECONDS,
) -> list[Any]:
    """`text` as the recogniser receives it: 20 ms `InputAudioRawFrame`s paced in real time
    (`SleepFrame`s), with the VAD's start and stop frames where Silero would send them, and
    `VADStateMark`s where it enters its states.

    With `pauses`, `text` is split at its commas and each comma becomes a pause of that many
    seconds, shorter than the VAD's stop time: the speaker goes on after it. With `speech`
    (48 kHz samples, int16 scale: a recording), that is what is said instead of `text`. With
    `paced` False, no `SleepFrame`s (as fast as the recogniser takes it: benchmarks of accuracy).
    `stop_after` is the silence the VAD waits out before its stop frame.
    """
    from pipecat.audio.vad.vad_analyzer import VADState
    from pipecat.frames.frames import (
        InputAudioRawFrame,
        VADUserStartedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.tests.utils import SleepFrame

    parts = [part.strip() for part in text.split(",")] if pauses else [text]
    assert len(parts) == len(pauses) + 1, "one pause per comma"
    pieces: list[np.ndarray] = [] if speech is None else [speech]
    silences: list[tuple[float, float]] = []  # (from, to) seconds into the speech
    at_seconds = 0.0
    for index, part in enumerate(parts if speech is None else []):
        speech_part = await spoken_pcm(part)
        pieces.append(speech_part)
        at_seconds += speech_part.size / RATE
        if index < len(pauses):
            pieces.append(np.zeros(int(pauses[index] * RATE), dtype=np.float32))
            silences.append((at_seconds, at_seconds + pauses[index]))
            at_seconds += pauses[index]
    speech = np.concatenate(pieces)
    pcm = at_pipeline_rate(with_room(speech, lead_seconds=lead_seconds, tail_seconds=tail_seconds, seed=seed))
    piece_bytes = PIPELINE_RATE // 50 * 2
    start_at = lead_seconds + VAD_START_AFTER_SECONDS
    end_at = lead_seconds + speech.size / RATE
    marks: list[tuple[float, Any]] = [(start_at, VADState.SPEAKING)]
    for begin, end in silences:
        if end - begin > VAD_SILENCE_NOTICED_SECONDS:
            marks += [
                (lead_seconds + begin + VAD_SILENCE_NOTICED_SECONDS, VADState.STOPPING),
                (lead_seconds + end + 0.03, VADState.SPEAKING),
            ]
    marks += [(end_at + VAD_SILENCE_NOTICED_SECONDS, VADState.STOPPING)]
    stop_at = end_at + stop_after
    frames: list[Any] = []
    started = stopped = False
    for index, at in enumerate(range(0, len(pcm), piece_bytes)):
        now = index * 0.02
        # The VAD tells its listeners of a state as it enters it, before it sends its frame.
        while marks and now >= marks[0][0]:
            frames.append(VADStateMark(marks.pop(0)[1]))
        if not started and now >= start_at:
            frames.append(VADUserStartedSpeakingFrame(start_secs=VAD_START_AFTER_SECONDS))
            started = True
        if not stopped and now >= stop_at:
            frames.append(VADUserStoppedSpeakingFrame(stop_secs=stop_after))
            frames.append(VADStateMark(VADState.QUIET))
            stopped = True
        frames.append(
            InputAudioRawFrame(audio=pcm[at : at + piece_bytes], sample_rate=PIPELINE_RATE, num_channels=1)
        )
        if paced:
            frames.append(SleepFrame(sleep=0.02))
    return frames


def without_marks(frames: list[Any]) -> list[Any]:
    return [frame for frame in frames if not isinstance(frame, VADStateMark)]
