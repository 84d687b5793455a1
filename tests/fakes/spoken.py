"""Spoken test audio made with espeak-ng: what a user says into the microphone.

The persona speaks with a female espeak voice; the "user" here is a different (male) voice, a
little slower, with a quiet noise floor so the audio is never pure digital silence (which
recognisers and VADs treat unlike any real microphone).
"""

from __future__ import annotations

import asyncio
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

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
    """`text` spoken by espeak-ng: float32 samples at 48 kHz (int16 scale), no padding."""
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
        self._floor = noise(2.0, seed=11)
        self._floor_at = 0
        self._sent = 0
        self._start: float | None = None
        self.finished = asyncio.Event()  # set whenever the queue runs dry

    def say(self, samples: np.ndarray) -> float:
        """Queue speech; returns its duration in seconds."""
        self._queue = np.concatenate([self._queue, samples.astype(np.float32)])
        self.finished.clear()
        return samples.size / RATE

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        delay = self._start + self._sent / RATE - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._queue.size:
            piece, self._queue = self._queue[:PIECE], self._queue[PIECE:]
            if piece.size < PIECE:
                piece = np.concatenate([piece, np.zeros(PIECE - piece.size, dtype=np.float32)])
            if not self._queue.size:
                self.finished.set()
        else:
            if self._floor_at + PIECE > self._floor.size:
                self._floor_at = 0
            piece = self._floor[self._floor_at : self._floor_at + PIECE]
            self._floor_at += PIECE
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
