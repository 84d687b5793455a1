"""Cloud recognisers, for personas the offline one cannot hear: Deepgram and OpenAI-compatible APIs.

`cloud_stt_service(config)` builds the pipecat STT service for `config.stt_provider`:

- `deepgram`: pipecat's `DeepgramSTTService` (the deepgram-sdk package) on Deepgram's live
  streaming websocket, `{base}/v1/listen`, `Authorization: Token <key>`. All microphone audio
  is streamed (16 kHz linear16); Deepgram's interim results come back as
  `InterimTranscriptionFrame`s, and at the VAD's end of speech the service sends `Finalize`,
  whose answer (`from_finalize`) is pushed as `TranscriptionFrame(finalized=True)`. A key
  Deepgram refuses (401 at the handshake) is logged as an error and leaves the call running,
  deaf: typed text still works.
- `openai`: pipecat's `OpenAISTTService`: each utterance (the VAD's start to its stop) is sent
  as a WAV to `POST {base}/audio/transcriptions` with the persona's model, language and key.

`recogniser_problem(...)` is the sentence staff see in the admin when nothing can recognise a
persona's language (the offline recogniser is English only) or a cloud one lacks its key.
Light module: pipecat is imported only when a service is built (the admin imports this).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipecat.services.stt_service import STTService

logger = logging.getLogger(__name__)

# The offline recognisers, by `stt_provider`, as staff know them; "" is the model's default.
OFFLINE_RECOGNISERS = {"whisper": "Whisper tiny.en", "pocketsphinx": "PocketSphinx", "": "Whisper tiny.en"}
CLOUD_RECOGNISERS = {"deepgram": "Deepgram", "openai": "An OpenAI-compatible recogniser"}

DEEPGRAM_BASE_URL = "wss://api.deepgram.com"
DEEPGRAM_DEFAULT_MODEL = "nova-3"
# Region variants Deepgram's models take as such (its models and languages overview); any
# other tag goes as its base language: Deepgram's lists name "de" and "de-CH", not "de-DE".
DEEPGRAM_REGIONAL_LANGUAGES = {
    code.lower(): code
    for code in (
        "en-US", "en-GB", "en-AU", "en-NZ", "en-IN", "en-CA",
        "es-419", "fr-CA", "pt-BR", "pt-PT", "de-CH", "nl-BE", "sv-SE", "da-DK",
        "ko-KR", "th-TH", "gu-IN", "pa-IN", "hi-Latn",
        "zh-CN", "zh-TW", "zh-HK", "zh-Hans", "zh-Hant",
    )
}  # fmt: skip
OPENAI_DEFAULT_MODEL = "whisper-1"


class RecogniserConfigurationError(ValueError):
    """A persona's recogniser settings name no cloud recogniser (the message names the setting)."""


def offline_language_supported(code: str) -> bool:
    """Whether the offline recogniser (Whisper tiny.en, English only) understands this language.

    `code` is BCP 47 (`en`, `en-GB`, `de-DE`); empty is the persona's default, en-US.
    """
    primary = code.strip().replace("_", "-").split("-")[0].lower()
    return primary in ("", "en")


def recogniser_problem(*, provider: str, language: str, api_key: str, base_url: str) -> str | None:
    """Why callers' speech to a persona set up like this will not be understood; None if it will."""
    provider = provider.strip().lower()
    language = language.strip() or "en-US"
    if provider in OFFLINE_RECOGNISERS:
        if offline_language_supported(language):
            return None
        return (
            f"The offline recogniser ({OFFLINE_RECOGNISERS[provider]}) only understands English; "
            f"choose Deepgram or an OpenAI-compatible recogniser for {language}, or callers' "
            "speech will not be understood."
        )
    if provider not in CLOUD_RECOGNISERS:
        return (
            f"There is no recogniser called {provider!r}; choose Whisper tiny.en (offline, English), "
            "Deepgram or an OpenAI-compatible recogniser, or callers' speech will not be understood."
        )
    if api_key.strip() or base_url.strip():
        return None
    if provider == "deepgram":
        return (
            "Deepgram needs an API key (Speech recognition API key), or the base URL of a "
            "self-hosted Deepgram; without either, callers' speech will not be understood."
        )
    return (
        "An OpenAI-compatible recogniser needs an API key (Speech recognition API key), or the "
        "base URL of a server that asks for none (a local Whisper server); without either, "
        "callers' speech will not be understood."
    )


def pipecat_language(code: str) -> Any:
    """The persona's language as pipecat's `Language` (BCP 47 like en-US, or just its base)."""
    from pipecat.transcriptions.language import Language

    for candidate in (code, code.split("-")[0].lower()):
        try:
            return Language(candidate)
        except ValueError:
            continue
    logger.warning("unknown language %r for the recogniser; using English", code)
    return Language.EN


def deepgram_language(code: str) -> str:
    """The `language` query parameter Deepgram takes for a BCP 47 tag: de-DE → de, en-GB → en-GB."""
    code = code.strip().replace("_", "-") or "en-US"
    regional = DEEPGRAM_REGIONAL_LANGUAGES.get(code.lower())
    return regional or code.split("-")[0].lower()


def deepgram_base_url(url: str) -> str:
    """Where Deepgram's websocket API is: Deepgram's own, or `url` (http(s) → ws(s)).

    The SDK appends `/v1/listen`, so an address given with `/v1` or `/v1/listen` loses it.
    """
    url = url.strip().rstrip("/") or DEEPGRAM_BASE_URL
    for scheme, websocket_scheme in (("https://", "wss://"), ("http://", "ws://")):
        if url.startswith(scheme):
            url = websocket_scheme + url.removeprefix(scheme)
    if "://" not in url:
        url = f"wss://{url}"
    for suffix in ("/v1/listen", "/v1"):
        url = url.removesuffix(suffix)
    return url


def cloud_stt_service(config: Any) -> STTService:
    """The pipecat STT service for the persona's cloud recogniser (`stt_provider` deepgram or openai).

    A missing key is logged, not refused: a self-hosted server may need none, and a call whose
    recogniser fails still runs (typed text).
    """
    provider = (getattr(config, "stt_provider", "") or "").strip().lower()
    language = getattr(config, "language", "") or "en-US"
    api_key = getattr(config, "stt_api_key", "") or ""
    base_url = getattr(config, "stt_base_url", "") or ""
    model = getattr(config, "stt_model", "") or ""
    if provider not in CLOUD_RECOGNISERS:
        raise RecogniserConfigurationError(
            f"stt_provider: {provider!r} is not a cloud recogniser (deepgram or openai)"
        )
    problem = recogniser_problem(provider=provider, language=language, api_key=api_key, base_url=base_url)
    if problem:
        logger.warning("persona %s: %s", getattr(config, "agent", "?"), problem)
    if provider == "deepgram":
        return deepgram_stt_service(api_key=api_key, base_url=base_url, model=model, language=language)
    return openai_stt_service(api_key=api_key, base_url=base_url, model=model, language=language)


def deepgram_stt_service(*, api_key: str, base_url: str, model: str, language: str) -> STTService:
    from pipecat.services.deepgram.stt import DeepgramSTTService

    return DeepgramSTTService(
        api_key=api_key,
        base_url=deepgram_base_url(base_url),
        settings=DeepgramSTTService.Settings(
            model=model or DEEPGRAM_DEFAULT_MODEL,
            language=deepgram_language(language),
            interim_results=True,
            punctuate=True,
            # Parley's VAD says when speech ended and then sends Finalize. Deepgram's own
            # endpointing would finalize the same words a moment before, racing the VAD: the
            # Finalize's answer would then be empty, and with no final transcript after the end
            # of speech the turn waits out `turns.FINAL_TRANSCRIPT_WAIT_SECONDS`.
            endpointing=False,
        ),
    )


def openai_stt_service(*, api_key: str, base_url: str, model: str, language: str) -> STTService:
    from pipecat.services.openai.stt import OpenAISTTService

    return OpenAISTTService(
        api_key=api_key or "not-needed",  # a local server asks for none; the client wants one
        base_url=base_url or None,
        settings=OpenAISTTService.Settings(
            model=model or OPENAI_DEFAULT_MODEL, language=pipecat_language(language)
        ),
    )
