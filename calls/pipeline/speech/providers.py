"""Choosing a persona's voice: the offline espeak-ng default or a cloud TTS from pipecat."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from calls.pipeline.conversation import ConversationConfig

ELEVENLABS_DEFAULT_URL = "https://api.elevenlabs.io"
ELEVENLABS_DEFAULT_MODEL = "eleven_flash_v2_5"
OPENAI_DEFAULT_MODEL = "gpt-4o-mini-tts"


class TtsConfigurationError(ValueError):
    """A persona's voice settings cannot work (the message names the setting)."""


def build_tts_service(config: ConversationConfig) -> Any:
    """The pipecat TTS service for this persona. Cloud providers need an API key."""
    provider = config.tts_provider
    if provider == "espeak":
        from calls.pipeline.speech.tts import EspeakTTSService

        return EspeakTTSService(voice=config.voice)
    if not config.tts_api_key:
        raise TtsConfigurationError(f"tts_api_key: the {provider} voice needs an API key")
    if provider == "elevenlabs":
        import aiohttp
        from pipecat.services.elevenlabs.tts import ElevenLabsHttpTTSService

        # The service borrows this session; the conversation closes it when the call ends.
        session = aiohttp.ClientSession()
        service = ElevenLabsHttpTTSService(
            api_key=config.tts_api_key,
            aiohttp_session=session,
            base_url=(config.tts_base_url or ELEVENLABS_DEFAULT_URL).rstrip("/"),
            settings=ElevenLabsHttpTTSService.Settings(
                voice=config.voice, model=config.tts_model or ELEVENLABS_DEFAULT_MODEL
            ),
        )
        service.parley_http_session = session
        return service
    if provider == "openai":
        from pipecat.services.openai.tts import OpenAITTSService

        return OpenAITTSService(
            api_key=config.tts_api_key,
            base_url=config.tts_base_url or None,
            settings=OpenAITTSService.Settings(
                voice=config.voice, model=config.tts_model or OPENAI_DEFAULT_MODEL
            ),
        )
    raise TtsConfigurationError(f"tts_provider: unknown provider {provider!r}")


async def tts_service_close(service: Any) -> None:
    session = getattr(service, "parley_http_session", None)
    if session is not None and not session.closed:
        await session.close()
