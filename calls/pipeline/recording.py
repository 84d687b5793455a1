"""A call's recording: the visitor (left) and the persona (right) on one timeline, as stereo Ogg/Opus.

The live side only collects: each microphone frame and each 20 ms piece of the persona's
voice is appended to a list with the moment it passed (a few hundred nanoseconds of the event
loop). Once a second that list is handed to a worker thread (later while a user waits for a
live decode in this process: `MAX_DEFER_SECONDS`), which places every chunk on the
call's timeline (silence where a side had none), mixes the two sides into stereo and encodes
it with libopus (PyAV) into an Ogg file on local disk. `CallRecorder.finish` encodes what is
left and closes the file; storing it (Django's storage API) is `calls.review.recordings`.

No ORM here: a recorder is given a path and hands back a `RecordingResult`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from calls.pipeline.niceness import FOREGROUND
from calls.pipeline.transport import OUTPUT_SAMPLE_RATE, PlaybackListener

logger = logging.getLogger(__name__)

SAMPLE_RATE = OUTPUT_SAMPLE_RATE  # Opus's own rate; the persona's voice is already at it
VISITOR, PERSONA = 0, 1  # the channels: left, right
# Two voices of speech, each kept on its own side: ~6 kB a second. What the other side leaks
# into a channel, below the side itself (`bench/recording.py`, espeak's voice against a tone):
# at 32 kb/s in "voip" mode 17 dB at 3 kHz and 8 dB at 5 kHz, where SILK and CELT code the two
# sides jointly (a reviewer listening to the persona heard the visitor); at 48 kb/s in "audio"
# mode 47 dB or more from 330 Hz to 7 kHz.
BITRATE = 48_000
APPLICATION = "audio"
# libopus's complexity (0-10). From 7 up libopus runs its tonality analysis on every frame, the
# bulk of the cost: at 48 kb/s in "audio" mode (`bench/recording.py`, a 2-core EPYC) 27-33 CPU ms
# per second of call at 7-10, 8.6-10.4 at 2-6, the sides still 45 dB or more apart, the file a
# fifth larger (399 KiB a minute against 330). 16 calls in one machine spent half a core on it.
# (At 32 kb/s, below 8 coded some stereo as intensity stereo: a 1 kHz tone on the right leaked
# into a silent left at -22 dB; the channels must stay apart, a reviewer may listen to one side.)
ENCODER_COMPLEXITY = 6
# How much the live side gathers before a thread encodes it (seconds): one hop a second.
BATCH_SECONDS = 1.0
# While a user waits for a live decode in this process (`niceness.FOREGROUND`), a batch is put
# off, up to this long after the last one (seconds): the encoding uses the cores after the
# burst. 16 calls with 8 speaking on a 2-core EPYC spent 11 % of a server process's samples in
# the recordings' threads, which run Python and so cannot be made nicer than the loop.
MAX_DEFER_SECONDS = 4.0
# Chunks kept waiting for a thread that has fallen this far behind (~30 s of both sides)
# before the recording is given up (the call goes on; its memory must not grow).
MAX_PENDING_CHUNKS = 3_000
# A side may be behind the other by this much (seconds) when a batch is encoded: audio that
# arrives later than this after its time is placed where the side's timeline has got to.
LATENESS_SECONDS = 0.5
# A visitor frame whose RTP time runs ahead of where its side has got to by more than this
# (seconds: lost packets, a muted microphone that sent nothing) gets silence before it.
VISITOR_GAP_SECONDS = 0.03
# The persona's track sends a piece every 20 ms and catches up after a stalled loop (up to
# `transport.MAX_LAG_SECONDS`), so its pieces are placed one after the other; only a larger
# gap (the track restarted its clock, or was not pulled) is filled with silence.
PERSONA_GAP_SECONDS = 0.25
# A microphone frame whose RTP time and arrival disagree by more than this (seconds: a new
# source, a wrapped or reset timestamp) re-anchors the visitor's timeline on its arrival.
VISITOR_RESYNC_SECONDS = 1.0

# Encoding runs here: two threads for the whole process (a batch is a few ms of libopus).
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="recording")


@dataclass(frozen=True)
class RecordingResult:
    """A finished recording on local disk: `started_at` is the wall-clock time (epoch
    seconds) that its 0:00 stands for."""

    path: Path
    started_at: float
    duration_seconds: float
    size_bytes: int


class _Side:
    """One channel's audio on the timeline, as placed so far (worker thread only)."""

    def __init__(self, gap_seconds: float) -> None:
        self.gap_samples = int(gap_seconds * SAMPLE_RATE)
        self.placed = 0  # samples placed on the timeline so far (audio and filled silence)
        self.chunks: list[np.ndarray] = []  # placed, not yet encoded
        self.queued = 0  # samples in `chunks`
        # The visitor's RTP clock: (timestamp, timeline sample) of the frame it is anchored on.
        self.rtp_anchor: tuple[int, int] | None = None

    def place(self, samples: np.ndarray, target: int) -> None:
        """Put `samples` at timeline sample `target`, or right after what came before."""
        if target - self.placed > self.gap_samples:
            self.fill(target - self.placed)
        self.chunks.append(samples)
        self.queued += samples.size
        self.placed += samples.size

    def fill(self, count: int) -> None:
        if count > 0:
            self.chunks.append(np.zeros(count, dtype=np.int16))
            self.queued += count
            self.placed += count

    def take(self, count: int) -> np.ndarray:
        """The first `count` queued samples (count <= queued)."""
        joined = np.concatenate(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        head, rest = joined[:count], joined[count:]
        self.chunks = [rest] if rest.size else []
        self.queued = rest.size
        return head


def _mono_48k(frame: av.AudioFrame) -> np.ndarray:
    """A decoded frame as 16-bit mono at the recording's rate (worker thread)."""
    samples = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        mono = samples.mean(axis=0) if channels > 1 else samples[0]
    else:
        mono = samples.reshape(-1, channels).mean(axis=1) if channels > 1 else samples.reshape(-1)
    if np.issubdtype(mono.dtype, np.floating) and frame.format.name.startswith(("flt", "dbl")):
        mono = mono * 32767.0
    if frame.sample_rate != SAMPLE_RATE:  # browsers send 48 kHz Opus; anything else, linearly
        count = round(mono.size * SAMPLE_RATE / frame.sample_rate)
        mono = np.interp(np.linspace(0, mono.size - 1, count), np.arange(mono.size), mono)
    return np.clip(mono, -32768, 32767).astype(np.int16)


class CallRecorder(PlaybackListener):
    """Records one call. Live side: `visitor_frame`, `on_piece` (it listens to the persona's
    track), `finish`. All are called on the event loop; the encoding is on `_EXECUTOR`.

    Any failure of the recording is logged and ends the recording, never the call.
    """

    def __init__(
        self,
        *,
        path: Path,
        clock: Callable[[], float] = time.monotonic,
        batch_seconds: float = BATCH_SECONDS,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.path = path
        self._clock = clock
        self._batch_seconds = batch_seconds
        self._executor = executor or _EXECUTOR
        self.zero = clock()  # the timeline's 0:00 (monotonic)
        self.started_at = time.time()  # the same instant, wall clock
        self._pending: list[tuple[int, float, Any, Any]] = []  # (side, at, audio, rtp timestamp)
        self._batch_at = self.zero
        self._job: concurrent.futures.Future[None] | None = None
        self.failed = False
        self.finished = False
        # Worker thread only (one job at a time: a batch is submitted once the previous is done).
        self._sides = (_Side(VISITOR_GAP_SECONDS), _Side(PERSONA_GAP_SECONDS))
        self._container: Any = None
        self._stream: Any = None
        self._encoded = 0  # stereo samples handed to the encoder
        self._lock = threading.Lock()

    # --- the live side (event loop) ---------------------------------------------------------

    def visitor_frame(self, frame: av.AudioFrame, arrived_at: float) -> None:
        """A decoded microphone frame (kept as it is: it is converted on the worker thread)."""
        self._add(VISITOR, arrived_at, frame, frame.pts)

    def on_piece(self, *, pcm: bytes, started_at: float, speaking: bool) -> None:
        """A 20 ms piece of the persona's voice (or of the silence between), as it is sent."""
        self._add(PERSONA, started_at, pcm, None)

    def _add(self, side: int, at: float, audio: Any, rtp: Any) -> None:
        if self.failed or self.finished:
            return
        self._pending.append((side, at, audio, rtp))
        if at - self._batch_at >= self._batch_seconds:
            self._submit(at)

    def _submit(self, now: float) -> None:
        if FOREGROUND.busy() and now - self._batch_at < MAX_DEFER_SECONDS:
            return  # the next chunk tries again; the batch only grows meanwhile
        job = self._job
        if job is not None and not job.done():
            if len(self._pending) > MAX_PENDING_CHUNKS:
                self._fail("its encoder fell too far behind")
            return  # the next chunk tries again; the batch only grows meanwhile
        if job is not None and job.exception() is not None:
            self._fail("a batch could not be encoded", job.exception())
            return
        batch, self._pending = self._pending, []
        self._batch_at = now
        self._job = self._executor.submit(self._encode, batch, now - LATENESS_SECONDS - self.zero, False)

    def _fail(self, why: str, error: BaseException | None = None) -> None:
        self.failed = True
        self._pending = []
        logger.error("recording %s given up: %s", self.path.name, why, exc_info=error)

    async def finish(self) -> RecordingResult | None:
        """Encode what is left and close the file: the recording, or None if there is none."""
        if self.finished:
            return None
        self.finished = True
        batch, self._pending = self._pending, []
        previous, end = self._job, self._clock() - self.zero
        try:
            if previous is not None:
                await asyncio.wrap_future(previous)
            if self.failed:
                raise RuntimeError("the recording was given up during the call")
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._encode, batch, end, True)
            return await loop.run_in_executor(self._executor, self._result)
        except Exception:
            logger.exception("recording %s could not be finished", self.path.name)
            await asyncio.get_running_loop().run_in_executor(self._executor, self.discard)
            return None

    def discard(self) -> None:
        """Close and delete the file (a recording that failed, or that nobody will store)."""
        with self._lock:
            if self._container is not None:
                try:
                    self._container.close()
                except Exception:
                    logger.warning("recording %s: closing a discarded file failed", self.path.name)
                self._container = None
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            logger.warning("recording %s: its scratch file could not be removed", self.path)

    # --- the worker thread -----------------------------------------------------------------------

    def _encode(self, batch: list[tuple[int, float, Any, Any]], horizon: float, final: bool) -> None:
        """Place a batch on the timeline and encode the stretch that both sides now cover.

        `horizon` (seconds of the timeline): up to there a side that is short has been silent.
        """
        with self._lock:
            for side, at, audio, rtp in batch:
                self._place(side, at - self.zero, audio, rtp)
            visitor, persona = self._sides
            if final:
                horizon_samples = max(visitor.placed, persona.placed)
            else:
                horizon_samples = int(horizon * SAMPLE_RATE)
            for one in self._sides:
                one.fill(horizon_samples - one.placed)
            count = min(visitor.queued, persona.queued)
            if count <= 0:
                if final:
                    self._close()
                return
            stereo = np.empty((count, 2), dtype=np.int16)
            stereo[:, VISITOR] = visitor.take(count)
            stereo[:, PERSONA] = persona.take(count)
            self._write(stereo)
            if final:
                self._close()

    def _place(self, side: int, at: float, audio: Any, rtp: Any) -> None:
        one = self._sides[side]
        if side == PERSONA:
            one.place(np.frombuffer(audio, dtype=np.int16), round(at * SAMPLE_RATE))
            return
        samples = _mono_48k(audio)
        arrived = round(at * SAMPLE_RATE) - samples.size  # it was heard before it arrived
        target = arrived
        if rtp is not None and one.rtp_anchor is not None:
            anchor_rtp, anchor_sample = one.rtp_anchor
            rate = audio.sample_rate or SAMPLE_RATE
            elapsed = ((rtp - anchor_rtp) & 0xFFFFFFFF) * SAMPLE_RATE // rate
            target = anchor_sample + elapsed
            if abs(target - arrived) > VISITOR_RESYNC_SECONDS * SAMPLE_RATE:
                one.rtp_anchor, target = None, arrived
        if rtp is not None and one.rtp_anchor is None:
            one.rtp_anchor = (rtp, max(arrived, 0))
        one.place(samples, max(target, 0))

    def _write(self, stereo: np.ndarray) -> None:
        if self._container is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(self.path), mode="w", format="ogg")
            self._stream = self._container.add_stream("libopus", rate=SAMPLE_RATE, layout="stereo")
            self._stream.bit_rate = BITRATE
            self._stream.codec_context.options = {
                "application": APPLICATION,
                "compression_level": str(ENCODER_COMPLEXITY),
            }
        frame = av.AudioFrame.from_ndarray(stereo.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._encoded
        frame.time_base = Fraction(1, SAMPLE_RATE)
        self._encoded += stereo.shape[0]
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def _close(self) -> None:
        if self._container is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = None

    def _result(self) -> RecordingResult | None:
        if self._encoded == 0 or not self.path.exists():
            self.path.unlink(missing_ok=True)
            return None
        return RecordingResult(
            path=self.path,
            started_at=self.started_at,
            duration_seconds=self._encoded / SAMPLE_RATE,
            size_bytes=self.path.stat().st_size,
        )
