"""pipecat TTS service on offline espeak-ng: 48 kHz audio, words timed to playback, phonemes for lip sync.

Follows pipecat's HTTP-style services (ElevenLabsHttpTTSService): the base class opens one audio
context per turn and pushes TTSStarted/TTSStopped; `run_tts` yields the audio of one sentence and
reports its words with `add_word_timestamps`. pipecat times a word as (first audio of the context
pushed) + its offset, so offsets are cumulative across the sentences of a context. Each chunk's
phonemes go out as a `VisemeTimelineFrame` just before that chunk's audio.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InterruptionFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

from calls.pipeline.frames import VisemeTimelineFrame
from calls.pipeline.speech.espeak import DEFAULT_VOICE, OUTPUT_SAMPLE_RATE_HZ, EspeakSynthesizer

NANOSECONDS_PER_SECOND = 1_000_000_000


class EspeakTTSService(TTSService):
    """Speaks with espeak-ng on the process's one synthesis thread; stops within ~60 ms on interruption.

    Its words are timed twice: pipecat's `TTSTextFrame`s (on the transport's clock; they feed
    the assistant's context) and the `VisemeTimelineFrame`s' words, which follow the voice as
    it plays and are what the persona is heard to say (`bot.word`, captions).
    """

    words_on_timeline = True

    def __init__(
        self,
        *,
        voice: str = DEFAULT_VOICE,
        rate_wpm: int = 170,
        pitch: int = 50,
        synthesizer: EspeakSynthesizer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            push_text_frames=False,  # our words are timed: the base makes TTSTextFrames from them
            push_start_frame=True,
            push_stop_frames=True,
            sample_rate=OUTPUT_SAMPLE_RATE_HZ,  # the synthesizer already resamples to 48 kHz
            settings=TTSSettings(model=None, voice=voice, language=None),
            **kwargs,
        )
        self._synthesizer = synthesizer or EspeakSynthesizer.shared()
        self._rate_wpm = rate_wpm
        self._pitch = pitch
        self._reset_timing()

    def can_generate_metrics(self) -> bool:
        return True

    def _reset_timing(self) -> None:
        # Seconds of audio already produced in the current audio context.
        self._context_offset_seconds = 0.0
        # Clock time (ns) the context's first audio went out: pipecat's word-time baseline.
        self._context_started_ns: int | None = None

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        await super().push_frame(frame, direction)
        if isinstance(frame, (InterruptionFrame, TTSStoppedFrame)):
            self._reset_timing()  # the next context starts its own timeline

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        if self._context_started_ns is not None:
            # If the previous sentence has finished playing (a slow LLM left a gap), this
            # one starts playing now, not where the last one ended: keep words in step.
            elapsed = (self.get_clock().get_time() - self._context_started_ns) / NANOSECONDS_PER_SECOND
            self._context_offset_seconds = max(self._context_offset_seconds, elapsed)
        base = self._context_offset_seconds
        produced_samples = 0
        await self.start_tts_usage_metrics(text)
        # aclosing: an interruption cancels this generator mid-await; closing the stream
        # at once is what makes espeak's callback return 1 instead of finishing the text.
        chunks = self._synthesizer.synthesize(
            text, voice=str(self._settings.voice or DEFAULT_VOICE), rate_wpm=self._rate_wpm, pitch=self._pitch
        )
        async with contextlib.aclosing(chunks):
            try:
                async for chunk in chunks:
                    if chunk.phonemes or chunk.words:
                        yield VisemeTimelineFrame(
                            phonemes=[
                                (mark.offset_seconds - chunk.start_seconds, mark.phoneme)
                                for mark in chunk.phonemes
                            ],
                            words=[
                                (word.offset_seconds - chunk.start_seconds, word.text) for word in chunk.words
                            ],
                            utterance_offset_seconds=base + chunk.start_seconds,
                            context_id=context_id,
                        )
                    if chunk.pcm:
                        await self.stop_ttfb_metrics()
                        if self._context_started_ns is None:
                            self._context_started_ns = self.get_clock().get_time()
                        produced_samples = chunk.start_sample + chunk.sample_count
                        yield TTSAudioRawFrame(chunk.pcm, OUTPUT_SAMPLE_RATE_HZ, 1, context_id=context_id)
                    # After the audio, so nothing comes between a viseme timeline and its audio;
                    # a word's time comes from its offset, not from its place in the queue.
                    if chunk.words:
                        await self.add_word_timestamps(
                            [(word.text, base + word.offset_seconds) for word in chunk.words], context_id
                        )
            except ValueError as error:  # an unknown voice, or rate/pitch out of range
                yield ErrorFrame(error=f"{self}: {error}")
            finally:
                await self.stop_ttfb_metrics()
        self._context_offset_seconds = base + produced_samples / OUTPUT_SAMPLE_RATE_HZ
