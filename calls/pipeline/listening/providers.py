"""The persona's recogniser: pocketsphinx offline (worker processes) or an OpenAI-compatible API.

`build_stt_service(config)` returns a pipecat STT service for the pipeline position right after
the transport input (before the user aggregator, whose VAD frames it receives):

- `pocketsphinx` (default, offline): `SphinxSTTService`, the general en-US model decoding in a
  small pool of worker processes. While the user speaks, the audio so far is re-decoded every
  `INTERIM_SECONDS` and the words that two decodes in a row agree on are pushed as interim
  transcripts (they only ever grow); at the end of speech the whole segment is decoded and
  pushed as the final, finalized transcript.
- `openai`: pipecat's `OpenAISTTService` (Whisper-style `POST /audio/transcriptions`) with the
  persona's base URL, key and model.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import AsyncGenerator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.utils.time import time_now_iso8601

from calls.pipeline.listening import sphinx_worker

logger = logging.getLogger(__name__)

# Worker processes shared by every call of this server process.
WORKERS = 2
# While the user speaks, the audio so far is re-decoded this often (seconds).
INTERIM_SECONDS = 0.5
# Silence appended to a segment before the final decode (seconds).
TRAILING_SILENCE_SECONDS = 0.15
# Only pocketsphinx's bundled model exists offline.
SPHINX_LANGUAGES = ("en", "en-us")

_pool: ProcessPoolExecutor | None = None


def recogniser_pool() -> ProcessPoolExecutor:
    """The process-wide pool (spawned, never forked: the server has threads and a loop)."""
    global _pool
    if _pool is None:
        _pool = ProcessPoolExecutor(
            max_workers=WORKERS,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=sphinx_worker.worker_start,
        )
    return _pool


def warm_up(timeout: float = 60.0) -> None:
    """Start the workers and load their models now (blocking; call it off the event loop).

    A worker takes a second or two to start and load the model; the first call's first
    utterance must not pay for it.
    """
    pool = recogniser_pool()
    if getattr(pool, "_parley_warm", False):
        return
    futures = [pool.submit(sphinx_worker.decode, bytes(3200)) for _ in range(WORKERS * 2)]
    for future in futures:
        future.result(timeout=timeout)
    pool._parley_warm = True  # type: ignore[attr-defined]


def shutdown() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


def stable_prefix(previous: list[str], latest: list[str]) -> list[str]:
    """The words two consecutive partial results agree on, from the start."""
    agreed: list[str] = []
    for before, now in zip(previous, latest, strict=False):
        if before != now:
            break
        agreed.append(now)
    return agreed


class SphinxSTTService(SegmentedSTTService):
    """Offline recognition with pocketsphinx in worker processes, with stabilised interims."""

    def __init__(self, *, language: str = "en-US", **kwargs: Any) -> None:
        super().__init__(
            trailing_silence_secs=TRAILING_SILENCE_SECONDS,
            ttfs_p99_latency=0.6,
            settings=STTSettings(model="pocketsphinx-en-us", language=language),
            **kwargs,
        )
        warm_up()  # built off the event loop (Conversation._build runs in a thread)
        self._pool = recogniser_pool()
        self._previous: list[str] = []
        self._emitted: list[str] = []
        self._interim_task: asyncio.Task[None] | None = None
        self._last_interim_at = 0.0

    @property
    def wants_wav_segments(self) -> bool:
        return False

    async def _decode(self, pcm: bytes) -> str:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, sphinx_worker.decode, pcm)
        except Exception as error:  # a dead worker: this utterance is lost, the next gets a new pool
            logger.warning("speech recognition failed: %s", error)
            shutdown()
            self._pool = recogniser_pool()
            return ""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._previous, self._emitted = [], []
            self._last_interim_at = asyncio.get_running_loop().time()
        await super().process_frame(frame, direction)

    async def process_audio_frame(self, frame: InputAudioRawFrame, direction: FrameDirection) -> None:
        await super().process_audio_frame(frame, direction)
        if not self._user_speaking:
            return
        now = asyncio.get_running_loop().time()
        busy = self._interim_task is not None and not self._interim_task.done()
        if now - self._last_interim_at >= INTERIM_SECONDS and not busy:
            self._last_interim_at = now
            self._interim_task = self.create_task(
                self._interim(bytes(self._audio_buffer)), f"{self}::interim"
            )

    async def _interim(self, pcm: bytes) -> None:
        words = (await self._decode(pcm)).split()
        agreed = stable_prefix(self._previous, words)
        self._previous = words
        if not self._user_speaking:
            return  # the final transcript is on its way
        if len(agreed) > len(self._emitted) and agreed[: len(self._emitted)] == self._emitted:
            self._emitted = agreed
            await self.push_frame(
                InterimTranscriptionFrame(" ".join(agreed), self._user_id, time_now_iso8601())
            )

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        if self._interim_task is not None and not self._interim_task.done():
            self._interim_task.cancel()
        text = await self._decode(audio)
        if text:
            yield TranscriptionFrame(text, self._user_id, time_now_iso8601(), finalized=True)
        else:
            yield None


def build_stt_service(config: Any) -> Any:
    """The recogniser the persona is configured with."""
    provider = getattr(config, "stt_provider", "pocketsphinx") or "pocketsphinx"
    language = getattr(config, "language", "en-US") or "en-US"
    if provider == "openai":
        from pipecat.services.openai.stt import OpenAISTTService

        return OpenAISTTService(
            api_key=config.stt_api_key or "not-needed",
            base_url=config.stt_base_url or None,
            settings=OpenAISTTService.Settings(model=config.stt_model or "whisper-1"),
        )
    if provider not in ("pocketsphinx", ""):
        logger.warning("speech recognition provider %r is not available; using pocketsphinx", provider)
    if language.lower() not in SPHINX_LANGUAGES:
        logger.warning("pocketsphinx has no model for %s; recognising it as US English", language)
    return SphinxSTTService(language=language)
