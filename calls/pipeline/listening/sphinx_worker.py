"""What runs inside a recogniser worker process: two pocketsphinx decoders fed the same audio.

pocketsphinx holds the GIL while it decodes, which would stall every call's media on the
server's event loop; so it runs in worker processes (`workers.RecogniserPool`). Each worker
holds one decoder with the bundled general en-US model and, per persona, a small decoder
with a language model built from the persona's own text (`corpus`, `language_model`),
cached by the text's hash (least recently used go first).

An utterance is a stream: its audio arrives in chunks while the user speaks and is decoded
incrementally by both decoders, so at the end of speech only `end_utt()` remains. Then the
persona model's hypothesis wins unless the general model fits clearly better: each
decoder's words carry posterior probabilities from its lattice, and a persona hypothesis
forced onto speech it does not cover ("my sister is visiting" → "what is three do you")
has low ones. A worker decodes one stream at a time; a stream that starts while another
is decoding waits, its audio queued, and catches up when the decoders are free.

The protocol is tuples over a `multiprocessing` connection (see `worker_main`). This module
is imported by the workers themselves and must stay light (no Django, no pipecat).
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from calls.lifecycle.children import exit_with_parent
from calls.pipeline.listening import language_model

SAMPLE_RATE = 16_000
# Persona decoders kept per worker (~8 MB each; building one takes ~20 ms).
PERSONA_MODELS_CACHED = 8
# The persona hypothesis is taken if its mean word posterior, less PERSONA_FLOOR, plus its
# lead over the general hypothesis's (times PERSONA_LEAD_WEIGHT), reaches PERSONA_MARGIN
# (tuned on espeak's voice: the persona's questions score +0.3 and more, mostly, a few around
# 0; general sentences -0.06 and less, mostly). On the dev set (bench/recognition_tune.py)
# weight 1.5 and margin 0.27 gave 39.5 % / 42.0 % WER in-domain / general against 38.1 % /
# 45.4 % for this rule, but let the general model take "do you deliver" in a call's first
# utterance (tests/calls/pipeline/test_listening.py); the oracle choice gives 28.9 % / 38.7 %.
# Against a persona hypothesis at 0.7, the general one needs about 0.73 to win.
PERSONA_FLOOR = 0.7
PERSONA_LEAD_WEIGHT = 1.0
PERSONA_MARGIN = -0.03
# Language weight of the persona model (pocketsphinx's default; 4-9 measured alike).
PERSONA_LANGUAGE_WEIGHT = 6.5
# Further pocketsphinx options of each decoder (`bench/recognition_tune.py` measures them).
GENERAL_OPTIONS: dict[str, Any] = {}
PERSONA_OPTIONS: dict[str, Any] = {}
# The persona dictionary keeps cmudict's alternative pronunciations ("hours(2)" AW R Z).
PRONUNCIATION_VARIANTS = 1
# The last this-many seconds of an utterance (room noise: the VAD waits 0.2 s of silence) are
# played to the persona decoder again before its end. Measured: no gain (0.05-0.2 s), so off.
TRAILING_PAD_SECONDS = 0.0
# A decoder's second pass (fwdflat) re-decodes the whole utterance at its end: ~90 ms (up to
# 300) more after the user stops for the general model, ~50 ms for a persona's, and no better
# words overall in bench/recognition.py; both off.
GENERAL_SECOND_PASS = False
PERSONA_SECOND_PASS = False
# Dither (a bit of noise against digital silence) from a fixed seed: the same audio always
# gives the same transcript.
DITHER_SEED = 1
# The cepstral mean a call's first utterance starts from when the worker has heard no speech
# yet. pocketsphinx's default (40,3,-1) is far from speech through this pipeline, and its live
# estimate adapts too slowly within one utterance: a fresh worker misheard its first 2-3
# utterances ("hello" → "are"). This is the mean after espeak's voice with room noise here;
# a real microphone's differs, but is closer to it than to the default.
SPEECH_CMN_INIT = "45,-7,-7,13.5,-7,-4.5,-9,-16.5,0.3,-7,3,-0.9,-3"
# An utterance shorter than this (seconds) leaves the cepstral mean as it found it.
CMN_MIN_SECONDS = 0.8
# Warm-up audio at start (seconds, room noise of this level of 32768): the first decode pages
# the model in. The cepstral mean it leaves (noise is far from speech) is thrown away.
WARM_UP_SECONDS = 1.5
WARM_UP_NOISE_RMS = 30.0


@dataclass
class Decoded:
    """One decoder's result for an utterance."""

    text: str
    confidence: float  # mean posterior probability of its words (0 without words)


@dataclass
class _Stream:
    stream_id: int
    corpus_key: str
    corpus: str
    cmn: str  # the cepstral mean the call's previous utterance ended with ("" for none yet)
    pending: list[bytes] = field(default_factory=list)  # audio that arrived before it could start
    started: bool = False
    ended: bool = False  # "end" arrived while it was waiting
    settling: bool = False  # "settle" arrived while it was waiting
    settles: int = 0  # "settle" requests received (its answers carry the count)
    # Settled: decoded up to the first silence, its result kept (`Recogniser.settle`).
    settled: dict[str, Any] | None = None
    after_settle: list[bytes] = field(default_factory=list)  # audio that came after it settled
    audio_seconds: float = 0.0
    tail: bytes = b""  # the last TRAILING_PAD_SECONDS of its audio
    # Its audio so far: a call's first utterance (no cepstral mean of its own yet) is decoded
    # again by the persona model with the mean it ended with (see `_finish`), and a settled
    # utterance whose speaker goes on is decoded again whole (`resume`).
    audio: list[bytes] = field(default_factory=list)


def _word_posteriors(decoder: Any) -> list[float]:
    return [
        segment.prob
        for segment in decoder.seg()
        if not (segment.word.startswith(("<", "[", "+")) or segment.word == "<sil>")
    ]


def _result(decoder: Any) -> Decoded:
    hypothesis = decoder.hyp()
    text = hypothesis.hypstr.strip() if hypothesis is not None else ""
    if not text:
        return Decoded("", 0.0)
    posteriors = _word_posteriors(decoder)
    return Decoded(text, sum(posteriors) / len(posteriors) if posteriors else 0.0)


def choose(persona: Decoded, general: Decoded) -> tuple[str, str]:
    """(text, which model) for an utterance both decoders heard."""
    if not persona.text or not general.text:
        return (persona.text, "persona") if persona.text else (general.text, "general")
    lead = persona.confidence - general.confidence
    fit = (persona.confidence - PERSONA_FLOOR) + PERSONA_LEAD_WEIGHT * lead
    return (persona.text, "persona") if fit >= PERSONA_MARGIN else (general.text, "general")


def general_decoder(decoder_class: Any, **options: Any) -> Any:
    """A decoder with pocketsphinx's bundled general en-US model."""
    settings = {"fwdflat": GENERAL_SECOND_PASS, **GENERAL_OPTIONS, **options}
    return decoder_class(samprate=SAMPLE_RATE, loglevel="FATAL", dither=True, seed=DITHER_SEED, **settings)


def persona_model_files(corpus: str, lookup: Any, directory: str) -> tuple[str, str]:
    """(language model, dictionary) paths of a persona's model, written into `directory`."""
    trimmed, added = language_model.persona_vocabulary(corpus, lookup)
    os.makedirs(directory, exist_ok=True)
    dictionary = os.path.join(directory, "persona.dict")
    with open(dictionary, "w") as out:
        for word in sorted(set(trimmed.split())):
            out.write(f"{word} {added.get(word) or lookup(word)}\n")
            if word in added:
                continue
            for variant in range(2, PRONUNCIATION_VARIANTS + 1):
                phones = lookup(f"{word}({variant})")
                if not phones:
                    break
                out.write(f"{word}({variant}) {phones}\n")
    return language_model.arpa_file(trimmed, directory), dictionary


def persona_decoder(decoder_class: Any, corpus: str, lookup: Any, directory: str, **options: Any) -> Any:
    """A decoder with a persona's own language model (`corpus`), its files in `directory`."""
    model, dictionary = persona_model_files(corpus, lookup, directory)
    settings = {
        "lw": PERSONA_LANGUAGE_WEIGHT,
        "fwdflat": PERSONA_SECOND_PASS,
        **PERSONA_OPTIONS,
        **options,
    }
    return decoder_class(
        samprate=SAMPLE_RATE,
        loglevel="FATAL",
        dither=True,
        seed=DITHER_SEED,
        lm=model,
        dict=dictionary,
        **settings,
    )


class Recogniser:
    """The decoders of one worker and the streams it serves, in arrival order."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder_class = Decoder
        self.general = general_decoder(Decoder)
        self._personas: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._directory = tempfile.mkdtemp(prefix="parley-recogniser-")
        self._streams: collections.OrderedDict[int, _Stream] = collections.OrderedDict()
        self._active: _Stream | None = None
        self._persona: Any = None
        self._last_cmn = SPEECH_CMN_INIT  # after the last utterance this worker decoded
        self.warm_up()

    def close(self) -> None:
        shutil.rmtree(self._directory, ignore_errors=True)

    # Persona models -------------------------------------------------------------------------

    def persona_decoder(self, corpus_key: str, corpus: str) -> Any:
        decoder = self._personas.get(corpus_key)
        if decoder is not None:
            self._personas.move_to_end(corpus_key)
            return decoder
        directory = os.path.join(self._directory, corpus_key)
        decoder = persona_decoder(self._decoder_class, corpus, self.general.lookup_word, directory)
        self._warm(decoder)
        self._personas[corpus_key] = decoder
        while len(self._personas) > PERSONA_MODELS_CACHED:
            evicted, _ = self._personas.popitem(last=False)
            shutil.rmtree(os.path.join(self._directory, evicted), ignore_errors=True)
        return decoder

    def warm_up(self) -> None:
        self._warm(self.general)

    @staticmethod
    def _warm(decoder: Any) -> None:
        import numpy as np

        samples = np.random.default_rng(3).normal(0.0, WARM_UP_NOISE_RMS, int(WARM_UP_SECONDS * SAMPLE_RATE))
        decoder.start_utt()
        decoder.process_raw(samples.astype(np.int16).tobytes(), full_utt=True)
        decoder.end_utt()
        decoder.set_cmn(SPEECH_CMN_INIT)

    # Streams --------------------------------------------------------------------------------

    def begin(self, stream_id: int, corpus_key: str, corpus: str, cmn: str = "") -> None:
        self._streams[stream_id] = _Stream(stream_id, corpus_key, corpus, cmn)
        self._advance()

    def audio(self, stream_id: int, pcm: bytes) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or not pcm:
            return
        if stream.settled is not None:
            stream.after_settle.append(pcm)  # silence, unless the speaker goes on (`resume`)
        elif stream is not self._active:
            stream.pending.append(pcm)
        else:
            stream.audio_seconds += len(pcm) / (2 * SAMPLE_RATE)
            stream.audio.append(pcm)
            pad_bytes = int(TRAILING_PAD_SECONDS * SAMPLE_RATE) * 2
            stream.tail = (stream.tail + pcm)[len(stream.tail) + len(pcm) - pad_bytes :] if pad_bytes else b""
            self._feed(pcm)

    def partial(self, stream_id: int) -> str:
        if self._active is None or self._active.stream_id != stream_id:
            return ""
        hypothesis = self._persona.hyp()
        return hypothesis.hypstr.strip() if hypothesis is not None else ""

    def end(self, stream_id: int) -> dict[str, Any] | None:
        """Finish a stream: its result, or None if it is still waiting for the decoders."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return {"text": "", "model": "none"}
        if stream.settled is not None:  # the silence since added nothing
            self._streams.pop(stream_id, None)
            return stream.settled
        if stream is not self._active:
            stream.ended = True
            return None
        return self._finish(stream)

    def settle(self, stream_id: int) -> dict[str, Any] | None:
        """The result the stream would end with now, while the speaker is (probably) done.

        The VAD waits out `VAD_STOP_SECONDS` of silence before it says the user stopped; the
        last decoding step is done in that wait instead of after it. The stream keeps its
        audio: if the speaker goes on, `resume` decodes it all again with what follows; if not,
        `end` answers at once with this result. None while the stream waits for the decoders
        (its result is sent when it is done, like an ended one's).
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            return {"text": "", "model": "none"}
        stream.settles += 1
        if stream.settled is not None:
            return {**stream.settled, "settle": stream.settles}
        if stream is not self._active:
            stream.settling = True
            return None
        return self._settle(stream)

    def _settle(self, stream: _Stream) -> dict[str, Any]:
        result = {**self._finish(stream, keep=True), "settle": stream.settles}
        stream.settled = result
        stream.cmn = result["cmn"]  # a decoding after `resume` starts from what it adapted to
        return result

    def resume(self, stream_id: int) -> None:
        """The speaker of a settled stream went on: decode all its audio again, then continue."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.settling = False
        if stream.settled is None:
            return  # not settled yet: it simply goes on
        stream.settled = None
        stream.started = False
        stream.pending = [*stream.audio, *stream.after_settle]
        stream.audio, stream.after_settle = [], []
        stream.audio_seconds = 0.0
        stream.tail = b""
        self._streams.move_to_end(stream_id, last=False)  # it was first; it stays first

    def cancel(self, stream_id: int) -> list[tuple[str, int, dict[str, Any]]]:
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream is self._active:
            self._persona.end_utt()
            self.general.end_utt()
            self._active = None
        return self._advance()

    def _finish(self, stream: _Stream, *, keep: bool = False) -> dict[str, Any]:
        """End the active stream's utterance; `keep` keeps the stream (settled) and its audio."""
        started = time.perf_counter()
        if stream.tail:  # cheap: the persona model is small
            self._persona.process_raw(stream.tail, full_utt=False)
        self._persona.end_utt()
        self.general.end_utt()
        persona, general = _result(self._persona), _result(self.general)
        if stream.audio_seconds >= CMN_MIN_SECONDS:
            self._last_cmn = self.general.get_cmn()
            if not stream.cmn and stream.audio:
                # The call's first utterance was decoded with another channel's mean (or the
                # starting guess), which costs words; the mean has now adapted to this
                # microphone, and the small persona model decodes it again in ~0.05 x real time.
                persona = self._redecode(stream, self._last_cmn, keep=keep)
        text, model = choose(persona, general)
        if not keep:
            self._streams.pop(stream.stream_id, None)
        self._active = None
        return {
            "text": text,
            "model": model,
            "persona": (persona.text, round(persona.confidence, 3)),
            "general": (general.text, round(general.confidence, 3)),
            "end_seconds": time.perf_counter() - started,
            "audio_seconds": stream.audio_seconds,
            # The call's own mean, once one of its utterances was long enough to give one.
            "cmn": self._last_cmn if stream.audio_seconds >= CMN_MIN_SECONDS else stream.cmn,
        }

    def _redecode(self, stream: _Stream, cmn: str, *, keep: bool = False) -> Decoded:
        decoder = self._persona
        decoder.set_cmn(cmn)
        decoder.start_utt()
        decoder.process_raw(b"".join(stream.audio) + stream.tail, full_utt=True)
        decoder.end_utt()
        if not keep:
            stream.audio.clear()
        return _result(decoder)

    def _feed(self, pcm: bytes) -> None:
        if not pcm:
            return  # pocketsphinx refuses an empty buffer
        self._persona.process_raw(pcm, full_utt=False)
        self.general.process_raw(pcm, full_utt=False)

    def _advance(self) -> list[tuple[str, int, dict[str, Any]]]:
        """Start waiting streams while the decoders are free; replies for those already ended
        ("final") or settled ("settled") meanwhile."""
        finished: list[tuple[str, int, dict[str, Any]]] = []
        while self._active is None:
            stream = next((each for each in self._streams.values() if each.settled is None), None)
            if stream is None:
                break
            self._persona = self.persona_decoder(stream.corpus_key, stream.corpus)
            # Each call's channel has its own cepstral mean, carried from its last utterance;
            # a call's first starts from the last one this worker heard.
            cmn = stream.cmn or self._last_cmn
            self._persona.set_cmn(cmn)
            self.general.set_cmn(cmn)
            self._persona.start_utt()
            self.general.start_utt()
            self._active = stream
            stream.started = True
            pending, stream.pending = stream.pending, []
            for pcm in pending:
                self.audio(stream.stream_id, pcm)
            if stream.ended:
                finished.append(("final", stream.stream_id, self._finish(stream)))
            elif stream.settling:
                stream.settling = False
                finished.append(("settled", stream.stream_id, self._settle(stream)))
        return finished


def worker_main(connection: Any, parent_pid: int | None = None) -> None:
    """A worker process: serve requests on `connection` until it closes.

    Requests: ("begin", id, corpus_key, corpus, cmn), ("audio", id, pcm), ("partial", id),
    ("settle", id), ("resume", id), ("end", id), ("cancel", id), ("prepare", corpus_key,
    corpus), ("ping",). Replies: ("ready",) once the model is loaded, ("partial", id, text),
    ("settled", id, result dict), ("final", id, result dict), ("prepared", corpus_key),
    ("pong",).

    Requests are served in order, except that a "partial" is answered as soon as it is read,
    with what has been decoded so far: when decoding falls behind (a loaded machine), queued
    audio would otherwise hold every live caption back by as long as the backlog.
    """
    if parent_pid is not None:  # a server killed outright leaves no worker behind
        exit_with_parent(parent_pid)
    recogniser = Recogniser()
    try:
        connection.send(("ready", os.getpid()))
    except OSError:
        return  # the server went away while this worker started
    inbox: collections.deque[tuple[Any, ...]] = collections.deque()
    try:
        while True:
            try:
                if not inbox:
                    _inbox_add(recogniser, connection, inbox, connection.recv())
                while connection.poll(0):
                    _inbox_add(recogniser, connection, inbox, connection.recv())
            except (EOFError, OSError):
                return
            if inbox:
                _serve(recogniser, connection, inbox.popleft())
    finally:
        recogniser.close()


def _inbox_add(recogniser: Recogniser, connection: Any, inbox: collections.deque, request: tuple) -> None:
    if request[0] == "partial":
        connection.send(("partial", request[1], recogniser.partial(request[1])))
    else:
        inbox.append(request)


def _serve(recogniser: Recogniser, connection: Any, request: tuple[Any, ...]) -> None:
    kind = request[0]
    if kind == "audio":
        recogniser.audio(request[1], request[2])
    elif kind == "begin":
        recogniser.begin(*request[1:])
    elif kind in ("end", "settle"):
        result = (recogniser.end if kind == "end" else recogniser.settle)(request[1])
        if result is not None:
            connection.send(("final" if kind == "end" else "settled", request[1], result))
        for reply in recogniser._advance():
            connection.send(reply)
    elif kind == "resume":
        recogniser.resume(request[1])
        for reply in recogniser._advance():
            connection.send(reply)
    elif kind == "cancel":
        for reply in recogniser.cancel(request[1]):
            connection.send(reply)
    elif kind == "prepare":
        recogniser.persona_decoder(request[1], request[2])
        connection.send(("prepared", request[1]))
    elif kind == "ping":
        connection.send(("pong",))
