"""The turn latency clock: each turn's moments stamped in order, bound to the answer, added up."""

from __future__ import annotations

from pipecat.audio.vad.vad_analyzer import VADState

from calls.pipeline.latency import STAGES, TurnLatencyClock


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def at(self, seconds: float) -> FakeClock:
        self.now = seconds
        return self


def spoken_turn(
    clock: FakeClock, latency: TurnLatencyClock, *, message_id: str = "msg_a", start: float = 100.0
) -> None:
    clock.at(start)
    latency.vad_state_changed(VADState.STOPPING)  # the voice stopped
    clock.at(start + 0.2)
    latency.speech_ended()
    clock.at(start + 0.35)
    latency.transcript_ready(user_message_id="msg_u")
    clock.at(start + 0.4)
    latency.turn_ended()
    clock.at(start + 0.45)
    latency.text_ready("We open at ")
    clock.at(start + 0.5)
    latency.text_ready("eight. ")  # the first sentence is whole here
    latency.on_piece(pcm=b"", started_at=start + 0.55, speaking=False)  # silence: not the answer
    latency.on_piece(pcm=b"", started_at=start + 0.62, speaking=True)
    latency.on_piece(pcm=b"", started_at=start + 0.64, speaking=True)
    latency.answer_started(message_id=message_id)


def test_a_spoken_turn_is_stamped_stage_by_stage_and_the_stages_add_up_to_the_total():
    clock = FakeClock()
    latency = TurnLatencyClock(clock=clock)
    spoken_turn(clock, latency)

    stamps = latency.answer_over(message_id="msg_a")

    assert stamps is not None and stamps.channel == "spoken"
    assert stamps.user_message_id == "msg_u" and stamps.message_id == "msg_a"
    assert stamps.stages_ms() == {"vad": 200, "transcript": 150, "turn": 50, "brain": 100, "audio": 120}
    assert stamps.total_ms() == 620
    assert latency.answer_over(message_id="msg_a") is None  # handed over once


def test_a_pause_inside_the_sentence_does_not_count_as_the_end_of_speech():
    clock = FakeClock()
    latency = TurnLatencyClock(clock=clock)
    latency.vad_state_changed(VADState.STOPPING)
    clock.at(100.1)
    latency.vad_state_changed(VADState.SPEAKING)  # the user went on
    clock.at(101.0)
    latency.vad_state_changed(VADState.STOPPING)
    clock.at(101.2)
    latency.speech_ended()
    latency.turn_ended()

    assert latency._decided is not None and latency._decided.speech_end == 101.0


def test_a_typed_turn_has_no_listening_stages():
    clock = FakeClock()
    latency = TurnLatencyClock(clock=clock)
    latency.typed(user_message_id="msg_t")
    latency.turn_ended()
    clock.at(100.3)
    latency.text_ready("Done, it's on hold.", whole=True)
    latency.on_piece(pcm=b"", started_at=100.5, speaking=True)
    latency.answer_started(message_id="msg_b")

    stamps = latency.answer_over(message_id="msg_b")

    assert stamps is not None and stamps.channel == "typed"
    assert stamps.stages_ms() == {"vad": None, "transcript": None, "turn": None, "brain": 300, "audio": 200}
    assert stamps.total_ms() == 500


def test_a_reply_ready_before_the_turn_was_decided_counts_its_brain_as_zero_and_still_adds_up():
    """The final transcript stamped after the turn decision (out of order): no negative stage."""
    clock = FakeClock()
    latency = TurnLatencyClock(clock=clock)
    latency.vad_state_changed(VADState.STOPPING)
    clock.at(100.2)
    latency.speech_ended()
    clock.at(100.3)
    latency.transcript_ready()
    clock.at(100.3)
    latency.turn_ended()
    latency.text_ready("Yes.", whole=True)
    latency.on_piece(pcm=b"", started_at=100.25, speaking=True)  # stamped before the sentence
    latency.answer_started(message_id="msg_c")

    stamps = latency.answer_over(message_id="msg_c")

    assert stamps is not None
    stages = stamps.stages_ms()
    assert all(value is not None and value >= 0 for value in stages.values())
    assert stages["brain"] == 0 and stages["audio"] == 0
    assert sum(v for v in stages.values() if v is not None) == stamps.total_ms() == 300


def test_a_greeting_and_speech_that_answers_no_turn_are_not_recorded():
    clock = FakeClock()
    latency = TurnLatencyClock(clock=clock)
    latency.text_ready("Hi, I'm Mara.", whole=True)
    latency.on_piece(pcm=b"", started_at=100.1, speaking=True)
    latency.answer_started(message_id="msg_greet")
    assert latency.answer_over(message_id="msg_greet") is None


def test_an_answer_that_never_made_a_sound_is_not_recorded_and_the_next_turn_is():
    clock = FakeClock()
    latency = TurnLatencyClock(clock=clock)
    latency.vad_state_changed(VADState.STOPPING)
    latency.speech_ended()
    latency.turn_ended()
    latency.text_ready("Sure.", whole=True)
    latency.answer_started(message_id="msg_cut")  # cut before its first voice
    assert latency.answer_over(message_id="msg_cut") is None

    spoken_turn(clock, latency, message_id="msg_next", start=105.0)
    stamps = latency.answer_over(message_id="msg_next")
    assert stamps is not None and stamps.total_ms() == 620
    assert list(stamps.stages_ms()) == list(STAGES)
