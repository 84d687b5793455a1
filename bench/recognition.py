"""Benchmark of the offline recognisers on their own: word error rate and decode time.

Three sets, each heard by Whisper (the default) and by the old recogniser (pocketsphinx with
the persona model), both as the demo persona Mara's recogniser (her name, knowledge and
greeting bias them):

- **human**: recordings of real people reading (`bench/human_speech.py` says which packages
  they come from, and their licences), cut at their pauses; fetched once into var/;
- **espeak in-domain**: Mara's own questions, in the tests' user voice (en-us, 160 wpm);
- **espeak general**: everyday sentences outside her topics, in several espeak voices.

With `--dev`, the development sentences of `bench/recognition_dev.py` replace the bench's own
(`bench/voice_loop.py`'s `IN_DOMAIN` and `GENERAL`, held out from tuning), and only the human
utterances not held out are used. Each utterance goes through the recogniser's pipeline
service as the transport hands it audio (16 kHz, resampled 20 ms at a time), with the VAD's
states where Silero would report them, not paced in real time. Prints each utterance with what
was heard and the decode time (Whisper: its decode of the settled utterance; pocketsphinx: the
end of its utterance in the worker), then per set the word error rate and the median and p95
decode time.

It then measures Whisper's cost per speaking user: the general sentences played in real time
into the service (interim decodes every 0.5 s while the user speaks, the settled decode, any
decode again after a pause), CPU seconds of decoding per second of speech; and whether
CTranslate2 lets go of the GIL while it decodes: how far a pure-Python loop gets on another
thread during decodes, against alone.

    python bench/recognition.py [--recognisers whisper,pocketsphinx] [--sets human,in-domain,general]
                                [--dev] [--limit N] [--quiet] [--no-cost]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import webapp  # noqa: E402, F401  (caps native thread pools: before numpy loads)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

import numpy as np  # noqa: E402

from bench.voice_loop import GENERAL, IN_DOMAIN, percentile, word_errors  # noqa: E402

# Voices of the general set (espeak voice, words per minute).
GENERAL_VOICES = (("en-us", 160), ("en-us+m3", 175), ("en", 150), ("en-us+f3", 170))
IN_DOMAIN_VOICE = ("en-us", 160)


@dataclass
class Utterance:
    group: str
    label: str  # the voice or the recording's source
    text: str
    speech: np.ndarray | None = None  # 48 kHz float32 at int16 scale; None: espeak says `text`
    voice: tuple[str, int] = IN_DOMAIN_VOICE


def demo_persona() -> tuple[str, str, list[tuple[str, str]], list[str]]:
    """Mara's name, greeting, knowledge and phrases (`seed_demo`), with Django set up on a scratch
    data dir."""
    import tempfile

    import django

    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("PARLEY_DATA_DIR", tempfile.mkdtemp(prefix="parley-bench-"))
    django.setup()
    from personas.management.commands.seed_demo import MARA, MARA_KNOWLEDGE

    return MARA["name"], MARA["greeting"], list(MARA_KNOWLEDGE), MARA.get("stt_phrases", "").splitlines()


def human_set(*, dev: bool) -> list[Utterance]:
    import soxr

    from bench.human_speech import human_utterances

    utterances = []
    for item in human_utterances():
        if dev and item.held_out:
            continue
        samples = soxr.resample(item.samples.astype(np.float32), 16_000, 48_000)
        label = f"{item.speaker}{' (held out)' if item.held_out else ''}"
        utterances.append(Utterance("human", label, item.text, speech=samples))
    return utterances


def espeak_sets(*, dev: bool) -> list[Utterance]:
    from bench.recognition_dev import DEV_GENERAL, DEV_IN_DOMAIN

    in_domain, general = (DEV_IN_DOMAIN, DEV_GENERAL) if dev else (IN_DOMAIN, GENERAL)
    utterances = [Utterance("in-domain", IN_DOMAIN_VOICE[0], text) for text in in_domain]
    for voice in GENERAL_VOICES:
        utterances += [Utterance("general", voice[0], text, voice=voice) for text in general]
    return utterances


async def spoken(utterance: Utterance) -> np.ndarray:
    from tests.fakes.spoken import spoken_pcm

    if utterance.speech is not None:
        return utterance.speech
    voice, rate = utterance.voice
    return await spoken_pcm(utterance.text, voice=voice, rate_wpm=rate)


async def hear(service, utterance: Utterance) -> tuple[str, dict]:
    from pipecat.frames.frames import TranscriptionFrame
    from pipecat.tests.utils import run_test

    from tests.fakes.spoken import heard_frames

    frames = await heard_frames(utterance.text, speech=await spoken(utterance), paced=False)
    down, _ = await run_test(service, frames_to_send=frames)
    finals = [frame.text for frame in down if isinstance(frame, TranscriptionFrame)]
    return " ".join(finals), service.last_result or {}


def service_factory(recogniser: str):
    from tests.fakes.hearing import MarkedSphinxSTTService, MarkedWhisperSTTService

    name, greeting, knowledge, phrases = demo_persona()
    service_class = MarkedWhisperSTTService if recogniser == "whisper" else MarkedSphinxSTTService
    return lambda: service_class(name=name, greeting=greeting, knowledge=knowledge, phrases=phrases)


async def run(recognisers: list[str], utterances: list[Utterance], quiet: bool) -> None:
    summary: list[str] = []
    for recogniser in recognisers:
        started = time.perf_counter()
        make = service_factory(recogniser)
        await hear(make(), Utterance("warm-up", "", "Hello."))  # loads models, builds the persona's
        print(f"\n== {recogniser}: ready in {time.perf_counter() - started:.1f} s; {os.cpu_count()} cores")
        totals: dict[tuple[str, str], list] = {}
        for utterance in utterances:
            heard, result = await hear(make(), utterance)
            wrong, words = word_errors(utterance.text, heard)
            decode_ms = float(result.get("end_seconds", 0.0)) * 1000
            held = "held out" if "held out" in utterance.label else ""
            for key in ((utterance.group, ""), (utterance.group, held)) if held else ((utterance.group, ""),):
                entry = totals.setdefault(key, [0, 0, []])
                entry[0] += wrong
                entry[1] += words
                entry[2].append(decode_ms)
            if not quiet:
                print(
                    f"{utterance.group:9} {utterance.label[:22]:22} {wrong}/{words} {decode_ms:4.0f} ms"
                    f"  {utterance.text!r} → {heard!r}"
                )
        for (group, held), (wrong, words, times) in totals.items():
            line = (
                f"{recogniser:12} {group + (' ' + held if held else ''):20} WER {100 * wrong / max(1, words):5.1f} %"
                f" ({wrong}/{words} words, {len(times)} utterances); decode median"
                f" {statistics.median(times):.0f} ms, p95 {percentile(times, 0.95):.0f} ms"
            )
            summary.append(line)
            print(line)
    print("\n== summary")
    for line in summary:
        print(line)


async def speaking_user_cost(sentences: list[str]) -> None:
    """CPU of Whisper's decodes per second of a speaking user, paced in real time as in a call."""
    from calls.pipeline.listening.whisper import whisper_recogniser
    from tests.fakes.spoken import spoken_pcm

    recogniser = whisper_recogniser()
    make = service_factory("whisper")
    cpu_before, decodes_before = dict(recogniser.cpu_seconds), dict(recogniser.decodes)
    speech_seconds = 0.0
    for sentence in sentences:
        speech_seconds += (await spoken_pcm(sentence)).size / 48_000
        from pipecat.tests.utils import run_test

        from tests.fakes.spoken import heard_frames

        await run_test(make(), frames_to_send=await heard_frames(sentence))
    for kind in ("interim", "final"):
        cpu = recogniser.cpu_seconds[kind] - cpu_before.get(kind, 0.0)
        count = recogniser.decodes[kind] - decodes_before.get(kind, 0)
        print(
            f"whisper {kind} decodes: {count} for {speech_seconds:.1f} s of speech,"
            f" {1000 * cpu / max(1, count):.0f} ms of CPU each"
        )
    total = sum(recogniser.cpu_seconds.values()) - sum(cpu_before.values())
    print(
        f"whisper cost per speaking user: {total / speech_seconds:.2f} CPU seconds per second of speech"
        f" ({100 * total / speech_seconds:.0f} % of one core while the user speaks)"
    )


def gil_released_share() -> None:
    """How far a pure-Python loop gets on another thread while Whisper decodes, against alone."""
    import threading

    from calls.pipeline.listening.whisper import whisper_recogniser

    recogniser = whisper_recogniser()
    samples = np.random.default_rng(3).normal(0.0, 0.05, 16_000 * 3).astype(np.float32)

    def spin(seconds: float) -> int:
        count, until = 0, time.perf_counter() + seconds
        while time.perf_counter() < until:
            count += 1
        return count

    alone = spin(1.0)
    stop = threading.Event()

    def decode_on() -> None:
        while not stop.is_set():
            recogniser.decode(samples, prompt="")

    thread = threading.Thread(target=decode_on)
    thread.start()
    beside = spin(1.0)
    stop.set()
    thread.join()
    print(
        f"a Python thread beside continuous decoding ran at {100 * beside / alone:.0f} % of its speed alone"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recognisers", default="whisper,pocketsphinx")
    parser.add_argument("--sets", default="human,in-domain,general")
    parser.add_argument("--dev", action="store_true", help="the development sentences, for tuning")
    parser.add_argument("--limit", type=int, default=0, help="at most N utterances per set")
    parser.add_argument("--quiet", action="store_true", help="only the figures")
    parser.add_argument("--no-cost", action="store_true", help="skip the cost per speaking user")
    args = parser.parse_args()
    sets = args.sets.split(",")
    utterances: list[Utterance] = []
    if "human" in sets:
        utterances += human_set(dev=args.dev)
    utterances += [item for item in espeak_sets(dev=args.dev) if item.group in sets]
    if args.limit:
        kept: dict[str, int] = {}
        utterances = [
            item
            for item in utterances
            if kept.setdefault(item.group, 0) < args.limit
            and not kept.update({item.group: kept[item.group] + 1})
        ]
    from calls.pipeline.listening.workers import shutdown

    try:
        asyncio.run(run(args.recognisers.split(","), utterances, args.quiet))
        if not args.no_cost and "whisper" in args.recognisers:
            print("\n== cost")
            asyncio.run(speaking_user_cost(GENERAL))
            gil_released_share()
    finally:
        shutdown()


if __name__ == "__main__":
    main()
