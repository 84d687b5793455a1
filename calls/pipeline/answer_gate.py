"""The persona's own brain stays silent while an app answers its turns, unless the app is late.

Sits between the user's context aggregator and the brain. While an app answers the call's
turns (the agent API's `answer: true`, or an in-process hook), each request for a reply
(`LLMContextFrame`) is held here instead of reaching the brain:

- the app starts answering (`app_answered`: a `reply` or a `replyStream` start): the held
  request is dropped; the brain never runs;
- the turn is over and the app has not started within `timeout_seconds`: the request goes
  on to the brain, which answers. A visitor is never left in silence;
- the user speaks again, or the turn's early end is withdrawn: the request is dropped (the
  next turn makes its own).

A speculative request (made in the pause, before the turn is known to be over) starts its
wait only when the turn ends (`UserStoppedSpeakingFrame`). With no app answering, every
frame passes straight through. No ORM here: whether an app answers is a callable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pipecat.frames.frames import (
    EagerEndOfTurnCancelFrame,
    Frame,
    InterruptionFrame,
    LLMContextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

logger = logging.getLogger(__name__)

# An app's answer that came before the brain's request (it answered `user.message` at once)
# still counts for that request for this long (seconds).
EARLY_ANSWER_SECONDS = 10.0


class AppAnswerGate(FrameProcessor):
    """Holds the brain's reply requests while an app answers; lets one through if it is late."""

    def __init__(self, *, app_answers: Callable[[], bool], timeout_seconds: float) -> None:
        super().__init__(name="AppAnswerGate")
        self._app_answers = app_answers
        self.timeout_seconds = timeout_seconds
        self._held: LLMContextFrame | None = None
        self._wait: asyncio.Task[None] | None = None
        self._turn_over = False  # the user's turn has ended (a held request may be answered)
        self._answered_at: float | None = None  # an app answer no request has been matched to
        self.fallbacks = 0  # requests the brain answered because the app was late

    @property
    def holding(self) -> bool:
        return self._held is not None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction != FrameDirection.DOWNSTREAM:
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, LLMContextFrame):
            answered_at, self._answered_at = self._answered_at, None
            if answered_at is not None and time.monotonic() - answered_at < EARLY_ANSWER_SECONDS:
                logger.debug("reply request dropped: the app answered first")
                return
            if not self._app_answers():
                await self.push_frame(frame, direction)
                return
            self._drop()
            self._held = frame
            if not frame.speculation or self._turn_over:
                self._wait_start()
            return
        if isinstance(frame, UserStartedSpeakingFrame | InterruptionFrame):
            self._turn_over = False
            self._answered_at = None
            self._drop()
        elif isinstance(frame, EagerEndOfTurnCancelFrame):
            self._drop()
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._turn_over = True
            if self._held is not None and self._wait is None:
                self._wait_start()
        await self.push_frame(frame, direction)

    def app_answered(self) -> None:
        """An app started answering: the held request (or the next one) is not the brain's."""
        if self._held is not None:
            self._drop()
        else:
            self._answered_at = time.monotonic()

    def _drop(self) -> None:
        self._held = None
        if self._wait is not None:
            self._wait.cancel()
            self._wait = None

    def _wait_start(self) -> None:
        if self._wait is not None:
            self._wait.cancel()
        self._wait = asyncio.get_running_loop().create_task(self._fall_back(), name="app-answer-wait")

    async def _fall_back(self) -> None:
        await asyncio.sleep(self.timeout_seconds)
        held, self._held, self._wait = self._held, None, None
        if held is None:
            return
        self.fallbacks += 1
        logger.info("no app answered within %.1f s; the persona's brain answers", self.timeout_seconds)
        await self.push_frame(LLMContextFrame(context=held.context), FrameDirection.DOWNSTREAM)

    async def cleanup(self) -> None:
        self._drop()
        await super().cleanup()
