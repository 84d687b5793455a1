"""The offline recogniser, Whisper tiny.en: biased to the persona, settled in the VAD's wait.

Speech is made by espeak-ng in the user's voice over a quiet room's noise, resampled to the
pipeline's 16 kHz as the transport does, and played in real time into `WhisperSTTService`
with the VAD's frames where Silero would send them (`tests.fakes.spoken.heard_frames`). Word
error rates are checked against bounds above what `bench/recognition.py` measures; latencies
are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import sys
import threading
import wave
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from pipecat.frames.frames import InterimTranscriptionFrame, TranscriptionFrame
from pipecat.tests.utils import run_test

from bench.voice_loop import word_errors
from calls.pipeline.listening import whisper
from calls.pipeline.listening.providers import WhisperSTTService
from calls.pipeline.listening.whisper import (
    DECODE_THREADS,
    FILE_WORKERS,
    INTERIM_DECODES_PER_SECOND,
    INTERIM_REST_MAX_SECONDS,
    INTERIM_SHARE,
    DecodeQueue,
    persona_prompt,
    phantom_reason,
    whisper_recogniser,
    without_repeats,
)
from calls.pipeline.niceness import FOREGROUND
from personas.management.commands.seed_demo import MARA, MARA_KNOWLEDGE
from tests.fakes.hearing import MarkedWhisperSTTService, error_rate, finals
from tests.fakes.sounds import ogg_opus
from tests.fakes.spoken import heard_frames, spoken_pcm, with_room


def mara_service() -> WhisperSTTService:
    return MarkedWhisperSTTService(
        name=MARA["name"], greeting=MARA["greeting"], knowledge=tuple(MARA_KNOWLEDGE)
    )


async def hear(service: WhisperSTTService, *sentences: str, **options) -> list:
    frames = []
    for sentence in sentences:
        options = {"lead_seconds": 0.5, "tail_seconds": 0.5, **options}
        frames.extend(await heard_frames(sentence, **options))
    down, _ = await run_test(service, frames_to_send=frames)
    return down


def wav_bytes(samples_48k: np.ndarray) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(48_000)
        file.writeframes(np.clip(samples_48k, -32768, 32767).astype(np.int16).tobytes())
    return out.getvalue()


# Pure parts -----------------------------------------------------------------------------------


def test_the_prompt_holds_the_personas_name_phrases_and_questions_within_the_limit():
    prompt = persona_prompt(
        name="Mara",
        knowledge=[("When are you open?", "Every day from eight to six."), ("Do you deliver?", "Yes.")],
        phrases=["sourdough", "Linden Street"],
    )
    assert prompt == "Mara. sourdough. Linden Street. When are you open? Do you deliver?"
    assert "eight to six" not in prompt  # answers are left out

    many = [(f"Question number {index} about the bakery?", "An answer.") for index in range(200)]
    limited = persona_prompt(name="Mara", knowledge=many, limit=50)
    assert len(limited.split()) <= 50
    assert limited.startswith("Mara. Question number 0 about the bakery?")


def test_the_prompt_fits_whispers_context_in_its_own_tokens():
    recogniser = whisper_recogniser()
    prompt = persona_prompt(
        name=MARA["name"],
        knowledge=[(f"{q} {q} {q}", a) for q, a in MARA_KNOWLEDGE],
        tokens=recogniser.count_tokens,
    )
    assert prompt
    assert len(recogniser.prompt_tokens(prompt)) <= whisper.PROMPT_TOKENS + 1


def test_a_sentence_repeated_by_a_decoding_loop_is_kept_once():
    assert without_repeats("What do you recommend? What do you recommend?") == "What do you recommend?"
    assert without_repeats("No. No. I said no.") == "No. No. I said no."  # one-word sentences may repeat


def test_an_unfinished_sentence_that_starts_the_utterance_over_is_dropped():
    assert without_repeats("Can I order a birthday cake? Can I") == "Can I order a birthday cake?"
    assert (
        without_repeats("I would like to speak to the manager, please. I would like to")
        == "I would like to speak to the manager, please."
    )
    assert without_repeats("Hello. Hello there") == "Hello. Hello there"  # said, not started over


def test_inventions_on_noise_are_dropped_and_the_same_words_spoken_are_kept():
    assert phantom_reason("Thank you.", no_speech_prob=0.7, avg_logprob=-1.2)
    assert phantom_reason(" you", no_speech_prob=0.3, avg_logprob=-0.4)
    assert phantom_reason("(coughs)", no_speech_prob=0.1, avg_logprob=-0.2)
    assert phantom_reason("[Music]", no_speech_prob=0.1, avg_logprob=-0.2)
    assert phantom_reason("Thank you.", no_speech_prob=0.02, avg_logprob=-0.2, rms=2000) == ""
    assert phantom_reason("Do you deliver?", no_speech_prob=0.05, avg_logprob=-0.3, rms=2000) == ""
    assert phantom_reason("Do you deliver?", no_speech_prob=0.05, avg_logprob=-0.3, rms=20)


def test_the_model_is_loaded_once_per_process():
    assert whisper_recogniser() is whisper_recogniser()


def niceness_of_threads() -> list[int]:
    niceness = []
    for stat in Path(f"/proc/{os.getpid()}/task").glob("*/stat"):
        try:
            niceness.append(int(stat.read_text().rsplit(")", 1)[1].split()[16]))
        except (OSError, IndexError):  # a thread that has just ended
            continue
    return niceness


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="niceness per thread is Linux's")
async def test_decodes_are_computed_by_threads_nicer_than_the_event_loop():
    recogniser = whisper_recogniser()
    assert recogniser.niceness == settings.PARLEY_WHISPER_NICENESS == 5
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    # The model's computing threads (live decodes' and a recording's) were started as nice.
    assert niceness_of_threads().count(own + 5) >= DECODE_THREADS + FILE_WORKERS
    # The queue's thread runs Python (it holds the GIL at times): as nice as the loop.
    queue_thread = await recogniser.queue.submit(
        lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    )
    assert queue_thread == own


async def test_final_decodes_go_before_waiting_interim_ones_and_overtaken_interims_are_skipped():
    queue = DecodeQueue(threads=1)
    order: list[str] = []
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    def blocker() -> None:
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()

    first = queue.submit(blocker)
    await asyncio.sleep(0.05)  # the one thread is busy with it
    interim = queue.submit(lambda: order.append("interim"), interim=True)
    overtaken = queue.submit(lambda: order.append("stale"), interim=True, stale=lambda: True)
    final = queue.submit(lambda: order.append("final"))
    gate.set()
    await asyncio.gather(first, interim, final)
    with pytest.raises(asyncio.CancelledError):
        await overtaken
    assert order == ["final", "interim"]


async def test_a_decode_cancelled_before_its_turn_is_not_run():
    queue = DecodeQueue(threads=1)
    order: list[str] = []
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    def blocker() -> None:
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()

    first = queue.submit(blocker)
    await asyncio.sleep(0.05)
    settled = queue.submit(lambda: order.append("settled"))  # the speaker then went on
    final = queue.submit(lambda: order.append("final"))
    settled.cancel()
    gate.set()
    await asyncio.gather(first, final)
    assert order == ["final"]


async def test_the_process_is_busy_for_batch_work_while_a_final_decode_is_queued_or_running():
    queue = DecodeQueue(threads=1)
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    def blocker() -> None:
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()

    assert not FOREGROUND.busy()
    await queue.submit(lambda: None, interim=True)
    assert not FOREGROUND.busy(), "a caption is not waited for"
    running = queue.submit(blocker)
    waiting = queue.submit(lambda: None)
    skipped = queue.submit(lambda: None)
    skipped.cancel()
    await asyncio.sleep(0.05)
    assert FOREGROUND.busy()
    gate.set()
    await asyncio.gather(running, waiting)
    await asyncio.sleep(0.05)  # the skipped one is taken off the queue after
    assert not FOREGROUND.busy()


async def test_interim_decodes_keep_to_their_share_of_the_decoding_time():
    now = [100.0]
    queue = DecodeQueue(threads=1, clock=lambda: now[0])

    def interim_taking(seconds: float):
        def run() -> None:
            now[0] += seconds

        return run

    assert queue.interim_slot() == 0
    assert queue.interim_slot() is None, "the pace: the slot is taken"
    await queue.submit(interim_taking(0.06), interim=True)  # an idle machine's interim decode
    now[0] += 1.0 / INTERIM_DECODES_PER_SECOND
    assert queue.interim_slot() == 0, "a quick decode leaves the pace as it was"

    await queue.submit(interim_taking(0.3), interim=True)  # busy cores: it ran long
    rest = 0.3 * (1 / INTERIM_SHARE - 1)
    now[0] += 0.25
    assert queue.interim_slot() == pytest.approx(rest - 0.25), "the next waits out the rest"
    now[0] += rest - 0.25 + 0.1  # that decode started, 0.1 s ago
    assert queue.interim_slot() is None, "and that slot was taken"
    now[0] += 1.0 / INTERIM_DECODES_PER_SECOND
    assert queue.interim_slot() == 0

    # Final decodes are not held back by it, however long they run.
    await queue.submit(interim_taking(2.0))
    now[0] += 1.0 / INTERIM_DECODES_PER_SECOND
    assert queue.interim_slot() == 0

    # One very slow interim decode (a stalled machine) rests the captions a second at most.
    await queue.submit(interim_taking(5.0), interim=True)
    now[0] += 1.0 / INTERIM_DECODES_PER_SECOND
    assert queue.interim_slot() == pytest.approx(INTERIM_REST_MAX_SECONDS - 1.0 / INTERIM_DECODES_PER_SECOND)


async def test_the_personas_own_questions_are_recognised():
    questions = [question for question, _ in MARA_KNOWLEDGE[:8]]
    heard = []
    for question in questions:
        heard.append(" ".join(finals(await hear(mara_service(), question))))
    rate = error_rate(questions, heard)
    print(f"in-domain WER {rate:.1%}: {list(zip(questions, heard, strict=True))}")
    assert rate <= 0.12, list(zip(questions, heard, strict=True))


async def test_other_speech_is_heard_as_said_not_pulled_towards_the_personas_phrases():
    sentences = ["My sister is visiting next week.", "I think I left my umbrella here yesterday."]
    heard = [" ".join(finals(await hear(mara_service(), sentence))) for sentence in sentences]
    rate = error_rate(sentences, heard)
    print(f"general WER {rate:.1%}: {heard}")
    assert rate <= 0.2, heard


async def test_one_final_transcript_after_the_end_of_speech_and_interims_that_only_grow():
    frames = await hear(mara_service(), "I would like to order a chocolate cake for my daughter.")
    texts = [
        (type(frame).__name__, frame.text)
        for frame in frames
        if isinstance(frame, TranscriptionFrame | InterimTranscriptionFrame)
    ]
    assert [name for name, _ in texts].count("TranscriptionFrame") == 1, texts
    assert texts[-1][0] == "TranscriptionFrame", texts
    interims = [text for name, text in texts if name == "InterimTranscriptionFrame"]
    assert interims, "interim words while the user spoke"
    for before, after in itertools.pairwise(interims):
        assert after.startswith(before), interims
    assert "chocolate cake" in texts[-1][1].lower()


async def test_the_settled_words_are_told_in_the_vads_wait_before_the_final_transcript():
    service = mara_service()
    told: list[str] = []

    async def settled(text: str) -> None:
        told.append(text)

    service.on_settled = settled
    # The settled decode ends within the VAD's 0.2 s wait on a quiet machine (bench/voice_loop.py
    # measures it); a longer wait keeps what is tested here, the order, apart from the load.
    frames = await hear(service, "Do you deliver?", stop_after=1.0, tail_seconds=1.3)
    assert told and "deliver" in told[0].lower(), told
    assert finals(frames) == [told[0]]


async def test_a_pause_inside_a_sentence_is_decoded_whole_after_the_speaker_goes_on():
    service = mara_service()
    frames = await hear(service, "I would like, a birthday cake", pauses=(0.12,))
    assert service.resumes >= 1
    heard = finals(frames)
    assert len(heard) == 1, heard
    assert "birthday cake" in heard[0].lower() and "would like" in heard[0].lower(), heard


# Whole recordings (WhatsApp voice notes next) ---------------------------------------------------------


@pytest.mark.parametrize("encode", [ogg_opus, wav_bytes], ids=["ogg-opus", "wav"])
async def test_a_whole_recording_is_transcribed_in_one_call(encode):
    sentences = "I would like to order a birthday cake. Can you deliver it on Saturday morning?"
    speech = with_room(await spoken_pcm(sentences), lead_seconds=0.5, tail_seconds=0.5)
    text = await asyncio.to_thread(whisper_recogniser().transcribe_file, encode(speech))
    errors, words = word_errors(sentences, text)
    assert errors / words <= 0.15, text


async def test_a_recording_longer_than_whispers_window_is_transcribed_whole():
    parts = [
        "My sister is visiting next week.",
        "We are planning a small party for twenty people.",
        "I think I left my umbrella here yesterday.",
        "Thank you very much for your help.",
    ]
    pieces = [with_room(await spoken_pcm(part), lead_seconds=1.0, tail_seconds=1.5) for part in parts * 3]
    speech = np.concatenate(pieces)
    assert speech.size / 48_000 > 35
    text = await asyncio.to_thread(whisper_recogniser().transcribe_file, ogg_opus(speech))
    errors, words = word_errors(" ".join(parts * 3), text)
    assert errors / words <= 0.2, text


def test_a_file_that_is_not_audio_is_a_clear_error():
    with pytest.raises(ValueError, match="could not be decoded as audio"):
        whisper_recogniser().transcribe_file(b"this is not an ogg file")
