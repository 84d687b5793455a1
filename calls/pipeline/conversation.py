"""One call's conversation on pipecat: brain → speech synthesis → paced voice, with word tracking.

The pipeline is `input → user context → [response text] → brain → speech → output →
[playback tracker] → assistant context`. The two bracketed processors are Parley's: the
first notes what the persona is about to say, the second sees each word *as it is played*
(pipecat's output transport releases word frames on the audio clock) and tells the listener,
which turns that into `bot.*` events, data-channel captions and transcript rows. A persona that
sends audio metrics also gets a `UserAudioTap` on the input and a `BotAudioTap` on the voice
track (`audio_metrics`). No ORM here: configuration comes in as a plain dataclass,
results leave through `ConversationListener`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMMessagesAppendFrame,
    LLMTextFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.text.base_text_aggregator import TextType

from calls.pipeline.answer_gate import AppAnswerGate
from calls.pipeline.audio_metrics import AudioLevel, AudioSource, BotAudioTap, UserAudioTap
from calls.pipeline.brain.config import BrainTool, ToolKind
from calls.pipeline.frames import (
    SpeechMessageStartFrame,
    TalkStreamStartFrame,
    TalkTextFrame,
    VisemeTimelineFrame,
)
from calls.pipeline.latency import TurnLatencyClock
from calls.pipeline.lipsync import ipa_speech_events
from calls.pipeline.tools import DEFAULT_TOOL_TIMEOUT_SECONDS, PendingToolCall, ToolCalls
from calls.pipeline.transport import (
    INPUT_SAMPLE_RATE,
    OUTPUT_SAMPLE_RATE,
    PIECE_SECONDS,
    PLAYBACK_POSITION_KEY,
    MicrophoneAudioEnd,
    MicrophoneDrain,
    PacedAudioTrack,
    ParleyTransport,
    transport_params,
)
from calls.pipeline.turns import (
    ParleyTurnStopStrategy,
    TurnSettings,
    UserSideListener,
    VoiceGuard,
    smart_turn_analyzer_build,
    vad_analyzer_build,
)

logger = logging.getLogger(__name__)

# A user turn no strategy ended is ended by pipecat this long after the silence timer would
# have (seconds): longer than the recogniser may take for a final transcript (5 s).
TURN_STOP_TIMEOUT_EXTRA_SECONDS = 6.0
# How long stopping a pipeline may take before it is cancelled, in seconds.
STOP_TIMEOUT_SECONDS = 3.0
# A message whose voice has been silent this long is over (seconds); sentences of one reply
# follow each other much faster than this.
QUIET_SECONDS = 0.7
# How often the quiet check runs, in seconds.
QUIET_CHECK_SECONDS = 0.1
# An interruption holds the voice until it has passed the output (milliseconds); if it has not
# after this long, something is stuck and the voice is released anyway.
INTERRUPTION_HOLD_LIMIT_SECONDS = 3.0
# Talk-stream text is spoken a sentence at a time; this ends a sentence.
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s+")


@dataclass(frozen=True)
class ConversationConfig:
    """Everything a conversation needs to know about its persona, as plain values."""

    agent: str
    name: str
    greeting: str = ""
    system_prompt: str = ""
    language: str = "en-US"
    voice: str = "en-us+f3"
    tts_provider: str = "espeak"
    tts_model: str = ""
    tts_base_url: str = ""
    tts_api_key: str = ""
    stt_provider: str = "whisper"
    stt_model: str = ""
    stt_base_url: str = ""
    stt_api_key: str = ""
    # Extra words and phrases for the offline recogniser's persona model (one per item).
    stt_phrases: tuple[str, ...] = ()
    end_of_speech_sensitivity: float = 0.5
    silence_before_auto_end_turn_seconds: float = 1.5
    # False: no microphone processing at all (typed text only; tests of the speaking side).
    listening: bool = False
    brain_provider: str = "builtin"
    llm_base_url: str = ""
    llm_model: str = ""
    llm_api_key: str = ""
    llm_temperature: float = 0.7
    knowledge: tuple[tuple[str, str], ...] = ()
    avatar_look: dict[str, Any] = field(default_factory=dict)
    avatar_portrait: str = ""  # a file path: the uploaded portrait, animated instead of the drawn face
    skip_greeting: bool = False
    max_duration_seconds: float = 600.0
    idle_timeout_seconds: float = 60.0
    idle_warning_seconds: float = 15.0
    idle_check_in: str = ""  # said at the idle warning unless an app answers it
    # Report the microphone's and the voice's level every 100 ms (`audio.metrics`); off: no cost.
    send_audio_metrics: bool = False
    app_answer_timeout_seconds: float = 3.0
    tools: tuple[BrainTool, ...] = ()  # what the LLM may call (the OpenAI brain only)
    tool_timeout_seconds: float = DEFAULT_TOOL_TIMEOUT_SECONDS
    # Record the call (both sides, `calls.pipeline.recording`): the persona's consent setting.
    record: bool = False


class ConversationListener(UserSideListener):
    """What a conversation reports; the live session implements it."""

    async def on_bot_speaking(self, *, message_id: str, text: str) -> None: ...

    async def on_bot_word(
        self, *, message_id: str, word: str, index: int, correlation_id: str | None
    ) -> None: ...

    async def on_bot_finished(
        self, *, message_id: str, text: str, spoken: str, index: int, correlation_id: str | None
    ) -> None: ...

    async def on_bot_interrupted(
        self,
        *,
        message_id: str,
        text: str,
        spoken: str,
        index: int,
        played_ms: int,
        correlation_id: str | None,
    ) -> None: ...

    async def on_tool_call(self, *, message_id: str, calls: list[dict[str, str]]) -> None: ...

    async def on_tool_call_started(self, *, call: PendingToolCall) -> None: ...

    async def on_tool_call_completed(self, *, call: PendingToolCall, result: Any) -> None: ...

    async def on_tool_call_failed(self, *, call: PendingToolCall, error: str) -> None: ...

    async def on_talk_stream_interrupted(self, *, correlation_id: str) -> None: ...

    def on_audio_metrics(self, *, source: AudioSource, level: AudioLevel) -> None:
        """One 100 ms reading (only with `send_audio_metrics`). Called on the event loop from the
        audio path, 20 times a second: it must hand the reading on and return at once."""


class _SpeechPlan:
    """What the persona means to say (filled before synthesis) and what it has said so far."""

    def __init__(self) -> None:
        self.planned: list[str] = []
        self.correlation_id: str | None = None
        # The talk stream being played, if any: its messages carry its correlation id.
        self.talk_correlation_id: str | None = None
        self.message_id: str | None = None
        # The id the next message takes (an app's own, for its say/reply/stream); None: a new one.
        self.next_message_id: str | None = None
        self.spoken: list[str] = []
        self.start_samples = 0
        self.started_at = 0.0
        # The brain is composing a reply (from its first frame to its last), before any of its
        # text or voice exists: speech over it then drops it, as speech over the voice would.
        self.replying = False

    @property
    def planned_text(self) -> str:
        return "".join(self.planned).strip()


class ResponseTextCollector(FrameProcessor):
    """Before synthesis: remembers the text of the reply (LLM output or verbatim speech)."""

    def __init__(self, plan: _SpeechPlan, latency: TurnLatencyClock | None = None) -> None:
        super().__init__(name="ResponseTextCollector")
        self._plan = plan
        self._latency = latency  # told when the reply's first sentence is ready

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        latency = self._latency
        if isinstance(frame, LLMTextFrame):
            self._plan.planned.append(frame.text)
            if latency is not None:
                latency.text_ready(frame.text)
        elif isinstance(frame, TalkTextFrame):
            self._plan.planned.append((" " if self._plan.planned else "") + frame.text)
            if latency is not None:
                latency.text_ready(frame.text, whole=True)
        elif isinstance(frame, TTSSpeakFrame):
            # Verbatim speech (`Conversation.say`): its text reaches the plan with the message it
            # starts (`SpeechMessageStartFrame`, at the tracker). Added here, ahead of its audio,
            # it was taken by the voice still playing before it: an interrupted answer's last
            # audio started a message of the say's text under a made-up id.
            if latency is not None:
                latency.text_ready(frame.text, whole=True)
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._plan.replying = True
            if self._plan.message_id is None:
                self._plan.planned.clear()
        elif isinstance(frame, (LLMFullResponseEndFrame, InterruptionFrame)):
            self._plan.replying = False
            if latency is not None and isinstance(frame, LLMFullResponseEndFrame):
                latency.text_ready("", whole=True)  # a reply with no sentence end is whole now
        await self.push_frame(frame, direction)


class SpeechEndAligner(FrameProcessor):
    """Between synthesis and output: the end of speech follows its audio, not its last word.

    pipecat stamps `TTSStoppedFrame` with the time of the last word, so the output transport
    releases it on its clock queue instead of after the audio it ends; "bot stopped speaking"
    then only comes from a 3-second idle fallback. Without the stamp it is handled in order,
    right after the last audio chunk has been played.
    """

    def __init__(self) -> None:
        super().__init__(name="SpeechEndAligner")

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSStoppedFrame) and direction == FrameDirection.DOWNSTREAM:
            frame.pts = None
        await self.push_frame(frame, direction)


class PlaybackTracker(FrameProcessor):
    """After the output: turns played words and speaking state into listener calls.

    Frames without a timestamp leave the output stamped with their place in the voice and are
    handled here once the audio queued before them has been sent, so a `VisemeTimelineFrame`
    is handled just as its own audio starts (the moment to hand its mouth shapes to the face),
    and the end of a message once all of its voice has played.
    """

    def __init__(
        self,
        plan: _SpeechPlan,
        track: PacedAudioTrack,
        listener: ConversationListener,
        face: Any = None,
    ) -> None:
        super().__init__(name="PlaybackTracker")
        self._plan = plan
        self._track = track
        # The next interruption came from the user speaking over the persona: after its
        # bot.interrupted, the listener hears turn.continued (the seed's order).
        self.turn_continues = False
        self._listener = listener
        self._face = face  # a FaceAnimator, or None
        self._held: list[TTSTextFrame] = []  # words whose voice is paused
        # The TTS puts its words on the speech timeline (`VisemeTimelineFrame.words`, placed in
        # the voice); pipecat's clock-timed word frames then only go on to the context.
        self.words_on_timeline = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        position = (
            frame.metadata.get(PLAYBACK_POSITION_KEY) if direction == FrameDirection.DOWNSTREAM else None
        )
        if position is not None:
            # The output runs a little ahead of the voice: this frame's moment is when the
            # voice before it has been sent.
            await self._track.reached(position)
        plan = self._plan
        if isinstance(frame, VisemeTimelineFrame):
            if self._face is not None:
                self._face.speech_timeline_push(time.monotonic(), ipa_speech_events(frame.phonemes))
            if self.words_on_timeline and frame.words:
                await self._timeline_words_played(frame.words, position)
        elif isinstance(frame, BotStartedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            # Not for voice with nothing planned: the last of a finished message's audio (the
            # resampler's tail) can start the output again. Then the first played word starts it.
            if plan.message_id is None and plan.planned_text:
                await self._start_message()
        elif isinstance(frame, TTSTextFrame) and direction == FrameDirection.DOWNSTREAM:
            if self._track.paused or self._held:
                # The voice is paused (the user is speaking over it): its words are not being
                # heard, so they wait; an interruption drops them, a resume lets them out.
                self._held.append(frame)
                return
            await self._words_played(frame)
        elif isinstance(frame, BotStoppedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._finish()
        elif isinstance(frame, SpeechMessageStartFrame) and direction == FrameDirection.DOWNSTREAM:
            # What played before it was another message; this one says its text.
            await self._finish()
            plan.planned[:] = [frame.text]
            plan.next_message_id = frame.message_id
        elif isinstance(frame, TalkStreamStartFrame) and direction == FrameDirection.DOWNSTREAM:
            # The stream's audio comes next: what played before it was another message.
            await self._finish()
            plan.talk_correlation_id = plan.correlation_id = frame.correlation_id
            plan.next_message_id = frame.message_id
        elif isinstance(frame, LLMFullResponseEndFrame) and direction == FrameDirection.DOWNSTREAM:
            plan.talk_correlation_id = None  # the current message keeps its id to its end
        elif isinstance(frame, InterruptionFrame):
            # The output has dropped its queue: what it wrote meanwhile goes, and the voice is free.
            self._track.flush()
            self._held.clear()
            plan.talk_correlation_id = None
            if self._face is not None:
                self._face.speech_stop(time.monotonic())
            if plan.message_id is not None:
                message_id, spoken = plan.message_id, " ".join(plan.spoken)
                text, correlation_id = plan.planned_text, plan.correlation_id
                played_ms = int((self._track.samples_played - plan.start_samples) * 1000 / OUTPUT_SAMPLE_RATE)
                self._reset()
                await self._listener.on_bot_interrupted(
                    message_id=message_id,
                    text=text,
                    spoken=spoken,
                    index=len(spoken.split()),
                    played_ms=played_ms,
                    correlation_id=correlation_id,
                )
            else:
                self._plan.planned.clear()
            if self.turn_continues:
                self.turn_continues = False
                await self._listener.on_turn_continued()
        await self.push_frame(frame, direction)

    async def _words_played(self, frame: TTSTextFrame) -> None:
        if not self.words_on_timeline:
            await self._words_spoken(frame.text.split())

    async def _timeline_words_played(self, words: list[tuple[float, str]], position: int | None) -> None:
        """Each word once the piece of voice it starts in has been sent (`offset` seconds into
        the audio at `position`): a paused voice holds its words back with it."""
        for offset, word in words:
            if position is not None:
                await self._track.reached(position + int(max(0.0, offset) / PIECE_SECONDS) + 1)
            if self._track.held_seconds > 0 or self._track.readyState != "live":
                return  # released by an interruption's hold: this voice is not going to play
            await self._words_spoken(word.split())

    async def _words_spoken(self, words: list[str]) -> None:
        plan = self._plan
        if plan.message_id is None and words:
            # The output did not announce this speech (it still thought the last one was
            # going on): the first played word starts the message.
            await self._start_message()
        if plan.message_id is not None:
            for word in words:
                await self._listener.on_bot_word(
                    message_id=plan.message_id,
                    word=word,
                    index=len(plan.spoken),
                    correlation_id=plan.correlation_id,
                )
                plan.spoken.append(word)

    async def release_held_words(self) -> None:
        """Once the voice plays again after a pause, its held words are played too."""
        while self._held and not self._track.paused:
            frame = self._held.pop(0)
            await self._words_played(frame)
            await self.push_frame(frame, FrameDirection.DOWNSTREAM)

    @property
    def recent_words(self) -> list[str]:
        """What the persona has said in its current message (for the echo check)."""
        return list(self._plan.spoken[-30:])

    async def cut_short(self) -> None:
        """The call ends while a message is being spoken: it is over with what was heard (told as
        interrupted, so its words and the rest it meant are kept)."""
        plan = self._plan
        if plan.message_id is None:
            return
        message_id, spoken = plan.message_id, " ".join(plan.spoken)
        text, correlation_id = plan.planned_text, plan.correlation_id
        played_ms = int((self._track.samples_played - plan.start_samples) * 1000 / OUTPUT_SAMPLE_RATE)
        self._reset()
        await self._listener.on_bot_interrupted(
            message_id=message_id,
            text=text,
            spoken=spoken,
            index=len(spoken.split()),
            played_ms=played_ms,
            correlation_id=correlation_id,
        )

    async def _finish(self) -> None:
        plan = self._plan
        if plan.message_id is None:
            return
        message_id, spoken = plan.message_id, " ".join(plan.spoken)
        text, correlation_id = plan.planned_text, plan.correlation_id
        self._reset()
        await self._listener.on_bot_finished(
            message_id=message_id,
            text=text,
            spoken=spoken,
            index=len(spoken.split()),
            correlation_id=correlation_id,
        )

    async def finish_if_quiet(self) -> None:
        """End the current message once its voice has stopped for QUIET_SECONDS.

        pipecat's "bot stopped speaking" does not always come (a stop frame that overtakes
        its audio leaves only a fallback that can wait long); the voice going quiet is the
        fact that matters to the listener.
        """
        plan, track = self._plan, self._track
        if self._held and not track.paused:
            await self.release_held_words()
        if track.paused:
            return
        if plan.message_id is None or track.queued_seconds > 0 or track.last_voice_at is None:
            return
        if track.last_voice_at < plan.started_at:
            return  # this message has not made a sound yet
        if time.monotonic() - track.last_voice_at >= QUIET_SECONDS:
            await self._finish()

    @property
    def speaking(self) -> bool:
        return self._plan.message_id is not None

    async def _start_message(self) -> None:
        plan = self._plan
        plan.started_at = time.monotonic()
        plan.message_id = plan.next_message_id or "msg_" + secrets.token_hex(12)
        plan.next_message_id = None
        plan.spoken = []
        plan.start_samples = self._track.samples_played
        await self._listener.on_bot_speaking(message_id=plan.message_id, text=plan.planned_text)

    def _reset(self) -> None:
        self._plan.message_id = None
        self._plan.planned.clear()
        self._plan.spoken = []
        self._plan.correlation_id = self._plan.talk_correlation_id


def brain_config(config: ConversationConfig) -> Any:
    from calls.pipeline.brain import BrainConfig

    return BrainConfig.from_pairs(
        knowledge=config.knowledge,
        persona_id=config.agent,
        name=config.name,
        greeting=config.greeting,
        system_prompt=config.system_prompt,
        language=config.language,
        provider=config.brain_provider,
        llm_base_url=config.llm_base_url,
        llm_model=config.llm_model,
        llm_api_key=config.llm_api_key,
        llm_temperature=config.llm_temperature,
        tools=config.tools,
    )


def conversation_warm_up(config: ConversationConfig) -> list[str]:
    """Load now what this persona's first call would load (blocking; never on the event loop).

    The persona's face (its drawn layers or portrait, shared by every session of the look),
    the built-in brain's knowledge index and question worker, the offline recogniser's worker
    processes and the persona's language model, the turn model. Returns what was loaded.
    """
    from calls.pipeline.avatar.look import FaceLook
    from calls.pipeline.avatar.track import renderer_create
    from calls.pipeline.brain.knowledge import knowledge_index_build
    from calls.pipeline.listening.providers import recogniser_prepare
    from calls.pipeline.turns import smart_turn_session

    loaded: list[str] = []
    # Drawing a look's layers took 230 ms on a cold process, before the first call's first frame.
    try:
        renderer = renderer_create(
            FaceLook.from_dict(config.avatar_look, portrait=config.avatar_portrait or None)
        )
        renderer.prepare_speech()
        loaded.append("face")
    except Exception:  # the call will draw it (or say why) when it starts; the rest still loads
        logger.warning("warm-up: the face of %s could not be drawn", config.name, exc_info=True)
    brain = brain_config(config)
    if brain.provider == "builtin":
        knowledge_index_build(persona_id=brain.persona_id, entries=brain.knowledge, warm_query_worker=True)
        loaded.append("knowledge")
    if config.listening:
        smart_turn_session()
        if recogniser_prepare(config):
            loaded.append("recogniser")
    return loaded


class Conversation:
    """Builds and runs one call's pipeline; the live session drives it."""

    def __init__(
        self,
        *,
        config: ConversationConfig,
        track: PacedAudioTrack,
        microphone: MicrophoneDrain,
        listener: ConversationListener,
        face: Any = None,
        latency: TurnLatencyClock | None = None,
    ) -> None:
        self.config = config
        self.track = track
        # Each turn's stages, stamped as they happen (the live session stores them).
        self.latency = latency if latency is not None else TurnLatencyClock()
        track.listeners.append(self.latency)  # the reply's first voice
        self.listener = listener
        self.face = face
        self._plan = _SpeechPlan()
        self.transport = ParleyTransport(params=transport_params(), track=track, microphone=microphone)
        self._worker: PipelineWorker | None = None
        self._runner_task: asyncio.Task[None] | None = None
        self._tracker = PlaybackTracker(self._plan, track, listener, face)
        self._collector = ResponseTextCollector(self._plan, self.latency)
        self._quiet_watch: asyncio.Task[None] | None = None
        self._talk_stream_buffer = ""
        self._talk_stream_id: str | None = None  # the open talk stream's correlation id
        self._interrupted_talk_streams: set[str] = set()
        self.tool_calls = ToolCalls(
            tools=config.tools, listener=listener, default_timeout_seconds=config.tool_timeout_seconds
        )
        self.context: Any = None
        self._tts: Any = None
        self.stt: Any = None
        self.turn_strategy: ParleyTurnStopStrategy | None = None
        self.voice_guard: VoiceGuard | None = None
        # Whether an app answers this call's turns now (the agent API); the brain then waits.
        self.app_answers: Callable[[], bool] = lambda: False
        self.answer_gate = AppAnswerGate(
            app_answers=lambda: self.app_answers(), timeout_seconds=config.app_answer_timeout_seconds
        )
        self.vad: Any = None  # the listening VAD (InlineSileroVADAnalyzer), once built
        self._user_audio_tap: UserAudioTap | None = None
        self._bot_audio_tap: BotAudioTap | None = None

    @staticmethod
    def modules_load() -> None:
        """Import what building a pipeline imports (~0.6 s on a cold process), for a warm-up."""
        import pipecat.processors.aggregators.llm_response_universal
        import pipecat.turns.user_start
        import pipecat.turns.user_turn_strategies
        import pipecat.workers.runner  # noqa: F401

        import calls.pipeline.brain
        import calls.pipeline.listening.providers
        import calls.pipeline.speech.providers  # noqa: F401

    def _build(self) -> PipelineWorker:
        from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair

        from calls.pipeline.brain import build_context, build_llm_service
        from calls.pipeline.speech.providers import build_tts_service

        brain = brain_config(self.config)
        self.context = build_context(brain)
        listening: list[FrameProcessor] = []
        user_params = None
        if self.config.listening:
            listening, user_params = self._build_listening()
        else:
            from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregatorParams
            from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies

            # Nothing listens, so nothing decides turns: pipecat's default strategies would load
            # the SmartTurn model (~0.2 s of CPU and an ONNX thread pool) for every call.
            user_params = LLMUserAggregatorParams(
                user_turn_strategies=ExternalUserTurnStrategies(enable_interruptions=False)
            )
        aggregators = LLMContextAggregatorPair(self.context, user_params=user_params)
        llm = build_llm_service(brain)
        if brain.provider == "openai":
            self.tool_calls.register(llm)
        tts = self._tts = build_tts_service(self.config)
        self._tracker.words_on_timeline = bool(getattr(tts, "words_on_timeline", False))
        pipeline = Pipeline(
            [
                self.transport.input(),
                *listening,
                aggregators.user(),
                MicrophoneAudioEnd(),
                self.answer_gate,
                llm,
                self._collector,
                tts,
                SpeechEndAligner(),
                self.transport.output(),
                self._tracker,
                aggregators.assistant(),
            ]
        )
        return PipelineWorker(
            pipeline,
            params=PipelineParams(
                audio_in_sample_rate=INPUT_SAMPLE_RATE,
                audio_out_sample_rate=OUTPUT_SAMPLE_RATE,
                enable_metrics=False,
            ),
            enable_rtvi=False,
            # Parley tracks turns itself; pipecat's observer queued every frame push for nothing.
            enable_turn_tracking=False,
            idle_timeout_secs=None,
            conversation_id=self.config.agent,
        )

    def _build_listening(self) -> tuple[list[FrameProcessor], Any]:
        """Recogniser, barge-in guard and the user aggregator's VAD and turn strategies."""
        from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregatorParams
        from pipecat.turns.user_start import TranscriptionUserTurnStartStrategy, VADUserTurnStartStrategy
        from pipecat.turns.user_turn_strategies import UserTurnStrategies

        from calls.pipeline.listening.providers import build_stt_service

        settings = TurnSettings.from_persona(
            sensitivity=self.config.end_of_speech_sensitivity,
            silence_seconds=self.config.silence_before_auto_end_turn_seconds,
        )
        self.turn_strategy = ParleyTurnStopStrategy(
            turn_analyzer=smart_turn_analyzer_build(stop_secs=settings.silence_seconds),
            settings=settings,
            listener=self.listener,
        )
        vad = self.vad = vad_analyzer_build()
        vad.state_listeners.append(self.latency.vad_state_changed)
        vad.state_listeners.append(self.turn_strategy.vad_state_changed)
        self.stt = build_stt_service(self.config)
        if hasattr(self.stt, "vad_state_changed"):  # the offline recogniser settles in pauses
            vad.state_listeners.append(self.stt.vad_state_changed)
            self.stt.vad_position = lambda: vad.bytes_analysed
            self.stt.on_settled = self._settled_words
        self.voice_guard = VoiceGuard(
            voice=self.track,
            reply_active=self._reply_active,
            interrupt=self.barge_in,
            persona_words=lambda: self._tracker.recent_words,
            listener=self.listener,
        )
        user_params = LLMUserAggregatorParams(
            vad_analyzer=vad,
            user_turn_strategies=UserTurnStrategies(
                # Interruptions are VoiceGuard's: speech over the persona first pauses it.
                start=[
                    VADUserTurnStartStrategy(enable_interruptions=False),
                    TranscriptionUserTurnStartStrategy(enable_interruptions=False),
                ],
                stop=[self.turn_strategy],
            ),
            # pipecat ends a turn no strategy ended after this long. A late final transcript (a
            # loaded machine, a slow cloud recogniser) must still reach the stop strategy, which
            # then says turn.end: so this outlasts the recogniser's own time limit.
            user_turn_stop_timeout=settings.silence_seconds + TURN_STOP_TIMEOUT_EXTRA_SECONDS,
            empty_user_turn=None,  # a turn with no words (a cough, a backchannel) gets no answer
        )
        return [self.stt, self.voice_guard], user_params

    async def _settled_words(self, text: str) -> None:
        """The recogniser's words in a pause, before the VAD's stop: the reply may start on them.

        Not over the persona: there `VoiceGuard` decides what the words are (a barge-in, a
        backchannel, the persona's own echo) once they are final.
        """
        if self.turn_strategy is None or self._reply_active():
            logger.debug("settled words %r over the persona: not a reply's start", text)
            return
        if self.voice_guard is not None and self.voice_guard.holding:
            return
        await self.turn_strategy.on_provisional_transcript(text)

    def _reply_active(self) -> bool:
        """The persona is speaking, has voice queued, or is preparing a reply."""
        plan = self._plan
        return self._tracker.speaking or self.track.queued_seconds > 0 or bool(plan.planned) or plan.replying

    async def start(self) -> None:
        from pipecat.workers.runner import WorkerRunner

        self._worker = await asyncio.to_thread(self._build)  # loads models/clients off the loop
        if self.config.send_audio_metrics:  # here, on the loop whose tasks read the audio
            self._user_audio_tap = UserAudioTap(report=self._audio_metrics_report, vad=self.vad)
            self._user_audio_tap.attach(self.transport.input())
            self._bot_audio_tap = BotAudioTap(report=self._audio_metrics_report)
            self._bot_audio_tap.attach(self.track)
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self._worker)
        self._runner_task = asyncio.create_task(runner.run(), name=f"pipeline:{self.config.agent}")
        self._quiet_watch = asyncio.create_task(self._watch_quiet(), name=f"quiet:{self.config.agent}")

    def _audio_metrics_report(self, source: AudioSource, level: AudioLevel) -> None:
        try:
            self.listener.on_audio_metrics(source=source, level=level)
        except Exception:  # a meter must never stop the microphone or the voice
            logger.exception("reporting audio metrics failed")

    async def _watch_quiet(self) -> None:
        while True:
            await asyncio.sleep(QUIET_CHECK_SECONDS)
            if self.track.held_seconds > INTERRUPTION_HOLD_LIMIT_SECONDS:
                logger.warning("an interruption did not reach the voice output; releasing the voice")
                self.track.flush()
            try:
                await self._tracker.finish_if_quiet()
            except Exception:
                logger.exception("ending a quiet message failed")

    @property
    def speaking(self) -> bool:
        return self._tracker.speaking

    @property
    def current_message_id(self) -> str | None:
        """The persona message being played, if any."""
        return self._plan.message_id

    @property
    def reply_active(self) -> bool:
        return self._reply_active()

    def peer_ready(self) -> None:
        self.transport.output().peer_ready.set()

    async def _queue(self, frame: Frame) -> None:
        if self._worker is not None:
            await self._worker.queue_frame(frame)

    async def say(self, text: str, *, message_id: str | None = None) -> None:
        """Speak this text verbatim (greeting, /talk, an app's say), as a message of its own."""
        await self._queue(SpeechMessageStartFrame(text=text, message_id=message_id))
        await self._queue(TTSSpeakFrame(text))

    async def user_text(self, text: str) -> None:
        """Typed user text: add it to the context and answer it."""
        await self._queue(LLMMessagesAppendFrame(messages=[{"role": "user", "content": text}], run_llm=True))

    async def add_context(self, text: str) -> None:
        await self._queue(
            LLMMessagesAppendFrame(messages=[{"role": "system", "content": text}], run_llm=False)
        )

    async def barge_in(self) -> None:
        """The user spoke over the persona: stop its voice; turn.continued follows bot.interrupted.

        `VoiceGuard` pushes the `InterruptionFrame` itself, from where it stands in the
        pipeline, so the interruption reaches the brain ahead of the words that caused it (sent
        from the pipeline's start, it came after them and dropped the reply to them).
        """
        self._tracker.turn_continues = True
        await self._voice_stop()

    async def interrupt(self) -> None:
        """Stop the voice now; what was played stays, the rest is dropped."""
        await self._voice_stop()
        await self._queue(InterruptionFrame())

    async def _voice_stop(self) -> None:
        self.track.flush(hold=True)  # released when the InterruptionFrame passes the output
        await self._talk_stream_interrupted()

    async def talk_stream_chunk(
        self, *, content: str, end_of_speech: bool, correlation_id: str, message_id: str | None = None
    ) -> None:
        """Talk-stream text: one reply, each sentence spoken as soon as it is complete.

        The stream goes to the speech side as an LLM reply would (start, sentences, end), so
        its sentences share one audio context and its words carry its correlation id.
        Chunks of a stream the user interrupted are dropped.
        """
        if correlation_id in self._interrupted_talk_streams or self._worker is None:
            return
        if self._talk_stream_id != correlation_id:
            if self._talk_stream_id is not None:
                await self._talk_stream_end()  # a new stream ends one left open
            self._talk_stream_id = correlation_id
            await self._collector.queue_frame(
                TalkStreamStartFrame(correlation_id=correlation_id, message_id=message_id)
            )
        self._talk_stream_buffer += content
        while (match := _SENTENCE_END.search(self._talk_stream_buffer)) is not None:
            sentence = self._talk_stream_buffer[: match.end()].strip()
            self._talk_stream_buffer = self._talk_stream_buffer[match.end() :]
            if sentence:
                await self._collector.queue_frame(TalkTextFrame(sentence, TextType.SENTENCE))
        if end_of_speech:
            await self._talk_stream_end()

    async def _talk_stream_end(self) -> None:
        rest = self._talk_stream_buffer.strip()
        self._talk_stream_buffer = ""
        self._talk_stream_id = None
        if rest:
            await self._collector.queue_frame(TalkTextFrame(rest, TextType.SENTENCE))
        await self._collector.queue_frame(LLMFullResponseEndFrame())

    async def _talk_stream_interrupted(self) -> None:
        """An open talk stream is over: its queued text is dropped, and later chunks too."""
        correlation_id = self._talk_stream_id
        if correlation_id is None:
            return
        self._talk_stream_id = None
        self._talk_stream_buffer = ""
        self._interrupted_talk_streams.add(correlation_id)
        await self.listener.on_talk_stream_interrupted(correlation_id=correlation_id)

    async def talk_stream_abort(self, correlation_id: str) -> None:
        """Stop this stream (an app's reply cut by `turn.continued` or `cancel`): nothing more
        of it is heard. Its unsent text is dropped, later chunks too, and the voice stops if the
        persona is saying (or about to say) anything, since that can only be the stream's or
        older than the reason for the abort."""
        self._interrupted_talk_streams.add(correlation_id)
        if self._talk_stream_id == correlation_id:
            self._talk_stream_id = None
            self._talk_stream_buffer = ""
        if self._reply_active():
            await self.interrupt()

    def app_answered(self) -> None:
        """An app started answering the user's turn: the brain does not."""
        self.answer_gate.app_answered()

    async def tool_result(
        self, *, tool_call_id: str, result: Any, error: Any, kind: ToolKind | None = None
    ) -> bool:
        """The result of a waiting tool call (from the browser: kind "client"; the app: "server")."""
        return self.tool_calls.resolve(tool_call_id=tool_call_id, result=result, error=error, kind=kind)

    async def cut_short(self) -> None:
        """The call is ending: a message being spoken ends with what was heard of it."""
        await self._tracker.cut_short()

    async def stop(self) -> None:
        from calls.pipeline.speech.providers import tts_service_close

        try:
            await self._stop_pipeline()
        finally:
            if self._tts is not None:
                await tts_service_close(self._tts)

    async def _stop_pipeline(self) -> None:
        if self._user_audio_tap is not None:
            self._user_audio_tap.detach(self.transport.input())
            self._user_audio_tap = None
        if self._bot_audio_tap is not None:
            self._bot_audio_tap.detach(self.track)
            self._bot_audio_tap = None
        if self._quiet_watch is not None:
            self._quiet_watch.cancel()
            self._quiet_watch = None
        worker, task = self._worker, self._runner_task
        self._worker = self._runner_task = None
        self.tool_calls.cancel_all()
        if worker is None or task is None:
            return
        try:
            await worker.cancel(reason="session ended")
        except Exception:
            logger.exception("pipeline cancel failed")
        try:
            await asyncio.wait_for(task, STOP_TIMEOUT_SECONDS)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        except Exception:
            logger.exception("pipeline ended with an error")

    async def end_gracefully(self) -> None:
        await self._queue(EndFrame())
