"""When the user's turn is over: ParleyTurnStopStrategy (SmartTurn, transcript, silence) and its listener."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
from pipecat.audio.vad.vad_analyzer import VADState
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.turns.types import ProcessFrameResult, UserTurnSpeculation
from pipecat.turns.user_stop.base_user_turn_stop_strategy import BaseUserTurnStopStrategy

from calls.pipeline.turns.settings import TurnSettings
from calls.pipeline.turns.vad import VAD_START_SECONDS
from calls.pipeline.turns.words import turn_probability

logger = logging.getLogger(__name__)

# If the recogniser has not delivered the final transcript this long after the end of
# speech, the turn is decided with what there is.
FINAL_TRANSCRIPT_WAIT_SECONDS = 1.0
# A turn still undecided this long after the VAD's stop (eager, or left to the silence timer)
# gets SmartTurn's verdict once more, on the longer silence. Measured on 82 sentences in four
# espeak voices (328 finished, 316 cut at three fifths of their words, scratch measurement of
# this session): of the finished ones eager at the VAD's stop, 28 of 49 were a complete turn
# 0.15 s later, of the cut ones 16 of 80; of those left to the timer, 12 of 21 finished ones
# became eager or complete, 7 of 46 cut ones.
LATER_OPINION_SECONDS = 0.15


class UserSideListener:
    """What the listening side reports (the conversation's listener implements it)."""

    async def on_user_speech_started(self) -> None: ...

    async def on_user_speech_ended(self) -> None: ...

    async def on_user_speaking(self, *, text: str) -> None: ...

    async def on_user_message(self, *, text: str) -> None: ...

    async def on_eager_turn(self, *, text: str, probability: float) -> None: ...

    async def on_turn_end(self, *, text: str, probability: float) -> None: ...

    async def on_turn_continued(self) -> None: ...


class ParleyTurnStopStrategy(BaseUserTurnStopStrategy):
    """Ends the user's turn from SmartTurn's verdict, the final transcript and silence.

    After the user stops speaking (VAD) SmartTurn gives the probability that the turn is
    complete, averaged with a lexical guess from the words when they have one
    (`turn_probability`). With the final transcript in hand:

    - probability ≥ `confident`: `turn.end`, and the reply is generated;
    - probability ≥ `eager`: `eager.turn`; the reply is generated at once but held back until
      more silence confirms it (`turn.end`: 0.15-0.45 s at the default sensitivity, the
      shorter the surer the turn, `TurnSettings.eager_confirm_seconds_at`), or dropped if the
      user speaks again first (`turn.continued`); SmartTurn listens once more meanwhile
      (`LATER_OPINION_SECONDS`), and a complete verdict confirms it at once;
    - lower: the turn ends after `silence_seconds` of silence (SmartTurn's own timer).

    The reply can start before all that: while the VAD still waits out its stop time, the
    offline recogniser settles on the words so far (`on_provisional_transcript`) and SmartTurn
    has its verdict on the first silent window; if together they reach `eager`, the reply is
    generated then, silently (no event: the user has not stopped yet, as far as anyone is
    told), and held back as any speculative reply is. The VAD's stop and the final transcript
    then decide as above and release it at once, with the brain's and the voice's start already
    done (~50 ms of every answer); if the user goes on, or the final words differ, it is
    dropped unheard and nothing is said about it.
    """

    def __init__(
        self,
        *,
        turn_analyzer: Any,
        settings: TurnSettings,
        listener: UserSideListener,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._analyzer = turn_analyzer
        self._settings = settings
        self._listener = listener
        self._clock = clock
        self._text = ""
        self._vad_speaking = False
        self._vad_stopped = False
        self._awaiting_final = False
        self._probability: float | None = None
        self._speculating = False
        # The speculation was announced (`eager.turn`); one started before the VAD's stop is not.
        self._eager_announced = False
        self._speculated_text = ""  # the turn text the reply in flight answers
        self._eager_at = 0.0  # when `eager.turn` was announced (clock)
        self._confirm_probability = 0.0  # the probability the eager turn's confirmation waits with
        self._pausing = False  # the VAD is waiting out its stop time (VADState.STOPPING)
        self._provisional = ""  # the recogniser's settled words for the speech before this pause
        self._early_probability: float | None = None  # SmartTurn's verdict on this pause
        self._ending = False
        self._analysis_task: asyncio.Task[None] | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._confirm_task: asyncio.Task[None] | None = None  # an eager turn's confirmation
        # SmartTurn started on the first silent window, while the VAD waits out its stop time.
        self._early_task: asyncio.Task[tuple[Any, Any]] | None = None
        # Timings of the latest decision, for benchmarks: clock values or None.
        self.timings: dict[str, float | None] = {}

    # --- lifecycle ---------------------------------------------------------------------

    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        self._analyzer.set_sample_rate(setup.audio_in_sample_rate)

    def vad_state_changed(self, state: VADState) -> None:
        """From the VAD (`InlineSileroVADAnalyzer.state_listeners`), as each state is entered.

        The VAD says the user stopped only after `VAD_STOP_SECONDS` of silence; SmartTurn takes
        ~100-200 ms here, so it starts on the first silent window and its verdict is ready when
        the VAD's stop arrives (or is dropped if the user goes on inside that time).
        """
        if state == VADState.STOPPING and self._vad_speaking and self._early_task is None:
            self._pausing = True
            self._provisional = ""
            self._early_probability = None
            self._early_task = self.task_manager.create_task(
                self._early_analysis(), f"{self}::early_analysis"
            )
        elif state == VADState.SPEAKING:
            self._pausing = False
            self._provisional = ""
            self._early_probability = None
            if self._early_task is not None:
                self._early_task.cancel()  # the pause was inside the sentence
                self._early_task = None
            if self._speculating and not self._eager_announced:
                # The reply started in that pause answers words the user is now adding to.
                self._speculating = False
                self.task_manager.create_task(
                    self.trigger_user_turn_speculation_cancelled(), f"{self}::withdraw_speculation"
                )

    async def _early_analysis(self) -> tuple[Any, Any]:
        state, metrics = await self._analyzer.analyze_end_of_turn()
        self._early_probability = _probability_of(state, metrics)
        await self._speculate_in_pause()
        return state, metrics

    async def on_provisional_transcript(self, text: str) -> None:
        """The recogniser's words for the speech before the current pause (before the VAD's stop).

        They are the final transcript's words unless the user goes on (`SphinxSTTService`
        settles on them a few windows into the pause).
        """
        if not self._pausing or self._ending:
            logger.debug("settled words %r after the pause (%s, %s)", text, self._pausing, self._ending)
            return
        self._provisional = text.strip()
        await self._speculate_in_pause()

    async def _speculate_in_pause(self) -> None:
        """Start the reply, unannounced, if the words and SmartTurn so far make the turn eager."""
        if not self._pausing or self._speculating or self._ending:
            return
        if self._early_probability is None or not self._provisional:
            return
        text = f"{self._text} {self._provisional}".strip()
        probability = turn_probability(self._early_probability, text)
        if probability < self._settings.eager:
            logger.debug("no reply in the pause: %r at %.2f", text, probability)
            return
        logger.debug("reply started in the pause: %r at %.2f", text, probability)
        self._speculating, self._speculated_text = True, text
        await self.trigger_user_turn_inference_triggered(speculation=UserTurnSpeculation(text=text))

    async def cleanup(self) -> None:
        await self._cancel_tasks()
        await self._analyzer.cleanup()
        await super().cleanup()

    async def handle_user_turn_started(self) -> None:
        await self._reset_turn()

    async def handle_user_turn_stopped(self) -> None:
        await self._reset_turn()
        self._analyzer.clear()

    async def _reset_turn(self) -> None:
        await self._cancel_tasks()
        self._text = ""
        self._probability = None
        self._speculating = self._eager_announced = False
        self._speculated_text = ""
        self._confirm_probability = 0.0
        self._ending = False
        self._awaiting_final = False

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        for task in (self._analysis_task, self._timer_task, self._early_task, self._confirm_task):
            if task is not None and not task.done() and task is not current:
                await self.task_manager.cancel_task(task)
        self._analysis_task = self._timer_task = self._early_task = self._confirm_task = None

    # --- frames ------------------------------------------------------------------------

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        await super().process_frame(frame)
        if isinstance(frame, InputAudioRawFrame):
            state = self._analyzer.append_audio(frame.audio, self._vad_speaking)
            if state == EndOfTurnState.COMPLETE and self._text and not self._vad_speaking:
                # Silence for `silence_seconds`: the turn is over whatever the model said.
                await self._end_turn(self._probability if self._probability is not None else 1.0)
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            await self._on_speech_started()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            await self._on_speech_stopped()
        elif isinstance(frame, InterimTranscriptionFrame):
            text = f"{self._text} {frame.text}".strip()
            if text:
                await self._listener.on_user_speaking(text=text)
        elif isinstance(frame, TranscriptionFrame):
            await self._on_final_transcript(frame.text)
        return ProcessFrameResult.CONTINUE

    async def _on_speech_started(self) -> None:
        self._vad_speaking = True
        self._vad_stopped = False
        self._probability = None
        await self._cancel_tasks()
        self._analyzer.update_vad_start_secs(VAD_START_SECONDS)
        await self._listener.on_user_speech_started()
        if self._speculating:
            # The user went on after an eager turn: the held reply is dropped unheard.
            self._speculating = False
            await self.trigger_user_turn_speculation_cancelled()
            if self._eager_announced:
                await self._listener.on_turn_continued()
        self._eager_announced = False
        self._confirm_probability = 0.0

    async def _on_speech_stopped(self) -> None:
        self._vad_speaking = self._pausing = False
        self._vad_stopped = True
        self._awaiting_final = True
        now = self._clock()
        self.timings = {"speech_stopped": now, "turn_model": None, "final_transcript": None}
        await self._listener.on_user_speech_ended()
        self._analysis_task = self.task_manager.create_task(self._analyze(), f"{self}::analyze")
        self._timer_task = self.task_manager.create_task(
            self._final_transcript_timeout(), f"{self}::final_transcript_timeout"
        )

    async def _on_final_transcript(self, text: str) -> None:
        text = text.strip()
        self._awaiting_final = False
        self.timings["final_transcript"] = self._clock()
        if not text:
            if self._speculating and not self._eager_announced:
                await self._decide()  # a reply started in the pause on words now gone goes
            return
        self._text = f"{self._text} {text}".strip()
        await self._listener.on_user_message(text=text)
        await self._decide()

    async def _analyze(self) -> None:
        early, self._early_task = self._early_task, None
        if early is not None:
            state, metrics = await early
        else:
            state, metrics = await self._analyzer.analyze_end_of_turn()
        self._probability = _probability_of(state, metrics)
        self.timings["turn_model"] = self._clock()
        await self._decide()
        if state == EndOfTurnState.COMPLETE:
            return
        if early is not None:
            state = await self._second_opinion("at the VAD's stop")
        if state is None or state == EndOfTurnState.COMPLETE:
            return
        if self._analysis_task is not asyncio.current_task():
            return  # the turn ended (or another began) meanwhile: this analysis is done
        stopped = self.timings.get("speech_stopped") or self._clock()
        await asyncio.sleep(max(0.0, stopped + LATER_OPINION_SECONDS - self._clock()))
        if self._analysis_task is asyncio.current_task():
            await self._second_opinion(f"{LATER_OPINION_SECONDS:.2f} s after the VAD's stop")

    async def _second_opinion(self, when: str) -> EndOfTurnState | None:
        """SmartTurn again on a longer silence, while its last verdict was not a complete turn.

        The early verdict heard one silent window after the speech; SmartTurn was trained on
        turns followed by the VAD's stop time of silence, and with it often hears a finished
        sentence it doubted a moment before (of 38 espeak sentences of the benches, 4 went from
        eager or the silence timer to a turn end, and 3 from the timer to eager; none the other
        way, since only a better verdict is taken). It listens once more
        `LATER_OPINION_SECONDS` after the VAD's stop if the turn is still undecided. A better
        verdict takes over: an eager turn is confirmed at once, a turn left to the silence timer
        becomes eager or ends. A worse one changes nothing: the decision stands. The model's
        buffer is intact here (it is cleared only after a complete verdict). Returns the
        verdict, or None when the turn was already decided or the user speaks.
        """
        if self._ending or self._vad_speaking or self._probability is None:
            return None
        state, metrics = await self._analyzer.analyze_end_of_turn()
        later = _probability_of(state, metrics)
        if later > self._probability and not self._vad_speaking:
            logger.debug("SmartTurn %s: %.2f (before %.2f)", when, later, self._probability)
            self._probability = later
            await self._decide()
        return state

    async def _final_transcript_timeout(self) -> None:
        await asyncio.sleep(FINAL_TRANSCRIPT_WAIT_SECONDS)
        if self._awaiting_final:
            self._awaiting_final = False
            await self._decide()

    # --- decisions ---------------------------------------------------------------------

    async def _decide(self) -> None:
        if self._vad_speaking or not self._vad_stopped or self._ending:
            return
        if self._probability is None or self._awaiting_final:
            return
        probability, settings = turn_probability(self._probability, self._text), self._settings
        if self._speculating and (self._speculated_text != self._text or probability < settings.eager):
            # A reply started in the pause answers other words than the final transcript's (or
            # none came): were it left held, the turn's end by timeout would release it.
            logger.debug(
                "reply started in the pause dropped: %r, final %r", self._speculated_text, self._text
            )
            self._speculating = False
            await self.trigger_user_turn_speculation_cancelled()
        if not self._text:
            return
        if probability >= settings.confident:
            await self._end_turn(probability)
        elif probability >= settings.eager:
            if not self._eager_announced:
                self._eager_announced, self._eager_at = True, self._clock()
                await self._listener.on_eager_turn(text=self._text, probability=probability)
                if not self._speculating:  # else the reply started in the pause is this one
                    self._speculating, self._speculated_text = True, self._text
                    await self.trigger_user_turn_inference_triggered(
                        speculation=UserTurnSpeculation(text=self._text)
                    )
            elif probability <= self._confirm_probability:
                return  # the confirmation already waits for this or a surer verdict
            # (Again when a later verdict is surer: the wait shortens, counted from the eager turn.)
            self._confirm_probability = probability
            if self._confirm_task is not None and self._confirm_task is not asyncio.current_task():
                await self.task_manager.cancel_task(self._confirm_task)
            wait = self._eager_at + settings.eager_confirm_seconds_at(probability) - self._clock()
            self._confirm_task = self.task_manager.create_task(
                self._confirm_after_silence(probability, max(0.0, wait)), f"{self}::confirm"
            )
        # Otherwise SmartTurn's silence timer (`silence_seconds`) ends the turn.

    async def _confirm_after_silence(self, probability: float, wait: float) -> None:
        await asyncio.sleep(wait)
        self._confirm_task = None
        if not self._vad_speaking:
            await self._end_turn(probability)

    async def _end_turn(self, probability: float) -> None:
        if self._ending or not self._text:
            return
        self._ending = True
        text, speculating = self._text, self._speculating
        await self._listener.on_turn_end(text=text, probability=probability)
        if speculating:
            await self.trigger_user_turn_finalized(confirms_speculation=True)
        else:
            await self.trigger_user_turn_stopped()


def _probability_of(state: EndOfTurnState, metrics: Any) -> float:
    """SmartTurn's probability that the turn is complete, from its verdict's metrics."""
    probability = getattr(metrics, "probability", None)
    if probability is None:
        probability = 1.0 if state == EndOfTurnState.COMPLETE else 0.0
    return float(min(1.0, max(0.0, probability)))
