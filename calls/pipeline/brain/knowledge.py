"""Retrieval over a persona's knowledge: BM25 with light normalisation plus MiniLM embeddings.

`KnowledgeIndex.search()` scores a question against every entry with both scorers, combines the
two and decides between answering, answering with a hedge, and admitting it is off-topic. The
embedding half is optional: without the model (see `encoder.py`) the index is lexical only and
uses its own thresholds. Entry embeddings are cached per (persona id, content hash), so a
persona's second call does not re-encode its knowledge.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import math
import multiprocessing
import os
import re
import threading
from collections import Counter, OrderedDict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from calls.lifecycle.children import exit_with_parent
from calls.pipeline.brain.encoder import SentenceEncoder, query_encode, sentence_encoder_load

logger = logging.getLogger(__name__)

# BM25 term-frequency saturation and length normalisation (the usual Okapi defaults).
BM25_K1 = 1.2
BM25_B = 0.75
# Weight of the embedding similarity in the combined score; the rest is lexical. Embeddings
# carry paraphrase, the lexical half keeps rare exact terms (a product name) decisive.
SEMANTIC_WEIGHT = 0.65
# Combined-score thresholds (0..1) with embeddings: at or above ANSWER the entry is given as
# the answer; between UNSURE and ANSWER it is offered with a hedge; below it is off-topic.
# Tuned on bench/brain_retrieval.py: on-topic paraphrases score 0.45-0.9, off-topic ≤ 0.25.
COMBINED_ANSWER_THRESHOLD = 0.42
COMBINED_UNSURE_THRESHOLD = 0.30
# The same for lexical-only scoring (normalised BM25: the share of the query's weight matched).
LEXICAL_ANSWER_THRESHOLD = 0.45
LEXICAL_UNSURE_THRESHOLD = 0.28
# Personas whose entry embeddings stay in memory (each is entries * 2 * 384 float32).
EMBEDDING_CACHE_PERSONAS = 256

# The encoder is CPU-bound: it never runs on the event loop. Entries are encoded on a thread
# (once per persona and content, then cached). Questions are encoded in a worker process: the
# forward pass is ~100 small numpy operations that each need the GIL, and in the server process
# they queued behind the event loop (and made it wait in turn), so a ~30 ms question took
# 0.2-0.6 s with 8 live sessions. The process is spawned, never forked (the server has threads).
_build_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-embedding-build")
_query_pool: ProcessPoolExecutor | None = None
_query_pool_lock = threading.Lock()
_query_pool_failed = False
# How long the first question may wait for the query worker to start and load the model.
QUERY_WORKER_START_TIMEOUT_SECONDS = 60.0
_embedding_cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_embedding_cache_lock = threading.Lock()

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

STOP_WORDS = frozenset(
    """a an the and or but if of at by for with about to from in on up out over under again is am are
    was were be been being do does did doing have has had having i me my mine we our ours you your
    yours he him his she her it its they them their this that these those there here what which who
    whom can could would should will shall may might must just so than too very also any some
    please tell know like want get got let us im ive id youre dont does doesnt do there's it's i'm
    i'd you're don't""".split()
)

# Paraphrases that mean the same thing to a customer. Every word maps to the canonical term of
# its group, in queries and entries alike, so "when do you close" meets "opening hours".
SYNONYM_GROUPS: dict[str, tuple[str, ...]] = {
    "hours": ("hour", "open", "opening", "close", "closing", "closed", "when", "time", "times", "schedule"),
    "price": ("price", "pricing", "cost", "costs", "much", "expensive", "cheap", "charge", "fee", "fees"),
    "address": ("address", "where", "located", "location", "locate", "find", "directions", "street"),
    # "card" stays itself: stamp cards and wifi cards are not payments.
    "pay": ("pay", "paying", "payment", "payments", "cash", "credit", "debit", "contactless"),
    "deliver": ("deliver", "delivery", "deliveries", "shipping", "ship", "bring", "send"),
    "park": ("park", "parking", "car", "cars"),
    "wifi": ("wifi", "wi-fi", "internet", "wireless", "online"),
    "contact": ("contact", "phone", "call", "email", "mail", "reach", "telephone", "number"),
    "gluten": ("gluten", "celiac", "coeliac", "wheat"),
    "allergen": ("allergen", "allergens", "allergy", "allergies", "allergic", "nut", "nuts", "peanut"),
    "order": ("order", "orders", "ordering", "reserve", "book", "booking", "custom"),
    "loyalty": ("loyalty", "reward", "rewards", "stamp", "stamps", "points", "member", "membership"),
    "cake": ("cake", "cakes", "birthday", "wedding"),
}
CANONICAL_TERMS: dict[str, str] = {word: canon for canon, words in SYNONYM_GROUPS.items() for word in words}


def _stem(word: str) -> str:
    """A light English suffix strip: enough to meet plurals and -ing forms, never aggressive."""
    if word.endswith("'s"):
        word = word[:-2]
    for suffix, minimum in (("ies", 5), ("ing", 6), ("ed", 5), ("es", 5), ("s", 4)):
        if word.endswith(suffix) and len(word) >= minimum and not word.endswith("ss"):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def normalise_terms(text: str) -> list[str]:
    """Lowercase, tokenise, drop stop words, map synonyms to one term, strip light suffixes."""
    terms = []
    for token in _TOKEN.findall(text.lower().replace("wi-fi", "wifi")):
        if token in CANONICAL_TERMS:
            terms.append(CANONICAL_TERMS[token])
            continue
        if token in STOP_WORDS:
            continue
        stemmed = _stem(token)
        terms.append(CANONICAL_TERMS.get(stemmed, stemmed))
    return terms


@dataclass(frozen=True)
class KnowledgeEntry:
    """One thing the persona knows: a question with its answer, or a passage (empty question)."""

    question: str
    answer: str

    @property
    def text(self) -> str:
        return f"{self.question} {self.answer}".strip()


class Verdict(enum.Enum):
    """What retrieval concluded about a question."""

    ANSWER = "answer"
    NOT_SURE = "not_sure"
    OFF_TOPIC = "off_topic"


@dataclass(frozen=True)
class KnowledgeMatch:
    """The best entry for a question, its scores (0..1) and the verdict."""

    entry: KnowledgeEntry | None
    index: int
    score: float
    lexical_score: float
    semantic_score: float | None
    verdict: Verdict


class LexicalIndex:
    """Okapi BM25 over question + answer, normalised by the query's best possible score."""

    def __init__(self, *, documents: list[str]) -> None:
        self._documents = [Counter(normalise_terms(document)) for document in documents]
        self._lengths = [sum(terms.values()) for terms in self._documents]
        self._average_length = (sum(self._lengths) / len(self._lengths)) if self._lengths else 1.0
        frequency: Counter[str] = Counter()
        for terms in self._documents:
            frequency.update(terms.keys())
        self._document_frequency = frequency

    def _idf(self, term: str) -> float:
        count = len(self._documents)
        frequency = self._document_frequency.get(term, 0)
        return math.log(1.0 + (count - frequency + 0.5) / (frequency + 0.5))

    def scores(self, query: str) -> np.ndarray:
        """Per document, BM25 divided by what a document matching every query term once would get.

        Terms the knowledge never mentions still count in the divisor (with the highest idf), so
        a question that is mostly about something else scores low however well one word matches.
        """
        terms = set(normalise_terms(query))
        result = np.zeros(len(self._documents), dtype=np.float64)
        if not terms or not self._documents:
            return result
        ideal = sum(self._idf(term) for term in terms)
        for position, (document, length) in enumerate(zip(self._documents, self._lengths, strict=True)):
            norm = BM25_K1 * (1.0 - BM25_B + BM25_B * max(length, 1) / max(self._average_length, 1e-9))
            total = 0.0
            for term in terms:
                frequency = document.get(term, 0)
                if frequency:
                    total += self._idf(term) * frequency * (BM25_K1 + 1.0) / (frequency + norm)
            result[position] = total
        # Not clipped: above 1 (repeated terms, a short entry) still ranks; callers clip to 0..1.
        return result / ideal if ideal > 0 else result


def knowledge_content_hash(*, entries: tuple[KnowledgeEntry, ...]) -> str:
    """A stable digest of the entries, so an edited knowledge base is re-encoded."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(entry.question.encode())
        digest.update(b"\x1f")
        digest.update(entry.answer.encode())
        digest.update(b"\x1e")
    return digest.hexdigest()


def _entry_embeddings(
    *, persona_id: str, entries: tuple[KnowledgeEntry, ...], encoder: SentenceEncoder
) -> np.ndarray:
    """Rows 2i and 2i+1: entry i's question (or passage) and its question + answer, cached."""
    key = (persona_id, knowledge_content_hash(entries=entries))
    with _embedding_cache_lock:
        cached = _embedding_cache.get(key)
        if cached is not None:
            _embedding_cache.move_to_end(key)
            return cached
    texts: list[str] = []
    for entry in entries:
        # A question is phrased like the user's; the full text catches questions the answer
        # covers but the stored question does not ask.
        texts.extend([entry.question or entry.answer, entry.text])
    vectors = encoder.encode(texts)
    with _embedding_cache_lock:
        _embedding_cache[key] = vectors
        while len(_embedding_cache) > EMBEDDING_CACHE_PERSONAS:
            _embedding_cache.popitem(last=False)
    return vectors


class KnowledgeIndex:
    """A persona's knowledge, searchable by question. Build it with `knowledge_index_build`."""

    def __init__(
        self,
        *,
        entries: tuple[KnowledgeEntry, ...],
        encoder: SentenceEncoder | None,
        entry_embeddings: np.ndarray | None,
    ) -> None:
        self.entries = entries
        self._encoder = encoder if entry_embeddings is not None else None
        self._entry_embeddings = entry_embeddings
        self._lexical = LexicalIndex(documents=[entry.text for entry in entries])

    @property
    def uses_embeddings(self) -> bool:
        return self._encoder is not None

    def search(
        self, query: str, *, use_embeddings: bool = True, query_vector: np.ndarray | None = None
    ) -> KnowledgeMatch:
        """Best entry for `query`. CPU-bound (~20 ms with embeddings) unless `query_vector`, the
        question already encoded, is given: then it takes well under a millisecond."""
        lexical_rank = self._lexical.scores(query)
        lexical = np.minimum(lexical_rank, 1.0)
        semantic: np.ndarray | None = None
        if use_embeddings and self._encoder is not None and self._entry_embeddings is not None:
            if query_vector is None:
                query_vector = self._encoder.encode([query])[0]
            similarities = self._entry_embeddings @ query_vector
            semantic = np.clip(similarities.reshape(len(self.entries), 2).max(axis=1), 0.0, 1.0)
        if not self.entries:
            return KnowledgeMatch(None, -1, 0.0, 0.0, None, Verdict.OFF_TOPIC)
        if semantic is not None:
            combined = SEMANTIC_WEIGHT * semantic + (1.0 - SEMANTIC_WEIGHT) * lexical
            ranking = SEMANTIC_WEIGHT * semantic + (1.0 - SEMANTIC_WEIGHT) * lexical_rank
            answer_threshold, unsure_threshold = COMBINED_ANSWER_THRESHOLD, COMBINED_UNSURE_THRESHOLD
        else:
            combined, ranking = lexical, lexical_rank
            answer_threshold, unsure_threshold = LEXICAL_ANSWER_THRESHOLD, LEXICAL_UNSURE_THRESHOLD
        best = int(np.argmax(ranking))
        score = float(combined[best])
        if score >= answer_threshold:
            verdict = Verdict.ANSWER
        elif score >= unsure_threshold:
            verdict = Verdict.NOT_SURE
        else:
            verdict = Verdict.OFF_TOPIC
        return KnowledgeMatch(
            entry=self.entries[best],
            index=best,
            score=score,
            lexical_score=float(lexical[best]),
            semantic_score=None if semantic is None else float(semantic[best]),
            verdict=verdict,
        )

    async def search_async(self, query: str) -> KnowledgeMatch:
        """`search` with the question encoded in the query worker process (see `query_pool`)."""
        if self._encoder is None:
            return self.search(query)  # lexical scoring takes microseconds: no hop
        loop = asyncio.get_running_loop()
        pool = query_pool()
        if pool is None:
            return await loop.run_in_executor(_build_executor, self.search, query)
        try:
            query_vector = await loop.run_in_executor(pool, query_encode, query)
        except BrokenProcessPool:
            logger.warning("The query worker died; questions are now encoded on a thread", exc_info=True)
            query_pool_shutdown(failed=True)
            return await loop.run_in_executor(_build_executor, self.search, query)
        if query_vector is None:  # the worker has no model (it failed to load there)
            return self.search(query, use_embeddings=False)
        return self.search(query, query_vector=query_vector)


def query_pool() -> ProcessPoolExecutor | None:
    """The process that encodes questions for every call of this server process (None once it
    has failed: questions are then encoded on a thread, as they were before)."""
    global _query_pool
    with _query_pool_lock:
        if _query_pool is None and not _query_pool_failed:
            _query_pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=exit_with_parent,  # a server killed outright leaves no worker behind
                initargs=(os.getpid(),),
            )
        return _query_pool


def query_pool_warm_up() -> None:
    """Start the query worker and load its model now (blocking: call it off the event loop)."""
    pool = query_pool()
    if pool is None:
        return
    try:
        pool.submit(query_encode, "warm up").result(timeout=QUERY_WORKER_START_TIMEOUT_SECONDS)
    except BrokenProcessPool:
        query_pool_shutdown(failed=True)
        raise


def query_pool_shutdown(*, failed: bool = False) -> None:
    """Stop the worker; with `failed`, never start another in this process."""
    global _query_pool, _query_pool_failed
    with _query_pool_lock:
        pool, _query_pool = _query_pool, None
        _query_pool_failed = _query_pool_failed or failed
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def lexical_index_build(*, entries: tuple[KnowledgeEntry, ...]) -> KnowledgeIndex:
    """A lexical-only index: cheap enough to build on the event loop while the full one loads."""
    return KnowledgeIndex(entries=entries, encoder=None, entry_embeddings=None)


def knowledge_index_build(
    *,
    persona_id: str,
    entries: tuple[KnowledgeEntry, ...],
    use_embeddings: bool = True,
    warm_query_worker: bool = False,
) -> KnowledgeIndex:
    """Build an index (blocking: loads the model and encodes entries on first use).

    With `warm_query_worker`, also start the process that will encode questions (`search_async`).
    """
    encoder = sentence_encoder_load() if use_embeddings and entries else None
    embeddings = None
    if encoder is not None:
        try:
            embeddings = _entry_embeddings(persona_id=persona_id, entries=entries, encoder=encoder)
        except Exception:
            logger.warning("Encoding knowledge failed, retrieval is lexical only", exc_info=True)
            encoder = None
    if encoder is not None and warm_query_worker:
        try:
            query_pool_warm_up()  # so the first question does not wait for the process to start
        except Exception:  # the question will try again (and fall back to a thread)
            logger.warning("The query worker did not start", exc_info=True)
    return KnowledgeIndex(entries=entries, encoder=encoder, entry_embeddings=embeddings)


async def knowledge_index_build_async(
    *, persona_id: str, entries: tuple[KnowledgeEntry, ...], use_embeddings: bool = True
) -> KnowledgeIndex:
    """`knowledge_index_build` on the build thread (model load and entry encoding are CPU work)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _build_executor,
        lambda: knowledge_index_build(
            persona_id=persona_id, entries=entries, use_embeddings=use_embeddings, warm_query_worker=True
        ),
    )
