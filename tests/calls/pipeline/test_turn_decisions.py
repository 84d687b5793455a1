"""ParleyTurnStopStrategy's decisions inside pipecat's user turn controller, frame by frame.

The turn model is replaced by a scripted one (its verdict is the input here); the controller,
its start strategies and the timers are pipecat's own.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
from pipecat.audio.vad.vad_analyzer import VADState
from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.turns.user_start import TranscriptionUserTurnStartStrategy, VADUserTurnStartStrategy
from pipecat.turns.user_turn_controller import UserTurnController
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.utils.asyncio.task_manager import TaskManager

from calls.pipeline.conversation import TURN_STOP_TIMEOUT_EXTRA_SECONDS
from calls.pipeline.turns import (
    FINAL_TRANSCRIPT_WAIT_SECONDS,
    LATER_OPINION_SECONDS,
    ParleyTurnStopStrategy,
    TurnSettings,
    UserSideListener,
)

SILENCE = bytes(640)  # 20 ms at 16 kHz


class ScriptedTurnModel:
    """SmartTurn's interface with a fixed verdict, after `delay` seconds of "inference"."""

    def __init__(self, probability: float, delay: float = 0.05) -> None:
        self.probability = probability
        self.delay = delay
        self.analyses: list[float] = []  # when each inference started (monotonic)

    def set_sample_rate(self, rate: int) -> None: ...

    def append_audio(self, audio: bytes, speaking: bool) -> EndOfTurnState:
        return EndOfTurnState.INCOMPLETE

    async def analyze_end_of_turn(self):
        self.analyses.append(time.monotonic())
        await asyncio.sleep(self.delay)
        state = EndOfTurnState.COMPLETE if self.probability >= 0.5 else EndOfTurnState.INCOMPLETE
        return state, SimpleNamespace(probability=self.probability)

    def update_vad_start_secs(self, seconds: float) -> None: ...

    def clear(self) -> None: ...

    async def cleanup(self) -> None: ...


class Recorder(UserSideListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    async def on_user_message(self, *, text: str) -> None:
        self.events.append(("user.message", text))

    async def on_eager_turn(self, *, text: str, probability: float) -> None:
        self.events.append(("eager.turn", text))

    async def on_turn_end(self, *, text: str, probability: float) -> None:
        self.events.append(("turn.end", text))

    async def on_turn_continued(self) -> None:
        self.events.append(("turn.continued", None))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


class Turns:
    """A user turn controller with Parley's strategies, fed frames by the test."""

    def __init__(self, probability: float, *, sensitivity: float = 0.5, silence: float = 1.5) -> None:
        self.listener = Recorder()
        self.settings = TurnSettings.from_persona(sensitivity=sensitivity, silence_seconds=silence)
        self.model = ScriptedTurnModel(probability)
        self.strategy = ParleyTurnStopStrategy(
            turn_analyzer=self.model, settings=self.settings, listener=self.listener
        )
        self.controller = UserTurnController(
            user_turn_strategies=UserTurnStrategies(
                start=[
                    VADUserTurnStartStrategy(enable_interruptions=False),
                    TranscriptionUserTurnStartStrategy(enable_interruptions=False),
                ],
                stop=[self.strategy],
            ),
            user_turn_stop_timeout=silence + TURN_STOP_TIMEOUT_EXTRA_SECONDS,
        )
        self.outcomes: list[str] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        setup = FrameProcessorSetup(
            clock=SystemClock(), task_manager=TaskManager(loop=loop), pipeline_worker=None
        )
        await self.controller.setup(setup)
        await self.controller.start()

        @self.controller.event_handler("on_user_turn_stopped")
        async def stopped(controller, strategy, params):
            self.outcomes.append("stopped by " + ("timeout" if strategy is None else "strategy"))

        @self.controller.event_handler("on_user_turn_inference_triggered")
        async def inference(controller, strategy, speculation):
            if speculation is not None:  # (a plain turn stop is also announced as an inference)
                self.outcomes.append("speculation")

        @self.controller.event_handler("on_user_turn_speculation_cancelled")
        async def cancelled(controller):
            self.outcomes.append("speculation cancelled")

    async def stop(self) -> None:
        await self.controller.stop()
        await self.controller.cleanup()

    async def feed(self, frame) -> None:
        await self.controller.process_frame(frame)

    async def silence(self, seconds: float) -> None:
        """Microphone silence, in real time (the turn model's own timer counts it)."""
        for _ in range(int(seconds / 0.02)):
            await self.feed(InputAudioRawFrame(audio=SILENCE, sample_rate=16000, num_channels=1))
            await asyncio.sleep(0.02)

    async def utterance(self, text: str | None, *, final_after: float = 0.05) -> None:
        await self.feed(VADUserStartedSpeakingFrame())
        await self.feed(InterimTranscriptionFrame(text="what", user_id="u", timestamp="t"))
        await self.feed(VADUserStoppedSpeakingFrame())
        await self.silence(final_after)
        if text is not None:
            await self.feed(TranscriptionFrame(text=text, user_id="u", timestamp="t", finalized=True))


@pytest.fixture
async def turns():
    made: list[Turns] = []

    async def make(probability: float, **kwargs) -> Turns:
        made.append(Turns(probability, **kwargs))
        await made[-1].start()
        return made[-1]

    yield make
    for one in made:
        await one.stop()


async def test_a_complete_question_ends_the_turn_at_once(turns):
    t = await turns(0.95)
    await t.utterance("what are your opening hours")
    await t.silence(0.2)
    assert t.listener.names() == ["user.message", "turn.end"]
    assert t.outcomes == ["stopped by strategy"]


async def test_a_final_transcript_arriving_late_still_ends_the_turn_with_turn_end(turns):
    # A cloud recogniser (or a loaded machine) may deliver the final seconds after the speech.
    t = await turns(0.95)
    await t.utterance("what are your opening hours", final_after=4.8)
    await t.silence(0.2)
    assert t.listener.names() == ["user.message", "turn.end"]
    assert t.outcomes == ["stopped by strategy"]


async def test_a_probable_end_is_eager_then_confirmed_by_silence(turns):
    t = await turns(0.55)
    await t.utterance("my sister is visiting next week")
    await t.silence(0.1)
    assert t.listener.names() == ["user.message", "eager.turn"]
    assert t.outcomes == ["speculation"]
    await t.silence(t.settings.eager_confirm_seconds + 0.3)
    assert t.listener.names() == ["user.message", "eager.turn", "turn.end"]
    assert t.outcomes == ["speculation", "stopped by strategy"]


async def test_speaking_again_after_an_eager_turn_continues_it(turns):
    t = await turns(0.55)
    await t.utterance("i would like a cake")
    await t.silence(0.1)
    assert t.listener.names() == ["user.message", "eager.turn"]
    await t.feed(VADUserStartedSpeakingFrame())
    assert t.listener.names()[-1] == "turn.continued"
    assert t.outcomes == ["speculation", "speculation cancelled"]
    # The rest of the sentence completes the turn, with both parts.
    t.model.probability = 0.95
    await t.feed(VADUserStoppedSpeakingFrame())
    await t.silence(0.05)
    await t.feed(TranscriptionFrame(text="for saturday", user_id="u", timestamp="t", finalized=True))
    await t.silence(0.2)
    assert t.listener.events[-1] == ("turn.end", "i would like a cake for saturday")
    assert t.outcomes[-1] == "stopped by strategy"


async def test_an_unfinished_sentence_waits_for_the_silence_timer(turns):
    t = await turns(0.1, silence=0.6)
    await t.utterance("can i order a cake for")
    await t.silence(0.2)
    assert t.listener.names() == ["user.message"]
    assert t.outcomes == []


async def test_a_preface_alone_does_not_end_the_turn_at_once(turns):
    # "Wait, do you deliver?": the voice sounds finished at the comma, the words do not. The
    # turn is only eager (its reply held back), so the question after the pause continues it.
    t = await turns(0.95, silence=0.6)
    await t.utterance("wait")
    await t.silence(0.2)
    assert t.listener.names() == ["user.message", "eager.turn"]
    assert t.outcomes == ["speculation"]


async def test_words_written_as_trailing_off_do_not_end_the_turn_at_once(turns):
    # A falling voice on "My phone number is" sounds finished; Whisper's ellipsis says it is not.
    t = await turns(0.95, silence=0.6)
    await t.utterance("My phone number is...")
    await t.silence(0.2)
    assert t.listener.names() == ["user.message", "eager.turn"]
    assert t.outcomes == ["speculation"]


async def test_the_turn_model_starts_on_the_first_silent_window_not_the_vads_stop(turns):
    t = await turns(0.95)
    t.model.delay = 0.15
    await t.feed(VADUserStartedSpeakingFrame())
    t.strategy.vad_state_changed(VADState.SPEAKING)
    t.strategy.vad_state_changed(VADState.STOPPING)  # the first silent window
    await t.silence(0.2)  # the VAD's stop time
    stopped_at = time.monotonic()
    await t.feed(VADUserStoppedSpeakingFrame())
    await t.feed(TranscriptionFrame(text="where are you", user_id="u", timestamp="t", finalized=True))
    await t.silence(0.1)
    assert len(t.model.analyses) == 1 and t.model.analyses[0] < stopped_at
    assert t.listener.names() == ["user.message", "turn.end"]


async def test_an_early_verdict_is_dropped_when_the_user_goes_on_inside_the_stop_time(turns):
    t = await turns(0.95)
    await t.feed(VADUserStartedSpeakingFrame())
    t.strategy.vad_state_changed(VADState.SPEAKING)
    t.strategy.vad_state_changed(VADState.STOPPING)
    await t.silence(0.06)
    t.strategy.vad_state_changed(VADState.SPEAKING)  # a pause inside the sentence
    t.model.probability = 0.1
    await t.silence(0.1)
    stopped_at = time.monotonic()
    await t.feed(VADUserStoppedSpeakingFrame())
    await t.feed(TranscriptionFrame(text="i would like", user_id="u", timestamp="t", finalized=True))
    await t.silence(0.2)
    # The early one was dropped; the stop got a fresh verdict (and a later one, still doubtful).
    assert len([at for at in t.model.analyses if at < stopped_at]) == 1
    assert t.model.analyses[1] - stopped_at < 0.05
    assert t.listener.names() == ["user.message"]


async def early_pause(t: Turns) -> None:
    """Speech, then the VAD's first silent window, and SmartTurn's early verdict in."""
    await t.feed(VADUserStartedSpeakingFrame())
    t.strategy.vad_state_changed(VADState.SPEAKING)
    t.strategy.vad_state_changed(VADState.STOPPING)
    await t.silence(0.1)


async def test_a_doubtful_early_verdict_gets_a_second_opinion_at_the_vads_stop(turns):
    t = await turns(0.2)
    await early_pause(t)
    t.model.probability = 0.95  # with the stop time's silence, SmartTurn hears a finished sentence
    await t.feed(VADUserStoppedSpeakingFrame())
    await t.feed(
        TranscriptionFrame(
            text="we are planning a party for 20 people", user_id="u", timestamp="t", finalized=True
        )
    )
    await t.silence(0.2)
    assert len(t.model.analyses) == 2
    assert t.listener.names() == ["user.message", "turn.end"]
    assert t.outcomes == ["stopped by strategy"]


async def test_a_second_opinion_that_is_worse_leaves_the_eager_turn_as_it_was(turns):
    t = await turns(0.45)  # eager with the words, not a complete verdict
    await early_pause(t)
    t.model.probability = 0.05
    await t.feed(VADUserStoppedSpeakingFrame())
    await t.feed(TranscriptionFrame(text="my sister is visiting", user_id="u", timestamp="t", finalized=True))
    await t.silence(0.1)
    assert len(t.model.analyses) == 2
    assert t.listener.names() == ["user.message", "eager.turn"]
    await t.silence(t.settings.eager_confirm_seconds + 0.1)
    assert len(t.model.analyses) == 3  # and the later one, no better either
    assert t.listener.names() == ["user.message", "eager.turn", "turn.end"]


async def test_an_eager_turn_is_confirmed_as_soon_as_smartturn_hears_it_complete_on_the_longer_silence(
    turns,
):
    t = await turns(0.2)
    await early_pause(t)
    t.model.probability = 0.45  # at the VAD's stop: eager
    stopped_at = time.monotonic()
    await t.feed(VADUserStoppedSpeakingFrame())
    await t.feed(TranscriptionFrame(text="my sister is visiting", user_id="u", timestamp="t", finalized=True))
    await t.silence(0.1)
    assert t.listener.names() == ["user.message", "eager.turn"]
    t.model.probability = 0.9  # 0.15 s after the stop SmartTurn hears a finished turn
    await t.silence(0.15)
    assert t.listener.names() == ["user.message", "eager.turn", "turn.end"]
    assert len(t.model.analyses) == 3
    assert t.model.analyses[2] - stopped_at >= LATER_OPINION_SECONDS
    # ... well before the eager turn's own confirmation would have come.
    assert time.monotonic() - stopped_at < t.settings.eager_confirm_seconds


async def test_a_turn_left_to_the_silence_timer_becomes_eager_on_a_better_later_verdict(turns):
    t = await turns(0.1, silence=1.0)
    await t.utterance("we are planning a party for twenty people")
    await t.silence(0.05)
    assert t.listener.names() == ["user.message"]
    t.model.probability = 0.4
    await t.silence(0.2)
    assert t.listener.names() == ["user.message", "eager.turn"]
    assert t.outcomes == ["speculation"]
    await t.feed(VADUserStartedSpeakingFrame())  # it was a pause after all: the reply goes unheard
    assert t.listener.names()[-1] == "turn.continued"


async def test_a_complete_early_verdict_needs_no_second_opinion(turns):
    t = await turns(0.95)
    await early_pause(t)
    await t.feed(VADUserStoppedSpeakingFrame())
    await t.feed(TranscriptionFrame(text="where are you", user_id="u", timestamp="t", finalized=True))
    await t.silence(0.2)
    assert len(t.model.analyses) == 1
    assert t.listener.names() == ["user.message", "turn.end"]


async def pause_with_settled_words(t: Turns, text: str) -> None:
    """Speech, then the VAD's first silent window; the recogniser settles on `text` in the pause."""
    await t.feed(VADUserStartedSpeakingFrame())
    t.strategy.vad_state_changed(VADState.SPEAKING)
    t.strategy.vad_state_changed(VADState.STOPPING)
    await t.silence(0.04)
    await t.strategy.on_provisional_transcript(text)
    await t.silence(0.08)  # SmartTurn's early verdict (0.05 s) is in


async def test_the_reply_starts_silently_in_the_pause_and_is_released_at_the_turn_end(turns):
    t = await turns(0.95)
    await pause_with_settled_words(t, "what are your opening hours")
    assert t.outcomes == ["speculation"]  # before the VAD's stop ...
    assert t.listener.names() == []  # ... and nobody is told: the user has not stopped yet
    await t.feed(VADUserStoppedSpeakingFrame())
    await t.feed(
        TranscriptionFrame(text="what are your opening hours", user_id="u", timestamp="t", finalized=True)
    )
    await t.silence(0.1)
    assert t.listener.names() == ["user.message", "turn.end"]
    # The turn's end confirms the reply already made; no second inference.
    assert t.outcomes == ["speculation", "stopped by strategy"]


async def test_a_reply_started_in_the_pause_is_dropped_unannounced_when_the_user_goes_on(turns):
    t = await turns(0.95)
    await pause_with_settled_words(t, "can i order a cake")
    assert t.outcomes == ["speculation"]
    t.strategy.vad_state_changed(VADState.SPEAKING)  # "... for saturday"
    await t.silence(0.04)
    assert t.outcomes == ["speculation", "speculation cancelled"]
    assert "turn.continued" not in t.listener.names()  # no eager.turn was ever said
    t.strategy.vad_state_changed(VADState.STOPPING)
    await t.silence(0.2)
    await t.feed(VADUserStoppedSpeakingFrame())
    await t.feed(
        TranscriptionFrame(text="can i order a cake for saturday", user_id="u", timestamp="t", finalized=True)
    )
    await t.silence(0.1)
    assert t.listener.names() == ["user.message", "turn.end"]
    assert t.outcomes == ["speculation", "speculation cancelled", "stopped by strategy"]


async def test_a_reply_started_in_the_pause_on_other_words_than_the_final_ones_is_dropped(turns):
    t = await turns(0.95)
    await pause_with_settled_words(t, "where are you")
    await t.feed(VADUserStoppedSpeakingFrame())
    await t.feed(TranscriptionFrame(text="where are you based", user_id="u", timestamp="t", finalized=True))
    await t.silence(0.1)
    assert t.listener.events == [("user.message", "where are you based"), ("turn.end", "where are you based")]
    # The turn's end asks for a fresh inference on the final words, not the speculated ones.
    assert t.outcomes == ["speculation", "speculation cancelled", "stopped by strategy"]


async def test_an_eager_turn_takes_over_the_reply_started_in_the_pause(turns):
    t = await turns(0.55)
    await pause_with_settled_words(t, "my sister is visiting next week")
    await t.feed(VADUserStoppedSpeakingFrame())
    await t.feed(
        TranscriptionFrame(text="my sister is visiting next week", user_id="u", timestamp="t", finalized=True)
    )
    await t.silence(0.05)
    assert t.listener.names() == ["user.message", "eager.turn"]
    assert t.outcomes == ["speculation"]  # the same speculation: not started twice
    await t.silence(t.settings.eager_confirm_seconds + 0.3)
    assert t.listener.names() == ["user.message", "eager.turn", "turn.end"]
    assert t.outcomes == ["speculation", "stopped by strategy"]


async def test_a_reply_started_in_the_pause_is_dropped_when_no_final_transcript_comes(turns):
    # The recogniser failed after settling: held on, the reply would be released by the turn's
    # end on timeout, answering words that never became the user's message.
    t = await turns(0.95)
    await pause_with_settled_words(t, "do you deliver")
    await t.feed(VADUserStoppedSpeakingFrame())
    await t.silence(FINAL_TRANSCRIPT_WAIT_SECONDS + 0.2)
    assert t.outcomes == ["speculation", "speculation cancelled"]
    assert t.listener.names() == []


async def test_no_reply_starts_in_the_pause_when_the_words_are_unfinished(turns):
    t = await turns(0.3)  # SmartTurn unsure; the words dangle (0.1): 0.2, below eager (0.3)
    await pause_with_settled_words(t, "can i order a cake for")
    assert t.outcomes == []


async def test_calls_share_one_smartturn_session_with_pipecats_verdicts():
    # One ONNX session per process, not per call; each call's analyzer keeps its own audio. The
    # verdict on the same audio is the one pipecat's own analyzer (its own session) gives.
    import numpy as np
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

    from calls.pipeline.turns import smart_turn_analyzer_build
    from tests.fakes.spoken import spoken_pcm, with_room

    first, second = smart_turn_analyzer_build(stop_secs=1.5), smart_turn_analyzer_build(stop_secs=1.5)
    assert first._session is second._session
    reference = LocalSmartTurnAnalyzerV3()
    speech = with_room(await spoken_pcm("Are you open on Monday?"), lead_seconds=0.2, tail_seconds=0.2)
    audio = speech[::3].astype(np.float32) / 32768.0  # 48 kHz → 16 kHz, as the model hears it
    for analyzer in (first, reference):
        analyzer.set_sample_rate(16_000)
    shared, own = first._predict_endpoint(audio), reference._predict_endpoint(audio)
    assert shared["probability"] == pytest.approx(own["probability"], abs=1e-6)
    assert 0.0 <= shared["probability"] <= 1.0
    await first.cleanup()
    await second.cleanup()
    await reference.cleanup()


def test_the_surer_an_eager_turn_the_shorter_the_silence_that_confirms_it():
    settings = TurnSettings.from_persona(sensitivity=0.5, silence_seconds=1.5)
    waits = [settings.eager_confirm_seconds_at(p) for p in (0.2, settings.eager, 0.4, 0.5, 0.59, 0.7)]
    assert waits[0] == waits[1] == settings.eager_confirm_seconds == 0.45
    assert waits[1] > waits[2] > waits[3] > waits[4] >= 0.15
    assert waits[4] == pytest.approx(0.16, abs=0.01) and waits[5] == 0.15
    # The most eager sensitivity already confirms in the shortest time, whatever the probability.
    eager_person = TurnSettings.from_persona(sensitivity=1.0, silence_seconds=1.5)
    assert {eager_person.eager_confirm_seconds_at(p) for p in (0.1, 0.2, 0.3)} == {0.15}
    # Never longer than the silence that ends a turn anyway.
    short = TurnSettings.from_persona(sensitivity=0.0, silence_seconds=0.3)
    assert short.eager_confirm_seconds_at(short.eager) == 0.3


async def test_a_nearly_certain_eager_turn_is_confirmed_sooner_than_a_barely_eager_one(turns):
    sure, unsure = await turns(0.58), await turns(0.32)
    for t in (sure, unsure):
        await t.utterance("my sister is visiting next week")
    await sure.silence(0.25)
    assert sure.listener.names() == ["user.message", "eager.turn", "turn.end"]
    assert unsure.listener.names() == ["user.message", "eager.turn"]
    await unsure.silence(0.3)
    assert unsure.listener.names() == ["user.message", "eager.turn", "turn.end"]


async def test_a_surer_later_verdict_inside_the_eager_band_shortens_the_wait(turns):
    t = await turns(0.2)
    await early_pause(t)
    t.model.probability = 0.31  # at the VAD's stop: barely eager, 0.45 s to wait
    stopped_at = time.monotonic()
    await t.feed(VADUserStoppedSpeakingFrame())
    await t.feed(TranscriptionFrame(text="my sister is visiting", user_id="u", timestamp="t", finalized=True))
    await t.silence(0.1)
    assert t.listener.names() == ["user.message", "eager.turn"]
    t.model.probability = 0.58  # the later verdict: nearly certain, 0.16 s from the eager turn
    await t.silence(0.2)
    assert t.listener.names() == ["user.message", "eager.turn", "turn.end"]
    assert time.monotonic() - stopped_at < 0.45
