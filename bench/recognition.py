"""Benchmark of the offline recogniser on its own: word error rate, speed and final latency.

The sentences of `bench/voice_loop.py` (the demo persona's own questions, and general
sentences) are spoken by espeak-ng (`en-us`, 160 wpm, over a quiet room's noise), resampled
to the pipeline's 16 kHz the way the transport does, and played in real time into
`SphinxSTTService` with the VAD frames where Silero would send them. Prints per sentence what
was heard and which model won, then word error rate in-domain and general, the workers'
real-time factor, final-transcript latency after `VADUserStoppedSpeakingFrame` (median and
max) and the workers' memory.

    python bench/recognition.py [--verbose]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

from bench.voice_loop import GENERAL, IN_DOMAIN, word_errors  # noqa: E402


def demo_persona() -> tuple[str, str, list[tuple[str, str]]]:
    """Mara's name, greeting and knowledge (`seed_demo`), with Django set up on a scratch data dir."""
    import tempfile

    import django

    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("PARLEY_DATA_DIR", tempfile.mkdtemp(prefix="parley-bench-"))
    django.setup()
    from personas.management.commands.seed_demo import MARA, MARA_KNOWLEDGE

    return MARA["name"], MARA["greeting"], list(MARA_KNOWLEDGE)


def worker_memory_mb() -> list[float]:
    from calls.pipeline.listening.workers import recogniser_pool

    sizes = []
    for worker in recogniser_pool().workers:
        with open(f"/proc/{worker.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
    return sizes


def worker_cpu_seconds() -> float:
    from calls.pipeline.listening.workers import recogniser_pool

    total = 0.0
    for worker in recogniser_pool().workers:
        with open(f"/proc/{worker.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def hear(service, text: str) -> tuple[str, float, dict]:
    from pipecat.frames.frames import TranscriptionFrame
    from pipecat.tests.utils import run_test

    from tests.fakes.spoken import heard_frames

    frames = await heard_frames(text)
    down, _ = await run_test(service, frames_to_send=frames)
    finals = [frame.text for frame in down if isinstance(frame, TranscriptionFrame)]
    return " ".join(finals), service.final_latencies[-1], service.last_result or {}


async def run(verbose: bool) -> None:
    # The recogniser told the VAD's states, as in the pipeline (it settles in the end-of-speech wait).
    from tests.fakes.hearing import MarkedSphinxSTTService as SphinxSTTService

    name, greeting, knowledge = demo_persona()
    started = time.perf_counter()
    service = SphinxSTTService(name=name, greeting=greeting, knowledge=knowledge)
    print(f"workers ready in {time.perf_counter() - started:.1f} s; {os.cpu_count()} cores")
    errors = {"in-domain": [0, 0], "general": [0, 0]}
    latencies: list[float] = []
    decode_seconds = audio_seconds = 0.0
    await hear(service, "Hello.")  # the persona model is built by the first utterance
    cpu_before = worker_cpu_seconds()
    for group, sentences in (("in-domain", IN_DOMAIN), ("general", GENERAL)):
        for sentence in sentences:
            service = SphinxSTTService(name=name, greeting=greeting, knowledge=knowledge)
            heard, latency, result = await hear(service, sentence)
            wrong, total = word_errors(sentence, heard)
            errors[group][0] += wrong
            errors[group][1] += total
            latencies.append(latency)
            audio_seconds += result.get("audio_seconds", 0.0)
            decode_seconds += result.get("end_seconds", 0.0)
            line = f"{group:9} {wrong}/{total} {latency * 1000:4.0f} ms  {sentence!r} → {heard!r} ({result.get('model')})"
            print(line)
            if verbose:
                print(f"          persona {result.get('persona')}  general {result.get('general')}")
    for group, (wrong, total) in errors.items():
        print(f"word error rate {group}: {100 * wrong / total:.1f} % ({wrong}/{total} words)")
    print(
        f"final transcript after VADUserStoppedSpeakingFrame: median {statistics.median(latencies) * 1000:.0f} ms,"
        f" max {max(latencies) * 1000:.0f} ms"
    )
    cpu = worker_cpu_seconds() - cpu_before
    print(f"real-time factor (worker CPU / audio decoded, both decoders): {cpu / audio_seconds:.2f}")
    print(
        f"end of utterance in the worker (end_utt, both decoders): {decode_seconds / len(latencies) * 1000:.0f} ms mean"
    )
    print("worker memory (RSS): " + ", ".join(f"{size:.0f} MB" for size in worker_memory_mb()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--verbose", action="store_true", help="show both models' hypotheses")
    args = parser.parse_args()
    from calls.pipeline.listening.workers import shutdown

    try:
        asyncio.run(run(args.verbose))
    finally:
        shutdown()


if __name__ == "__main__":
    main()
