"""The offline recognisers as the tests drive them: VAD states come as marks among the frames."""

from __future__ import annotations

from pipecat.frames.frames import Frame, TranscriptionFrame
from pipecat.processors.frame_processor import FrameDirection

from calls.pipeline.listening.providers import SphinxSTTService, WhisperSTTService
from tests.fakes.spoken import VADStateMark


class _TakesMarks:
    """Told the VAD's states by `VADStateMark`s (`spoken.heard_frames`)."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, VADStateMark):
            self.vad_state_changed(frame.state)  # type: ignore[attr-defined]
            return
        await super().process_frame(frame, direction)  # type: ignore[misc]


class MarkedSphinxSTTService(_TakesMarks, SphinxSTTService):
    """`SphinxSTTService` told the VAD's states by marks."""


class MarkedWhisperSTTService(_TakesMarks, WhisperSTTService):
    """`WhisperSTTService` told the VAD's states by marks."""


def finals(frames: list) -> list[str]:
    """The final transcripts among the frames a recogniser pushed."""
    return [frame.text for frame in frames if isinstance(frame, TranscriptionFrame)]


def error_rate(references: list[str], heard: list[str]) -> float:
    """Word error rate of `heard` against `references`, one for one (`bench.voice_loop.word_errors`)."""
    from bench.voice_loop import word_errors

    assert len(heard) == len(references), heard
    wrong = total = 0
    for reference, hypothesis in zip(references, heard, strict=True):
        errors, words = word_errors(reference, hypothesis)
        wrong, total = wrong + errors, total + words
    return wrong / total
