"""Offline speech with espeak-ng: audio, word and phoneme marks, voices, concurrency, barge-in, the pipecat service."""

from __future__ import annotations

import asyncio
import contextlib
import re

import numpy as np
import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import run_test

from calls.pipeline.frames import VisemeTimelineFrame
from calls.pipeline.speech import espeak
from calls.pipeline.speech.espeak import OUTPUT_SAMPLE_RATE_HZ, EspeakSynthesizer, SpeechChunk
from calls.pipeline.speech.tts import EspeakTTSService

GREETING = "Hello there, how are you today?"
# One sentence of ~280 characters: a single segment, so only the callback can stop it early.
LONG_SENTENCE = (
    "This is a deliberately long sentence that keeps on going with clause after clause and word "
    "after word so that the synthesis of it takes many buffers and gives a listener every chance "
    "to interrupt it before it reaches the end of what it has to say about nothing much at all"
)


@pytest.fixture
def synthesizer() -> EspeakSynthesizer:
    return EspeakSynthesizer.shared()


async def collect(synthesizer: EspeakSynthesizer, text: str, **options) -> list[SpeechChunk]:
    return [chunk async for chunk in synthesizer.synthesize(text, **options)]


def samples(chunks: list[SpeechChunk]) -> np.ndarray:
    return np.frombuffer(b"".join(chunk.pcm for chunk in chunks), dtype=np.int16)


def bare(word: str) -> str:
    return re.sub(r"[^\w']", "", word).lower()


async def test_a_greeting_is_non_silent_48khz_int16_speech_of_plausible_length(synthesizer):
    chunks = await collect(synthesizer, GREETING)

    audio = samples(chunks)
    duration = len(audio) / OUTPUT_SAMPLE_RATE_HZ
    assert 1.0 <= duration <= 4.0
    rms = np.sqrt(np.mean(audio.astype(np.float64) ** 2))
    assert rms > 500  # speech, not silence or noise floor
    assert all(len(chunk.pcm) % 2 == 0 for chunk in chunks)
    # The chunks tile the utterance with no gap or overlap.
    expected_start = 0
    for chunk in chunks:
        assert chunk.start_sample == expected_start
        expected_start += chunk.sample_count


async def test_the_audio_runs_at_48khz_on_espeaks_own_timeline(synthesizer):
    chunks = await collect(synthesizer, GREETING)

    duration = len(samples(chunks)) / OUTPUT_SAMPLE_RATE_HZ
    last_phoneme = max(mark.offset_seconds for chunk in chunks for mark in chunk.phonemes)
    # The final pause phoneme sits just before the end: the resampled audio is neither
    # stretched nor squeezed relative to the marks (a 22,050 Hz reading would be 2.2x off).
    assert last_phoneme <= duration <= last_phoneme + 0.25


async def test_word_marks_name_the_words_in_order_at_increasing_offsets_inside_the_audio(synthesizer):
    chunks = await collect(synthesizer, GREETING)

    words = [word for chunk in chunks for word in chunk.words]
    assert [bare(word.text) for word in words] == ["hello", "there", "how", "are", "you", "today"]
    assert [word.text for word in words] == GREETING.split()
    offsets = [word.offset_seconds for word in words]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    duration = len(samples(chunks)) / OUTPUT_SAMPLE_RATE_HZ
    assert offsets[0] == pytest.approx(0.0, abs=0.05)
    assert offsets[-1] < duration


async def test_phoneme_marks_are_ipa_in_time_order(synthesizer):
    chunks = await collect(synthesizer, GREETING)

    phonemes = [mark for chunk in chunks for mark in chunk.phonemes]
    assert len(phonemes) >= 15
    assert [mark.phoneme for mark in phonemes][:3] == ["h", "ə", "l"]
    assert espeak.PAUSE_PHONEME in {mark.phoneme for mark in phonemes}
    assert not any("\u02c8" in mark.phoneme for mark in phonemes)
    offsets = [mark.offset_seconds for mark in phonemes]
    assert offsets == sorted(offsets)


async def test_one_word_is_shorter_than_a_long_sentence(synthesizer):
    one = samples(await collect(synthesizer, "one"))
    sentence = samples(await collect(synthesizer, LONG_SENTENCE))

    assert 0 < len(one) < len(sentence) / 10


async def test_empty_or_markup_only_text_yields_nothing(synthesizer):
    for text in ["", "   \n ", "<p></p>", "\x01\x02"]:
        assert await collect(synthesizer, text) == []


async def test_markup_in_plain_text_is_not_read_aloud(synthesizer):
    chunks = await collect(synthesizer, 'Say <break time="3s"/> <b>now</b>.')

    assert [word.text for chunk in chunks for word in chunk.words] == ["Say", "now."]


async def test_an_unknown_voice_or_variant_is_refused_naming_it_and_valid_ones(synthesizer):
    with pytest.raises(ValueError, match=r"'klingon-x'.*en-us") as refused:
        await collect(synthesizer, "hello", voice="klingon-x")
    assert "en+m3" in str(refused.value)
    # espeak itself silently ignores an unknown variant; we do not.
    with pytest.raises(ValueError, match="'en-us\\+nosuch'"):
        await collect(synthesizer, "hello", voice="en-us+nosuch")


async def test_voice_names_by_file_language_and_variant_all_speak(synthesizer):
    catalogue = await synthesizer.voice_catalogue()
    # espeak_SetVoiceByName alone does not find "en-gb" (its file is gmw/en).
    assert catalogue.resolve("en-gb") == "gmw/en"
    assert catalogue.resolve("EN-US+F3") == "gmw/en-US+f3"
    lengths = {}
    for voice in ["en-us+f3", "en+m3", "en-gb", "en-gb-x-rp", "English (America)"]:
        lengths[voice] = len(samples(await collect(synthesizer, "Good morning.", voice=voice)))
    assert all(length > OUTPUT_SAMPLE_RATE_HZ // 4 for length in lengths.values())


async def test_rate_and_pitch_are_validated_and_rate_changes_the_duration(synthesizer):
    with pytest.raises(ValueError, match="rate_wpm"):
        await collect(synthesizer, "hello", rate_wpm=10)
    with pytest.raises(ValueError, match="pitch"):
        await collect(synthesizer, "hello", pitch=101)
    slow = samples(await collect(synthesizer, GREETING, rate_wpm=100))
    fast = samples(await collect(synthesizer, GREETING, rate_wpm=300))
    assert len(fast) < len(slow) * 0.6


async def test_two_syntheses_started_together_both_complete_as_if_alone(synthesizer):
    alone_greeting = await collect(synthesizer, GREETING)
    alone_long = await collect(synthesizer, LONG_SENTENCE, voice="en+m3")

    greeting, long = await asyncio.gather(
        collect(synthesizer, GREETING), collect(synthesizer, LONG_SENTENCE, voice="en+m3")
    )

    for together, alone in [(greeting, alone_greeting), (long, alone_long)]:
        assert [w.text for c in together for w in c.words] == [w.text for c in alone for w in c.words]
        # espeak keeps some state across calls: the same text can end one buffer (~60 ms)
        # earlier or later depending on what was spoken before it.
        assert len(samples(together)) == pytest.approx(len(samples(alone)), rel=0.05)


async def test_a_long_text_is_spoken_in_segments_on_one_seamless_timeline(synthesizer):
    text = " ".join(f"Sentence number {n} is here." for n in range(1, 41))  # ~1,100 characters
    assert len(espeak._segments(text)) > 1

    chunks = await collect(synthesizer, text)

    words = [word for chunk in chunks for word in chunk.words]
    assert [word.text for word in words] == text.split()
    offsets = [word.offset_seconds for word in words]
    assert offsets == sorted(offsets)
    assert offsets[-1] < len(samples(chunks)) / OUTPUT_SAMPLE_RATE_HZ
    # The pause between sentences survives the cut between segments.
    sentence_gaps = [
        words[i + 1].offset_seconds - words[i].offset_seconds for i in range(4, len(words) - 1, 5)
    ]
    assert min(sentence_gaps) > 0.3


async def test_leaving_the_loop_mid_utterance_stops_espeak_and_the_next_synthesis_works(
    synthesizer, monkeypatch
):
    delivered: dict[int, int] = {}
    original = EspeakSynthesizer._deliver_chunk

    def counting(job, pcm):
        delivered[id(job)] = delivered.get(id(job), 0) + 1
        original(job, pcm)

    monkeypatch.setattr(EspeakSynthesizer, "_deliver_chunk", staticmethod(counting))
    full = len(await collect(synthesizer, LONG_SENTENCE))
    delivered.clear()

    stream = synthesizer.synthesize(LONG_SENTENCE)
    async for _ in stream:
        break
    await stream.aclose()
    after = await collect(synthesizer, GREETING)  # runs only once the worker has left the first job

    cancelled_job_chunks, next_job_chunks = delivered.values()
    # espeak runs ~800x faster than real time, so without the callback's stop it would have
    # produced the whole sentence by now.
    assert cancelled_job_chunks < full / 2
    assert next_job_chunks == len(after)
    assert [w.text for c in after for w in c.words] == GREETING.split()


async def test_cancelling_the_consuming_task_stops_the_synthesis(synthesizer, monkeypatch):
    delivered: list[object] = []
    original = EspeakSynthesizer._deliver_chunk

    def counting(job, pcm):
        delivered.append(job)
        original(job, pcm)

    monkeypatch.setattr(EspeakSynthesizer, "_deliver_chunk", staticmethod(counting))
    started = asyncio.Event()
    received = []

    async def speak() -> None:
        # As pipecat does on an interruption: the task is cancelled while it waits elsewhere.
        async with contextlib.aclosing(synthesizer.synthesize(LONG_SENTENCE)) as chunks:
            async for chunk in chunks:
                received.append(chunk)
                started.set()
                await asyncio.sleep(3600)  # a slow consumer, as when playback paces the output

    task = asyncio.create_task(speak())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await collect(synthesizer, "Still here.")

    assert len(received) == 1
    assert len([job for job in delivered if job is not delivered[-1]]) < 100  # of ~280
    assert [w.text for c in after for w in c.words] == ["Still", "here."]


def test_a_second_synthesizer_in_the_same_process_is_refused():
    EspeakSynthesizer.shared()
    with pytest.raises(RuntimeError, match="one per process"):
        EspeakSynthesizer()


def test_word_alignment_handles_numbers_phrases_and_quotes():
    # Positions as espeak-ng 1.52 reports them (1-based characters).
    aligner = espeak._WordAligner("I have 1,250 dollars")
    claimed = [aligner.claim(position) for position in (1, 3, 8, 9, 10, 11, 14)]
    assert claimed == [["I"], ["have"], ["1,250"], [], [], [], ["dollars"]]

    aligner = espeak._WordAligner("the déjà vu here")
    claimed = [aligner.claim(position) for position in (1, 5, 6, 13)]
    assert claimed == [["the"], ["déjà"], [], ["vu", "here"]]

    aligner = espeak._WordAligner("I said “hello” to you —")
    assert [aligner.claim(position) for position in (1, 3, 9, 16)] == [["I"], ["said"], ["“hello”"], ["to"]]
    assert aligner.rest() == ["you", "—"]


# --- the pipecat service -------------------------------------------------------------------------


async def test_the_espeak_service_streams_48khz_audio_with_timed_words_and_viseme_timelines():
    service = EspeakTTSService(voice="en-us+f3")

    down, _ = await run_test(
        service,
        frames_to_send=[TTSSpeakFrame(GREETING)],
        pipeline_params=PipelineParams(audio_out_sample_rate=OUTPUT_SAMPLE_RATE_HZ),
        start_timeout=5.0,
    )

    audio = [frame for frame in down if isinstance(frame, TTSAudioRawFrame)]
    assert audio and all(
        frame.sample_rate == OUTPUT_SAMPLE_RATE_HZ and frame.num_channels == 1 for frame in audio
    )
    assert 1.0 <= sum(len(frame.audio) for frame in audio) / 2 / OUTPUT_SAMPLE_RATE_HZ <= 4.0
    words = [frame for frame in down if isinstance(frame, TTSTextFrame)]
    assert [frame.text for frame in words] == GREETING.split()
    # Timed for the output transport's clock: in order, spread over the utterance.
    pts = [frame.pts for frame in words]
    assert all(pts) and pts == sorted(pts) and (pts[-1] - pts[0]) / 1e9 > 1.0
    # Every viseme timeline comes right before the audio it describes.
    for index, frame in enumerate(down):
        if isinstance(frame, VisemeTimelineFrame):
            assert isinstance(down[index + 1], TTSAudioRawFrame)
            assert frame.phonemes or frame.words
            assert all(-0.1 < offset < 0.2 for offset, _ in frame.phonemes + frame.words)
    timelines = [frame for frame in down if isinstance(frame, VisemeTimelineFrame)]
    assert [phoneme for timeline in timelines for _, phoneme in timeline.phonemes][:3] == ["h", "ə", "l"]
    # The words again, placed in the audio they start in: what the persona is heard to say.
    assert [word for timeline in timelines for _, word in timeline.words] == GREETING.split()
    kinds = [type(frame) for frame in down]
    assert kinds.index(TTSStartedFrame) < kinds.index(TTSAudioRawFrame) < kinds.index(TTSStoppedFrame)


async def test_the_espeak_service_reports_an_unknown_voice_as_an_error():
    service = EspeakTTSService(voice="klingon-x", stop_frame_timeout_s=0.2)  # no audio will come

    down, up = await run_test(
        service,
        frames_to_send=[TTSSpeakFrame("Hello.")],
        pipeline_params=PipelineParams(audio_out_sample_rate=OUTPUT_SAMPLE_RATE_HZ),
        start_timeout=5.0,
    )

    errors = [frame for frame in up if isinstance(frame, ErrorFrame)]
    assert any("klingon-x" in frame.error for frame in errors)
    assert not [frame for frame in down if isinstance(frame, TTSAudioRawFrame)]


def test_personas_with_the_espeak_provider_get_the_espeak_service():
    from calls.pipeline.conversation import ConversationConfig
    from calls.pipeline.speech.providers import build_tts_service

    service = build_tts_service(ConversationConfig(agent="mara", name="Mara", voice="en+m3"))

    assert isinstance(service, EspeakTTSService)
