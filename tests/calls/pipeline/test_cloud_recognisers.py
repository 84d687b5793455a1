"""Cloud recognisers for personas in other languages: Deepgram and OpenAI-compatible, against local fakes.

Speech is espeak-ng's, played in real time with the VAD frames where Silero would send them
(`tests.fakes.spoken.heard_frames`); the fakes' scripted transcripts stand in for the cloud
models. What is checked is Parley's side: what goes over the wire (model, language, key,
audio) and which transcription frames come out.
"""

from __future__ import annotations

import itertools
import logging
from types import SimpleNamespace

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
)
from pipecat.tests.utils import run_test

from calls.pipeline.listening.cloud import (
    DEEPGRAM_BASE_URL,
    RecogniserConfigurationError,
    cloud_stt_service,
    deepgram_base_url,
    deepgram_language,
    offline_language_supported,
    recogniser_problem,
)
from tests.fakes.deepgram_server import DEFAULT_API_KEY, FakeDeepgramServer
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.spoken import heard_frames, without_marks

GERMAN_QUESTION = "Wann haben Sie am Samstag geöffnet?"


def recogniser_config(**fields: str) -> SimpleNamespace:
    values = {
        "agent": "greta",
        "stt_provider": "deepgram",
        "stt_model": "",
        "stt_base_url": "",
        "stt_api_key": "",
        "language": "de-DE",
    }
    return SimpleNamespace(**{**values, **fields})


async def spoken(text: str = "When are you open on Saturday?") -> list:
    return without_marks(await heard_frames(text, lead_seconds=0.5, tail_seconds=0.8))


def transcripts(frames: list) -> list[tuple[str, str]]:
    return [
        (type(frame).__name__, frame.text)
        for frame in frames
        if isinstance(frame, (InterimTranscriptionFrame, TranscriptionFrame))
    ]


# Deepgram ------------------------------------------------------------------------------------


async def test_deepgram_hears_an_utterance_as_growing_interims_then_one_finalized_transcript():
    async with FakeDeepgramServer() as server:
        server.script_transcripts(GERMAN_QUESTION)
        service = cloud_stt_service(
            recogniser_config(stt_api_key=DEFAULT_API_KEY, stt_base_url=server.base_url, stt_model="nova-3")
        )
        down, up = await run_test(service, frames_to_send=await spoken(), start_timeout=5.0)

    assert not [frame for frame in up if isinstance(frame, ErrorFrame)], up
    [connection] = server.connections
    assert connection.accepted
    assert connection.headers["Authorization"] == f"Token {DEFAULT_API_KEY}"
    query = connection.query
    assert (query["model"], query["language"]) == ("nova-3", "de")
    assert (query["encoding"], query["sample_rate"], query["channels"]) == ("linear16", "16000", "1")
    assert (query["interim_results"], query["punctuate"], query["endpointing"]) == ("true", "true", "false")
    assert connection.audio_bytes > 16_000 * 2 * 2  # the whole utterance and the room around it
    controls = [kind for kind in connection.control_types if kind != "KeepAlive"]
    assert controls == ["Finalize", "CloseStream"]  # at the VAD's end of speech; at the call's end

    heard = transcripts(down)
    print("transcripts:", heard)
    interims = [text for kind, text in heard if kind == "InterimTranscriptionFrame"]
    finals = [frame for frame in down if isinstance(frame, TranscriptionFrame)]
    assert interims, "interim transcripts while the user spoke"
    for earlier, later in itertools.pairwise(interims):
        assert later.startswith(earlier), (earlier, later)
    assert [frame.text for frame in finals] == [GERMAN_QUESTION]
    assert finals[0].finalized
    assert heard[-1][0] == "TranscriptionFrame"  # no interim after the final


async def test_a_key_deepgram_refuses_is_a_logged_error_and_the_call_goes_on(caplog):
    async with FakeDeepgramServer() as server:
        server.script_transcripts(GERMAN_QUESTION)
        service = cloud_stt_service(
            recogniser_config(stt_api_key="dg-wrong-key-123", stt_base_url=server.base_url)
        )
        with caplog.at_level(logging.WARNING):
            down, up = await run_test(service, frames_to_send=await spoken(), start_timeout=5.0)

    assert len(server.connections) == 1 and not server.connections[0].accepted  # no retries
    errors = [frame for frame in up if isinstance(frame, ErrorFrame)]
    assert len(errors) == 1 and "status 401" in errors[0].error, errors
    logged = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert any("Deepgram rejected the connection (status 401)" in line for line in logged), logged
    assert not any("dg-wrong-key-123" in record.getMessage() for record in caplog.records)
    # Deaf, not broken: the microphone's audio still reaches the VAD and turn logic after it.
    assert sum(isinstance(frame, InputAudioRawFrame) for frame in down) > 50
    assert not transcripts(down)


def test_deepgrams_address_is_its_own_or_a_self_hosted_one_as_a_websocket():
    assert deepgram_base_url("") == DEEPGRAM_BASE_URL == "wss://api.deepgram.com"
    assert deepgram_base_url("http://127.0.0.1:8080/") == "ws://127.0.0.1:8080"
    assert deepgram_base_url("https://deepgram.internal.example/v1") == "wss://deepgram.internal.example"
    assert deepgram_base_url("wss://api.eu.deepgram.com/v1/listen") == "wss://api.eu.deepgram.com"
    assert deepgram_base_url("deepgram.internal.example:443") == "wss://deepgram.internal.example:443"


@pytest.mark.parametrize(
    ("persona_language", "sent"),
    [
        ("de-DE", "de"),
        ("fr-FR", "fr"),
        ("fr-CA", "fr-CA"),
        ("en-GB", "en-GB"),
        ("pt-br", "pt-BR"),
        ("es", "es"),
    ],
)
def test_deepgram_is_asked_for_a_language_code_it_knows(persona_language, sent):
    assert deepgram_language(persona_language) == sent


# OpenAI-compatible ---------------------------------------------------------------------------


async def test_an_openai_compatible_recogniser_transcribes_the_utterance_in_the_personas_language():
    async with FakeOpenAIServer() as server:
        server.script_transcripts(GERMAN_QUESTION)
        service = cloud_stt_service(
            recogniser_config(
                stt_provider="openai",
                stt_api_key="sk-test-recogniser",
                stt_base_url=server.base_url,
                stt_model="whisper-large-v3",
            )
        )
        down, up = await run_test(service, frames_to_send=await spoken(), start_timeout=5.0)

    assert not [frame for frame in up if isinstance(frame, ErrorFrame)], up
    [sent] = server.transcriptions
    assert sent.fields["model"] == "whisper-large-v3" and sent.fields["language"] == "de"
    assert sent.headers["Authorization"] == "Bearer sk-test-recogniser"
    assert sent.sample_rate == 16_000 and 1.0 < sent.seconds < 4.0, sent
    assert [text for kind, text in transcripts(down) if kind == "TranscriptionFrame"] == [GERMAN_QUESTION]


def test_only_a_cloud_recogniser_is_built_here():
    with pytest.raises(RecogniserConfigurationError, match="stt_provider"):
        cloud_stt_service(recogniser_config(stt_provider="whisper"))


# Whether a persona will be understood --------------------------------------------------------


@pytest.mark.parametrize("code", ["en", "en-US", "en-GB", "en-AU", "EN-in", "en_GB", ""])
def test_english_in_any_region_is_the_offline_recognisers(code):
    assert offline_language_supported(code)


@pytest.mark.parametrize("code", ["de-DE", "de", "fr-FR", "es", "eng", "ja-JP"])
def test_other_languages_are_not_the_offline_recognisers(code):
    assert not offline_language_supported(code)


def test_the_offline_recogniser_with_another_language_is_a_problem_naming_the_fix():
    problem = recogniser_problem(provider="whisper", language="de-DE", api_key="", base_url="")
    assert problem == (
        "The offline recogniser (Whisper tiny.en) only understands English; choose Deepgram or an "
        "OpenAI-compatible recogniser for de-DE, or callers' speech will not be understood."
    )
    legacy = recogniser_problem(provider="pocketsphinx", language="fr-FR", api_key="", base_url="")
    assert legacy is not None and "PocketSphinx" in legacy and "fr-FR" in legacy


@pytest.mark.parametrize(
    ("provider", "language", "api_key", "base_url"),
    [
        ("whisper", "en-US", "", ""),
        ("whisper", "en-GB", "", ""),
        ("pocketsphinx", "en", "", ""),
        ("deepgram", "de-DE", "dg-key", ""),
        ("deepgram", "de-DE", "", "http://deepgram.internal:8080"),
        ("openai", "fr-FR", "sk-key", ""),
        ("openai", "fr-FR", "", "http://127.0.0.1:8000/v1"),
    ],
)
def test_a_recogniser_that_will_understand_the_persona_is_no_problem(provider, language, api_key, base_url):
    assert (
        recogniser_problem(provider=provider, language=language, api_key=api_key, base_url=base_url) is None
    )


@pytest.mark.parametrize(
    ("provider", "named"), [("deepgram", "Deepgram needs an API key"), ("openai", "API key")]
)
def test_a_cloud_recogniser_with_neither_key_nor_address_is_a_problem_saying_what_is_missing(provider, named):
    problem = recogniser_problem(provider=provider, language="de-DE", api_key="", base_url="")
    assert problem is not None and named in problem and "base URL" in problem


def test_an_unknown_recogniser_is_a_problem():
    problem = recogniser_problem(provider="carrier-pigeon", language="en-US", api_key="", base_url="")
    assert problem is not None and "carrier-pigeon" in problem
