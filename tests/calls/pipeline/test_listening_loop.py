"""The listening persona's pipeline, end to end without WebRTC.

A real `Conversation` (Silero VAD, SmartTurn v3.2, the offline recogniser, the built-in brain,
espeak-ng) hears a scripted microphone that plays speech made by espeak-ng in another voice,
and its voice is pulled from the paced track in real time as aiortc would. The events the
listener receives are checked against the agent seed's real-time flow. The loop itself is
`tests.fakes.conversation_loop` (the `loop_factory` fixture: conftest.py).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import numpy as np

from calls.pipeline.turns import TurnSettings, is_backchannel, is_echo, text_completeness, turn_probability
from tests.fakes.conversation_loop import loop_make


async def test_a_spoken_question_is_heard_understood_and_answered_in_the_seed_order(loop_factory):
    loop = await loop_factory()
    await asyncio.sleep(0.5)  # room noise first, as with a real microphone
    _, spoken_end = await loop.say("Are you open on Monday?")
    listener = loop.listener
    finished = await listener.wait_for("bot.finished", within=40)

    names = [name for name in listener.names() if name not in ("bot.word", "user.speaking")]
    assert names[0] == "speech.started", names
    assert "turn.end" in names, listener.events
    assert names.index("speech.ended") < names.index("user.message") < names.index("turn.end"), names
    assert names.index("turn.end") < names.index("bot.speaking") < names.index("bot.finished"), names
    assert listener.of("user.speaking"), "interim transcripts while the user spoke"
    heard = listener.of("user.message")[0]["text"].lower()
    assert "open on monday" in heard, (heard, names)
    turn = listener.of("turn.end")[0]
    assert 0.0 <= turn["probability"] <= 1.0
    assert "open on monday" in turn["text"].lower()
    # Answered from the knowledge entry, in words actually played.
    assert "closed on mondays" in finished["spoken"].lower()
    words = [data["word"] for data in listener.of("bot.word")]
    assert len(words) == len(finished["spoken"].split())
    # The reply started soon after the user stopped (generous here; bench/ measures it).
    assert loop.loud_at and loop.loud_at[0] - spoken_end < 3.0


async def test_interim_transcripts_only_grow(loop_factory):
    loop = await loop_factory()
    await asyncio.sleep(0.3)
    await loop.say("Can I order a birthday cake for Saturday please?")
    listener = loop.listener
    await listener.wait_for("user.message", within=30)
    interims = [data["text"] for data in listener.of("user.speaking")]
    assert interims
    for earlier, later in itertools.pairwise(interims):
        assert later.startswith(earlier), (earlier, later)


async def test_speaking_over_the_persona_stops_its_voice_and_keeps_only_what_was_played(loop_factory):
    loop = await loop_factory()
    listener = loop.listener
    await asyncio.sleep(0.3)
    await loop.say("What is on the menu?")
    speaking = await listener.wait_for("bot.speaking", within=30)
    await asyncio.sleep(1.5)  # let a few words play
    started, _ = await loop.say("Sorry, actually, where are you located?", lead_seconds=0.0)
    interrupted = await listener.wait_for("bot.interrupted", within=20)
    interrupted_at = listener.first_at("bot.interrupted") or 0.0
    assert interrupted["message_id"] == speaking["message_id"]
    # Its voice stopped: nothing of that message was played after the pause plus one piece.
    pause_at = loop.conversation.voice_guard.last_pause_at
    assert pause_at is not None and pause_at >= started
    print(f"barge-in: the voice paused {1000 * (pause_at - started):.0f} ms after the speech began")
    late = [at for at in loop.loud_at if pause_at + 0.05 < at < pause_at + 0.6]
    assert not late, f"voice kept playing {len(late)} pieces after the pause"
    spoken = interrupted["spoken"].split()
    assert 0 < len(spoken) < len(interrupted["text"].split())
    assert interrupted["played_ms"] > 0
    played_words = [
        data["word"] for data in listener.of("bot.word") if data["message_id"] == speaking["message_id"]
    ]
    assert played_words == spoken
    # The interruption continues the turn, and the new question gets its own answer.
    assert "turn.continued" in listener.names()
    # The new question gets its own answer (what it says depends on the recogniser).
    await listener.wait_for("bot.finished", after=interrupted_at, within=40)


async def test_speaking_while_the_reply_is_composed_drops_it_and_answers_what_was_said_last():
    # A model that thinks for 3 s: the user goes on before a word of its reply exists (seen in
    # the browser: "Sorry," then "where are you located?"). The reply to the first question
    # must not be spoken over the user, and the question after it must get its answer (the
    # interruption once reached the brain after that question and dropped its reply instead).
    from tests.fakes.openai_server import FakeOpenAIServer, TextReply

    async with FakeOpenAIServer() as server:
        server.script(
            TextReply(
                pieces=("We bake sourdough, ", "buns and croissants every morning."), thinking_seconds=3.0
            ),
            TextReply(pieces=("We're at 42 Linden Street, ", "next to the library.")),
        )
        loop = await loop_make(brain_provider="openai", llm_base_url=server.base_url, llm_model="fake-model")
        listener = loop.listener
        try:
            await asyncio.sleep(0.3)
            await loop.say("What is on the menu?")
            await listener.wait_for("turn.end", within=30)
            await loop.say("Where are you located?", lead_seconds=0.0)
            finished = await listener.wait_for("bot.finished", within=40)
            await asyncio.sleep(3.5)  # long enough for the first reply to have been spoken
        finally:
            await loop.stop()
    spoken = [data["text"] for data in listener.of("bot.speaking")]
    assert not any("sourdough" in text for text in spoken), (spoken, listener.names())
    assert "linden street" in finished["spoken"].lower(), finished
    assert "turn.continued" in listener.names(), listener.names()
    # The second request answers the whole conversation, the last question included.
    last = server.requests[-1].messages
    assert last[-1]["role"] == "user" and "located" in str(last[-1]["content"]).lower(), last


async def test_a_backchannel_while_the_persona_speaks_does_not_interrupt_it(loop_factory):
    loop = await loop_factory()
    listener = loop.listener
    await asyncio.sleep(0.3)
    await loop.say("What is on the menu?")
    await listener.wait_for("bot.speaking", within=30)
    conversation = loop.conversation
    started_on = _provisional_starts(conversation)
    await asyncio.sleep(1.0)
    await loop.say("Okay.", lead_seconds=0.0)
    finished = await listener.wait_for("bot.finished", within=40)
    heard = [
        (name, data.get("text")) for _, name, data in listener.events if name.startswith(("user", "turn"))
    ]
    assert "bot.interrupted" not in listener.names(), heard
    assert "croissants" in finished["spoken"].lower() or "sourdough" in finished["spoken"].lower()
    assert not started_on, started_on


async def test_words_settled_over_the_persona_do_not_start_a_reply(loop_factory):
    # Words the recogniser settles on in a pause over the persona must not start a reply: only
    # VoiceGuard may decide what they are, once final. Whether the recogniser's settled decode
    # ends within the VAD's stop wait depends on the machine's load, so the settled words are
    # told here as the recogniser tells them.
    loop = await loop_factory()
    listener = loop.listener
    await asyncio.sleep(0.3)
    await loop.say("What is on the menu?")
    await listener.wait_for("bot.speaking", within=30)
    conversation = loop.conversation
    started_on = _provisional_starts(conversation)
    await conversation.stt.on_settled("Okay.")
    finished = await listener.wait_for("bot.finished", within=40)
    assert not started_on, started_on
    assert "croissants" in finished["spoken"].lower() or "sourdough" in finished["spoken"].lower()
    assert listener.names().count("turn.end") == 1, listener.names()


def _provisional_starts(conversation) -> list[str]:
    """The texts the turn logic is offered as a reply's start, from now on."""
    started_on: list[str] = []
    provisional = conversation.turn_strategy.on_provisional_transcript

    async def start_on(text: str) -> None:
        started_on.append(text)
        await provisional(text)

    conversation.turn_strategy.on_provisional_transcript = start_on
    return started_on


async def test_a_persona_can_hear_through_an_openai_compatible_recogniser():
    # The fake's transcript stands in for the cloud model; what is checked is Parley's side: the
    # request (a 16 kHz WAV of the utterance, model, language, key) and what the turn does with
    # the answer.
    from tests.fakes.openai_server import FakeOpenAIServer

    async with FakeOpenAIServer() as server:
        server.script_transcripts("What are your opening hours?")
        loop = await loop_make(
            stt_provider="openai",
            stt_base_url=server.base_url,
            stt_api_key="sk-test-recogniser",
            stt_model="whisper-1",
            language="en-GB",
        )
        try:
            await asyncio.sleep(0.3)
            await loop.say("What are your opening hours?")
            listener = loop.listener
            finished = await listener.wait_for("bot.finished", within=40)
        finally:
            await loop.stop()
    assert len(server.transcriptions) == 1
    sent = server.transcriptions[0]
    assert sent.fields["model"] == "whisper-1" and sent.fields["language"] == "en"
    assert sent.headers["Authorization"] == "Bearer sk-test-recogniser"
    assert sent.sample_rate == 16_000 and 1.0 < sent.seconds < 4.0, sent
    assert listener.of("user.message")[0]["text"] == "What are your opening hours?"
    assert "turn.end" in listener.names()
    assert "tuesday" in finished["spoken"].lower()


class SpeakerEcho:
    """The persona's voice coming back into the microphone, `gain` as loud (what a browser's echo
    canceller leaves is quieter still)."""

    def __init__(self, microphone: Any, gain: float) -> None:
        self.microphone, self.gain = microphone, gain

    def on_piece(self, *, pcm: bytes, started_at: float, speaking: bool) -> None:
        if speaking:
            self.microphone.mix_in(np.frombuffer(pcm, dtype=np.int16).astype(np.float32) * self.gain)


async def test_the_personas_own_voice_in_the_microphone_does_not_interrupt_it(loop_factory):
    loop = await loop_factory()
    listener = loop.listener
    loop.conversation.track.listeners.append(SpeakerEcho(loop.microphone, gain=0.25))
    await asyncio.sleep(0.3)
    await loop.conversation.user_text("What is on the menu?")
    finished = await listener.wait_for("bot.finished", within=40)
    assert "bot.interrupted" not in listener.names()
    assert "user.message" not in listener.names(), listener.of("user.message")
    assert "croissants" in finished["spoken"].lower() or "sourdough" in finished["spoken"].lower()
    assert not loop.conversation.track.paused


def test_turn_settings_follow_the_persona_sensitivity():
    eager_person = TurnSettings.from_persona(sensitivity=1.0, silence_seconds=0.8)
    patient = TurnSettings.from_persona(sensitivity=0.0, silence_seconds=3.0)
    assert eager_person.confident < patient.confident
    assert eager_person.eager < eager_person.confident
    assert eager_person.eager_confirm_seconds < patient.eager_confirm_seconds
    assert eager_person.eager_confirm_seconds <= eager_person.silence_seconds
    clamped = TurnSettings.from_persona(sensitivity=7, silence_seconds=-1)
    assert clamped.sensitivity == 1.0 and clamped.silence_seconds == 0.1


def test_backchannels_and_echo_are_told_apart_from_questions():
    for text in ("Mm-hmm.", "okay", "Right, right.", "yeah", "uh huh", "I see"):
        assert is_backchannel(text), text
    for text in ("wait", "what time do you close", "no stop", "okay but what about Sunday"):
        assert not is_backchannel(text), text
    played = "We are open Tuesday to Friday from seven".split()
    assert is_echo("open Tuesday to Friday", played)
    assert not is_echo("open on Monday", played)


def test_the_words_temper_the_turn_model():
    assert text_completeness("Can I order a cake for") == 0.1
    assert text_completeness("What are your opening hours?") == 0.9
    assert text_completeness("Hello") is None
    assert text_completeness("Where are you?") == 0.9  # "you" ends many whole questions
    assert text_completeness("I think so") is None
    assert text_completeness("I would like to speak to the manager please") == 0.9
    assert text_completeness("Please") is None  # too short to tell
    # Whisper writes a sentence left hanging with an ellipsis, a word cut off with a dash.
    assert text_completeness("My phone number is...") == text_completeness("I would like to m-") == 0.1
    assert text_completeness("So the thing is\u2026") == 0.1
    assert text_completeness("My phone number is 555 1234.") is None
    # A preface alone ("Wait, do you deliver?" pauses at the comma) has not said anything yet.
    assert text_completeness("Wait,") == text_completeness("Hold on") == text_completeness("sorry") == 0.1
    assert text_completeness("Sorry about that, thank you") is None
    assert turn_probability(0.95, "Wait,") < TurnSettings().confident
    # A whole question the acoustic model doubted, and a dangling one it was sure of.
    assert turn_probability(0.37, "What are your opening hours?") > TurnSettings().confident
    assert turn_probability(0.95, "Can I order a cake for") < TurnSettings().confident
    assert turn_probability(0.42, "Hello") == 0.42


async def test_two_texts_said_back_to_back_are_two_messages(loop_factory):
    # Queued together (two /talk requests while the session connected), the second text's voice
    # follows the first's without a pause; each is still its own message with its own text.
    loop = await loop_factory()
    first, second = "Welcome back!", "Fresh sourdough comes out of the oven at seven."
    await loop.conversation.say(first)
    await loop.conversation.say(second)
    listener = loop.listener
    await listener.wait_for("bot.finished", within=30)
    last = await listener.wait_for("bot.finished", after=listener.first_at("bot.finished") + 1e-9, within=30)
    finished = listener.of("bot.finished")
    assert [data["spoken"] for data in finished] == [first, second], finished
    assert [data["text"] for data in finished] == [first, second], finished
    assert finished[0]["message_id"] != last["message_id"]
    assert [data["text"] for data in listener.of("bot.speaking")] == [first, second]


async def test_a_message_being_spoken_when_the_call_ends_is_kept_with_what_was_played(loop_factory):
    loop = await loop_factory()
    listener = loop.listener
    await loop.conversation.say(
        "We bake sourdough, rye and seeded loaves every morning, and cardamom buns on weekends."
    )
    speaking = await listener.wait_for("bot.speaking", within=30)
    await asyncio.sleep(1.0)  # a few words play, then the call ends
    await loop.conversation.cut_short()
    [interrupted] = listener.of("bot.interrupted")
    assert interrupted["message_id"] == speaking["message_id"]
    spoken = interrupted["spoken"].split()
    assert 0 < len(spoken) < len(interrupted["text"].split())
    assert interrupted["text"].startswith("We bake sourdough")
    await loop.conversation.cut_short()  # nothing is being spoken any more: nothing more is told
    assert len(listener.of("bot.interrupted")) == 1
    assert not listener.of("bot.finished")


async def test_a_line_said_right_after_an_interruption_is_one_message_under_its_own_id(loop_factory):
    """An app that cuts the persona off and says a line at once: the line is spoken as the app's
    message, and the voice of the cut answer still draining starts no message of its own."""
    loop = await loop_factory()
    listener = loop.listener
    await loop.conversation.say(
        "We bake sourdough, rye and seeded loaves every morning, and cardamom buns on weekends.",
        message_id="msg_answer",
    )
    await listener.wait_for("bot.speaking", within=30)
    await asyncio.sleep(0.8)
    await loop.conversation.interrupt()
    await loop.conversation.say("Thanks for calling, goodbye!", message_id="msg_app_goodbye")
    await listener.wait_for("bot.finished", within=30)
    speaking = [data["message_id"] for data in listener.of("bot.speaking")]
    assert speaking == ["msg_answer", "msg_app_goodbye"]
    assert [data["message_id"] for data in listener.of("bot.interrupted")] == ["msg_answer"]
    [finished] = listener.of("bot.finished")
    assert finished["message_id"] == "msg_app_goodbye"
    assert finished["text"] == "Thanks for calling, goodbye!"
