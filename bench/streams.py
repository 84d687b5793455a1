"""Benchmark of the event stream's fan-out: the delay from publish to receipt over real SSE streams.

For 20 and 200 open streams (`--streams 20,200`) it prints, for events published one at a time
at about 10 a second ("spread out") and for bursts of 10 published at once ("10 at once"):
- the delay from publish to receipt, p50 / p99 / max, over every event on every stream,
- delivered/expected (each stream must receive each event once), and the duplicates and
  out-of-order receipts, which must be 0,
- how long the publishes took to store and commit the events, p50 / p99 ("stored": one
  database thread writes them in turn), and the rest of the delay, from the end of the
  publish to receipt, p50 / p99 ("fan-out"; below zero when the streams had the event before
  the publishing coroutine resumed),
- the server processes' CPU (percent of one core) while the case ran, and the machine's
  1-minute load average.

The server is a real Daphne process (`bench/streams_server.py`: Parley plus an endpoint that
publishes through the one publish path inside the server, as a live call does). The streams
are raw HTTP/1.1 connections read by this process. By default it runs on a throwaway SQLite
database and the in-memory channel layer; `--postgres-redis` (or PARLEY_BENCH_POSTGRES_REDIS=1)
uses a throwaway PostgreSQL database and Redis (`--database-url`, `--redis-url`), and with
`--workers 2` the streams are spread over two processes while events are published in the
first, so half of them hear of each event through Redis.

`--restart-redis` runs its own Redis server and restarts it a third of the way through each
"spread out" case (with `--workers 2`, half the streams then miss doorbells): nothing may be
lost, and the delays show how long recovery took.

    python bench/streams.py
    python bench/streams.py --postgres-redis --workers 2
    python bench/streams.py --restart-redis --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webrtc_sessions import (  # noqa: E402
    DEMO_KEY,
    cpu_seconds,
    free_port,
    server_log_tail,
    start_server,
)

# Events published one at a time, and the pause between two of them (uniform, in seconds).
SPREAD_EVENTS = 50
SPREAD_PAUSE_SECONDS = (0.05, 0.15)
# Bursts of events published at once, and the pause after each.
BURSTS = 5
BURST_SIZE = 10
BURST_PAUSE_SECONDS = 1.0
# How long to wait for the last events to arrive before counting what is missing.
DRAIN_TIMEOUT_SECONDS = 15.0
# Streams opened at once while a case is set up (a burst of connections, not a measurement).
OPEN_CONCURRENCY = 50
OPEN_TIMEOUT_SECONDS = 30.0
BENCH_TEXT = re.compile(rb'"text":"bench (\d+) ([0-9.]+)"')
# How long a restarted Redis stays down, in seconds.
REDIS_DOWN_SECONDS = 1.0


class RedisServer:
    """A Redis server of our own (no persistence), which `restart()` stops and starts again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        time.sleep(REDIS_DOWN_SECONDS)
        self.start()


@dataclass
class StreamRecord:
    """What one stream received: sequence numbers in arrival order, and each one's delay."""

    sequences: list[int] = field(default_factory=list)
    delays: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0


class SSEReader:
    """One `GET /v1/events/stream` over a raw socket, decoding chunked transfer and SSE frames."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.record = StreamRecord()
        self.opened = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._writer.write(
            (
                "GET /v1/events/stream HTTP/1.1\r\n"
                f"Host: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {DEMO_KEY}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise AssertionError(f"the stream was refused: {head[:200]!r}")
        if b"transfer-encoding: chunked" not in head.lower():
            raise AssertionError(f"expected a chunked response: {head!r}")
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        raw = b""
        text = b""
        while True:
            data = await reader.read(65536)
            if not data:
                return
            received = time.time()
            raw += data
            while True:  # chunks: "<hex size>\r\n<payload>\r\n"
                end = raw.find(b"\r\n")
                if end < 0:
                    break
                size = int(raw[:end].split(b";")[0], 16)
                if len(raw) < end + 2 + size + 2:
                    break
                text += raw[end + 2 : end + 2 + size]
                raw = raw[end + 2 + size + 2 :]
            *frames, text = text.split(b"\n\n")
            for frame in frames:
                if frame.startswith(b":ok"):
                    self.opened.set()
                match = BENCH_TEXT.search(frame)
                if match:
                    self._receive(int(match[1]), received - float(match[2]))

    def _receive(self, sequence: int, delay: float) -> None:
        if sequence in self.record.delays:
            self.record.duplicates += 1
            return
        self.record.sequences.append(sequence)
        self.record.delays[sequence] = delay

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def open_streams(urls: list[str], count: int) -> list[SSEReader]:
    readers = [SSEReader(urls[index % len(urls)]) for index in range(count)]
    limit = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def open_one(reader: SSEReader) -> None:
        async with limit:
            await reader.open()
            await reader.opened.wait()

    await asyncio.wait_for(asyncio.gather(*(open_one(reader) for reader in readers)), OPEN_TIMEOUT_SECONDS)
    return readers


async def wait_for_all(readers: list[SSEReader], sequences: range) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    wanted = set(sequences)
    while time.monotonic() < deadline:
        if all(wanted <= reader.record.delays.keys() for reader in readers):
            return
        await asyncio.sleep(0.05)


def summary(readers: list[SSEReader], sequences: range, stored: dict[int, float]) -> dict[str, float]:
    wanted = set(sequences)
    delays = [
        delay for reader in readers for sequence, delay in reader.record.delays.items() if sequence in wanted
    ]
    fan_out = [
        delay - stored[sequence]
        for reader in readers
        for sequence, delay in reader.record.delays.items()
        if sequence in wanted
    ]
    in_case = [[s for s in reader.record.sequences if s in wanted] for reader in readers]
    return {
        "p50_ms": percentile(delays, 0.50) * 1000 if delays else float("nan"),
        "p99_ms": percentile(delays, 0.99) * 1000 if delays else float("nan"),
        "max_ms": max(delays) * 1000 if delays else float("nan"),
        "stored_p50_ms": percentile(list(stored.values()), 0.50) * 1000,
        "stored_p99_ms": percentile(list(stored.values()), 0.99) * 1000,
        "fan_out_p50_ms": percentile(fan_out, 0.50) * 1000 if fan_out else float("nan"),
        "fan_out_p99_ms": percentile(fan_out, 0.99) * 1000 if fan_out else float("nan"),
        "delivered": len(delays),
        "expected": len(readers) * len(wanted),
        "duplicates": sum(reader.record.duplicates for reader in readers),
        "reordered": sum(
            sum(1 for before, after in itertools.pairwise(order) if after < before) for order in in_case
        ),
    }


async def publish(http: httpx.AsyncClient, first: int, count: int) -> list[float]:
    """Publish `count` events at once in the server; returns how long each took to be stored."""
    response = await http.post("/bench/publish", params={"first": first, "count": count})
    response.raise_for_status()
    return response.json()["publishSeconds"]


async def run_case(
    http: httpx.AsyncClient,
    readers: list[SSEReader],
    pids: list[int],
    first: int,
    kind: str,
    redis: RedisServer | None,
) -> tuple[dict[str, float], int]:
    """Publish one case's events starting at sequence `first`; returns its figures and the next sequence."""
    cpu_before, started = sum(cpu_seconds(pid) for pid in pids), time.monotonic()
    stored: dict[int, float] = {}
    if kind == "spread out":
        sequences = range(first, first + SPREAD_EVENTS)
        for sequence in sequences:
            if redis is not None and sequence == first + SPREAD_EVENTS // 3:
                await asyncio.to_thread(redis.restart)
            stored[sequence] = (await publish(http, sequence, 1))[0]
            await asyncio.sleep(random.uniform(*SPREAD_PAUSE_SECONDS))
    else:
        sequences = range(first, first + BURSTS * BURST_SIZE)
        for burst in range(BURSTS):
            start = first + burst * BURST_SIZE
            seconds = await publish(http, start, BURST_SIZE)
            stored |= {start + index: each for index, each in enumerate(seconds)}
            await asyncio.sleep(BURST_PAUSE_SECONDS)
    await wait_for_all(readers, sequences)
    elapsed = time.monotonic() - started
    figures = summary(readers, sequences, stored)
    figures["server_cpu_percent"] = (sum(cpu_seconds(pid) for pid in pids) - cpu_before) / elapsed * 100
    figures["load"] = os.getloadavg()[0]
    return figures, sequences.stop


async def run(urls: list[str], pids: list[int], stream_counts: list[int], redis: RedisServer | None) -> bool:
    sequence = 0
    clean = True
    async with httpx.AsyncClient(base_url=urls[0], timeout=30) as http:
        # The first publish creates the benchmark's call; its stream-less events are not measured.
        await publish(http, sequence, 1)
        sequence += 1
        for count in stream_counts:
            readers = await open_streams(urls, count)
            try:
                await publish(http, sequence, 3)  # warm-up: every stream's first events
                await wait_for_all(readers, range(sequence, sequence + 3))
                sequence += 3
                for kind in ("spread out", f"{BURST_SIZE} at once"):
                    figures, sequence = await run_case(http, readers, pids, sequence, kind, redis)
                    lost = figures["expected"] - figures["delivered"]
                    clean = clean and not lost and not figures["duplicates"] and not figures["reordered"]
                    print(
                        f"{count:>7}  {kind:<11}  {figures['p50_ms']:>6.1f}  {figures['p99_ms']:>6.1f}"
                        f"  {figures['max_ms']:>7.1f}  {figures['delivered']:>6}/{figures['expected']:<6}"
                        f"  {figures['duplicates']:>4}  {figures['reordered']:>9}"
                        f"  {figures['stored_p50_ms']:>5.1f}/{figures['stored_p99_ms']:<6.1f}"
                        f"  {figures['fan_out_p50_ms']:>5.1f}/{figures['fan_out_p99_ms']:<6.1f}"
                        f"  {figures['server_cpu_percent']:>6.0f}  {figures['load']:>5.2f}"
                        + ("  (Redis restarted)" if redis is not None and kind == "spread out" else ""),
                        flush=True,
                    )
            finally:
                for reader in readers:
                    await reader.close()
            await asyncio.sleep(1.0)  # let the server close the streams before the next case
    return clean


def postgres_database(database_url: str, create: bool) -> str:
    """A throwaway database beside the one `database_url` names; returns its URL."""
    import psycopg

    parts = urlsplit(database_url)
    name = f"parley_bench_streams_{os.getpid()}"
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as connection:
        if create:
            connection.execute(f'CREATE DATABASE "{name}"')
        else:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return parts._replace(path=f"/{name}").geturl()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="20,200", help="open streams per round, comma-separated")
    parser.add_argument("--workers", type=int, default=1, help="Daphne processes the streams are spread over")
    parser.add_argument(
        "--postgres-redis",
        action="store_true",
        default=os.environ.get("PARLEY_BENCH_POSTGRES_REDIS") == "1",
        help="PostgreSQL and Redis instead of SQLite and the in-memory channel layer",
    )
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--restart-redis",
        action="store_true",
        help="a Redis server of its own, restarted during each spread-out case (implies --postgres-redis)",
    )
    args = parser.parse_args()
    redis = RedisServer() if args.restart_redis else None
    if redis is not None:
        args.postgres_redis = True
        redis.start()
    if args.workers > 1 and not args.postgres_redis:
        raise SystemExit(
            "--workers > 1 needs --postgres-redis: the in-memory layer does not reach other processes"
        )

    # As in production: no debug mode (which records every query), no models to load.
    environment = {
        "PARLEY_WARM_UP": "0",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "parley-streams-benchmark-secret-key-not-for-production",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
    }
    if args.postgres_redis:
        environment |= {
            "DATABASE_URL": postgres_database(args.database_url, create=True),
            "REDIS_URL": args.redis_url if redis is None else redis.url,
            "PARLEY_REDIS_PREFIX": f"parley-bench-{uuid.uuid4().hex[:8]}",
        }
    backends = "PostgreSQL + Redis" if args.postgres_redis else "SQLite + in-memory channel layer"
    try:
        with tempfile.TemporaryDirectory(prefix="parley-bench-") as data_dir:
            processes, _ = start_server(
                data_dir,
                args.workers,
                application="bench.streams_server:application",
                environment=environment,
            )
            pids = [process.pid for process in processes]
            urls = [f"http://127.0.0.1:{process.args[process.args.index('-p') + 1]}" for process in processes]
            try:
                print(
                    f"{backends}; {len(pids)} Daphne process(es); {os.cpu_count()} cores;"
                    f" load average now {os.getloadavg()[0]:.2f}"
                )
                print(
                    "streams  events        p50 ms  p99 ms   max ms  delivered/expected  dup  reordered"
                    "  stored ms     fan-out ms    srv CPU%  load"
                )
                clean = asyncio.run(run(urls, pids, [int(part) for part in args.streams.split(",")], redis))
            except Exception:
                print(f"server log:\n{server_log_tail(data_dir)}")
                raise
            finally:
                for process in processes:
                    process.terminate()
                for process in processes:
                    process.wait(10)
    finally:
        if args.postgres_redis:
            postgres_database(args.database_url, create=False)
        if redis is not None:
            redis.stop()
    if not clean:
        raise SystemExit("events were lost, duplicated or reordered")


if __name__ == "__main__":
    main()
