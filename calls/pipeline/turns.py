"""The listening side of a conversation: voice activity, turn taking and barge-in.

Where it sits in the pipeline::

    input → STT → VoiceGuard → user aggregator → brain → …
                                 ├─ VAD: InlineSileroVADAnalyzer
                                 └─ stop strategy: ParleyTurnStopStrategy (SmartTurn v3.2)

- The user aggregator runs Silero on the microphone and broadcasts `VADUserStarted/Stopped
  SpeakingFrame` (upstream too, so the recogniser and `VoiceGuard` see them).
- `ParleyTurnStopStrategy` decides when the user's turn is over. On the end of speech it runs
  SmartTurn (on the analyzer's own thread, never on the event loop) and, together with the
  final transcript, says `eager.turn` (probably done: the reply is generated speculatively and
  held back by pipecat's speculation gate), `turn.end` (done: the reply is released or
  generated) or, when the user goes on after an eager turn, `turn.continued` (the held reply is
  dropped, so no stale word is ever played).
- `VoiceGuard` handles the user speaking over the persona: the voice pauses at once (so it
  stops within the VAD's start time), and the pause becomes an interruption when what the user
  says is more than a backchannel ("mm-hmm", "right") or lasts; a backchannel, a cough or the
  persona's own voice coming back through the microphone lets the voice resume where it was.

Thresholds come from the persona's voice-detection settings (`TurnSettings.from_persona`).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    TranscriptionFrame,
    UserBackchannelFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
from pipecat.turns.types import ProcessFrameResult, UserTurnSpeculation
from pipecat.turns.user_stop.base_user_turn_stop_strategy import BaseUserTurnStopStrategy

logger = logging.getLogger(__name__)

# Silero's thresholds (pipecat's defaults) and timings. A short start time makes the persona
# pause quickly when the user speaks over it; the pause is undone if it was nothing.
VAD_CONFIDENCE = 0.7
VAD_MIN_VOLUME = 0.6
VAD_START_SECONDS = 0.12
VAD_STOP_SECONDS = 0.2
# Below pipecat's volume floor a window is never speech, whatever Silero says, so the model is
# not run on it (a listening call is mostly quiet: Silero was 11 % of a loaded loop's samples).
# When the audio gets loud again the model first hears this many of the quiet windows before it
# (their confidences are not used), so it meets the speech with the sound that led into it.
VAD_LEAD_IN_WINDOWS = 2
# After this many quiet windows in a row (~0.5 s) the model's recurrent state starts afresh, as
# pipecat resets it during quiet every few seconds.
VAD_QUIET_RESET_WINDOWS = 16
# If the recogniser has not delivered the final transcript this long after the end of
# speech, the turn is decided with what there is.
FINAL_TRANSCRIPT_WAIT_SECONDS = 1.0
# Speech over the persona is spotted before the VAD's start time has passed: this many
# consecutive Silero windows (32 ms each) at or above the VAD confidence pause the voice at once
# (a false alarm costs a short pause, undone when the VAD does not confirm it).
EARLY_ONSET_WINDOWS = 1
# An early pause with no VAD start within this long was a blip (a knock, a breath): resume.
EARLY_PAUSE_CONFIRM_SECONDS = 0.35
# Speech over the persona that lasts this long is an interruption whatever it says.
BARGE_IN_COMMIT_SECONDS = 0.7
# Speech over the persona shorter than this, of one or two words, is taken for an aside
# ("okay", "mm-hmm", misheard or not) unless it asks to stop.
BRIEF_SPEECH_SECONDS = 0.6
STOP_WORDS = frozenset({"stop", "wait", "no", "hold", "hang", "sorry", "excuse", "pardon", "what"})
# An interim transcript of speech over the persona interrupts it at once from this many words.
BARGE_IN_INTERIM_WORDS = 3
# After speech over the persona stops, how long to wait for its transcript before resuming.
BARGE_IN_TRANSCRIPT_WAIT_SECONDS = 0.6
# Speech over the persona must be this much louder (RMS) than what the microphone picked up
# while the persona spoke and the user did not: its echo, learnt per call. A browser's echo
# canceller leaves little of it, so a user at any normal level gets through; a speakerphone
# without one leaves a lot, and the user has to speak up. (Digital levels of the voice played
# and of the microphone are not comparable: a close-talking voice at -15 dBFS is ~0.25 of the
# persona's.)
ECHO_MARGIN = 2.0
# The microphone's level while the persona speaks is kept this long (seconds) ...
ECHO_HISTORY_SECONDS = 1.5
# ... leaving out the newest (seconds), which may already be the user's first words.
ECHO_HISTORY_SKIP_SECONDS = 0.25
# Until this much of it was heard (seconds), the echo is guessed from the voice's own level:
# microphone audio quieter than ECHO_LEVEL_RATIO of it is taken for echo. Short: users often
# speak over a greeting's first words.
ECHO_LEARN_SECONDS = 0.2
ECHO_LEVEL_RATIO = 0.35
# How much of the persona's recent voice the echo check looks at, in seconds: its echo comes
# back after the round trip and the device's own delay.
LEVEL_WINDOW_SECONDS = 0.3
# How much recent microphone audio it looks at: only the newest, or the room's quiet before
# the first words would drown them and speech would pass for echo until it filled the window
# (measured: the pause came ~100 ms after Silero's onset with 0.3 s). Two Silero windows.
MIC_LEVEL_WINDOW_SECONDS = 0.064

# Short acknowledgements that do not take the turn while the persona speaks.
BACKCHANNELS = frozenset(
    {
        "ah", "aha", "alright", "got it", "hm", "hmm", "i see", "mhm", "mm", "mm hmm", "mmhm",
        "mmm", "oh", "ok", "okay", "right", "sure", "uh huh", "uhhuh", "yeah", "yep", "yes",
        "uh", "um", "cool", "great", "nice", "oh okay", "okay okay", "yeah yeah", "right right",
    }
)  # fmt: skip
_WORD = re.compile(r"[a-z']+")


# A turn whose last word is one of these is not over ("Can I order a cake for ..."). Only words
# that (almost) never end a sentence: "you", "is", "that" or "so" often do ("where are you").
DANGLING_WORDS = frozenset(
    {
        "a", "about", "an", "and", "as", "at", "because", "but", "by", "for", "from", "if",
        "in", "like", "my", "of", "or", "our", "than", "the", "to", "uh", "um", "with", "your",
        "i", "we", "their", "his", "her", "its", "into", "onto", "whether", "although",
    }
)  # fmt: skip
QUESTION_OPENERS = frozenset(
    {
        "what", "where", "when", "how", "who", "why", "which", "can", "could", "do", "does",
        "is", "are", "will", "would", "should", "may", "have", "has", "did",
    }
)  # fmt: skip

# Words that close a request or a statement ("... the manager please", "... thanks").
CLOSING_WORDS = frozenset({"please", "thanks"})
# A turn that is only one of these has not said anything yet: "Wait, do you deliver?" paused
# after "Wait," long enough for the turn to end, and the persona answered "wait" on its own.
PREFACES = frozenset(
    {
        "wait", "wait wait", "wait a second", "wait a minute", "hold on", "hold on a second",
        "hang on", "sorry", "actually", "well", "so", "excuse me", "um", "uh", "er", "oh wait",
        "no wait", "one second", "just a second", "okay so", "and", "but", "listen",
    }
)  # fmt: skip


def text_completeness(text: str) -> float | None:
    """A lexical guess that the words form a finished turn: 0.1 (dangling), 0.9 (a whole question).

    SmartTurn listens to prosody only; on flat or synthetic voices it misjudges whole questions.
    The words say something it cannot: a sentence ending in "for" or "and" is not over, and
    "what are your opening hours" or "I'd like to speak to the manager please" is, and "Wait,"
    or "Hold on," alone has not begun. None when the words say nothing either way.
    """
    words = normalized_words(text)
    if not words:
        return None
    if words[-1] in DANGLING_WORDS or " ".join(words) in PREFACES:
        return 0.1
    if len(words) >= 3 and (words[0] in QUESTION_OPENERS or words[-1] in CLOSING_WORDS):
        return 0.9
    return None


def turn_probability(acoustic: float, text: str) -> float:
    """SmartTurn's probability, averaged with the lexical guess when the words have one."""
    lexical = text_completeness(text)
    if lexical is None:
        return acoustic
    return round((acoustic + lexical) / 2, 4)


def normalized_words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("-", " "))


def is_backchannel(text: str) -> bool:
    """True for an acknowledgement ("mm-hmm", "okay", "right right") that should not interrupt."""
    words = normalized_words(text)
    if not words or len(words) > 3:
        return not words
    return " ".join(words) in BACKCHANNELS or all(word in BACKCHANNELS for word in words)


def is_echo(text: str, persona_words: list[str]) -> bool:
    """True when every word heard is one the persona has just said (its voice coming back)."""
    words = normalized_words(text)
    if not words or not persona_words:
        return False
    recent = set(normalized_words(" ".join(persona_words)))
    return all(word in recent for word in words)


@dataclass(frozen=True)
class TurnSettings:
    """When a turn is over, from the persona's voice-detection settings.

    `sensitivity` (0..1, higher ends the turn sooner) sets the SmartTurn probability for
    `turn.end` (`confident`) and for `eager.turn` (`eager`), and how long an eager turn waits
    in silence before it is confirmed; `silence_seconds` ends a turn whatever the model says.
    """

    sensitivity: float = 0.5
    silence_seconds: float = 1.5

    @classmethod
    def from_persona(cls, *, sensitivity: float, silence_seconds: float) -> TurnSettings:
        return cls(
            sensitivity=min(1.0, max(0.0, float(sensitivity))),
            silence_seconds=min(30.0, max(0.1, float(silence_seconds))),
        )

    @property
    def confident(self) -> float:
        return round(0.85 - 0.5 * self.sensitivity, 3)

    @property
    def eager(self) -> float:
        return round(max(0.1, self.confident - 0.3), 3)

    @property
    def eager_confirm_seconds(self) -> float:
        """Silence after an eager turn that confirms it."""
        return min(self.silence_seconds, round(0.15 + 0.6 * (1.0 - self.sensitivity), 3))


_SILERO_MODEL = "silero_vad.onnx"
_silero_session: Any = None
_silero_lock = threading.Lock()


def silero_session() -> Any:
    """The process's one ONNX session of the Silero VAD model pipecat ships (loaded once).

    pipecat's `SileroVADAnalyzer` loads its own session for every analyzer: ~110 ms of CPU
    each, two per listening call (the VAD and `VoiceGuard`'s onset detector). With 8 calls
    starting at once on one process that was 1.8 s of CPU, most of their wait for a first
    frame. The model's recurrent state is an input and an output of each run, kept by each
    `SileroOnnxModel`, so one session serves every analyzer; ONNX Runtime runs a session from
    several threads at once.
    """
    global _silero_session
    with _silero_lock:
        if _silero_session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()  # as pipecat's SileroOnnxModel sets them
            options.inter_op_num_threads = 1
            options.intra_op_num_threads = 1
            path = importlib.resources.files("pipecat.audio.vad.data").joinpath(_SILERO_MODEL)
            _silero_session = ort.InferenceSession(
                str(path), providers=["CPUExecutionProvider"], sess_options=options
            )
        return _silero_session


class _SharedSileroModel(SileroOnnxModel):
    """pipecat's Silero wrapper (its own recurrent state) on the process's shared session."""

    def __init__(self) -> None:  # not super().__init__(): it would load a session of its own
        self.session = silero_session()
        self.reset_states()
        self.sample_rates = [8000, 16000]


class InlineSileroVADAnalyzer(SileroVADAnalyzer):
    """Silero VAD run on the caller's thread, on the process's shared model session.

    pipecat hands every 20 ms of audio to a one-thread pool; one 32 ms window takes ~0.25 ms,
    far less than the hop there and back, and with many calls in one process those hops are
    what starve the event loop (each can wait out the interpreter's switch interval).
    """

    def __init__(self, *, sample_rate: int | None = None, params: VADParams | None = None) -> None:
        # What pipecat's SileroVADAnalyzer.__init__ (pinned 1.14) does, but the model wrapper
        # takes the shared session (`silero_session`) instead of loading one.
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._model = _SharedSileroModel()
        self._windows_since_reset = 0
        self._low_confidence_windows = 0
        # Called with each new state (QUIET, STARTING, SPEAKING, STOPPING) as it is entered.
        self.state_listeners: list[Callable[[VADState], None]] = []
        self._state_seen = VADState.QUIET
        # Bytes of audio analysed: where the VAD is in the call's audio when it tells a listener
        # of a state (processors upstream of it may have taken more audio by then).
        self.bytes_analysed = 0
        self._analysing = False  # inside pipecat's analysis, which asks for the volume next
        self._window_volume: tuple[bytes, float] | None = None  # (window, its smoothed volume)
        self._quiet_windows: deque[bytes] = deque(maxlen=VAD_LEAD_IN_WINDOWS)
        self._quiet_run = 0  # windows in a row not given to the model
        self.windows_skipped = self.windows_scored = 0  # counts, for tests and benchmarks

    def voice_confidence(self, buffer: bytes) -> float:
        """Silero's confidence, or 0 without running it when the window is below the volume floor.

        pipecat asks for the confidence, then for the window's smoothed volume, and counts a
        window as speech only if both pass their thresholds; the volume is worked out first here
        (and handed back when it asks), so a window that cannot be speech costs no inference.
        """
        if not self._analysing:  # asked on its own (the onset detector): the model always runs
            return super().voice_confidence(buffer)
        volume = super()._get_smoothed_volume(buffer)
        self._window_volume = (buffer, volume)
        if volume < self._params.min_volume:
            self._quiet_windows.append(buffer)
            self._quiet_run += 1
            self.windows_skipped += 1
            return 0.0
        if self._quiet_run:
            if self._quiet_run >= VAD_QUIET_RESET_WINDOWS:
                self._model.reset_states()
            for quiet in self._quiet_windows:  # the sound leading into this window
                super().voice_confidence(quiet)
            self._quiet_windows.clear()
            self._quiet_run = 0
        self.windows_scored += 1
        return super().voice_confidence(buffer)

    def _get_smoothed_volume(self, audio: bytes) -> float:
        if self._window_volume is not None and self._window_volume[0] is audio:
            volume = self._window_volume[1]
            self._window_volume = None
            return volume
        return super()._get_smoothed_volume(audio)

    async def analyze_audio(self, buffer: bytes) -> VADState:
        self.bytes_analysed += len(buffer)
        self._analysing = True
        try:
            state = self._run_analyzer(buffer)
        finally:
            self._analysing = False
        if state != self._state_seen:
            self._state_seen = state
            for listener in self.state_listeners:
                listener(state)
        return state


def vad_analyzer_build() -> InlineSileroVADAnalyzer:
    return InlineSileroVADAnalyzer(
        params=VADParams(
            confidence=VAD_CONFIDENCE,
            start_secs=VAD_START_SECONDS,
            stop_secs=VAD_STOP_SECONDS,
            min_volume=VAD_MIN_VOLUME,
        )
    )


_SMART_TURN_MODEL = "smart-turn-v3.2-cpu.onnx"
_smart_turn_session: Any = None
_smart_turn_lock = threading.Lock()


def smart_turn_session() -> Any:
    """The process's one ONNX session of the SmartTurn v3.2 model pipecat ships (loaded once).

    A session per call cost ~60 ms of CPU and ~10 MB each; ONNX Runtime runs one session from
    several threads at once, and the model keeps no state between predictions.
    """
    global _smart_turn_session
    with _smart_turn_lock:
        if _smart_turn_session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()  # as pipecat's LocalSmartTurnAnalyzerV3 sets them
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.inter_op_num_threads = 1
            options.intra_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            path = importlib.resources.files("pipecat.audio.turn.smart_turn.data").joinpath(_SMART_TURN_MODEL)
            _smart_turn_session = ort.InferenceSession(str(path), sess_options=options)
        return _smart_turn_session


def smart_turn_analyzer_build(*, stop_secs: float) -> Any:
    """pipecat's local SmartTurn v3 analyzer on the shared session (the audio it holds is the call's)."""
    from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn, SmartTurnParams
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

    class SharedSessionSmartTurnAnalyzer(LocalSmartTurnAnalyzerV3):
        def __init__(self, **kwargs: Any) -> None:
            BaseSmartTurn.__init__(self, **kwargs)  # not the parent's: it loads a session of its own
            self._log_data = False
            self._session = smart_turn_session()

    return SharedSessionSmartTurnAnalyzer(params=SmartTurnParams(stop_secs=stop_secs))


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
      `eager_confirm_seconds` more of silence confirm it (`turn.end`), or dropped if the user
      speaks again first (`turn.continued`);
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
        self._pausing = False  # the VAD is waiting out its stop time (VADState.STOPPING)
        self._provisional = ""  # the recogniser's settled words for the speech before this pause
        self._early_probability: float | None = None  # SmartTurn's verdict on this pause
        self._ending = False
        self._analysis_task: asyncio.Task[None] | None = None
        self._timer_task: asyncio.Task[None] | None = None
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
        self._ending = False
        self._awaiting_final = False

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        for task in (self._analysis_task, self._timer_task, self._early_task):
            if task is not None and not task.done() and task is not current:
                await self.task_manager.cancel_task(task)
        self._analysis_task = self._timer_task = self._early_task = None

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
        elif probability >= settings.eager and not self._eager_announced:
            self._eager_announced = True
            await self._listener.on_eager_turn(text=self._text, probability=probability)
            if not self._speculating:  # else the reply started in the pause is this one
                self._speculating, self._speculated_text = True, self._text
                await self.trigger_user_turn_inference_triggered(
                    speculation=UserTurnSpeculation(text=self._text)
                )
            self._timer_task = self.task_manager.create_task(
                self._confirm_after_silence(probability), f"{self}::confirm"
            )
        # Otherwise SmartTurn's silence timer (`silence_seconds`) ends the turn.

    async def _confirm_after_silence(self, probability: float) -> None:
        await asyncio.sleep(self._settings.eager_confirm_seconds)
        self._timer_task = None
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


class LevelMeter:
    """RMS of the most recent audio, over a short window (16-bit mono PCM)."""

    def __init__(self, window_seconds: float = LEVEL_WINDOW_SECONDS) -> None:
        self._window = window_seconds
        self._pieces: deque[tuple[float, float, int]] = deque()  # (time, sum of squares, samples)

    def push(self, pcm: bytes, at: float) -> None:
        samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
        if samples.size:
            self._pieces.append((at, float(np.dot(samples, samples)), samples.size))
        while self._pieces and self._pieces[0][0] < at - self._window:
            self._pieces.popleft()

    def level(self, now: float, window: float | None = None) -> float:
        """RMS (0..1) of the audio pushed in the last `window` seconds (at most the meter's own)."""
        window = self._window if window is None else min(window, self._window)
        total = count = 0.0
        for at, squares, samples in self._pieces:
            if at > now - window - 1e-9:
                total += squares
                count += samples
        return float(np.sqrt(total / count)) / 32768.0 if count else 0.0


class OnsetDetector:
    """Speech onset from Silero's own confidence, window by window, ahead of the VAD's start time.

    The aggregator's VAD says "speaking" only after `VAD_START_SECONDS` of speech; to pause the
    persona within ~100 ms, `VoiceGuard` runs a second Silero (its own recurrent state) on the
    same audio while the persona speaks and reacts to the first windows of speech.
    """

    def __init__(self, windows: int = EARLY_ONSET_WINDOWS) -> None:
        self._needed = windows
        # Loaded here (the pipeline is built off the event loop), not at the first frame.
        self._vad = InlineSileroVADAnalyzer(params=VADParams(confidence=VAD_CONFIDENCE))
        self._rate = 0
        self._buffer = bytearray()
        self._run = 0

    def reset(self) -> None:
        self._buffer.clear()
        self._run = 0

    def push(self, pcm: bytes, sample_rate: int) -> bool:
        """Feed 16-bit mono audio; True when the latest windows are speech."""
        if sample_rate != self._rate:
            if sample_rate not in (8000, 16000):
                return False  # Silero's rates; the pipeline's input is 16 kHz
            self._vad.set_sample_rate(sample_rate)
            self._rate = sample_rate
            self.reset()
        self._buffer.extend(pcm)
        size = self._vad.num_frames_required() * 2
        onset = False
        while len(self._buffer) >= size:
            window = bytes(self._buffer[:size])
            del self._buffer[:size]
            if self._vad.voice_confidence(window) >= VAD_CONFIDENCE:
                self._run += 1
                onset = onset or self._run >= self._needed
            else:
                self._run = 0
        return onset


class VoiceGuard(FrameProcessor):
    """Barge-in: the persona's voice pauses when the user speaks over it, and stops if it was meant.

    Between the recogniser and the user aggregator. `voice` is the paced audio track (with
    `pause()`, `resume()`, `paused` and a `level_at()` of what it played), `reply_active()`
    says whether the persona is speaking or about to, `interrupt()` stops its voice for good
    (bot.interrupted, then turn.continued, follow once the `InterruptionFrame` this guard then
    pushes downstream has passed: ahead of the transcript that caused it, so the reply to that
    transcript is not the one dropped),
    `persona_words()` gives what it has said lately (for the echo check).
    """

    def __init__(
        self,
        *,
        voice: Any,
        reply_active: Callable[[], bool],
        interrupt: Callable[[], Awaitable[None]],
        persona_words: Callable[[], list[str]],
        listener: UserSideListener,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="VoiceGuard")
        self._voice = voice
        self._reply_active = reply_active
        self._interrupt = interrupt
        self._persona_words = persona_words
        self._listener = listener
        self._clock = clock
        self._mic = LevelMeter()
        # (clock, microphone level) while the persona spoke and the user did not: its echo.
        self._echo: deque[tuple[float, float]] = deque()
        self._onset = OnsetDetector()
        self._holding = False  # the voice is paused for speech over it
        self._held_since = 0.0
        self._user_speaking = False
        self._speech_started_at = 0.0
        self._speech_seconds = 0.0  # of the latest speech, once it stopped
        self._heard = ""
        self._timer: asyncio.Task[None] | None = None
        # When the latest barge-in paused the voice (clock), for benchmarks.
        self.last_pause_at: float | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            now = self._clock()
            self._mic.push(frame.audio, now)
            active = self._reply_active()
            self._learn_echo(now, active)
            if self._holding or self._user_speaking or not active:
                self._onset.reset()
            elif self._onset.push(frame.audio, frame.sample_rate):
                self._onset.reset()
                if self._pause_for_speech(now):
                    # Only the first windows: the VAD must confirm it soon, or it was a blip.
                    self._restart_timer(EARLY_PAUSE_CONFIRM_SECONDS, self._resume_unless_speaking)
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._user_speaking = True
            self._speech_started_at = self._clock()
            await self._on_user_started()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._user_speaking = False
            # How long the user spoke: the VAD starts late by its start time, stops late by its stop time.
            self._speech_seconds = (
                self._clock() - self._speech_started_at + VAD_START_SECONDS - VAD_STOP_SECONDS
            )
            if self._holding:
                self._restart_timer(BARGE_IN_TRANSCRIPT_WAIT_SECONDS, self._resume_if_nothing)
        elif isinstance(frame, InterimTranscriptionFrame) and direction == FrameDirection.DOWNSTREAM:
            # Interims are early guesses: only a few words of them interrupt at once (a misheard
            # "okay" must not); otherwise the final transcript or the commit timer decides.
            if (
                self._holding
                and len(normalized_words(frame.text)) >= BARGE_IN_INTERIM_WORDS
                and self._substantive(frame.text)
            ):
                await self._commit()
        elif isinstance(frame, TranscriptionFrame) and direction == FrameDirection.DOWNSTREAM:
            over_persona = self._holding or self._reply_active()
            if over_persona and not (self._substantive(frame.text) and not self._brief_aside(frame.text)):
                # An acknowledgement or the persona's own echo: it stays out of the turn.
                if self._holding:
                    await self._resume()
                await self.push_frame(
                    UserBackchannelFrame(text=frame.text, user_id=frame.user_id, timestamp=frame.timestamp),
                    direction,
                )
                return
            if self._holding:
                await self._commit()
            elif over_persona:
                # Words over the persona whose pause was undone before they were recognised
                # (the transcript came late), or over a reply still being composed: the user
                # said something, and it is what gets answered.
                await self._interrupt_reply()
        await self.push_frame(frame, direction)

    @property
    def holding(self) -> bool:
        """The persona's voice is paused for speech over it."""
        return self._holding

    def _substantive(self, text: str) -> bool:
        return not is_backchannel(text) and not is_echo(text, self._persona_words())

    def _brief_aside(self, text: str) -> bool:
        """A word or two in under `BRIEF_SPEECH_SECONDS` over the persona, not a request to stop.

        Short acknowledgements are what the recogniser gets wrong most ("okay" → "oh can"):
        how long the speech lasted says as much as the words.
        """
        words = normalized_words(text)
        return (
            self._speech_seconds < BRIEF_SPEECH_SECONDS
            and len(words) <= 2
            and not any(word in STOP_WORDS for word in words)
        )

    async def _on_user_started(self) -> None:
        if self._holding:
            # Paused early on the onset, and the VAD confirms speech: it is a barge-in if it goes
            # on (counted from the VAD's start, like speech the VAD alone caught).
            self._restart_timer(BARGE_IN_COMMIT_SECONDS, self._commit_if_still_speaking)
            return
        if not self._reply_active():
            return
        if self._pause_for_speech(self._clock()):
            self._restart_timer(BARGE_IN_COMMIT_SECONDS, self._commit_if_still_speaking)

    def _learn_echo(self, now: float, reply_active: bool) -> None:
        if reply_active and not self._user_speaking and not self._holding and self._voice.level_at(now) > 0:
            self._echo.append((now, self._mic.level(now, window=MIC_LEVEL_WINDOW_SECONDS)))
            # The last ECHO_HISTORY_SECONDS heard (not of the clock: while the user speaks over
            # the persona, what was heard before is what its echo is).
            while self._echo and self._echo[0][0] < now - ECHO_HISTORY_SECONDS:
                self._echo.popleft()

    def is_echo_level(self, now: float) -> bool:
        """The microphone's newest audio is no louder than the persona's voice coming back."""
        mic_level = self._mic.level(now, window=MIC_LEVEL_WINDOW_SECONDS)
        cutoff = now - ECHO_HISTORY_SKIP_SECONDS
        if self._user_speaking:  # the VAD noticed the speech late: leave out its first words
            cutoff = min(cutoff, self._speech_started_at - VAD_START_SECONDS - ECHO_HISTORY_SKIP_SECONDS)
        heard = [(at, level) for at, level in self._echo if at <= cutoff]
        if heard and heard[-1][0] - heard[0][0] >= ECHO_LEARN_SECONDS - 1e-9:
            return mic_level < ECHO_MARGIN * max(level for _, level in heard)
        voice_level = self._voice.level_at(now)
        return voice_level > 0 and mic_level < ECHO_LEVEL_RATIO * voice_level

    def _pause_for_speech(self, now: float) -> bool:
        """Pause the voice for speech over it, unless that speech is the voice's own echo."""
        if self.is_echo_level(now):
            logger.debug("speech over the persona at the echo's level: not paused")
            return False
        logger.debug("speech over the persona: voice paused")
        self._holding = True
        self._held_since = now
        self.last_pause_at = now
        self._voice.pause()
        return True

    async def _resume_unless_speaking(self) -> None:
        if self._holding and not self._user_speaking:
            await self._resume()

    def _restart_timer(self, delay: float, action: Callable[[], Awaitable[None]]) -> None:
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()

        async def fire() -> None:
            await asyncio.sleep(delay)
            self._timer = None
            await action()

        self._timer = self.create_task(fire(), f"{self}::barge_in_timer")

    async def _commit_if_still_speaking(self) -> None:
        if self._holding and self._user_speaking:
            await self._commit()

    async def _resume_if_nothing(self) -> None:
        if self._holding and not self._user_speaking:
            await self._resume()

    async def _resume(self) -> None:
        logger.debug("voice resumed")
        self._holding = False
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        self._timer = None
        self._voice.resume()

    async def _commit(self) -> None:
        if not self._holding:
            return
        self._holding = False
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        self._timer = None
        await self._interrupt_reply()

    async def _interrupt_reply(self) -> None:
        logger.debug("barge-in: the reply is interrupted")
        await self._interrupt()
        await self.push_frame(InterruptionFrame(), FrameDirection.DOWNSTREAM)

    async def cleanup(self) -> None:
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        await super().cleanup()
