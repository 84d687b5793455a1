"""Recordings made by the real recorder from generated audio, stored as a live call stores them."""

from __future__ import annotations

import asyncio
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from calls.models import Call
from calls.pipeline.recording import SAMPLE_RATE, CallRecorder
from calls.pipeline.transport import PIECE_SAMPLES
from calls.review.models import CallRecording
from calls.review.recordings import call_recording_store, recording_file_save


def recording_generate(
    call: Call, *, seconds: float, started_at: datetime | None = None, path: Path | None = None
) -> CallRecording:
    """A stereo recording of `seconds`: a 300 Hz visitor tone on the left, a persona tone on the
    right whose pitch rises by 100 Hz each second (so a place in it can be told by ear, or by FFT).

    Its 0:00 is `started_at` (the call's start by default). Blocking.
    """
    with tempfile.TemporaryDirectory() as scratch:
        clock = [1_000.0]
        recorder = CallRecorder(path=path or Path(scratch) / "call.ogg", clock=lambda: clock[0])
        for index in range(int(seconds / 0.02)):
            clock[0] = 1_000.0 + index * 0.02
            t = (np.arange(PIECE_SAMPLES) + index * PIECE_SAMPLES) / SAMPLE_RATE
            hz = 400 + 100 * int(index * 0.02)
            persona = (np.sin(2 * np.pi * hz * t) * 6_000).astype(np.int16)
            recorder.on_piece(pcm=persona.tobytes(), started_at=clock[0], speaking=True)
            visitor = (np.sin(2 * np.pi * 300 * t) * 6_000).astype(np.int16)
            recorder.visitor_frame(_frame(visitor, index * PIECE_SAMPLES), clock[0] + 0.02)
        clock[0] += 0.1
        # On a thread of its own: the caller's may hold an event loop (Playwright's sync API).
        with ThreadPoolExecutor(max_workers=1) as thread:
            result = thread.submit(asyncio.run, recorder.finish()).result()
        assert result is not None
        start = started_at or call.started_at or call.created_at
        result = type(result)(
            path=result.path,
            started_at=start.timestamp(),
            duration_seconds=result.duration_seconds,
            size_bytes=result.size_bytes,
        )
        name = recording_file_save(call_id=call.pk, path=result.path)
        return call_recording_store(call=call, name=name, result=result)


def _frame(samples: np.ndarray, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.repeat(samples, 2).reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = pts
    frame.time_base = Fraction(1, SAMPLE_RATE)
    return frame
