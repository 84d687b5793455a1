"""Benchmark of the call recorder alone: what it costs the event loop, and its encoding thread.

Feeds a recorder 60 s of a call (a visitor frame and a persona piece every 20 ms, as aiortc and
the paced track hand them over) as fast as it takes them, and prints:
- microseconds of the caller's thread (the event loop in a call) per chunk handed over,
- CPU milliseconds of the encoding per second of call (stereo Opus at 32 kb/s, on the worker
  thread), and the file's size per minute.

`python bench/recording.py` (no server, no database).
"""

from __future__ import annotations

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

from calls.pipeline.recording import SAMPLE_RATE, CallRecorder  # noqa: E402
from calls.pipeline.transport import PIECE_SAMPLES  # noqa: E402

CALL_SECONDS = 60.0


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Noise shaped by a syllable-rate envelope: as hard for Opus as speech, roughly."""
    rng = np.random.default_rng(seed)
    count = int(seconds * SAMPLE_RATE)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(count) / SAMPLE_RATE)
    return (rng.normal(0, 3_000, count) * envelope).astype(np.int16)


async def main() -> None:
    visitor = speech_like(CALL_SECONDS, 1)
    persona = speech_like(CALL_SECONDS, 2)
    pieces = int(CALL_SECONDS / 0.02)
    frames = []
    for index in range(pieces):
        mono = visitor[index * PIECE_SAMPLES : (index + 1) * PIECE_SAMPLES]
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = (
            SAMPLE_RATE,
            index * PIECE_SAMPLES,
            Fraction(1, SAMPLE_RATE),
        )
        frames.append(frame)
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


if __name__ == "__main__":
    asyncio.run(main())
