"""AppAnswerGate: the persona's brain stays silent while an app answers, unless the app is late.

The gate runs in a real pipecat pipeline. After each frame a marker (a data frame, which no
earlier frame can be overtaken by) is sent behind it, so each step sees exactly what the gate
passed on for that frame. Fallbacks use a short `timeout_seconds` and are waited for with a
generous limit; the tests where nothing may fall back use an hour, so speed never matters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from pipecat.frames.frames import (
    DataFrame,
    EagerEndOfTurnCancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMContextFrame,
    TextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from calls.pipeline.answer_gate import AppAnswerGate

# A safety net for a pipeline that never answers (not a speed check).
WAIT_SECONDS = 20.0
# Long enough that no fallback can come during a test that must not see one.
NEVER_SECONDS = 3600.0
# Short, for the tests that wait for a fallback.
SOON_SECONDS = 0.05


@dataclass
class Marker(DataFrame):
    """Sent behind a frame: once it is out, the gate has handled that frame."""

    number: int = 0


class Sink(FrameProcessor):
    """The end of the test pipeline: keeps every downstream frame, and can wait for one."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self.upstream: list[Frame] = []
        self._arrived = asyncio.Condition()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction is FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
        else:
            self.upstream.append(frame)
        async with self._arrived:
            self._arrived.notify_all()
        await self.push_frame(frame, direction)

    async def wait_for(self, predicate: Callable[[list[Frame]], bool], *, upstream: bool = False) -> None:
        async def arrived() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: predicate(self.upstream if upstream else self.frames))

        await asyncio.wait_for(arrived(), WAIT_SECONDS)


class GateRun:
    """A running pipeline [top, gate, sink]: `send` a frame, get what the gate passed on for it."""

    def __init__(self, *, app_answers: bool = True, timeout_seconds: float = NEVER_SECONDS) -> None:
        self.answers = app_answers
        self.gate = AppAnswerGate(app_answers=lambda: self.answers, timeout_seconds=timeout_seconds)
        self.top = Sink()  # before the gate: what it sends upstream
        self.sink = Sink()
        self.worker = PipelineWorker(
            Pipeline([self.top, self.gate, self.sink]),
            enable_rtvi=False,
            idle_timeout_secs=None,
            enable_turn_tracking=False,
        )
        self._markers = 0
        self._running: asyncio.Task[None] | None = None

    async def __aenter__(self) -> GateRun:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        self._running = asyncio.create_task(runner.run())
        await self.send(TextFrame("started"))  # the pipeline is up once this came through
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._running is not None
        await self.worker.queue_frame(EndFrame())
        try:
            await asyncio.wait_for(asyncio.shield(self._running), WAIT_SECONDS)
        except TimeoutError:
            await self.worker.cancel()
            await self._running

    async def send(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> list[Frame]:
        """Send one frame; the frames the gate passed on meanwhile (markers left out)."""
        self._markers += 1
        marker = Marker(number=self._markers)
        seen = len(self.sink.frames)
        await self.worker.queue_frame(frame, direction)
        await self.worker.queue_frame(marker)
        await self.sink.wait_for(lambda frames: marker in frames)
        return [frame for frame in self.sink.frames[seen:] if not isinstance(frame, Marker)]

    async def requests_to_brain(self, count: int = 1) -> list[LLMContextFrame]:
        """Wait until `count` reply requests have gone on to the brain."""
        await self.sink.wait_for(lambda frames: len(contexts(frames)) >= count)
        return contexts(self.sink.frames)

    def passed_requests(self) -> list[LLMContextFrame]:
        return contexts(self.sink.frames)


def contexts(frames: list[Frame]) -> list[LLMContextFrame]:
    return [frame for frame in frames if isinstance(frame, LLMContextFrame)]


def request(text: str = "When do you open?", *, speculation: bool = False) -> LLMContextFrame:
    return LLMContextFrame(
        context=LLMContext(messages=[{"role": "user", "content": text}]), speculation=speculation
    )


def waiting_tasks() -> list[asyncio.Task[object]]:
    """The gate's fallback clocks still running (one being cancelled is not)."""
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name() == "app-answer-wait" and not task.done() and not task.cancelling()
    ]


async def test_with_no_app_answering_every_request_goes_straight_to_the_brain():
    async with GateRun(app_answers=False) as run:
        first = request()
        assert await run.send(first) == [first]
        speculative = request(speculation=True)
        assert await run.send(speculative) == [speculative]
        stopped = UserStoppedSpeakingFrame()
        assert await run.send(stopped) == [stopped]
    assert run.gate.fallbacks == 0


async def test_a_request_is_held_while_an_app_answers():
    async with GateRun() as run:
        held = request()
        assert await run.send(held) == []
        assert run.gate.holding
        assert len(waiting_tasks()) == 1  # the app's time to answer runs from now
        other = TextFrame("not a reply request")
        assert await run.send(other) == [other]  # everything else passes
    assert run.passed_requests() == []
    assert waiting_tasks() == []  # the end of the pipeline leaves no wait behind


async def test_the_apps_answer_drops_the_held_request():
    async with GateRun() as run:
        await run.send(request())

        run.gate.app_answered()

        assert not run.gate.holding
        assert waiting_tasks() == []
        await run.send(TextFrame("later"))
    assert run.passed_requests() == []
    assert run.gate.fallbacks == 0


async def test_the_brain_answers_when_the_app_is_late():
    async with GateRun(timeout_seconds=SOON_SECONDS) as run:
        held = request()
        await run.send(held)

        (fallback,) = await run.requests_to_brain()

    assert fallback.context is held.context and not fallback.speculation
    assert run.gate.fallbacks == 1 and not run.gate.holding


@pytest.mark.parametrize(
    "frame_type",
    [UserStartedSpeakingFrame, InterruptionFrame, EagerEndOfTurnCancelFrame],
    ids=["user-speaks-again", "interruption", "eager-turn-withdrawn"],
)
async def test_a_held_request_is_dropped_when_the_user_goes_on(frame_type):
    async with GateRun() as run:
        await run.send(request())
        frame = frame_type()

        assert await run.send(frame) == [frame]  # the frame itself goes on

        assert not run.gate.holding
        assert waiting_tasks() == []
    assert run.passed_requests() == []
    assert run.gate.fallbacks == 0


async def test_a_speculative_request_waits_for_the_end_of_the_turn_before_its_time_runs():
    async with GateRun(timeout_seconds=SOON_SECONDS) as run:
        speculative = request(speculation=True)
        assert await run.send(speculative) == []
        assert run.gate.holding and waiting_tasks() == []  # no clock while the user may go on
        await asyncio.sleep(SOON_SECONDS * 10)  # were a clock running, it would have run out
        assert run.passed_requests() == []

        stopped = UserStoppedSpeakingFrame()
        assert stopped in await run.send(stopped)

        (fallback,) = await run.requests_to_brain()
    assert fallback.context is speculative.context
    assert not fallback.speculation  # the turn is over: the brain's answer is a real one
    assert run.gate.fallbacks == 1


async def test_a_speculative_request_after_the_turn_ended_starts_its_wait_at_once():
    async with GateRun(timeout_seconds=SOON_SECONDS) as run:
        await run.send(UserStoppedSpeakingFrame())
        speculative = request(speculation=True)
        await run.send(speculative)

        (fallback,) = await run.requests_to_brain()
    assert fallback.context is speculative.context


async def test_a_speculative_request_withdrawn_before_the_turn_ended_never_reaches_the_brain():
    async with GateRun(timeout_seconds=SOON_SECONDS) as run:
        await run.send(request(speculation=True))
        await run.send(EagerEndOfTurnCancelFrame())
        await run.send(UserStoppedSpeakingFrame())
        await asyncio.sleep(SOON_SECONDS * 10)
    assert run.passed_requests() == []
    assert run.gate.fallbacks == 0


async def test_an_app_answer_before_the_request_drops_the_request():
    async with GateRun() as run:
        run.gate.app_answered()  # the app answered user.message before the brain asked

        assert await run.send(request()) == []

        assert not run.gate.holding
        assert waiting_tasks() == []
        # Counted once: the next turn's request is held again.
        await run.send(UserStartedSpeakingFrame())
        await run.send(request("And on Sunday?"))
        assert run.gate.holding
    assert run.passed_requests() == []


async def test_an_early_app_answer_does_not_count_for_the_next_turn():
    async with GateRun() as run:
        run.gate.app_answered()
        await run.send(UserStartedSpeakingFrame())  # the user speaks again before the request

        assert await run.send(request()) == []

        assert run.gate.holding  # held, waiting for the app's answer to this turn


async def test_a_newer_request_replaces_the_held_one():
    async with GateRun() as run:
        first, second = request("Rye?"), request("Rye? Or spelt?")
        await run.send(first)
        run.gate.timeout_seconds = SOON_SECONDS  # the first's wait (an hour) is running already
        await run.send(second)

        await run.requests_to_brain()
        await run.send(TextFrame("after the fallback"))
    assert [frame.context for frame in run.passed_requests()] == [second.context]
    assert run.gate.fallbacks == 1


async def test_upstream_frames_pass_untouched_even_a_reply_request():
    async with GateRun() as run:
        going_up = request()
        await run.worker.queue_frame(going_up, FrameDirection.UPSTREAM)

        await run.top.wait_for(lambda frames: going_up in frames, upstream=True)

        assert not run.gate.holding
