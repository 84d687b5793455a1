"""Benchmark espeak-ng synthesis: time to first chunk, real-time factor and chunk sizes.

Run from the repository root: `python bench/tts_espeak.py [--runs 20]`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calls.pipeline.speech.espeak import OUTPUT_SAMPLE_RATE_HZ, EspeakSynthesizer

SENTENCE = "Hello there, how are you today? I can help you with your order, or anything else you need."
LONG_TEXT = " ".join([SENTENCE] * 40)  # ~3,700 characters, ~4 minutes of speech: many segments


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def one_run(synthesizer: EspeakSynthesizer, text: str) -> tuple[float, float, float, list[int]]:
    """(ms to first chunk, total wall seconds, audio seconds, chunk sizes in samples)."""
    started = time.perf_counter()
    first_ms = 0.0
    sizes: list[int] = []
    async for chunk in synthesizer.synthesize(text):
        if not sizes:
            first_ms = (time.perf_counter() - started) * 1000
        sizes.append(chunk.sample_count)
    wall = time.perf_counter() - started
    return first_ms, wall, sum(sizes) / OUTPUT_SAMPLE_RATE_HZ, sizes


async def first_chunk_behind(synthesizer: EspeakSynthesizer, runs: int) -> list[float]:
    """Time to first chunk of a short reply while another call's long reply is being synthesised."""
    latencies = []
    for _ in range(runs):
        long_reply = asyncio.create_task(one_run(synthesizer, LONG_TEXT))
        await asyncio.sleep(0.002)  # let the long reply reach the worker first
        first_ms, *_ = await one_run(synthesizer, SENTENCE)
        latencies.append(first_ms)
        await long_reply
    return latencies


async def main(runs: int) -> None:
    synthesizer = EspeakSynthesizer.shared()
    started = time.perf_counter()
    await synthesizer.voice_catalogue()
    print(f"cold start (load, initialise, list voices): {(time.perf_counter() - started) * 1000:.1f} ms")
    await one_run(synthesizer, "Warm up.")  # loads the voice

    first, factors, sizes = [], [], []
    for _ in range(runs):
        first_ms, wall, audio, chunk_sizes = await one_run(synthesizer, SENTENCE)
        first.append(first_ms)
        factors.append(wall / audio)
        sizes.extend(chunk_sizes)
    print(f"sentence ({len(SENTENCE)} chars), {runs} runs:")
    print(
        f"  time to first chunk: median {statistics.median(first):.2f} ms, p95 {percentile(first, 0.95):.2f} ms"
    )
    print(f"  real-time factor: median {statistics.median(factors):.4f} (wall seconds per audio second)")

    long_first, long_wall, long_audio, long_sizes = await one_run(synthesizer, LONG_TEXT)
    print(
        f"long text ({len(LONG_TEXT)} chars, {long_audio:.0f} s of audio): first chunk {long_first:.2f} ms, "
        f"whole text {long_wall * 1000:.0f} ms, real-time factor {long_wall / long_audio:.4f}"
    )

    behind = await first_chunk_behind(synthesizer, runs)
    print(
        f"first chunk while another call's long text is synthesised: median {statistics.median(behind):.2f} ms, "
        f"p95 {percentile(behind, 0.95):.2f} ms"
    )

    sizes.extend(long_sizes)
    milliseconds = [size * 1000 / OUTPUT_SAMPLE_RATE_HZ for size in sizes]
    print(f"chunk sizes ({len(sizes)} chunks, 48 kHz samples):")
    print(
        f"  min {min(sizes)}, median {statistics.median(sizes):.0f}, max {max(sizes)} "
        f"(median {statistics.median(milliseconds):.1f} ms of audio)"
    )
    buckets = collections.Counter(min(int(ms // 10) * 10, 100) for ms in milliseconds)
    for bucket in sorted(buckets):
        label = f"{bucket}-{bucket + 10} ms" if bucket < 100 else ">=100 ms"
        print(f"  {label:>10}: {buckets[bucket]:5d} ({buckets[bucket] / len(sizes):.0%})")
    synthesizer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    asyncio.run(main(parser.parse_args().runs))
