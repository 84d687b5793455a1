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

Where each part lives:

- `words`: text rules (`text_completeness`, `turn_probability`, `is_backchannel`, `is_echo`).
- `settings`: `TurnSettings`, the thresholds from the persona.
- `vad`: Silero VAD (`InlineSileroVADAnalyzer`, `silero_session`, `vad_analyzer_build`).
- `smart_turn`: the SmartTurn model (`smart_turn_session`, `smart_turn_analyzer_build`).
- `stop_strategy`: `ParleyTurnStopStrategy` and `UserSideListener`.
- `barge_in`: `VoiceGuard` and its `OnsetDetector` and `LevelMeter`.
"""

from calls.pipeline.turns.barge_in import (
    BARGE_IN_COMMIT_SECONDS,
    BARGE_IN_INTERIM_WORDS,
    BARGE_IN_TRANSCRIPT_WAIT_SECONDS,
    BRIEF_SPEECH_SECONDS,
    EARLY_ONSET_WINDOWS,
    EARLY_PAUSE_CONFIRM_SECONDS,
    ECHO_HISTORY_SECONDS,
    ECHO_HISTORY_SKIP_SECONDS,
    ECHO_LEARN_SECONDS,
    ECHO_LEVEL_RATIO,
    ECHO_MARGIN,
    LEVEL_WINDOW_SECONDS,
    MIC_LEVEL_WINDOW_SECONDS,
    STOP_WORDS,
    LevelMeter,
    OnsetDetector,
    VoiceGuard,
)
from calls.pipeline.turns.settings import TurnSettings
from calls.pipeline.turns.smart_turn import smart_turn_analyzer_build, smart_turn_session
from calls.pipeline.turns.stop_strategy import (
    FINAL_TRANSCRIPT_WAIT_SECONDS,
    LATER_OPINION_SECONDS,
    ParleyTurnStopStrategy,
    UserSideListener,
)
from calls.pipeline.turns.vad import (
    VAD_CONFIDENCE,
    VAD_LEAD_IN_WINDOWS,
    VAD_MIN_VOLUME,
    VAD_QUIET_RESET_WINDOWS,
    VAD_START_SECONDS,
    VAD_STOP_SECONDS,
    InlineSileroVADAnalyzer,
    silero_session,
    vad_analyzer_build,
)
from calls.pipeline.turns.words import (
    BACKCHANNELS,
    CLOSING_WORDS,
    DANGLING_WORDS,
    PREFACES,
    QUESTION_OPENERS,
    is_backchannel,
    is_echo,
    normalized_words,
    text_completeness,
    turn_probability,
)

__all__ = [
    "BACKCHANNELS",
    "BARGE_IN_COMMIT_SECONDS",
    "BARGE_IN_INTERIM_WORDS",
    "BARGE_IN_TRANSCRIPT_WAIT_SECONDS",
    "BRIEF_SPEECH_SECONDS",
    "CLOSING_WORDS",
    "DANGLING_WORDS",
    "EARLY_ONSET_WINDOWS",
    "EARLY_PAUSE_CONFIRM_SECONDS",
    "ECHO_HISTORY_SECONDS",
    "ECHO_HISTORY_SKIP_SECONDS",
    "ECHO_LEARN_SECONDS",
    "ECHO_LEVEL_RATIO",
    "ECHO_MARGIN",
    "FINAL_TRANSCRIPT_WAIT_SECONDS",
    "LATER_OPINION_SECONDS",
    "LEVEL_WINDOW_SECONDS",
    "MIC_LEVEL_WINDOW_SECONDS",
    "PREFACES",
    "QUESTION_OPENERS",
    "STOP_WORDS",
    "VAD_CONFIDENCE",
    "VAD_LEAD_IN_WINDOWS",
    "VAD_MIN_VOLUME",
    "VAD_QUIET_RESET_WINDOWS",
    "VAD_START_SECONDS",
    "VAD_STOP_SECONDS",
    "InlineSileroVADAnalyzer",
    "LevelMeter",
    "OnsetDetector",
    "ParleyTurnStopStrategy",
    "TurnSettings",
    "UserSideListener",
    "VoiceGuard",
    "is_backchannel",
    "is_echo",
    "normalized_words",
    "silero_session",
    "smart_turn_analyzer_build",
    "smart_turn_session",
    "text_completeness",
    "turn_probability",
    "vad_analyzer_build",
]
