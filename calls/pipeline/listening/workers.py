"""The recogniser's worker processes, shared by every call of this server process.

Each worker (`sphinx_worker.worker_main`) is a spawned process with a duplex pipe. An
utterance is a `RecognitionStream` bound to one worker for its whole life (its decoders
hold the utterance's state), chosen as the worker with the fewest open streams. Sending
never blocks the event loop (a writer thread per worker drains a queue); replies are read
by a reader thread per worker and resolved on the asking loop. A worker that dies fails its
streams' pending requests (those utterances are lost), is replaced at once, and the next
utterance works.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import multiprocessing
import os
import queue
import threading
import time
from typing import Any

from calls.pipeline.listening import sphinx_worker
from calls.pipeline.listening.stream_service import RecogniserUnavailable, settled_text_of

logger = logging.getLogger(__name__)

# Worker processes (each holds the general model, ~100 MB, and decodes one utterance at a time).
WORKERS = 2
# A dead worker is replaced after this pause (seconds), so one that dies at start cannot spin.
RESTART_PAUSE_SECONDS = 0.5
# How long a worker may take to start and load its model, in seconds.
START_TIMEOUT_SECONDS = 60.0


class _Worker:
    """One worker process, its pipe, and the threads that write to and read from it."""

    def __init__(self, pool: RecogniserPool, index: int) -> None:
        self.pool = pool
        self.index = index
        context = multiprocessing.get_context("spawn")  # never fork: the server has threads and a loop
        self._connection, child = context.Pipe(duplex=True)
        self.process = context.Process(
            target=sphinx_worker.worker_main,
            args=(child, os.getpid()),
            name=f"parley-recogniser-{index}",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.streams: dict[int, RecognitionStream] = {}
        self.alive = True
        self.ready = threading.Event()
        self.prepared: dict[str, threading.Event] = {}  # persona models built, by corpus key
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name=f"{self.process.name}-writer", daemon=True)
        self._reader = threading.Thread(target=self._read, name=f"{self.process.name}-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    def send(self, message: tuple[Any, ...]) -> None:
        self._outbox.put(message)

    def _write(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                self._connection.send(message)
            except (OSError, ValueError):
                return  # the reader notices the death

    def _read(self) -> None:
        while True:
            try:
                reply = self._connection.recv()
            except (EOFError, OSError):
                break
            kind = reply[0]
            if kind == "ready":
                self.ready.set()
            elif kind == "prepared":
                self.prepared.setdefault(reply[1], threading.Event()).set()
            elif kind in ("partial", "settled", "final"):
                stream = self.streams.get(reply[1])
                if stream is not None:
                    if kind == "final":
                        self.streams.pop(reply[1], None)
                    stream._resolve(kind, reply[2])
        self._died()

    def _died(self) -> None:
        was_alive, self.alive = self.alive, False
        self.ready.set()  # nobody waits for a dead worker
        for event in list(self.prepared.values()):
            event.set()
        self._outbox.put(None)
        for stream in list(self.streams.values()):
            stream._fail()
        self.streams.clear()
        if was_alive:
            self.pool._replace(self)

    def stop(self) -> None:
        self.alive = False
        self._outbox.put(None)
        self.process.terminate()
        self._connection.close()


class RecognitionStream:
    """One utterance on one worker: audio in, partial and final transcripts out."""

    def __init__(self, worker: _Worker, stream_id: int) -> None:
        self._worker = worker
        self.stream_id = stream_id
        self._partial: asyncio.Future[str] | None = None
        self._settled: asyncio.Future[dict[str, Any]] | None = None
        self._settles = 0  # settle requests sent; the worker numbers its answers the same way
        self._final: asyncio.Future[dict[str, Any]] | None = None
        self._loop = asyncio.get_running_loop()
        self.closed = False

    def feed(self, pcm: bytes) -> None:
        """Queue audio (16 kHz 16-bit mono) for decoding; never blocks."""
        if pcm and not self.closed:
            self._worker.send(("audio", self.stream_id, pcm))

    async def partial(self) -> str:
        """The persona model's hypothesis so far ("" if the worker is busy with another stream)."""
        if self.closed or not self._worker.alive:
            raise RecogniserUnavailable("worker gone")
        self._partial = self._loop.create_future()
        self._worker.send(("partial", self.stream_id))
        return await self._partial

    def settle(self) -> None:
        """Decode up to here now: the speaker has (probably) stopped (`sphinx_worker.settle`).

        Audio fed after this is kept, not decoded, unless `resume()` says the speaker went on;
        `final()` then answers with the settled result as soon as it is ready.
        """
        if self.closed or not self._worker.alive or self._settled is not None:
            return
        self._settled = self._loop.create_future()
        self._settles += 1
        self._worker.send(("settle", self.stream_id))

    @property
    def settled(self) -> bool:
        return self._settled is not None

    async def settled_text(self) -> str | None:
        """The settled transcript once the worker has it; None if the speaker went on (`resume`),
        the worker failed or nothing was settled."""
        return await settled_text_of(self._settled)

    def resume(self) -> None:
        """The speaker went on after `settle()`: the whole utterance is decoded again."""
        if self.closed or self._settled is None:
            return
        settled, self._settled = self._settled, None
        if not settled.done():
            settled.cancel()
        self._worker.send(("resume", self.stream_id))

    async def final(self) -> dict[str, Any]:
        """End the utterance: its transcript and how it was chosen (`sphinx_worker._finish`)."""
        if self.closed or not self._worker.alive:
            raise RecogniserUnavailable("worker gone")
        self.closed = True
        self._final = self._loop.create_future()
        self._worker.send(("end", self.stream_id))
        if self._settled is not None:  # the worker answers "end" with it: no need to wait
            return await asyncio.shield(self._settled)
        return await self._final

    def cancel(self) -> None:
        """Drop the utterance (the call ended or a new one began)."""
        if not self.closed:
            self.closed = True
            self._worker.streams.pop(self.stream_id, None)
            self._worker.send(("cancel", self.stream_id))

    def _call_soon(self, *args: Any) -> None:
        """Hand a result to the stream's loop; a loop that has closed (its call is over) is skipped,
        never allowed to stop the reader thread that serves every other stream."""
        try:
            self._loop.call_soon_threadsafe(*args)
        except RuntimeError:
            pass

    def _resolve(self, kind: str, value: Any) -> None:
        future = {"partial": self._partial, "settled": self._settled, "final": self._final}[kind]
        if kind == "settled" and value.get("settle", self._settles) != self._settles:
            return  # an answer to a settle the speaker has since gone on from
        if future is not None:
            self._call_soon(_settle, future, value, None)

    def _fail(self) -> None:
        error = RecogniserUnavailable("the recogniser worker died")
        for future in (self._partial, self._settled, self._final):
            if future is not None:
                self._call_soon(_settle, future, None, error)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class RecogniserPool:
    """`WORKERS` worker processes; a dead one is replaced in the background."""

    def __init__(self, size: int = WORKERS) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False
        self.workers = [_Worker(self, index) for index in range(size)]

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Block until every worker has loaded its model (call it off the event loop)."""
        deadline = time.monotonic() + timeout
        for worker in list(self.workers):
            if not worker.ready.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"recogniser worker {worker.index} did not start in {timeout:.0f} s")

    def prepare(self, corpus_key: str, corpus: str, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Have every worker build this persona's model now (blocking; call it off the event loop).

        Building it takes a few hundred milliseconds; done at a call's first utterance, that
        would be added to its first answer.
        """
        deadline = time.monotonic() + timeout
        waiting = []
        with self._lock:
            for worker in self.workers:
                if worker.alive and corpus_key not in worker.prepared:
                    worker.prepared[corpus_key] = threading.Event()
                    worker.send(("prepare", corpus_key, corpus))
                if corpus_key in worker.prepared:
                    waiting.append(worker.prepared[corpus_key])
        for event in waiting:
            event.wait(max(0.0, deadline - time.monotonic()))

    def open_stream(self, *, corpus_key: str, corpus: str, cmn: str = "") -> RecognitionStream:
        """A new utterance on the least busy live worker (call it on the event loop)."""
        with self._lock:
            live = [worker for worker in self.workers if worker.alive]
            if not live:
                raise RecogniserUnavailable("no recogniser worker is running")
            worker = min(live, key=lambda candidate: (not candidate.ready.is_set(), len(candidate.streams)))
            stream = RecognitionStream(worker, next(self._ids))
            worker.streams[stream.stream_id] = stream
        worker.send(("begin", stream.stream_id, corpus_key, corpus, cmn))
        return stream

    def _replace(self, dead: _Worker) -> None:
        if not self._closed:
            time.sleep(RESTART_PAUSE_SECONDS)  # in the dead worker's reader thread
        with self._lock:
            if self._closed or dead not in self.workers:
                return
            logger.warning(
                "speech recogniser worker %s (pid %s) died (exit code %s); starting a new one",
                dead.index,
                dead.process.pid,
                dead.process.exitcode,
            )
            self.workers[self.workers.index(dead)] = _Worker(self, dead.index)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            workers, self.workers = self.workers, []
        for worker in workers:
            worker.stop()


_pool: RecogniserPool | None = None
_pool_lock = threading.Lock()


def recogniser_pool() -> RecogniserPool:
    """The process-wide pool, started on first use; a shut down pool is started again."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = RecogniserPool()
            atexit.register(shutdown)  # no worker is replaced while the interpreter exits
        return _pool


def shutdown() -> None:
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown()
