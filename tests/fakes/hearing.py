"""The offline recogniser as the tests drive it: VAD states come as marks among the frames."""

from __future__ import annotations

from pipecat.frames.frames import Frame
from pipecat.processors.frame_processor import FrameDirection

from calls.pipeline.listening.providers import SphinxSTTService
from tests.fakes.spoken import VADStateMark


class MarkedSphinxSTTService(SphinxSTTService):
    """`SphinxSTTService` told the VAD's states by `VADStateMark`s (`spoken.heard_frames`)."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, VADStateMark):
            self.vad_state_changed(frame.state)
            return
        await super().process_frame(frame, direction)
