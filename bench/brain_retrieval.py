"""Knowledge retrieval: accuracy on the bakery paraphrases and query latency, lexical vs combined.

Run from the repository root: `python bench/brain_retrieval.py`.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calls.pipeline.brain.encoder import sentence_encoder_load
from calls.pipeline.brain.knowledge import Verdict, knowledge_index_build
from tests.fakes.bakery import BAKERY_KNOWLEDGE, BAKERY_PARAPHRASES, OFF_TOPIC_QUESTIONS

# Each question is timed this many times (after one warm-up pass) for the latency figures.
LATENCY_REPEATS = 20
MILLISECONDS_PER_SECOND = 1000.0


def main() -> None:
    started = time.perf_counter()
    encoder = sentence_encoder_load()
    print(
        f"model load: {(time.perf_counter() - started) * MILLISECONDS_PER_SECOND:.0f} ms "
        f"({'embeddings available' if encoder else 'NO MODEL: lexical only'})"
    )
    started = time.perf_counter()
    index = knowledge_index_build(persona_id="bench-bakery", entries=BAKERY_KNOWLEDGE)
    print(
        f"index build ({len(BAKERY_KNOWLEDGE)} entries, encoding included): "
        f"{(time.perf_counter() - started) * MILLISECONDS_PER_SECOND:.0f} ms"
    )
    started = time.perf_counter()
    knowledge_index_build(persona_id="bench-bakery", entries=BAKERY_KNOWLEDGE)
    print(
        f"index build again (cached embeddings): {(time.perf_counter() - started) * MILLISECONDS_PER_SECOND:.1f} ms"
    )

    modes = [("lexical-only", False)] + ([("combined", True)] if index.uses_embeddings else [])
    questions = [question for question, _ in BAKERY_PARAPHRASES] + list(OFF_TOPIC_QUESTIONS)
    for label, use_embeddings in modes:
        right = sum(
            index.search(question, use_embeddings=use_embeddings).index == expected
            for question, expected in BAKERY_PARAPHRASES
        )
        answered = sum(
            index.search(question, use_embeddings=use_embeddings).verdict is Verdict.ANSWER
            for question, _ in BAKERY_PARAPHRASES
        )
        off_topic = sum(
            index.search(question, use_embeddings=use_embeddings).verdict is Verdict.OFF_TOPIC
            for question in OFF_TOPIC_QUESTIONS
        )
        timings: list[float] = []
        for question in questions:
            index.search(question, use_embeddings=use_embeddings)
            for _ in range(LATENCY_REPEATS):
                started = time.perf_counter()
                index.search(question, use_embeddings=use_embeddings)
                timings.append((time.perf_counter() - started) * MILLISECONDS_PER_SECOND)
        timings.sort()
        p95 = timings[int(len(timings) * 0.95) - 1]
        print(
            f"{label:>13}: right entry {right}/{len(BAKERY_PARAPHRASES)}, confident answers "
            f"{answered}/{len(BAKERY_PARAPHRASES)}, off-topic recognised {off_topic}/{len(OFF_TOPIC_QUESTIONS)}; "
            f"query latency median {statistics.median(timings):.2f} ms, p95 {p95:.2f} ms"
        )


if __name__ == "__main__":
    main()
