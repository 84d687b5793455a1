"""Offline speech synthesis with libespeak-ng through ctypes: streamed 48 kHz audio, word and phoneme marks.

libespeak-ng (bundled with its data by the `espeakng-loader` wheel, GPL-3) is one instance per
process and not thread-safe, so every call into it happens on one dedicated worker thread. Work
reaches that thread through a queue of jobs: never the event loop, and never asyncio's default
executor, which aiortc uses for encoding. A job is one utterance cut into segments of whole
sentences; the worker synthesises one segment and puts the job back at the end of the queue, so
concurrent calls take turns sentence by sentence instead of waiting for a long reply to finish.

Audio comes from espeak's synchronous callback in ~60 ms buffers at 22,050 Hz, is resampled to
48 kHz with one streaming soxr resampler per utterance (so the timeline has no seams between
segments), and reaches the caller's loop as `SpeechChunk`s with the word and phoneme marks
espeak reported for that buffer. Returning 1 from the callback stops espeak mid-utterance; that
is how a barge-in or an abandoned iterator ends a synthesis within one buffer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import queue
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import espeakng_loader
import numpy as np
import soxr

logger = logging.getLogger(__name__)

OUTPUT_SAMPLE_RATE_HZ = 48_000  # WebRTC's Opus rate: the browser gets it without another resample
# espeak's buffer length, in ms. It rounds this up to 60 ms (1,324 samples at 22,050 Hz):
# small enough that a barge-in stops within one buffer, big enough to keep callbacks cheap.
ESPEAK_BUFFER_MILLISECONDS = 50
# Utterances are cut into segments of whole sentences up to this many characters (~10 s of
# speech, ~35 ms of worker time) so one long reply cannot hold the worker while others wait:
# a short reply queued behind a long one waits for at most one segment (see bench/tts_espeak.py).
SEGMENT_TARGET_CHARACTERS = 160
RATE_WPM_RANGE = (80, 450)  # espeakRATE_MINIMUM .. espeakRATE_MAXIMUM, words per minute
PITCH_RANGE = (0, 100)  # espeak's pitch scale (50 is the voice's normal pitch)
DEFAULT_VOICE = "en-us+f3"
# How long close() waits for the worker to finish its current segment, in seconds.
WORKER_JOIN_TIMEOUT_SECONDS = 5.0

# speak_lib.h constants (espeak-ng 1.52).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_INITIALIZE_DONT_EXIT = 0x8000  # report a missing data dir instead of calling exit()
_CHARS_UTF8 = 1
_SSML = 0x10
_ENDPAUSE = 0x1000  # keep the sentence pause at the end of a segment we cut after a sentence
_POS_CHARACTER = 1
_PARAMETER_RATE = 1
_PARAMETER_PITCH = 3
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_EE_OK = 0
_STOP = 1  # callback return value that aborts the synthesis

PAUSE_PHONEME = "_"  # espeak's IPA names for pauses are empty strings; we name them
_IPA_STRESS_MARKS = str.maketrans("", "", "\u02c8\u02cc")  # IPA stress marks: not a mouth shape


@dataclass(frozen=True, slots=True)
class WordMark:
    """A word starts being spoken `offset_seconds` after the start of the utterance."""

    offset_seconds: float
    text: str


@dataclass(frozen=True, slots=True)
class PhonemeMark:
    """A phoneme (IPA, without stress marks; `_` is a pause) starts at `offset_seconds`."""

    offset_seconds: float
    phoneme: str


@dataclass(frozen=True, slots=True)
class SpeechChunk:
    """A piece of an utterance: int16 mono PCM at 48 kHz and the marks espeak reported with it.

    Mark offsets are relative to the start of the utterance, on the same timeline as
    `start_sample` (which counts 48 kHz samples before this chunk).
    """

    pcm: bytes
    start_sample: int
    words: list[WordMark] = field(default_factory=list)
    phonemes: list[PhonemeMark] = field(default_factory=list)

    @property
    def sample_count(self) -> int:
        return len(self.pcm) // 2

    @property
    def start_seconds(self) -> float:
        return self.start_sample / OUTPUT_SAMPLE_RATE_HZ

    @property
    def duration_seconds(self) -> float:
        return self.sample_count / OUTPUT_SAMPLE_RATE_HZ


# --- ctypes binding ---------------------------------------------------------------------------


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based, in characters of the UTF-8 text
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms, rounded down
        ("sample", ctypes.c_int),  # samples since the start of this espeak_Synth call
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        # (priority byte, NUL-terminated language) pairs, ended by a zero byte: not a C string.
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


def _load_library() -> ctypes.CDLL:
    library = ctypes.CDLL(espeakng_loader.get_library_path())
    library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    library.espeak_Initialize.restype = ctypes.c_int
    library.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    library.espeak_SetSynthCallback.restype = None
    library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    library.espeak_SetVoiceByName.restype = ctypes.c_int
    library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    library.espeak_SetParameter.restype = ctypes.c_int
    library.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]
    library.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    library.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint),
        ctypes.c_void_p,
    ]
    library.espeak_Synth.restype = ctypes.c_int
    return library


# --- voices -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VoiceInfo:
    """One espeak-ng voice: `identifier` is its file under espeak-ng-data/voices."""

    name: str
    identifier: str
    languages: tuple[str, ...]


@dataclass(frozen=True)
class VoiceCatalogue:
    """The voices and variants this libespeak-ng has, and how Parley's voice names map onto them.

    A voice name is `<voice>` or `<voice>+<variant>`: the voice by file name (`en-us`,
    `en-gb-x-rp`), language code (`en-gb`, which espeak's own lookup does not find), or display
    name (`English (America)`); the variant by file name (`f3`, `m3`, `klatt`) or display name.
    """

    voices: tuple[VoiceInfo, ...]
    variants: tuple[VoiceInfo, ...]

    def resolve(self, voice: str) -> str:
        """The name to hand espeak_SetVoiceByName, or ValueError naming the voice and some valid ones."""
        base_name, _, variant_name = voice.strip().partition("+")
        base = self._find_voice(base_name)
        variant = self._find_variant(variant_name) if variant_name else None
        if base is None or (variant_name and variant is None):
            raise ValueError(
                f"unknown espeak-ng voice {voice!r}; valid names include {', '.join(self.examples())} "
                f"({len(self.voices)} voices, each optionally '+' one of {len(self.variants)} variants)"
            )
        if variant is None:
            return base.identifier
        # espeak looks a variant up as "!v/<name>"; it silently ignores one it cannot find,
        # which is why we validate it ourselves.
        return f"{base.identifier}+{variant.identifier.removeprefix('!v/')}"

    def examples(self) -> list[str]:
        return ["en-us", "en-gb", "en", "en-us+f3", "en+m3", "en-gb-x-rp", "fr", "de"]

    def _find_voice(self, name: str) -> VoiceInfo | None:
        wanted = name.casefold().replace("_", " ")
        if not wanted:
            return None
        for voice in self.voices:  # a file name wins, as in espeak's own lookup
            identifier = voice.identifier.casefold()
            if wanted in (identifier, identifier.rpartition("/")[2]):
                return voice
        for voice in self.voices:
            if wanted == voice.name.casefold():
                return voice
        # A language code: the voice that lists it first (highest priority) wins.
        candidates = [v for v in self.voices if wanted in v.languages]
        return min(candidates, key=lambda v: v.languages.index(wanted), default=None)

    def _find_variant(self, name: str) -> VoiceInfo | None:
        wanted = name.casefold()
        for variant in self.variants:
            if wanted in (variant.identifier.casefold().removeprefix("!v/"), variant.name.casefold()):
                return variant
        return None


def _languages(pointer: int | None) -> tuple[str, ...]:
    if not pointer:
        return ()
    languages = []
    offset = 0
    while ctypes.string_at(pointer + offset, 1) != b"\0":
        language = ctypes.string_at(pointer + offset + 1)  # after the priority byte
        languages.append(language.decode("utf-8", "replace").casefold())
        offset += 1 + len(language) + 1
    return tuple(languages)


def _list_voices(library: ctypes.CDLL, spec: _Voice | None) -> tuple[VoiceInfo, ...]:
    array = library.espeak_ListVoices(ctypes.byref(spec) if spec is not None else None)
    voices = []
    index = 0
    while array[index]:
        voice = array[index].contents
        voices.append(
            VoiceInfo(
                name=(voice.name or b"").decode("utf-8", "replace"),
                identifier=(voice.identifier or b"").decode("utf-8", "replace"),
                languages=_languages(voice.languages),
            )
        )
        index += 1
    return tuple(voices)


def _read_catalogue(library: ctypes.CDLL) -> VoiceCatalogue:
    variant_language = ctypes.create_string_buffer(b"variant")
    spec = _Voice()
    spec.languages = ctypes.cast(variant_language, ctypes.c_void_p).value
    variants = _list_voices(library, spec)  # read before the buffer can go away
    return VoiceCatalogue(voices=_list_voices(library, None), variants=variants)


# --- text -------------------------------------------------------------------------------------

# Anything that looks like a markup tag. Outside SSML mode espeak reads tags aloud ("break
# time three s"), which an LLM's stray markup should never cause.
_TAG = re.compile(r"</?[A-Za-z!?][^<>]*>")
# C0 controls other than tab/newline: espeak gives 0x01 a meaning (embedded commands).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'\u201d\u2019)\]]*\s+|\n\s*\n")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


_SPACE_BEFORE_PUNCTUATION = re.compile(r" +(?=[.,!?;:])")


def _plain_text(text: str) -> str:
    # A tag becomes a space (so "a<br>b" stays two words); "<b>now</b>." must not leave "now .".
    untagged = _SPACE_BEFORE_PUNCTUATION.sub("", _TAG.sub(" ", text))
    return _CONTROL.sub(" ", untagged).strip()


@dataclass(frozen=True, slots=True)
class _Segment:
    text: str
    ends_sentence: bool


def _segments(text: str) -> list[_Segment]:
    """Whole sentences grouped up to SEGMENT_TARGET_CHARACTERS; an over-long sentence is cut at
    clauses, then at spaces. Short texts stay one segment so espeak sees them whole."""
    pieces: list[tuple[str, bool]] = []
    for sentence in (s.strip() for s in _SENTENCE_END.split(text)):
        if not sentence:
            continue
        if len(sentence) <= SEGMENT_TARGET_CHARACTERS:
            pieces.append((sentence, True))
            continue
        parts = _split_long(sentence)
        pieces.extend((part, index == len(parts) - 1) for index, part in enumerate(parts))
    segments: list[_Segment] = []
    current: list[str] = []
    for piece, ends_sentence in pieces:
        if current and len(" ".join([*current, piece])) > SEGMENT_TARGET_CHARACTERS:
            segments.append(_Segment(" ".join(current), ends_sentence=True))
            current = []
        if not ends_sentence:
            segments.append(_Segment(piece, ends_sentence=False))
            continue
        current.append(piece)
    if current:
        segments.append(_Segment(" ".join(current), ends_sentence=True))
    return segments


def _split_long(sentence: str) -> list[str]:
    parts: list[str] = []
    for clause in _CLAUSE_END.split(sentence):
        while len(clause) > SEGMENT_TARGET_CHARACTERS:
            cut = clause.rfind(" ", 0, SEGMENT_TARGET_CHARACTERS)
            cut = cut if cut > 0 else SEGMENT_TARGET_CHARACTERS
            parts.append(clause[:cut].strip())
            clause = clause[cut:].strip()
        if parts and len(parts[-1]) + 1 + len(clause) <= SEGMENT_TARGET_CHARACTERS:
            parts[-1] = f"{parts[-1]} {clause}"
        elif clause:
            parts.append(clause)
    return [part for part in parts if part]


class _WordAligner:
    """Turns espeak's word events into the text's own words, each exactly once and in order.

    espeak's positions cannot be used as they are: a number like "1,250" yields four word
    events inside one word, a dictionary phrase like "déjà vu" yields a second event one
    character into the first word, and a word in curly quotes gets a zero-length event on
    the quote. So an event claims the whitespace-separated word it falls in, together with any
    words espeak skipped before it ("vu" comes out with the word after it); an event inside a
    word already claimed is ignored; words never claimed are given out at the segment's end.
    """

    def __init__(self, text: str) -> None:
        # Tags are blanked, not removed, so positions still match the text espeak reads.
        visible = _TAG.sub(lambda tag: " " * len(tag.group()), text)
        self._words = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", visible)]
        self._next = 0

    def claim(self, text_position: int) -> list[str]:
        index = text_position - 1
        if self._next > 0 and index < self._words[self._next - 1][1]:
            return []  # inside a word already given out: espeak split it into several
        for word_index in range(self._next, len(self._words)):
            if index < self._words[word_index][1]:  # inside this word, or in the space before it
                claimed = [word for _, _, word in self._words[self._next : word_index + 1]]
                self._next = word_index + 1
                return claimed
        return []

    def rest(self) -> list[str]:
        claimed = [word for _, _, word in self._words[self._next :]]
        self._next = len(self._words)
        return claimed


# --- the worker -------------------------------------------------------------------------------


class _Finished:
    """Sentinel put on a job's result queue after its last chunk."""


_FINISHED = _Finished()


@dataclass(eq=False)
class _Job:
    """One utterance, shared by the caller's loop (results) and the worker (everything else)."""

    loop: asyncio.AbstractEventLoop
    results: asyncio.Queue[SpeechChunk | BaseException | _Finished]
    segments: list[_Segment]
    voice: str
    rate_wpm: int
    pitch: int
    ssml: bool
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Worker-side state, touched only on the worker thread.
    next_segment: int = 0
    native_rate_hz: int = 0
    resampler: Any = None
    native_samples_done: int = 0  # before the current segment, at espeak's rate
    segment_samples: int = 0
    output_samples: int = 0  # 48 kHz samples already delivered
    aligner: _WordAligner | None = None
    last_word_offset: float = 0.0
    pending_words: list[WordMark] = field(default_factory=list)
    pending_phonemes: list[PhonemeMark] = field(default_factory=list)
    error: BaseException | None = None

    def deliver(self, item: SpeechChunk | BaseException | _Finished) -> None:
        try:
            self.loop.call_soon_threadsafe(self.results.put_nowait, item)
        except RuntimeError:  # the caller's loop is closed: nobody is listening any more
            self.cancelled.set()


class EspeakSynthesizer:
    """Text to 48 kHz speech with word and phoneme marks, on one worker thread per process.

    Use `EspeakSynthesizer.shared()`: libespeak-ng is one per process, so a second open
    synthesizer is refused. It can serve any number of event loops and calls at once.
    """

    _shared: EspeakSynthesizer | None = None
    _open: EspeakSynthesizer | None = None
    _class_lock = threading.Lock()
    _shared_lock = threading.Lock()
    _library: ctypes.CDLL | None = None  # loaded and initialised once per process
    _native_rate_hz = 0
    _catalogue: VoiceCatalogue | None = None

    def __init__(self) -> None:
        with EspeakSynthesizer._class_lock:
            if EspeakSynthesizer._open is not None:
                raise RuntimeError(
                    "libespeak-ng is one per process and not thread-safe: use EspeakSynthesizer.shared()"
                )
            EspeakSynthesizer._open = self
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._ready: concurrent.futures.Future[VoiceCatalogue] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._current: _Job | None = None
        # Kept as an attribute: ctypes does not keep the callback alive for libespeak.
        self._callback = _SynthCallback(self._on_audio)
        self._closed = False

    @classmethod
    def shared(cls) -> EspeakSynthesizer:
        """The process's synthesizer, created on first use."""
        with cls._shared_lock:
            if cls._shared is None or cls._shared._closed:
                cls._shared = cls()
            return cls._shared

    def start_blocking(self, timeout: float = 60.0) -> VoiceCatalogue:
        """Load the library and its voices now (blocking; for a server's warm-up thread)."""
        return self._start().result(timeout)

    async def voice_catalogue(self) -> VoiceCatalogue:
        """The voices and variants available (starts the worker if needed)."""
        return await asyncio.wrap_future(self._start())

    async def resolve_voice(self, voice: str) -> str:
        """espeak's name for `voice`; ValueError naming it and some valid names if unknown."""
        return (await self.voice_catalogue()).resolve(voice)

    async def synthesize(
        self,
        text: str,
        *,
        voice: str = DEFAULT_VOICE,
        rate_wpm: int = 170,
        pitch: int = 50,
        ssml: bool = False,
    ) -> AsyncIterator[SpeechChunk]:
        """Stream `text` as speech chunks as espeak produces them.

        Plain text has markup tags removed; `ssml=True` hands the text to espeak's SSML parser
        as one segment. Leaving the loop early (break, `aclose()`, task cancellation) stops
        the synthesis within one espeak buffer. Empty text yields nothing.
        """
        if not RATE_WPM_RANGE[0] <= rate_wpm <= RATE_WPM_RANGE[1]:
            raise ValueError(f"rate_wpm must be within {RATE_WPM_RANGE}, not {rate_wpm}")
        if not PITCH_RANGE[0] <= pitch <= PITCH_RANGE[1]:
            raise ValueError(f"pitch must be within {PITCH_RANGE}, not {pitch}")
        espeak_voice = await self.resolve_voice(voice)
        if ssml:
            segments = [_Segment(text, ends_sentence=False)] if text.strip() else []
        else:
            segments = _segments(_plain_text(text))
        if not segments:
            return
        if self._closed:
            raise RuntimeError("the espeak synthesizer is closed")
        job = _Job(
            loop=asyncio.get_running_loop(),
            results=asyncio.Queue(),
            segments=segments,
            voice=espeak_voice,
            rate_wpm=rate_wpm,
            pitch=pitch,
            ssml=ssml,
        )
        self._jobs.put(job)
        try:
            while True:
                item = await job.results.get()
                if isinstance(item, _Finished):
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Barge-in: the callback sees this and returns 1; queued segments are skipped.
            job.cancelled.set()

    def close(self) -> None:
        """Stop the worker after its current segment. Jobs still queued end with an error."""
        with EspeakSynthesizer._class_lock:
            if self._closed:
                return
            self._closed = True
            if EspeakSynthesizer._open is self:
                EspeakSynthesizer._open = None
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(WORKER_JOIN_TIMEOUT_SECONDS)

    # --- worker thread ---

    def _start(self) -> concurrent.futures.Future[VoiceCatalogue]:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="espeak-synthesizer", daemon=True)
                self._thread.start()
        return self._ready

    def _run(self) -> None:
        try:
            library = self._initialise()
        except BaseException as error:
            self._ready.set_exception(error)
            self._fail_queued(error)
            return
        assert EspeakSynthesizer._catalogue is not None
        self._ready.set_result(EspeakSynthesizer._catalogue)
        library.espeak_SetSynthCallback(self._callback)
        loaded_voice = ""
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                job.resampler = None
                continue
            try:
                if job.voice != loaded_voice:
                    if library.espeak_SetVoiceByName(job.voice.encode()) != _EE_OK:
                        raise RuntimeError(f"espeak could not load voice {job.voice!r}")
                    loaded_voice = job.voice
                self._run_segment(library, job)
            except Exception as error:
                logger.exception("espeak synthesis failed")
                loaded_voice = ""
                job.resampler = None
                job.deliver(error)
                continue
            if job.cancelled.is_set():
                job.resampler = None
                continue
            if job.next_segment < len(job.segments):
                self._jobs.put(job)  # back of the queue: other calls get a turn between segments
            else:
                self._finish(job)
        self._fail_queued(RuntimeError("the espeak synthesizer is closed"))

    @staticmethod
    def _initialise() -> ctypes.CDLL:
        # Once per process, whichever worker thread gets here first; later workers reuse it.
        if EspeakSynthesizer._library is None:
            library = _load_library()
            options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA | _INITIALIZE_DONT_EXIT
            sample_rate = library.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS,
                ESPEAK_BUFFER_MILLISECONDS,
                espeakng_loader.get_data_path().encode(),
                options,
            )
            if sample_rate <= 0:
                raise RuntimeError(f"espeak_Initialize failed ({sample_rate})")
            EspeakSynthesizer._catalogue = _read_catalogue(library)
            EspeakSynthesizer._native_rate_hz = sample_rate
            EspeakSynthesizer._library = library
        return EspeakSynthesizer._library

    def _fail_queued(self, error: BaseException) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.deliver(error)

    def _run_segment(self, library: ctypes.CDLL, job: _Job) -> None:
        if job.resampler is None:
            job.native_rate_hz = EspeakSynthesizer._native_rate_hz
            job.resampler = soxr.ResampleStream(
                job.native_rate_hz, OUTPUT_SAMPLE_RATE_HZ, 1, dtype="int16", quality="HQ"
            )
        segment = job.segments[job.next_segment]
        job.next_segment += 1
        # Set every time: another job may have changed them while this voice stayed loaded.
        library.espeak_SetParameter(_PARAMETER_RATE, job.rate_wpm, 0)
        library.espeak_SetParameter(_PARAMETER_PITCH, job.pitch, 0)
        job.aligner = _WordAligner(segment.text)
        job.segment_samples = 0
        flags = _CHARS_UTF8 | (_SSML if job.ssml else 0) | (_ENDPAUSE if segment.ends_sentence else 0)
        if job.next_segment == len(job.segments):
            flags &= ~_ENDPAUSE  # no trailing silence after the last word: the turn can end sooner
        encoded = segment.text.encode("utf-8") + b"\0"
        self._current = job
        try:
            status = library.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, flags, None, None)
        finally:
            self._current = None
        if job.error is not None:
            raise job.error
        if status != _EE_OK and not job.cancelled.is_set():
            raise RuntimeError(f"espeak_Synth failed ({status})")
        if job.cancelled.is_set():
            return
        # Words espeak never announced (skipped symbols, the second word of a phrase it
        # speaks as one) still belong to the transcript: give them the last word's time.
        job.pending_words.extend(WordMark(job.last_word_offset, word) for word in job.aligner.rest())
        job.native_samples_done += job.segment_samples

    def _finish(self, job: _Job) -> None:
        tail = job.resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        job.resampler = None  # its C state should not outlive the utterance
        if len(tail) or job.pending_words or job.pending_phonemes:
            self._deliver_chunk(job, tail)
        job.deliver(_FINISHED)

    def _on_audio(self, wav: Any, sample_count: int, events: Any) -> int:
        """espeak's synchronous callback, on the worker thread inside espeak_Synth."""
        job = self._current
        if job is None or job.cancelled.is_set():
            return _STOP
        try:
            self._read_events(job, events)
            if sample_count > 0:
                native = np.ctypeslib.as_array(wav, shape=(sample_count,))
                job.segment_samples += sample_count
                resampled = job.resampler.resample_chunk(native)  # copies out of espeak's buffer
                if len(resampled):
                    self._deliver_chunk(job, resampled)
        except BaseException as error:  # an exception must not unwind through C
            job.error = error
            return _STOP
        return _STOP if job.cancelled.is_set() else 0

    def _read_events(self, job: _Job, events: Any) -> None:
        assert job.aligner is not None
        index = 0
        while (event := events[index]).type != _EVENT_LIST_TERMINATED:
            index += 1
            offset = (job.native_samples_done + event.sample) / job.native_rate_hz
            if event.type == _EVENT_WORD:
                job.last_word_offset = offset
                job.pending_words.extend(
                    WordMark(offset, word) for word in job.aligner.claim(event.text_position)
                )
            elif event.type == _EVENT_PHONEME:
                # Up to 8 bytes, NUL-terminated unless all 8 are used.
                raw = bytes(event.id.string).split(b"\0", 1)[0]
                phoneme = raw.decode("utf-8", "ignore").translate(_IPA_STRESS_MARKS) or PAUSE_PHONEME
                job.pending_phonemes.append(PhonemeMark(offset, phoneme))

    @staticmethod
    def _deliver_chunk(job: _Job, pcm: Any) -> None:
        chunk = SpeechChunk(
            pcm=pcm.tobytes(),
            start_sample=job.output_samples,
            words=job.pending_words,
            phonemes=job.pending_phonemes,
        )
        job.output_samples += len(pcm)
        job.pending_words = []
        job.pending_phonemes = []
        job.deliver(chunk)


__all__ = [
    "DEFAULT_VOICE",
    "OUTPUT_SAMPLE_RATE_HZ",
    "EspeakSynthesizer",
    "PhonemeMark",
    "SpeechChunk",
    "VoiceCatalogue",
    "VoiceInfo",
    "WordMark",
]
