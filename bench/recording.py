"""Benchmark of the call recorder alone: what it costs the event loop, and its encoding thread.

Feeds a recorder 60 s of a call (a visitor frame and a persona piece every 20 ms, as aiortc and
the paced track hand them over) as fast as it takes them, and prints:
- microseconds of the caller's thread (the event loop in a call) per chunk handed over,
- CPU milliseconds of the encoding per second of call (stereo Opus, on the worker thread), and
  the file's size per minute;
- how far apart the two sides stay: espeak's voice on the persona's side, a tone on the
  visitor's, and how much of the tone the persona's side carries (dB below the tone), at
  frequencies across speech's band. A reviewer listening to one side must not hear the other.

`python bench/recording.py [--bitrate 48000 --application audio]` (no server, no database;
the defaults are the recorder's own settings).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import calls.pipeline.recording as recording  # noqa: E402
from calls.pipeline.recording import PERSONA, SAMPLE_RATE, VISITOR, CallRecorder  # noqa: E402
from calls.pipeline.transport import PIECE_SAMPLES  # noqa: E402

CALL_SECONDS = 60.0
# The visitor's tone for the separation measure: where speech lives, low to high.
SEPARATION_HZ = (330.0, 1_000.0, 3_000.0, 5_000.0, 7_000.0)
SEPARATION_TEXT = "Hello, I am Mara from the bakery. We are open from seven in the morning to six in the evening, every day."


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Noise shaped by a syllable-rate envelope: as hard for Opus as speech, roughly."""
    rng = np.random.default_rng(seed)
    count = int(seconds * SAMPLE_RATE)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(count) / SAMPLE_RATE)
    return (rng.normal(0, 3_000, count) * envelope).astype(np.int16)


def microphone_frames(samples: np.ndarray) -> list[av.AudioFrame]:
    """A visitor's mono samples as decoded microphone frames of 20 ms, with their RTP time."""
    frames = []
    for index in range(samples.size // PIECE_SAMPLES):
        mono = samples[index * PIECE_SAMPLES : (index + 1) * PIECE_SAMPLES]
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = (
            SAMPLE_RATE,
            index * PIECE_SAMPLES,
            Fraction(1, SAMPLE_RATE),
        )
        frames.append(frame)
    return frames


async def recorded(visitor: np.ndarray, persona: np.ndarray, scratch: Path) -> np.ndarray:
    """Both sides (int16, 48 kHz, as long as each other) through a recorder: the decoded
    recording, float samples with the visitor's channel and the persona's."""
    frames = microphone_frames(visitor)
    clock = [0.0]
    recorder = CallRecorder(path=scratch / "separation.ogg", clock=lambda: clock[0])
    for index, frame in enumerate(frames):
        clock[0] = index * 0.02
        piece = persona[index * PIECE_SAMPLES : (index + 1) * PIECE_SAMPLES]
        recorder.on_piece(pcm=piece.tobytes(), started_at=clock[0], speaking=True)
        recorder.visitor_frame(frame, clock[0] + 0.02)
    clock[0] = len(frames) * 0.02
    result = await recorder.finish()
    assert result is not None
    with av.open(str(result.path)) as container:
        decoded = [frame.to_ndarray() for frame in container.decode(container.streams.audio[0])]
    planar = decoded[0].shape[0] == 2
    return np.concatenate([f.T if planar else f.reshape(-1, 2) for f in decoded]).astype(np.float64)


def tone_db(samples: np.ndarray, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    near = np.abs(np.fft.rfftfreq(samples.size, 1 / SAMPLE_RATE) - hz) <= 3
    return float(20 * np.log10(spectrum[near].max() + 1e-9))


async def separation_db(persona: np.ndarray, hz: float, scratch: Path) -> float:
    """How far below the visitor's tone at `hz` the persona's side carries it (dB).

    The call is recorded twice, with the tone and with a silent visitor: what the tone changes
    on the persona's side is what leaked (the voice's own energy at `hz` is not counted)."""
    t = np.arange(persona.size) / SAMPLE_RATE
    tone = (np.sin(2 * np.pi * hz * t) * 6_000).astype(np.int16)
    with_tone = await recorded(tone, persona, scratch)
    without = await recorded(np.zeros_like(tone), persona, scratch)
    count = min(with_tone.shape[0], without.shape[0])
    leaked = with_tone[:count, PERSONA] - without[:count, PERSONA]
    return tone_db(with_tone[:count, VISITOR], hz) - tone_db(leaked, hz)


async def persona_voice() -> np.ndarray:
    from tests.fakes.spoken import spoken_pcm

    speech = await spoken_pcm(SEPARATION_TEXT)
    return np.clip(speech, -32768, 32767).astype(np.int16)[: speech.size // PIECE_SAMPLES * PIECE_SAMPLES]


async def separation() -> None:
    voice = await persona_voice()
    with tempfile.TemporaryDirectory() as scratch:
        figures = [await separation_db(voice, hz, Path(scratch)) for hz in SEPARATION_HZ]
    print(
        "sides apart (the visitor's tone on the persona's side, dB below it): "
        + ", ".join(f"{hz:.0f} Hz {db:.0f}" for hz, db in zip(SEPARATION_HZ, figures, strict=True))
    )


async def main() -> None:
    visitor = speech_like(CALL_SECONDS, 1)
    persona = speech_like(CALL_SECONDS, 2)
    pieces = int(CALL_SECONDS / 0.02)
    frames = microphone_frames(visitor)[:pieces]
    pcm = [persona[i * PIECE_SAMPLES : (i + 1) * PIECE_SAMPLES].tobytes() for i in range(pieces)]

    with tempfile.TemporaryDirectory() as scratch:
        clock = [0.0]
        recorder = CallRecorder(path=Path(scratch) / "call.ogg", clock=lambda: clock[0])
        thread_before = time.thread_time()
        process_before = time.process_time()
        spent_on_loop = 0.0
        for index in range(pieces):
            clock[0] = index * 0.02
            started = time.perf_counter()
            recorder.on_piece(pcm=pcm[index], started_at=clock[0], speaking=True)
            recorder.visitor_frame(frames[index], clock[0] + 0.02)
            spent_on_loop += time.perf_counter() - started
            if index % 50 == 49:
                await asyncio.sleep(0)  # let a finished batch be noticed, as a loop would
                job = recorder._job
                if job is not None:  # keep pace with a real call's batches
                    await asyncio.wrap_future(job)
        clock[0] = CALL_SECONDS
        result = await recorder.finish()
        loop_cpu = time.thread_time() - thread_before
        worker_cpu = time.process_time() - process_before - loop_cpu
        assert result is not None
        print(f"{CALL_SECONDS:.0f} s of a call, {pieces * 2} chunks; threads now {threading.active_count()}")
        print(f"on the event loop: {spent_on_loop / (pieces * 2) * 1e6:.2f} µs per chunk handed over")
        print(
            f"encoding (worker thread): {worker_cpu / CALL_SECONDS * 1000:.1f} ms CPU per second of call"
            f" ({worker_cpu / CALL_SECONDS * 100:.2f} % of one core per call)"
        )
        print(
            f"file: {result.size_bytes / 1024 / (CALL_SECONDS / 60):.0f} KiB per minute, {result.duration_seconds:.1f} s"
        )


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bitrate", type=int, default=recording.BITRATE, help="bits a second, both sides")
    parser.add_argument(
        "--application",
        default=recording.APPLICATION,
        choices=("voip", "audio", "lowdelay"),
        help="libopus's mode",
    )
    return parser.parse_args()


if __name__ == "__main__":
    options = arguments()
    recording.BITRATE, recording.APPLICATION = options.bitrate, options.application
    print(f"stereo Opus at {options.bitrate // 1000} kb/s, {options.application} mode")
    asyncio.run(main())
    asyncio.run(separation())
