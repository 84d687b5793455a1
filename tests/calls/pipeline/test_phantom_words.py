"""No phantom words: a cough, breathing, a door, music or a noisy room never become words.

Whisper writes text for sounds without speech ("Thank you.", "(coughs)", or, biased by the
persona's prompt, one of its questions). Each sound of `tests.fakes.sounds` is played to the
recogniser with the VAD's frames around it, as if Silero had taken it for speech (the worst
case: only the recogniser can refuse it), as a voice note, and to the whole conversation, idle
and while the persona speaks. Speech still gets through, after a sound and over one.
"""

from __future__ import annotations

import asyncio
import inspect

import numpy as np
import pytest
import soxr
from pipecat.frames.frames import InterimTranscriptionFrame, TranscriptionFrame
from pipecat.tests.utils import run_test

from calls.pipeline.listening.whisper import persona_prompt, phantom_reason, whisper_recogniser
from calls.pipeline.turns import normalized_words
from personas.management.commands.seed_demo import MARA, MARA_KNOWLEDGE
from tests.fakes.hearing import MarkedWhisperSTTService
from tests.fakes.sounds import SOUNDS, breathing, chair_scrape, cough, cough_by_a_fan, door, music, ogg_opus
from tests.fakes.spoken import RATE, heard_frames, spoken_pcm

QUESTION = "What are your opening hours?"


def heard_as_the_question(texts: list[str]) -> bool:
    """One transcript, and it is the question: as many words, ending as it ends.

    espeak says the same sentence slightly differently from one call to the next in a process
    (it keeps state between utterances: 65,883 to 66,388 samples for this question, and a
    different waveform each time), and on some of those tiny.en hears its start as "What's on".
    A sound turned into words adds words; a question lost or cut loses its end.
    """
    if len(texts) != 1:
        return False
    words, question = normalized_words(texts[0]), normalized_words(QUESTION)
    return len(words) == len(question) and words[-3:] == question[-3:]


# After a sound has been played into the conversation, how long to watch for what it may cause
# (seconds): the VAD's stop, the final transcript and the turn's wait for it, with room to spare.
SETTLE_AFTER_SOUND_SECONDS = 3.0


def mara_service() -> MarkedWhisperSTTService:
    # The demo persona's prompt: on noise Whisper tends to echo the prompt's own questions.
    return MarkedWhisperSTTService(name=MARA["name"], knowledge=tuple(MARA_KNOWLEDGE))


def words_heard(frames: list) -> list[str]:
    """The transcripts, final and interim, among the frames a recogniser pushed."""
    return [
        frame.text
        for frame in frames
        if isinstance(frame, TranscriptionFrame | InterimTranscriptionFrame) and frame.text.strip()
    ]


def finals(frames: list) -> list[str]:
    return [frame.text for frame in frames if isinstance(frame, TranscriptionFrame)]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


# What decides ---------------------------------------------------------------------------------


def test_thank_you_on_a_window_whisper_thinks_silent_is_dropped():
    assert phantom_reason("Thank you.", no_speech_prob=0.7, avg_logprob=-0.4)


def test_a_sound_annotation_alone_is_dropped():
    assert phantom_reason("(coughs)", no_speech_prob=0.05, avg_logprob=-0.2) == "only a sound annotation"
    assert phantom_reason("[Music] ♪", no_speech_prob=0.05, avg_logprob=-0.2)


def test_thank_you_decoded_with_confidence_is_kept():
    assert phantom_reason("Thank you.", no_speech_prob=0.03, avg_logprob=-0.15, rms=1800.0) == ""


def test_words_in_audio_too_quiet_for_speech_are_dropped():
    assert "too quiet" in phantom_reason("Do you deliver?", no_speech_prob=0.01, avg_logprob=-0.1, rms=40.0)


def test_words_whisper_doubts_are_speech_at_all_are_dropped_unless_it_is_sure_of_them():
    # What tiny.en wrote for a fan's noise and for a chair's squeal with Mara's prompt.
    assert phantom_reason("What are you doing?", no_speech_prob=0.45, avg_logprob=-0.97, rms=919.0)
    assert phantom_reason("What's up?", no_speech_prob=0.39, avg_logprob=-0.36, rms=1478.0)
    # The same words decoded from speech, and a question asked over a loud fan, are kept.
    assert phantom_reason("What are you doing?", no_speech_prob=0.02, avg_logprob=-0.2, rms=2500.0) == ""
    assert phantom_reason("Where are you?", no_speech_prob=0.17, avg_logprob=-0.4, rms=1200.0) == ""


def test_a_failed_decoding_or_a_loop_is_not_speech_when_whisper_doubts_there_was_any():
    # What tiny.en wrote for breathing and for a chair's squeal with Mara's prompt: words it could
    # not decode (mean log-probability below Whisper's own failure threshold, -1) or a decoding
    # that ran to its bound, where it had some doubt of speech.
    assert "failed decoding" in phantom_reason("I'm...", no_speech_prob=0.06, avg_logprob=-1.84, rms=1500.0)
    chair = "That's that's that's that's that's that's that's that's that's that's that's that"
    assert "loop" in phantom_reason(
        "That's that", no_speech_prob=0.23, avg_logprob=-0.32, rms=3000.0, looped=True, raw=chair
    )
    breath = "I'm... ... ... ... ... ... ... ... ... ... ... ..."
    assert "loop" in phantom_reason("I'm...", no_speech_prob=0.07, avg_logprob=-0.34, looped=True, raw=breath)
    # The same sounds decoded on an AMD EPYC (CTranslate2 on oneDNN, not MKL): a little less doubt.
    assert "loop" in phantom_reason(
        "I'm...", no_speech_prob=0.036, avg_logprob=-0.34, looped=True, raw=breath
    )
    assert "failed decoding" in phantom_reason(
        "That's not that.", no_speech_prob=0.046, avg_logprob=-1.25, rms=3000.0
    )
    # Speech that tiny.en hardly decoded keeps its words (it had no doubt of speech): "Five five"
    # of a human reader, a mumbled espeak question.
    assert phantom_reason("Five five", no_speech_prob=0.064, avg_logprob=-0.8, rms=2000.0) == ""
    assert (
        phantom_reason("Is both milk-act trucks?", no_speech_prob=0.014, avg_logprob=-1.12, rms=2000.0) == ""
    )
    fives = " ".join(["5"] * 32)
    assert (
        phantom_reason("5", no_speech_prob=0.101, avg_logprob=-0.163, rms=2000.0, looped=True, raw=fives)
        == ""
    )


def test_a_vocal_sound_is_not_a_word_unless_whisper_is_sure_of_speech():
    for text in ("Uh...", "Oh.", "Aww.", "Awwwwwwwwwwwwwwwwwwwwww", "Ah!", "Uh-uh.", "La"):
        assert phantom_reason(text, no_speech_prob=0.15, avg_logprob=-0.3, rms=1200.0), text
    assert phantom_reason("Oh.", no_speech_prob=0.03, avg_logprob=-0.2, rms=2000.0) == ""
    # Said, the phrases Whisper invents on noise are kept: "Bye." as tiny.en heard it.
    assert phantom_reason("Bye.", no_speech_prob=0.04, avg_logprob=-0.67, rms=2900.0) == ""


# The recogniser ------------------------------------------------------------------------------


@pytest.mark.parametrize("sound", list(SOUNDS))
async def test_a_sound_the_vad_took_for_speech_gives_no_words(sound):
    service = mara_service()
    frames = await heard_frames("", speech=SOUNDS[sound]())
    down, _ = await run_test(service, frames_to_send=frames)
    assert not words_heard(down), (sound, words_heard(down), service.last_result)


def test_breathing_and_a_chair_at_many_seeds_and_levels_give_hardly_ever_a_word():
    """The sounds whose decodes most often had words (breathing: "I'm...", a chair's squeal:
    "That's that's that's ..."), each at ten seeds and three levels, decoded as a live call's
    settled utterance: before the failed-decoding and loop rules, 21 of these 60 kept words."""
    recogniser, prompt = whisper_recogniser(), mara_prompt()
    kept = []
    for name, make, level in (("breathing", breathing, "rms"), ("chair scrape", chair_scrape, "peak")):
        default = inspect.signature(make).parameters[level].default
        for seed in range(10):
            for scale in (0.5, 1.0, 1.6):
                sound = make(seed=seed, **{level: min(32_000.0, default * scale)})
                samples = soxr.resample(sound, RATE, 16_000) / 32768.0
                heard = recogniser.decode(samples.astype(np.float32), prompt=prompt)
                if heard.text:
                    kept.append((name, seed, scale, heard.text, heard.no_speech_prob, heard.avg_logprob))
    assert len(kept) <= 1, kept


@pytest.mark.parametrize("sound", ["loud cough", "door", "music", "chair scrape"])
async def test_a_question_right_after_a_sound_is_still_recognised(sound):
    service = mara_service()
    frames = await heard_frames("", speech=SOUNDS[sound](), tail_seconds=0.4)
    frames += await heard_frames(QUESTION, lead_seconds=0.3)
    down, _ = await run_test(service, frames_to_send=frames)
    assert heard_as_the_question(finals(down)), (sound, finals(down))


async def test_a_question_after_a_cough_in_the_same_breath_is_recognised():
    # No pause long enough for the VAD to stop: the cough and the words are one utterance.
    speech = np.concatenate([cough(), silence(0.15), await spoken_pcm(QUESTION)])
    down, _ = await run_test(mara_service(), frames_to_send=await heard_frames("", speech=speech))
    assert heard_as_the_question(finals(down)), finals(down)


async def test_a_question_over_music_is_recognised():
    question = await spoken_pcm(QUESTION)
    background = music(seconds=question.size / RATE + 0.5)[: question.size] * 0.25
    down, _ = await run_test(
        mara_service(), frames_to_send=await heard_frames("", speech=question + background)
    )
    assert heard_as_the_question(finals(down)), finals(down)


# Voice notes ---------------------------------------------------------------------------------


def mara_prompt() -> str:
    recogniser = whisper_recogniser()
    return persona_prompt(
        name=MARA["name"],
        knowledge=tuple(MARA_KNOWLEDGE),
        phrases=MARA["stt_phrases"].splitlines(),
        tokens=recogniser.count_tokens,
    )


@pytest.mark.parametrize("sound", list(SOUNDS))
def test_a_voice_note_of_a_sound_gives_no_words(sound):
    note = ogg_opus(np.concatenate([silence(0.3), SOUNDS[sound](), silence(0.5)]))
    assert whisper_recogniser().transcribe_file(note, prompt=mara_prompt()) == ""


async def test_a_voice_note_of_a_question_after_a_door_gives_the_question():
    note = ogg_opus(
        np.concatenate([silence(0.3), door(), silence(0.6), await spoken_pcm(QUESTION), silence(0.5)])
    )
    heard = await asyncio.to_thread(whisper_recogniser().transcribe_file, note, prompt=mara_prompt())
    assert heard_as_the_question([heard]), heard


# The conversation ----------------------------------------------------------------------------


async def test_sounds_in_a_quiet_moment_start_no_turn_and_a_question_after_them_does(loop_factory):
    loop = await loop_factory()
    listener = loop.listener
    await asyncio.sleep(0.5)  # room noise first, as with a real microphone
    for sound in (cough_by_a_fan(), door(), music(), SOUNDS["chair scrape"]()):
        loop.play(sound, lead_seconds=0.0, tail_seconds=0.5)
        await loop.microphone.finished.wait()
    await asyncio.sleep(SETTLE_AFTER_SOUND_SECONDS)
    names = listener.names()
    # The VAD took the cough for speech: the recogniser decoded it, and kept no words.
    assert "speech.started" in names, names
    decoded = loop.conversation.stt.last_result
    assert decoded is not None and decoded["text"] == "", decoded
    assert not [name for name in names if name.startswith(("user.", "turn.", "eager.", "bot."))], (
        listener.events
    )
    await loop.say(QUESTION)
    message = await listener.wait_for("user.message", within=30)
    assert "opening hours" in message["text"].lower(), message
    finished = await listener.wait_for("bot.finished", within=40)
    assert "tuesday" in finished["spoken"].lower(), finished


async def test_a_cough_or_a_door_while_the_persona_speaks_does_not_interrupt_it(loop_factory):
    loop = await loop_factory()
    listener = loop.listener
    await asyncio.sleep(0.3)
    await loop.say("What is on the menu?")
    speaking = await listener.wait_for("bot.speaking", within=30)
    await asyncio.sleep(1.0)  # let a few words play
    coughed_at, _ = loop.play(cough_by_a_fan(), lead_seconds=0.0, tail_seconds=0.3)
    await loop.microphone.finished.wait()
    loop.play(door(), lead_seconds=0.0, tail_seconds=0.3)
    finished = await listener.wait_for("bot.finished", within=40)
    assert finished["message_id"] == speaking["message_id"]
    assert "bot.interrupted" not in listener.names(), listener.events
    # The whole answer was played, and only the question was taken for words.
    assert finished["spoken"] == finished["text"], finished
    assert len(listener.of("user.message")) == 1, listener.of("user.message")
    # The cough did reach the barge-in check: the voice paused for it, then went on.
    pause_at = loop.conversation.voice_guard.last_pause_at
    assert pause_at is not None and pause_at >= coughed_at, (pause_at, coughed_at)
    assert not loop.conversation.track.paused
