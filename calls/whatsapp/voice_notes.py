"""WhatsApp voice notes as text: decoded off the event loop, heard by the persona's own recogniser.

`voice_note_transcribe(config, data)` takes the persona's conversation config (the one a call
gets, `calls.live.persona_conversation_config(persona)`, or anything with its `stt_*`,
`language`, `name`, `knowledge` and `stt_phrases` attributes; or the `Persona` itself) and the
voice note's bytes: OGG/Opus
as WhatsApp sends it, or any audio container PyAV decodes (AAC, MP3, AMR, WAV...). The audio is
decoded to 16 kHz mono 16-bit on a thread (`voice_note_decode`), then recognised as the persona's
calls are (`listening.providers.provider_of`):

- `whisper` (the default): Whisper tiny.en's whole-recording decoding (`transcribe_file`), with
  the persona's prompt, on the process's decoding threads behind live calls' final decodes.
- `pocketsphinx`: one utterance on the recogniser's worker processes, with the persona's model.
- `openai`: the WAV is posted to the persona's OpenAI-compatible `audio/transcriptions`, with its
  model, language and key, as a call's utterances are.
- `deepgram`: not supported: Parley's Deepgram recogniser is the live streaming websocket
  driven by a call's voice activity detection; there is no whole-file path
  (`VoiceNoteRecogniserUnsupported`, a `NotImplementedError`).

Audio that cannot be decoded, holds no sound or is too long is a `VoiceNoteError` saying so.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import wave
from dataclasses import dataclass
from typing import Any

import numpy as np

from calls.pipeline.listening.cloud import OPENAI_DEFAULT_MODEL, offline_language_supported, pipecat_language
from calls.pipeline.listening.providers import provider_of

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # what every recogniser here takes
# Longer voice notes are refused: one would hold a Whisper decoding thread for minutes (about
# 1 s of CPU per 10 s of speech), and as a 16 kHz WAV (32 kB/s) it nears OpenAI's 25 MB upload
# limit at 13 minutes. WhatsApp's own cap is 16 MB of audio, hours of Opus.
VOICE_NOTE_MAX_SECONDS = 10 * 60.0
# Audio goes to a pocketsphinx worker in pieces of this many seconds, as a call's audio would.
SPHINX_FEED_SECONDS = 1.0
# An OpenAI-compatible recogniser transcribes a minute of audio in a few seconds; this bounds a
# stuck one.
CLOUD_TIMEOUT_SECONDS = 60.0


class VoiceNoteError(ValueError):
    """A voice note that cannot be heard: not audio, no sound, too long, or the recogniser failed."""


class VoiceNoteRecogniserUnsupported(NotImplementedError):
    """The persona's recogniser cannot transcribe a whole recording (the message names it)."""


@dataclass(frozen=True)
class VoiceNoteAudio:
    """A decoded voice note: 16 kHz mono 16-bit little-endian PCM."""

    pcm: bytes

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / SAMPLE_RATE

    def samples(self) -> np.ndarray:
        """float32, ±1."""
        return np.frombuffer(self.pcm, dtype=np.int16).astype(np.float32) / 32768.0

    def wav(self) -> bytes:
        out = io.BytesIO()
        with wave.open(out, "wb") as file:
            file.setnchannels(1)
            file.setsampwidth(2)
            file.setframerate(SAMPLE_RATE)
            file.writeframes(self.pcm)
        return out.getvalue()


def voice_note_decode(data: bytes, *, max_seconds: float = VOICE_NOTE_MAX_SECONDS) -> VoiceNoteAudio:
    """The recording's first audio stream as 16 kHz mono 16-bit PCM. Blocking: call it on a thread.

    Decoding stops as soon as the audio passes `max_seconds`: a long file is never decoded whole.
    Packets that do not decode are skipped (a voice note cut short still has its start), but a
    file with none that does is refused.
    """
    import av

    if not data:
        raise VoiceNoteError("the voice note is empty")
    limit = int(max_seconds * SAMPLE_RATE)
    pieces: list[bytes] = []
    samples = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise VoiceNoteError("the voice note holds no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    continue
                for frame in frames:
                    samples += _resampled(resampler, frame, pieces)
                if samples > limit:
                    raise VoiceNoteError(
                        f"the voice note is longer than {max_seconds:.0f} seconds, the longest heard"
                    )
            samples += _resampled(resampler, None, pieces)  # what the resampler still holds
    except VoiceNoteError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as error:
        raise VoiceNoteError(f"the voice note could not be decoded as audio: {error}") from error
    if samples == 0:
        raise VoiceNoteError("the voice note could not be decoded as audio: it holds no sound")
    return VoiceNoteAudio(pcm=b"".join(pieces))


def _resampled(resampler: Any, frame: Any, pieces: list[bytes]) -> int:
    """Append `frame` (None: the rest) resampled to `pieces`; the number of samples added."""
    added = 0
    for resampled in resampler.resample(frame):
        chunk = resampled.to_ndarray().tobytes()
        pieces.append(chunk)
        added += len(chunk) // 2
    return added


async def voice_note_transcribe(config: Any, data: bytes) -> str:
    """What the voice note says, heard by the persona's recogniser ("" when it says nothing).

    `config` is the persona's conversation config, or a `Persona` (its config is then read
    from the database on a thread, as a call's is). Raises `VoiceNoteError` for audio that
    cannot be heard, `VoiceNoteRecogniserUnsupported` when the persona's recogniser has no
    whole-recording path (Deepgram).
    """
    if _is_persona_model(config):
        from asgiref.sync import sync_to_async

        from calls.live import persona_conversation_config

        config = await sync_to_async(persona_conversation_config)(config)
    provider = provider_of(config)
    if provider == "deepgram":
        raise VoiceNoteRecogniserUnsupported(
            "Deepgram: the persona's recogniser is Deepgram's live streaming API, driven by a call's "
            "voice activity detection; Parley cannot send it a whole recording yet, so this voice "
            "note cannot be transcribed. An OpenAI-compatible recogniser or Whisper can."
        )
    audio = await asyncio.to_thread(voice_note_decode, data)
    language = getattr(config, "language", "en-US") or "en-US"
    if provider in ("whisper", "pocketsphinx") and not offline_language_supported(language):
        logger.warning(
            "the offline recogniser (%s) only knows English; a %s voice note will be heard as English",
            provider,
            language,
        )
    if provider == "openai":
        return await _openai_transcribe(config, audio)
    if provider == "pocketsphinx":
        return await _sphinx_transcribe(config, audio)
    return await _whisper_transcribe(config, audio)


def _is_persona_model(value: Any) -> bool:
    """A `personas.models.Persona` (a Django model), not a config; imported only if Django is."""
    meta = getattr(value, "_meta", None)
    return meta is not None and getattr(meta, "label", "") == "personas.Persona"


async def _whisper_transcribe(config: Any, audio: VoiceNoteAudio) -> str:
    from calls.pipeline.listening.providers import whisper_prompt_of
    from calls.pipeline.listening.whisper import whisper_recogniser

    def prepared() -> tuple[Any, str]:  # loads the model on first use (~0.3 s)
        return whisper_recogniser(), whisper_prompt_of(config)

    recogniser, prompt = await asyncio.to_thread(prepared)
    wav = audio.wav()
    # Queued as an interim decode is: behind every live call's final decode, since a caller
    # waits on the line for those, and a voice note's writer waits for a typed answer.
    abandoned = threading.Event()  # set when the caller gave up: a queued decode is skipped
    future = recogniser.queue.submit(
        lambda: recogniser.transcribe_file(wav, prompt=prompt), interim=True, stale=abandoned.is_set
    )
    try:
        return str(await future)
    except asyncio.CancelledError:
        abandoned.set()
        raise


async def _sphinx_transcribe(config: Any, audio: VoiceNoteAudio) -> str:
    from calls.pipeline.listening.corpus import corpus_key, persona_corpus
    from calls.pipeline.listening.workers import recogniser_pool

    def prepared() -> tuple[str, str]:  # starts the workers and builds the persona's model
        from calls.pipeline.listening.providers import sphinx_warm_up

        sphinx_warm_up()
        corpus = persona_corpus(
            name=getattr(config, "name", ""),
            greeting=getattr(config, "greeting", ""),
            knowledge=tuple(getattr(config, "knowledge", ()) or ()),
            phrases=tuple(getattr(config, "stt_phrases", ()) or ()),
        )
        key = corpus_key(corpus)
        recogniser_pool().prepare(key, corpus)
        return key, corpus

    key, corpus = await asyncio.to_thread(prepared)
    stream = recogniser_pool().open_stream(corpus_key=key, corpus=corpus)
    step = int(SPHINX_FEED_SECONDS * SAMPLE_RATE) * 2
    try:
        for start in range(0, len(audio.pcm), step):
            stream.feed(audio.pcm[start : start + step])
        result = await stream.final()
    except BaseException:
        stream.cancel()
        raise
    return str(result.get("text", ""))


async def _openai_transcribe(config: Any, audio: VoiceNoteAudio) -> str:
    import openai
    from pipecat.services.whisper.base_stt import language_to_whisper_language

    api_key = getattr(config, "stt_api_key", "") or ""
    client = openai.AsyncOpenAI(
        api_key=api_key or "not-needed",  # a local server asks for none; the client wants one
        base_url=getattr(config, "stt_base_url", "") or None,
        timeout=CLOUD_TIMEOUT_SECONDS,
        max_retries=1,
    )
    # The language as a call's utterances send it: the persona's, as Whisper's code (de-DE → de).
    language = language_to_whisper_language(pipecat_language(getattr(config, "language", "") or "en-US"))
    options: dict[str, Any] = {"language": language} if language else {}
    try:
        transcription = await client.audio.transcriptions.create(
            file=("voice-note.wav", audio.wav(), "audio/wav"),
            model=getattr(config, "stt_model", "") or OPENAI_DEFAULT_MODEL,
            **options,
        )
    except openai.OpenAIError as error:
        message = str(error).replace(api_key, "[key]") if api_key else str(error)
        raise VoiceNoteError(
            f"the OpenAI-compatible recogniser did not transcribe the voice note: {message}"
        ) from None
    finally:
        await client.close()
    return transcription.text.strip()
