"""Choosing a persona's voice; the ElevenLabs provider spoken against a local fake server."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import TTSAudioRawFrame, TTSSpeakFrame, TTSTextFrame
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import run_test

from calls.pipeline.conversation import ConversationConfig
from calls.pipeline.speech.providers import TtsConfigurationError, build_tts_service, tts_service_close
from tests.fakes.elevenlabs_server import FakeElevenLabs


def config(**fields) -> ConversationConfig:
    return ConversationConfig(agent="mara", name="Mara", **fields)


def test_a_cloud_voice_without_an_api_key_is_refused_naming_the_setting():
    with pytest.raises(TtsConfigurationError, match="tts_api_key"):
        build_tts_service(config(tts_provider="elevenlabs", voice="rachel"))
    with pytest.raises(TtsConfigurationError, match="tts_provider"):
        build_tts_service(config(tts_provider="carrier-pigeon", tts_api_key="x"))


async def test_the_elevenlabs_voice_streams_audio_and_timed_words_from_the_fake_server():
    fake = FakeElevenLabs()
    base_url = await fake.start()
    service = build_tts_service(
        config(
            tts_provider="elevenlabs", voice="rachel", tts_api_key="test-eleven-key", tts_base_url=base_url
        )
    )
    try:
        down, _ = await run_test(
            service,
            frames_to_send=[TTSSpeakFrame("Fresh bread every morning.")],
            pipeline_params=PipelineParams(audio_out_sample_rate=48000),
            start_timeout=5.0,
        )
    finally:
        await tts_service_close(service)
        await fake.stop()
    request = fake.requests[0]
    assert request["voice"] == "rachel" and request["api_key"] == "test-eleven-key"
    assert request["body"]["text"].strip() == "Fresh bread every morning."
    assert request["body"]["model_id"] == "eleven_flash_v2_5"
    audio = [frame for frame in down if isinstance(frame, TTSAudioRawFrame)]
    assert audio and sum(len(frame.audio) for frame in audio) > 48000  # over half a second at 48 kHz
    words = [frame.text for frame in down if isinstance(frame, TTSTextFrame)]
    assert "".join(words).replace(" ", "") == "Freshbreadeverymorning."
