"""Per-turn latency, stamped as it happens: the stages between the user's last word and the voice.

`TurnLatencyClock` takes monotonic stamps from where each moment is known, as it happens:

- the user's voice stopping: the VAD entering its STOPPING state (its first silent window after
  speech; `vad_state_changed`, a VAD state listener);
- the VAD's own "stopped" after its stop time of silence (`speech.ended`: `speech_ended`);
- the final transcript (`user.message`: `transcript_ready`);
- the turn decision (`turn.end`: `turn_ended`);
- the reply's first sentence out of the brain (the text before synthesis: `text_ready`);
- the reply's first voice handed to the encoder (the paced track's `on_piece`).

A typed turn starts at its arrival (`typed`) and has no listening stages. The stamps of one
turn are bound to the persona message that answers it when it starts speaking
(`answer_started`) and handed over when that message is over (`answer_over`), for the live
session to store off the voice path. No ORM here, and nothing slower than a comparison runs on
the audio path (`on_piece` is called every 20 ms).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pipecat.audio.vad.vad_analyzer import VADState

from calls.pipeline.transport import PlaybackListener

# The stages of a turn's latency, in order; their durations add up to the total.
STAGES = ("vad", "transcript", "turn", "brain", "audio")
# A sentence ends here: its text can be synthesised (the brain's first sentence is ready).
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(\s|$)")

TurnChannel = Literal["spoken", "typed"]


@dataclass
class TurnStamps:
    """One user turn and its answer, on the monotonic clock (None: not known, or not applicable)."""

    channel: TurnChannel
    speech_end: float | None = None  # the user's voice stopped (the VAD's first silent window)
    vad_stop: float | None = None  # the VAD said so, after its stop time (speech.ended)
    transcript: float | None = None  # the final transcript (user.message)
    turn_end: float | None = None  # the turn was decided over (turn.end); a typed turn: its arrival
    first_sentence: float | None = None  # the reply's first sentence left the brain
    first_audio: float | None = None  # the reply's first voice was handed to the encoder
    user_message_id: str = ""
    message_id: str = ""  # the persona message answering it

    @property
    def origin(self) -> float | None:
        """Where the turn's latency starts: the end of the user's speech, or a typed turn's arrival."""
        return self.speech_end if self.channel == "spoken" else self.turn_end

    @property
    def complete(self) -> bool:
        return self.origin is not None and self.turn_end is not None and self.first_audio is not None

    def stages_ms(self) -> dict[str, int | None]:
        """Each stage's duration in milliseconds (None: no such stage in this turn).

        A stage runs from the previous known moment to its own; a moment that came before the
        one before it (a reply started speculatively, released at the turn's end) makes its stage
        0 ms, so the stages always add up to `total_ms`.
        """
        points = {
            "vad": self.vad_stop,
            "transcript": self.transcript,
            "turn": self.turn_end,
            "brain": self.first_sentence,
            "audio": self.first_audio,
        }
        if self.channel == "typed":
            points["vad"] = points["transcript"] = None
            points["turn"] = None  # the origin itself
        stages: dict[str, int | None] = {}
        origin = self.origin
        if origin is None:
            return dict.fromkeys(STAGES)
        last_ms = 0
        for name in STAGES:
            moment = points[name]
            if moment is None:
                stages[name] = None
                continue
            at_ms = max(last_ms, round((moment - origin) * 1000))
            stages[name] = at_ms - last_ms
            last_ms = at_ms
        return stages

    def total_ms(self) -> int | None:
        stages = [value for value in self.stages_ms().values() if value is not None]
        return sum(stages) if self.complete else None


class TurnLatencyClock(PlaybackListener):
    """Stamps each turn's moments as they happen; one per call (see the module's docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._voice_stopped_at: float | None = None  # the VAD's latest STOPPING, while it lasts
        self._open: TurnStamps | None = None  # the turn being listened to
        self._decided: TurnStamps | None = None  # over, its answer not begun
        self._answering: TurnStamps | None = None  # bound to the persona message answering it
        self._sentence_for: TurnStamps | None = None  # waiting for its reply's first sentence
        self._sentence_text = ""
        self._audio_for: TurnStamps | None = None  # waiting for its reply's first voice

    # --- the listening side ---------------------------------------------------------------

    def vad_state_changed(self, state: VADState) -> None:
        """A VAD state listener: STOPPING is the first silent window after speech."""
        if state == VADState.STOPPING:
            self._voice_stopped_at = self._clock()
        elif state == VADState.SPEAKING:
            self._voice_stopped_at = None  # a pause inside the sentence

    def speech_ended(self) -> None:
        """The VAD said the user stopped: a spoken turn begins (a later stop replaces it)."""
        now = self._clock()
        speech_end = self._voice_stopped_at if self._voice_stopped_at is not None else now
        self._voice_stopped_at = None
        self._open = TurnStamps(channel="spoken", speech_end=min(speech_end, now), vad_stop=now)

    def transcript_ready(self, *, user_message_id: str = "") -> None:
        if self._open is not None and self._open.turn_end is None:
            self._open.transcript = self._clock()
            self._open.user_message_id = user_message_id or self._open.user_message_id

    def typed(self, *, user_message_id: str = "") -> None:
        """Typed text arrived: a turn with no listening stages, decided at once (`turn_ended`)."""
        self._open = TurnStamps(channel="typed", user_message_id=user_message_id)

    def turn_ended(self) -> None:
        turn = self._open
        if turn is None:
            return
        turn.turn_end = self._clock()
        self._open = None
        self._decided = self._sentence_for = turn
        self._sentence_text = ""
        self._audio_for = None

    # --- the answering side ---------------------------------------------------------------

    def text_ready(self, text: str, *, whole: bool = False) -> None:
        """Text of a reply on its way to synthesis; `whole`: a whole sentence (or the reply's end)."""
        turn = self._sentence_for
        if turn is None:
            return
        if not whole:
            self._sentence_text += text
            if _SENTENCE_END.search(self._sentence_text) is None:
                return
        elif not (text.strip() or self._sentence_text.strip()):
            return
        turn.first_sentence = self._clock()
        self._sentence_for = None
        self._sentence_text = ""
        self._audio_for = turn

    def on_piece(self, *, pcm: bytes, started_at: float, speaking: bool) -> None:
        turn = self._audio_for
        if speaking and turn is not None:
            turn.first_audio = started_at
            self._audio_for = None

    def answer_started(self, *, message_id: str) -> None:
        """A persona message began: it answers the decided turn, if one waits for its answer."""
        turn = self._decided
        if turn is None or turn.first_sentence is None:
            return  # a greeting, or speech that answers no turn (an app's say between turns)
        turn.message_id = message_id
        self._decided = None
        self._answering = turn

    @property
    def answering_message_id(self) -> str | None:
        """The persona message answering a turn now, if any."""
        return self._answering.message_id if self._answering is not None else None

    def answer_over(self, *, message_id: str) -> TurnStamps | None:
        """The persona message is over: its turn's stamps, if complete (None otherwise)."""
        turn = self._answering
        if turn is None or turn.message_id != message_id:
            return None
        self._answering = None
        if self._audio_for is turn:
            self._audio_for = None
        return turn if turn.complete else None
