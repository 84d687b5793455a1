"""Benchmark of WhatsApp: the webhook's answer time under a burst, and delivery to reply.

A real Daphne server (one process on SQLite by default; `--postgres-redis --workers 2` for the
production shape, the deliveries spread over both workers) with the demo persona's WhatsApp
channel, and the fake Graph API (`tests/fakes/graph_api.py`) in this process on 127.0.0.1 as
its Graph API. Deliveries are signed with the channel's app secret, as Meta signs them.

1. Burst: `--burst` deliveries (1,000) from `--contacts` contacts (200), `--concurrency` (20)
   in flight at once. It prints the webhook's answer time, p50 / p99 / max (Meta waits 250 ms;
   the aim is a median ≤ 50 ms), then how long processing and answering took to catch up,
   and checks nothing was lost or answered twice: every message recorded once, none still
   owed an answer, every reply sent once.
2. Delivery to reply: `--sequential` (50) messages from new contacts, one at a time; from the
   POST leaving this process to the persona's reply reaching the fake Graph API, with the
   built-in brain: median / p95.

    python bench/whatsapp.py
    python bench/whatsapp.py --postgres-redis --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.streams import postgres_database  # noqa: E402
from bench.webrtc_sessions import server_environment, server_log_tail, start_server  # noqa: E402
from tests.fakes.graph_api import FakeGraphAPI  # noqa: E402

PHONE_NUMBER_ID = "109000000000001"
APP_SECRET = "bench-app-secret-3c1d"
ACCESS_TOKEN = "bench-graph-token-77a0"
QUESTIONS = (
    "Do you deliver on Saturdays?",
    "What time do you open on Sunday?",
    "Do you have anything without gluten?",
    "Can I order a birthday cake?",
    "Hello!",
)
# Generous: only a broken server takes this long to catch up.
CATCH_UP_TIMEOUT_SECONDS = 600.0


def delivery(contact: str, wamid: str, text: str) -> bytes:
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "WABA",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550001111",
                                "phone_number_id": PHONE_NUMBER_ID,
                            },
                            "contacts": [{"profile": {"name": f"Bench {contact[-4:]}"}, "wa_id": contact}],
                            "messages": [
                                {
                                    "from": contact,
                                    "id": wamid,
                                    "timestamp": str(int(time.time())),
                                    "type": "text",
                                    "text": {"body": text},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(body).encode()


def signed(body: bytes) -> dict[str, str]:
    signature = hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={signature}"}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def burst(urls: list[str], count: int, contacts: int, concurrency: int) -> list[float]:
    """POST `count` deliveries, `concurrency` at once; each one's answer time (ms)."""
    times: list[float] = []
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for index in range(count):
        contact = f"1555{index % contacts:07d}"
        queue.put_nowait(
            (index, delivery(contact, f"wamid.burst{index:06d}", QUESTIONS[index % len(QUESTIONS)]))
        )

    async def worker(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            index, body = queue.get_nowait()
            started = time.perf_counter()
            response = await http.post(
                f"{urls[index % len(urls)]}/v1/whatsapp/webhook", content=body, headers=signed(body)
            )
            times.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise AssertionError(f"delivery {index}: HTTP {response.status_code} {response.text[:200]}")

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return times


def owed_counts() -> tuple[int, int, int, int]:
    """(inbound recorded, still owed an answer, outbound not yet sent, outbound failed)."""
    from django.db import connections

    from calls.models import WhatsAppMessage

    try:
        messages = WhatsAppMessage.objects
        return (
            messages.filter(direction="inbound").count(),
            messages.filter(direction="inbound", needs_answer=True).count(),
            messages.filter(direction="outbound", status="pending").count(),
            messages.filter(direction="outbound", status="failed").count(),
        )
    finally:
        connections.close_all()


async def catch_up(expected_inbound: int) -> float:
    """Seconds until every delivery is processed and every reply sent."""
    started = time.monotonic()
    while time.monotonic() - started < CATCH_UP_TIMEOUT_SECONDS:
        inbound, owed, unsent, _failed = await asyncio.to_thread(owed_counts)
        if inbound >= expected_inbound and owed == 0 and unsent == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"not caught up after {CATCH_UP_TIMEOUT_SECONDS:.0f} s: {owed_counts()}")


async def sequential(urls: list[str], graph: FakeGraphAPI, count: int) -> list[float]:
    """Delivery to reply (ms), one message at a time from new contacts."""
    times: list[float] = []
    async with httpx.AsyncClient(timeout=30) as http:
        for index in range(count):
            contact, wamid = f"1666{index:07d}", f"wamid.seq{index:06d}"
            body = delivery(contact, wamid, QUESTIONS[index % len(QUESTIONS)])
            started = time.monotonic()
            response = await http.post(
                f"{urls[index % len(urls)]}/v1/whatsapp/webhook", content=body, headers=signed(body)
            )
            assert response.status_code == 200, response.text
            deadline = started + 30
            while True:
                replies = [
                    sent for sent in graph.sent if (sent.body.get("context") or {}).get("message_id") == wamid
                ]
                if replies:
                    times.append((replies[0].at - started) * 1000)
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"no reply to {wamid} within 30 s")
                await asyncio.sleep(0.002)
    return times


async def run(urls: list[str], graph: FakeGraphAPI, args: argparse.Namespace) -> None:
    print(
        f"1. Burst: {args.burst} signed deliveries from {args.contacts} contacts, {args.concurrency} at once"
    )
    answer_times = await burst(urls, args.burst, args.contacts, args.concurrency)
    print(
        f"   webhook answer time     p50 {percentile(answer_times, 0.5):6.1f}  p99 {percentile(answer_times, 0.99):6.1f}"
        f"  max {max(answer_times):6.1f} ms   (aim: median <= 50 ms; Meta waits 250 ms)"
    )
    seconds = await catch_up(args.burst)
    inbound, owed, unsent, failed = await asyncio.to_thread(owed_counts)
    # Each queued reply carries its own id as callback data: one seen twice was sent twice.
    replies = [sent.body.get("biz_opaque_callback_data") for sent in graph.sent]
    print(
        f"   processed and answered {inbound} messages in {seconds:.1f} s after the burst:"
        f" {len(graph.sent)} replies (one per thread's turn: messages close together get one),"
        f" {owed} owed, {unsent} unsent, {failed} failed, {len(replies) - len(set(replies))} sent twice"
    )
    if inbound != args.burst or owed or unsent or failed or len(replies) != len(set(replies)):
        raise AssertionError("messages were lost, left unanswered or answered twice")
    print(
        f"\n2. Delivery to reply: {args.sequential} messages from new contacts, one at a time (built-in brain)"
    )
    reply_times = await sequential(urls, graph, args.sequential)
    print(
        f"   POST sent to the reply at the Graph API   median {statistics.median(reply_times):6.1f}"
        f"  p95 {percentile(reply_times, 0.95):6.1f}  max {max(reply_times):6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--contacts", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--sequential", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--postgres-redis", action="store_true")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if args.workers > 1 and not args.postgres_redis:
        raise SystemExit("--workers > 1 needs --postgres-redis (SQLite is the embedded, one-process shape)")

    async def main_async(data_dir: str) -> None:
        async with FakeGraphAPI(access_token=ACCESS_TOKEN) as graph:
            environment = {
                "DJANGO_DEBUG": "0",
                "DJANGO_SECRET_KEY": "parley-whatsapp-benchmark-secret-key-not-for-production",
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
                "PARLEY_WARM_UP": "0",
                "PARLEY_WHATSAPP_GRAPH_URL": graph.base_url,
                "PARLEY_DEMO_WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
                "PARLEY_DEMO_WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
                "PARLEY_DEMO_WHATSAPP_APP_SECRET": APP_SECRET,
                "PARLEY_DEMO_WHATSAPP_VERIFY_TOKEN": "bench-verify",
                "DATABASE_URL": "",
                "REDIS_URL": "",
            }
            if args.postgres_redis:
                environment |= {
                    "DATABASE_URL": postgres_database(args.database_url, create=True),
                    "REDIS_URL": args.redis_url,
                    "PARLEY_REDIS_PREFIX": f"parley-bench-{uuid.uuid4().hex[:8]}",
                }
            processes, _ = await asyncio.to_thread(
                start_server, data_dir, args.workers, environment=environment
            )
            # This process reads the server's database to check nothing was lost; without a
            # pool, so no connection of its own outlives the check (the database is dropped).
            os.environ.update({**server_environment(data_dir), **environment, "PARLEY_DB_POOL_MAX": "0"})
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
            import django

            django.setup()
            urls = [f"http://127.0.0.1:{process.args[process.args.index('-p') + 1]}" for process in processes]
            backends = "PostgreSQL + Redis" if args.postgres_redis else "SQLite + in-memory channel layer"
            print(
                f"{backends}; {len(processes)} Daphne process(es); {os.cpu_count()} cores;"
                f" load average now {os.getloadavg()[0]:.2f}\n"
            )
            try:
                await run(urls, graph, args)
            except Exception:
                print(f"server log:\n{server_log_tail(data_dir)}")
                raise
            finally:
                for process in processes:
                    process.terminate()
                for process in processes:
                    process.wait(10)
                if args.postgres_redis:
                    postgres_database(args.database_url, create=False)

    with tempfile.TemporaryDirectory(prefix="parley-bench-whatsapp-") as data_dir:
        asyncio.run(main_async(data_dir))


if __name__ == "__main__":
    main()
