"""The persona's recogniser: Whisper offline (the default), pocketsphinx offline, or a cloud API.

`build_stt_service(config)` returns a pipecat STT service for the pipeline position right after
the transport input (before the user aggregator, whose VAD frames it receives):

- `whisper` (default, offline, English): `WhisperSTTService`. Whisper tiny.en, one model per
  process decoding on threads (`whisper`), biased to the persona by a prompt of its name,
  phrases and knowledge. Interim words come from decodes of the growing utterance every
  `WHISPER_INTERIM_SECONDS`; the final transcript from the decode started when the speaker
  paused (`stream_service`).
- `pocketsphinx` (offline, English; lighter, less accurate): `SphinxSTTService`. Each
  utterance is a stream on a worker process (`workers`), decoded incrementally by the general
  en-US model and by a model of the persona's own questions (`corpus`, `sphinx_worker`).
- `openai`, `deepgram`: cloud recognisers (`cloud`), for personas in other languages.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

from calls.pipeline.listening.cloud import offline_language_supported
from calls.pipeline.listening.stream_service import (
    RecogniserUnavailable,
    StreamingSTTService,
    UtteranceStream,
    stable_prefix,
)

__all__ = [
    "RecogniserUnavailable",
    "SphinxSTTService",
    "WhisperSTTService",
    "build_stt_service",
    "recogniser_prepare",
    "stable_prefix",
]

logger = logging.getLogger(__name__)

OFFLINE_PROVIDERS = ("whisper", "pocketsphinx")
# While the user speaks, Whisper decodes the utterance so far this often (seconds): each
# decode is ~40-60 ms of one core, so a speaking user costs ~10 % of one; interim decodes
# wait behind every final one (`whisper.DecodeQueue`).
WHISPER_INTERIM_SECONDS = 0.5


def provider_of(config: Any) -> str:
    provider = getattr(config, "stt_provider", "whisper") or "whisper"
    return provider if provider in (*OFFLINE_PROVIDERS, "openai", "deepgram") else "whisper"


def recogniser_check() -> None:
    if importlib.util.find_spec("pocketsphinx") is None:
        raise RuntimeError(
            "the offline recogniser needs the pocketsphinx package (requirements.txt); "
            "install it, or choose another stt_provider for the persona"
        )


def warm_up() -> None:
    """Load Whisper now (blocking; off the event loop)."""
    from calls.pipeline.listening.whisper import whisper_recogniser

    whisper_recogniser()


def sphinx_warm_up() -> None:
    """Start pocketsphinx's worker processes and load their models now (blocking)."""
    from calls.pipeline.listening.workers import recogniser_pool

    recogniser_check()
    recogniser_pool().wait_ready()


def whisper_prompt_of(config: Any) -> str:
    """The persona's prompt for Whisper (`whisper.persona_prompt`), counted in its tokens."""
    from calls.pipeline.listening.whisper import persona_prompt, whisper_recogniser

    return persona_prompt(
        name=getattr(config, "name", ""),
        knowledge=tuple(getattr(config, "knowledge", ()) or ()),
        phrases=tuple(getattr(config, "stt_phrases", ()) or ()),
        tokens=whisper_recogniser().count_tokens,
    )


def recogniser_prepare(config: Any) -> bool:
    """Have the offline recogniser ready for this persona (blocking); False for a cloud one."""
    provider = provider_of(config)
    if provider == "whisper":
        from calls.pipeline.listening.whisper import whisper_recogniser

        whisper_recogniser().prompt_tokens(whisper_prompt_of(config))
        return True
    if provider == "pocketsphinx":
        from calls.pipeline.listening.corpus import corpus_key, persona_corpus
        from calls.pipeline.listening.workers import recogniser_pool

        sphinx_warm_up()
        corpus = persona_corpus(
            name=getattr(config, "name", ""),
            greeting=getattr(config, "greeting", ""),
            knowledge=tuple(getattr(config, "knowledge", ()) or ()),
            phrases=tuple(getattr(config, "stt_phrases", ()) or ()),
        )
        recogniser_pool().prepare(corpus_key(corpus), corpus)
        return True
    return False


class WhisperSTTService(StreamingSTTService):
    """Offline recognition with Whisper tiny.en, biased to the persona by a prompt."""

    interim_seconds = WHISPER_INTERIM_SECONDS

    def __init__(
        self,
        *,
        name: str = "",
        greeting: str = "",
        knowledge: Sequence[tuple[str, str]] = (),
        phrases: Sequence[str] = (),
        language: str = "en-US",
        **kwargs: Any,
    ) -> None:
        from calls.pipeline.listening.whisper import MODEL_NAME, persona_prompt, whisper_recogniser

        super().__init__(model=MODEL_NAME, language=language, **kwargs)
        self.recogniser = (
            whisper_recogniser()
        )  # built off the event loop (Conversation._build runs in a thread)
        self.prompt = persona_prompt(
            name=name,
            knowledge=knowledge,
            phrases=phrases,
            tokens=self.recogniser.count_tokens,
        )
        self.recogniser.prompt_tokens(self.prompt)

    def _open_stream(self) -> UtteranceStream:
        return self.recogniser.stream(prompt=self.prompt)

    def _agreed(self, previous: list[str], latest: list[str]) -> list[str]:
        """Each partial decodes the whole utterance so far, so its words only change at its end,
        where a word may be cut: the first partial's words but its last are shown at once (a short
        question gets two partials at most), later ones as far as two in a row agree."""
        if not previous:
            return latest[:-1]
        agreed = stable_prefix([_bare(word) for word in previous], [_bare(word) for word in latest])
        return latest[: len(agreed)]


def _bare(word: str) -> str:
    return word.strip(".,;:?!").lower()


class SphinxSTTService(StreamingSTTService):
    """Offline recognition: incremental pocketsphinx decoding in worker processes."""

    def __init__(
        self,
        *,
        name: str = "",
        greeting: str = "",
        knowledge: Sequence[tuple[str, str]] = (),
        phrases: Sequence[str] = (),
        language: str = "en-US",
        **kwargs: Any,
    ) -> None:
        from calls.pipeline.listening.corpus import corpus_key, persona_corpus
        from calls.pipeline.listening.workers import recogniser_pool

        super().__init__(model="pocketsphinx-en-us", language=language, **kwargs)
        sphinx_warm_up()  # built off the event loop (Conversation._build runs in a thread)
        self.corpus = persona_corpus(name=name, greeting=greeting, knowledge=knowledge, phrases=phrases)
        self.corpus_key = corpus_key(self.corpus)
        recogniser_pool().prepare(self.corpus_key, self.corpus)  # not at the first utterance
        # This call's cepstral mean after its last utterance: its microphone's, carried to the next.
        self._cmn = ""

    def _open_stream(self) -> UtteranceStream:
        from calls.pipeline.listening.workers import recogniser_pool

        return recogniser_pool().open_stream(corpus_key=self.corpus_key, corpus=self.corpus, cmn=self._cmn)

    def _result_kept(self, result: dict[str, Any]) -> None:
        self._cmn = result.get("cmn", "")


def build_stt_service(config: Any) -> Any:
    """The recogniser the persona is configured with."""
    provider = provider_of(config)
    language = getattr(config, "language", "en-US") or "en-US"
    if provider in ("openai", "deepgram"):
        from calls.pipeline.listening.cloud import cloud_stt_service

        return cloud_stt_service(config)
    if not offline_language_supported(language):
        logger.warning(
            "the offline recogniser (%s) only knows English; %s speech will be heard as English",
            provider,
            language,
        )
    service_class = SphinxSTTService if provider == "pocketsphinx" else WhisperSTTService
    return service_class(
        name=getattr(config, "name", ""),
        greeting=getattr(config, "greeting", ""),
        knowledge=tuple(getattr(config, "knowledge", ()) or ()),
        phrases=tuple(getattr(config, "stt_phrases", ()) or ()),
        language=language,
    )
