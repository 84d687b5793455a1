"""Benchmark of the agent API (/ws/agent/) with live calls: event delivery to an app, and an app's
streamed reply to the caller's ear.

N calls (`--calls`, 20) are held by aiortc clients that behave as the Anam SDK, against one real
Daphne process; one app, Parley's Python client in a process of its own, subscribes to the
persona with `answer: true` and drives the calls. Two phases follow each other while all N calls
are live:
- typed questions: every call types a question (`--questions` rounds, the calls' questions
  spread over each round); the app answers each with `replyStream`, token by token as an LLM
  would (`--token-ms` apart; the persona's own brain stays silent);
- say lines: the app makes every call's persona `say` a short line every `--say-every` seconds,
  for `--seconds`.

It prints:
1. event delivery, publish to the app: for every kept event of the organisation (each has the
   moment the server published it, `created_at`, stamped as the live call publishes it), the
   delay to the app's "*" handler starting, p50 / p99 / max, overall and by phase, and how many
   were lost (stored but never received) or received twice; `bot.word` events (ephemeral, not
   stored, so not timed) are counted against the words the persona said;
2. streamed reply to the ear: from the app sending the token that completes the first sentence
   (and from its first token) to the first loud audio frame of the reply at the aiortc client,
   median and p95 over the replies, with the median's breakdown at the server's `bot.speaking`
   (the voice starts out).
Each phase is described by its length, the personas speaking at once on average, the CPU of the
server, of the calls (this process), of the app and of the rest of the machine (on a shared
machine, other people's work disturbs the figures), and the 1-minute load average. The client
holds the voice in a 2-packet (40 ms) playout buffer, about what a browser's adaptive buffer
holds on loopback.

`--stages` shows where the time goes: the server (`bench/agents_server.py`) stamps each kept
event as it is stored, rung on the loop, handed to the app's subscription and written to its
socket, each streamed chunk as it reaches its call, and espeak's first audio of each sentence.

It sets up everything itself (a throwaway SQLite database, an organisation, a persona with the
built-in brain and no greeting, an API key, its Daphne process) and removes it afterwards:

    python bench/agents.py              # 20 calls
    python bench/agents.py --calls 4    # a quick check
    python bench/agents.py --stages     # and where the time goes
    python bench/agents.py --postgres-redis --workers 2   # the production shape

`--postgres-redis` runs the server on a throwaway PostgreSQL database and Redis (`--database-url`,
`--redis-url`), and `--workers 2` spreads the calls over two Daphne processes: the app listens on
the first, and hears of the other's events through Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))

from bench.streams import percentile, postgres_database  # noqa: E402
from bench.webrtc_client import ParleyWebRTCClient, video_decoding_disable  # noqa: E402
from bench.webrtc_sessions import cpu_seconds, server_environment, server_log_tail, start_server  # noqa: E402

ORGANIZATION_SLUG = "agents-bench"
PERSONA_SLUG = "bench-mara"
API_KEY = "prl_agentsbn_agents-benchmark-key-not-secret-0000"
# As in production: no debug mode (it records every query); the warm-up loads the persona.
SERVER_ENVIRONMENT = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": "parley-agents-benchmark-secret-key-not-for-production",
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
    "DATABASE_URL": "",
    "REDIS_URL": "",
}
QUESTIONS = (
    "When is the rye bread ready?",
    "Do you have anything without gluten?",
    "Can I order a cake for Saturday?",
    "Is there parking nearby?",
)
# The app's answer as an LLM streams it: words with their leading space, punctuation alone.
ANSWER_TOKENS = (
    "Our", " rye", " bread", " comes", " out", " of", " the", " oven", " at", " six", ".",
    " Come", " early", ",", " it", " goes", " fast", "!",
)  # fmt: skip
# The token that completes the first sentence, and the one after it (Parley ends a sentence at
# punctuation followed by whitespace, so it can only tell once that one comes).
SENTENCE_END_TOKEN = ANSWER_TOKENS.index(".")
SAY_LINES = (
    "Your order is ready at the counter.",
    "The soup today is leek and potato.",
    "We close at six this evening.",
    "The cardamom buns are fresh out of the oven.",
    "A table by the window is free now.",
    "Oat milk is fifty cents extra.",
)
# The persona's voice is held this many 20 ms packets before playout (a browser on loopback).
PLAYOUT_PACKETS = 2
# Calls connecting at once while they are set up (a setup step, not a measurement).
START_CONCURRENCY = 4
# Each round of typed questions is spread over this many seconds.
ROUND_SECONDS = 10.0
# After the calls are up: the calls learn that an app answers them (checked every second).
PRESENCE_SETTLE_SECONDS = 2.0
# After the calls ended: how long the last events have to reach the app before it stops.
DRAIN_SECONDS = 3.0
# Safety nets, not speed checks (seconds).
STEP_TIMEOUT_SECONDS = 60.0
APP_TIMEOUT_SECONDS = 30.0
CALLS_END_TIMEOUT_SECONDS = 30.0


# --- The app: Parley's Python client, in a process of its own ---------------------------------


@dataclass
class AppRecord:
    """What the app saw and did. Times: `time.time()` for receipts (compared with the server's
    `created_at`), `time.monotonic()` for sends (compared with the aiortc client's frames; both
    are the machine's clocks, the same in every process)."""

    # (callId, event, messageId or "", when the "*" handler started)
    receipts: list[tuple[str, str, str, float]] = field(default_factory=list)
    words: dict[str, int] = field(default_factory=dict)  # bot.word events received, by messageId
    said: dict[str, str] = field(default_factory=dict)  # messageId: the line the app had said
    replies: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def app_process_main(connection: Connection, url: str, api_key: str, token_seconds: float) -> None:
    """The app's process: runs until the benchmark says "stop", then sends back its record."""
    record = asyncio.run(app_run(connection, url, api_key, token_seconds))
    # As a dict: this module is `__mp_main__` here, which the benchmark's process cannot unpickle.
    connection.send(("record", dataclasses.asdict(record)))


async def app_run(connection: Connection, url: str, api_key: str, token_seconds: float) -> AppRecord:
    from parley_agent import Agent
    from parley_agent.call import Call

    record = AppRecord()
    calls: dict[str, Call] = {}
    agent = Agent(url, api_key=api_key, agents=[PERSONA_SLUG], answer=True)

    @agent.on("*")
    def received(event: dict[str, Any], call: Call) -> None:
        at = time.time()
        name = event["event"]
        if name == "bot.word":
            record.words[event["messageId"]] = record.words.get(event["messageId"], 0) + 1
            return
        record.receipts.append((call.id, name, str(event.get("messageId") or ""), at))
        if call.id:
            calls.setdefault(call.id, call)

    @agent.on("user.message")
    async def answer(event: dict[str, Any], call: Call) -> None:
        reply: dict[str, Any] = {"callId": call.id, "sent": []}
        try:
            async with call.reply_stream(in_reply_to=event["messageId"]) as stream:
                reply["messageId"] = stream.message_id
                for index, token in enumerate(ANSWER_TOKENS):
                    if index:
                        await asyncio.sleep(token_seconds)
                    reply["sent"].append(time.monotonic())
                    await stream.write(token)
        except Exception as error:
            record.errors.append(f"reply on {call.id}: {error!r}")
        record.replies.append(reply)

    async def say_lines(call_ids: list[str], seconds: float, every: float) -> None:
        async def one(index: int, call_id: str) -> None:
            call = calls.get(call_id) or Call(agent, call_id, PERSONA_SLUG)
            await asyncio.sleep(every * index / len(call_ids))  # the calls' lines spread out
            end = time.monotonic() + seconds
            line = index
            while time.monotonic() < end:
                text = SAY_LINES[line % len(SAY_LINES)]
                line += 1
                try:
                    ack = await call.say(text)
                    record.said[ack["messageId"]] = text
                except Exception as error:
                    record.errors.append(f"say on {call_id}: {error!r}")
                await asyncio.sleep(every)

        await asyncio.gather(*(one(index, call_id) for index, call_id in enumerate(call_ids)))

    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def listen() -> None:  # the pipe blocks: a thread hands its messages to the loop
        while True:
            message = connection.recv()
            loop.call_soon_threadsafe(inbox.put_nowait, message)
            if message[0] == "stop":
                return

    threading.Thread(target=listen, daemon=True).start()
    runner = asyncio.create_task(agent.run())
    while not agent.connected:
        if runner.done():
            runner.result()  # raises why it could not connect
        await asyncio.sleep(0.05)
    connection.send(("ready", None))
    while True:
        action, argument = await inbox.get()
        if action == "say":
            await say_lines(**argument)
            connection.send(("said", len(record.said)))
        elif action == "stop":
            break
    agent.stop()
    await asyncio.wait_for(runner, 10)
    return record


class AppProcess:
    """The benchmark's handle on the app's process."""

    def __init__(self, url: str, api_key: str, token_seconds: float) -> None:
        context = multiprocessing.get_context("spawn")  # nothing of this process's state
        self.connection, child = context.Pipe()
        self.process = context.Process(
            target=app_process_main, args=(child, url, api_key, token_seconds), daemon=True
        )
        self.process.start()

    async def receive(self, expected: str, within_seconds: float) -> Any:
        def wait() -> tuple[str, Any]:
            if not self.connection.poll(within_seconds):
                raise TimeoutError(f"the app sent no {expected!r} within {within_seconds:.0f} s")
            return self.connection.recv()

        try:
            action, argument = await asyncio.get_running_loop().run_in_executor(None, wait)
        except EOFError:
            raise AssertionError(f"the app's process ended (exit code {self.process.exitcode})") from None
        if action != expected:
            raise AssertionError(f"the app sent {action!r}, expected {expected!r}")
        return argument

    def send(self, action: str, argument: Any = None) -> None:
        self.connection.send((action, argument))

    def close(self) -> None:
        if self.process.is_alive():
            self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


# --- The calls ----------------------------------------------------------------------------


@dataclass
class Phase:
    """A stretch of the run, with what the processes and the machine did meanwhile."""

    name: str
    started: float  # time.time()
    ended: float = 0.0
    load: float = 0.0  # the 1-minute load average at its start
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # by process: server, calls, app


def machine_cpu_seconds() -> float:
    """CPU seconds every core of the machine has been busy (everyone's processes, the kernel)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class PhaseClock:
    """Marks the phases, and the CPU the server, the calls (this process) and the app used in each."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids  # by name: the processes counted together (a server's workers)
        self.phases: list[Phase] = []
        self._cpu: dict[str, float] = {}

    def begin(self, name: str) -> None:
        self._close()
        self.phases.append(Phase(name, time.time(), load=os.getloadavg()[0]))
        self._cpu = self._cpu_now()

    def end(self) -> None:
        self._close()

    def _cpu_now(self) -> dict[str, float]:
        return {"machine": machine_cpu_seconds()} | {
            name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()
        }

    def _close(self) -> None:
        if self.phases and not self.phases[-1].ended:
            phase, cpu = self.phases[-1], self._cpu_now()
            phase.ended = time.time()
            phase.cpu_seconds = {name: cpu[name] - self._cpu[name] for name in cpu}


async def mint(http: httpx.AsyncClient) -> str:
    response = await http.post(
        "/v1/auth/session-token",
        json={"personaConfig": {"personaId": PERSONA_SLUG}},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    response.raise_for_status()
    return response.json()["sessionToken"]


async def calls_open(base_url: str, count: int) -> list[ParleyWebRTCClient]:
    """`count` calls, connected a few at a time, each ready (`sessionready`)."""
    limit = asyncio.Semaphore(START_CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        tokens = [await mint(http) for _ in range(count)]

    async def open_one(token: str) -> ParleyWebRTCClient:
        client = ParleyWebRTCClient(
            base_url=base_url,
            session_token=token,
            step_timeout_seconds=STEP_TIMEOUT_SECONDS,
            playout_packets=PLAYOUT_PACKETS,
        )
        async with limit:
            await client.connect()
            record = client.record
            await client.wait_for(
                lambda: any(signal["actionType"] == "sessionready" for signal in record.signals),
                "sessionready",
            )
        return client

    outcomes = await asyncio.gather(*(open_one(token) for token in tokens), return_exceptions=True)
    clients = [outcome for outcome in outcomes if isinstance(outcome, ParleyWebRTCClient)]
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        await calls_close(clients)
        raise AssertionError(f"{len(failures)} of {count} calls failed to start: {failures[0]!r}")
    return clients


async def calls_close(clients: list[ParleyWebRTCClient]) -> None:
    await asyncio.wait([asyncio.ensure_future(client.close()) for client in clients], timeout=20)


async def questions_ask(clients: list[ParleyWebRTCClient], rounds: int) -> None:
    """Every call types `rounds` questions, one a round; the calls' questions spread over it."""

    async def one(index: int, client: ParleyWebRTCClient) -> None:
        record = client.record
        for round_ in range(rounds):
            due = started + (round_ + index / len(clients)) * ROUND_SECONDS
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            client.ask(QUESTIONS[(index + round_) % len(QUESTIONS)])
            answered = round_ + 1
            await client.wait_for(
                lambda answered=answered: record.persona_finished_count() >= answered, "the streamed reply"
            )

    started = time.monotonic()
    await asyncio.gather(*(one(index, client) for index, client in enumerate(clients)))


async def run(
    base_url: str, server_pids: list[int], args: argparse.Namespace
) -> tuple[AppRecord, PhaseClock, dict[str, list[float]]]:
    """The calls and the app through both phases; what the app recorded, the phases, and each
    call's loud audio frames (monotonic times) by call id."""
    app = AppProcess(base_url, API_KEY, args.token_ms / 1000)
    clock = PhaseClock({"server": server_pids, "calls": [os.getpid()], "app": [app.process.pid]})
    clients: list[ParleyWebRTCClient] = []
    try:
        await app.receive("ready", APP_TIMEOUT_SECONDS)
        clock.begin("calls starting")
        clients = await calls_open(base_url, args.calls)
        await asyncio.sleep(PRESENCE_SETTLE_SECONDS)
        clock.begin("typed questions, streamed replies")
        await questions_ask(clients, args.questions)
        await asyncio.sleep(1.0)
        clock.begin("say lines")
        app.send(
            "say",
            {
                "call_ids": [client.record.session_id for client in clients],
                "seconds": args.seconds,
                "every": args.say_every,
            },
        )
        await app.receive("said", args.seconds + args.say_every + APP_TIMEOUT_SECONDS)
        await asyncio.sleep(3.0)  # the last lines are spoken
        clock.begin("calls ending")
        audio = {client.record.session_id: list(client.record.loud_audio_frames) for client in clients}
        await calls_close(clients)
        clients = []
        await asyncio.to_thread(calls_wait_ended)
        await asyncio.sleep(DRAIN_SECONDS)
        clock.end()
        app.send("stop")
        record = AppRecord(**await app.receive("record", APP_TIMEOUT_SECONDS))
        return record, clock, audio
    finally:
        if clients:
            await calls_close(clients)
        app.close()


# --- The database: the benchmark's organisation, and what the server stored ----------------


def organization_create() -> None:
    from personas.models import Organization, Persona
    from personas.services import api_key_create

    organization = Organization.objects.create(
        name="Agents benchmark", slug=ORGANIZATION_SLUG, max_concurrent_sessions=500
    )
    Persona.objects.create(
        organization=organization,
        slug=PERSONA_SLUG,
        name="Mara",
        greeting="",
        skip_greeting=True,
        idle_timeout_seconds=0,  # the calls stay quiet between phases: no check-ins, no timeouts
        idle_warning_seconds=0,
        max_duration_seconds=3600,
    )
    api_key_create(organization=organization, name="agents benchmark", raw_key=API_KEY)


def calls_wait_ended() -> None:
    from django.db import close_old_connections

    from calls.models import Call, CallStatus

    deadline = time.monotonic() + CALLS_END_TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline:
            live = Call.objects.filter(organization__slug=ORGANIZATION_SLUG).exclude(status=CallStatus.ENDED)
            if not live.exists():
                return
            time.sleep(0.2)
    finally:
        close_old_connections()


def stored_events() -> list[tuple[int, str, str, dict[str, Any], float]]:
    """(cursor, type, call id, data, created_at as time.time()) of the organisation's events."""
    from calls.models import CallEvent

    rows = CallEvent.objects.filter(organization__slug=ORGANIZATION_SLUG).order_by("cursor")
    return [
        (row.cursor, row.type, row.call_id, row.data, row.created_at.timestamp())
        for row in rows.only("cursor", "type", "call_id", "data", "created_at")
    ]


# --- Figures ------------------------------------------------------------------------------

StoredEvent = tuple[int, str, str, dict[str, Any], float]  # cursor, type, call id, data, created_at


@dataclass(frozen=True)
class Delivered:
    cursor: int
    name: str
    published: float  # the server's created_at, time.time()
    received: float  # the app's handler, time.time()


@dataclass
class Stages:
    """What `bench/agents_server.py` wrote: each stage's moment by event cursor (or message id)."""

    moments: dict[str, dict[str, float]] = field(default_factory=dict)
    chunks: dict[str, list[float]] = field(default_factory=dict)  # replyStream chunks at the call
    speech: list[tuple[float, float, str]] = field(default_factory=list)  # asked, first audio, text

    @classmethod
    def read(cls, path: Path) -> Stages:
        stages = cls()
        for line in path.read_text().splitlines():
            stage, key, moment, *text = line.split(" ", 3)
            if stage == "chunk":
                stages.chunks.setdefault(key, []).append(float(moment))
            elif stage == "speech":
                stages.speech.append((float(key), float(moment), text[0] if text else ""))
            else:
                stages.moments.setdefault(stage, {}).setdefault(key, float(moment))
        return stages


def percentiles(values: list[float], fractions: tuple[float, ...] = (0.5, 0.99)) -> str:
    """'p50 … p99 … max … ms' of values in seconds."""
    if not values:
        return "none"
    shown = [f"p{round(fraction * 100)} {percentile(values, fraction) * 1000:6.1f}" for fraction in fractions]
    return "  ".join([*shown, f"max {max(values) * 1000:6.1f} ms"])


def median_p95(values: list[float]) -> str:
    if not values:
        return "none"
    return f"median {statistics.median(values) * 1000:5.0f}  p95 {percentile(values, 0.95) * 1000:5.0f} ms"


def delivery(events: list[StoredEvent], record: AppRecord) -> tuple[list[Delivered], int, int]:
    """Each kept event the app received, how many it never did, how many it received twice.

    Receipts carry no cursor (the client's handlers are not given it): a call's events of one
    type (and messageId, where they have one) are matched in order, as a call's events reach
    an app in cursor order.
    """
    received: dict[tuple[str, str, str], list[float]] = {}
    for call_id, name, message_id, at in record.receipts:
        received.setdefault((call_id, name, message_id), []).append(at)
    stored: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for cursor, name, call_id, data, created in events:
        stored.setdefault((call_id, name, str(data.get("messageId") or "")), []).append((cursor, created))
    delivered: list[Delivered] = []
    lost = duplicates = 0
    for key, published in stored.items():
        arrivals = received.get(key, [])
        for (cursor, created), arrived in zip(published, arrivals, strict=False):
            delivered.append(Delivered(cursor, key[1], created, arrived))
        lost += max(0, len(published) - len(arrivals))
        duplicates += max(0, len(arrivals) - len(published))
    duplicates += sum(len(arrivals) for key, arrivals in received.items() if key not in stored)
    return delivered, lost, duplicates


def speaking_seconds(events: list[StoredEvent], start: float, end: float) -> float:
    """Seconds of persona voice (bot.speaking to bot.finished) within [start, end], all calls."""
    began: dict[str, float] = {}
    total = 0.0
    for _, name, _, data, created in events:
        if name == "bot.speaking":
            began[data["messageId"]] = created
        elif name in ("bot.finished", "bot.interrupted") and data["messageId"] in began:
            first = began.pop(data["messageId"])
            total += max(0.0, min(created, end) - max(first, start))
    return total


def phases_report(clock: PhaseClock, events: list[StoredEvent]) -> None:
    print(
        "phase                               seconds  speaking   CPU % of one core             load"
        "\n                                              at once   server  calls  app  others"
    )
    for phase in clock.phases:
        seconds = phase.ended - phase.started
        cpu = {name: used / seconds * 100 for name, used in phase.cpu_seconds.items()}
        # The kernel counts processes and the machine apart: they differ by a few percent.
        others = max(0.0, cpu["machine"] - cpu["server"] - cpu["calls"] - cpu["app"])
        print(
            f"  {phase.name:<33} {seconds:>6.1f}  {speaking_seconds(events, phase.started, phase.ended) / seconds:>8.1f}"
            f"   {cpu['server']:>6.0f} {cpu['calls']:>6.0f} {cpu['app']:>4.0f} {others:>7.0f}  {phase.load:>7.2f}"
        )
    print(
        "  (others: about what the rest of the machine used, the server's worker processes and other"
        f" people's work included; {os.cpu_count()} cores are {os.cpu_count() * 100} %)"
    )


# Where a kept event's time goes, stage by stage (with --stages).
DELIVERY_STAGES = (
    ("published", "stored_from", "waits for the database thread (the call's earlier events first)"),
    ("stored_from", "stored", "is stored (insert and commit, with those waiting with it)"),
    ("stored", "loop", "its doorbell reaches the event loop"),
    ("loop", "offered", "the stream hub hands it to the app's subscription"),
    ("offered", "sent", "the agent consumer writes it to the socket"),
    ("sent", "received", "it reaches the app's handler (Twisted, loopback, the client)"),
)


def delivery_report(
    clock: PhaseClock, events: list[StoredEvent], record: AppRecord, stages: Stages | None
) -> bool:
    """Prints the figures of part 1; whether the aim (p99 <= 20 ms, none lost) was met."""
    delivered, lost, duplicates = delivery(events, record)
    delays = [each.received - each.published for each in delivered]
    print(
        "\n1. Event delivery, publish to the app: from the moment the server publishes a kept event (its"
        "\n   created_at, stamped as the live call publishes it, before it is stored) to the app's '*'"
        "\n   handler starting (Parley's Python client, in its own process, over /ws/agent/); every kept"
        "\n   event of the organisation. Aim: p99 <= 20 ms, none lost."
    )
    print(f"   all                               {len(delays):>5}  {percentiles(delays)}")
    for phase in clock.phases:
        within = [
            each.received - each.published
            for each in delivered
            if phase.started <= each.published < phase.ended
        ]
        print(f"   {phase.name:<33} {len(within):>5}  {percentiles(within)}")
    for name in sorted({each.name for each in delivered}):
        of_kind = [each.received - each.published for each in delivered if each.name == name]
        print(f"   {name:<33} {len(of_kind):>5}  {percentiles(of_kind)}")
    print(f"   lost {lost} of {len(events)} stored; received twice {duplicates}")
    expected_words = sum(len(text.split()) for text in record.said.values())
    received_words = sum(record.words.get(message_id, 0) for message_id in record.said)
    print(
        f"   bot.word (ephemeral: not stored, so not timed): {received_words} received of the"
        f" {expected_words} words of the {len(record.said)} lines said"
    )
    if stages is not None:
        moments = {stage: dict(values) for stage, values in stages.moments.items()}
        moments["published"] = {str(each.cursor): each.published for each in delivered}
        moments["received"] = {str(each.cursor): each.received for each in delivered}
        names = ["published", *(later for _, later, _ in DELIVERY_STAGES)]
        complete = [key for key in moments["published"] if all(key in moments[name] for name in names)]
        print(
            f"   where the time goes ({len(complete)} events that passed every stage; the stamps cost a"
            " little too): p50 / p90 / p99"
        )
        for earlier, later, what in DELIVERY_STAGES:
            spans = [moments[later][key] - moments[earlier][key] for key in complete]
            print(f"     {what:<62} {percentiles(spans, (0.5, 0.9, 0.99))}")
    return bool(delays) and percentile(delays, 0.99) <= 0.020 and lost == 0


def reply_report(
    args: argparse.Namespace,
    events: list[StoredEvent],
    record: AppRecord,
    audio: dict[str, list[float]],
    stages: Stages | None,
) -> bool:
    """Prints the figures of part 2; whether the aim (median <= 150 ms) was met."""
    offset = statistics.median(time.time() - time.monotonic() for _ in range(5))  # wall = monotonic + offset
    speaking_at = {
        data["messageId"]: created for _, name, _, data, created in events if name == "bot.speaking"
    }
    from_first: list[float] = []
    from_sentence: list[float] = []
    parts: dict[str, list[float]] = {"wait": [], "server": [], "client": [], "to call": [], "at call": []}
    unheard = 0
    completing = SENTENCE_END_TOKEN + 1  # the token after the sentence's end: Parley sees it ended
    for reply in record.replies:
        sent = reply["sent"]
        loud = [at for at in audio.get(reply["callId"], []) if sent and at > sent[0]]
        if len(sent) <= completing or not loud:
            unheard += 1
            continue
        heard = loud[0]
        from_first.append(heard - sent[0])
        from_sentence.append(heard - sent[SENTENCE_END_TOKEN])
        speaking = speaking_at.get(reply.get("messageId", ""))
        if speaking is None:
            continue
        speaking -= offset  # to monotonic, as the app's and the client's times
        parts["wait"].append(sent[completing] - sent[SENTENCE_END_TOKEN])
        parts["server"].append(speaking - sent[completing])
        parts["client"].append(heard - speaking)
        chunks = stages.chunks.get(reply["messageId"], []) if stages is not None else []
        if len(chunks) > completing:
            parts["to call"].append(chunks[completing] - offset - sent[completing])
            parts["at call"].append(speaking - (chunks[completing] - offset))

    def median_ms(name: str) -> str:
        return f"{statistics.median(parts[name]) * 1000:.0f} ms"

    print(
        "\n2. Streamed reply to the ear: the app answers each typed question with replyStream (start,"
        f"\n   then {len(ANSWER_TOKENS)} tokens {args.token_ms:g} ms apart, as an LLM streams); from the app sending"
        " a token to the\n   first loud audio frame (peak > 500 of 32767) of the reply at the aiortc client,"
        " after its\n   2-packet playout buffer. Aim: median <= 150 ms from the token that completes the"
        " first sentence."
    )
    print(
        f"   from the token that ends the first sentence ('.')  {median_p95(from_sentence)}  ({len(from_sentence)} replies)"
    )
    print(f"   from the first token                               {median_p95(from_first)}")
    if parts["server"]:
        print("   the parts, medians:")
        print(
            f"     Parley waits for the next token (a sentence ends at punctuation and whitespace)  {median_ms('wait')}"
        )
        print(
            f"     that token sent to bot.speaking (the voice starts out at the server)           {median_ms('server')}"
        )
        if parts["at call"]:
            print(
                f"       of which the token reaching the call (websocket, consumer)                  {median_ms('to call')}"
            )
            print(
                f"       and the call starting to speak it (sentence, synthesis, pipeline, output)   {median_ms('at call')}"
            )
        print(
            f"     bot.speaking to the first loud frame (pacing, RTP, jitter buffer, the onset)     {median_ms('client')}"
        )
    if stages is not None:
        first_sentence = "".join(ANSWER_TOKENS[:completing]).strip()
        synthesis = [first - asked for asked, first, text in stages.speech if text == first_sentence]
        print(
            f"   espeak's first audio for the first sentence, from being asked for it ({len(synthesis)}"
            f" times): {median_p95(synthesis)}"
        )
    if unheard:
        print(f"   {unheard} replies were not heard or not sent whole")
    for error in record.errors[:5]:
        print(f"   app error: {error}")
    if len(record.errors) > 5:
        print(f"   ... {len(record.errors) - 5} more app errors")
    return bool(from_sentence) and statistics.median(from_sentence) <= 0.150


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20, help="live calls at once (default 20)")
    parser.add_argument("--questions", type=int, default=2, help="typed questions per call (default 2)")
    parser.add_argument(
        "--token-ms", type=float, default=25.0, help="time between the app's tokens (default 25)"
    )
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="length of the say-lines phase (default 30)"
    )
    parser.add_argument(
        "--say-every",
        type=float,
        default=4.0,
        help="each call's persona says a line this often (default 4 s)",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="also show where the time goes: the server (bench/agents_server.py) stamps each event's"
        " stages, each streamed chunk's arrival and espeak's first audio (the stamps cost a little)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Daphne processes the calls are spread over (more than one needs --postgres-redis)",
    )
    parser.add_argument(
        "--postgres-redis",
        action="store_true",
        help="PostgreSQL and Redis (the production shape) instead of SQLite and the in-memory layer",
    )
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if args.workers > 1 and not args.postgres_redis:
        raise SystemExit("--workers > 1 needs --postgres-redis (SQLite is the embedded, one-process shape)")
    video_decoding_disable()
    environment = dict(SERVER_ENVIRONMENT)
    if args.postgres_redis:
        environment |= {
            "DATABASE_URL": postgres_database(args.database_url, create=True),
            "REDIS_URL": args.redis_url,
            "PARLEY_REDIS_PREFIX": f"parley-bench-{uuid.uuid4().hex[:8]}",
        }
    try:
        bench(args, environment)
    finally:
        if args.postgres_redis:
            postgres_database(args.database_url, create=False)


def bench(args: argparse.Namespace, environment: dict[str, str]) -> None:
    shape = (
        f"{args.workers} Daphne process{'es' if args.workers > 1 else ''} (PostgreSQL, Redis)"
        if args.postgres_redis
        else "One Daphne process (SQLite, in-memory channel layer)"
    )
    with tempfile.TemporaryDirectory(prefix="parley-bench-agents-") as data_dir:
        # This process reads and writes the server's database too (set-up, then the stored events).
        os.environ.update({**server_environment(data_dir), **environment})
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        from calls.live import ice_address_policy_apply, ice_consent_policy_apply

        ice_address_policy_apply()
        ice_consent_policy_apply()  # a client on a loaded machine answers consent checks late too
        call_command("migrate", verbosity=0)
        organization_create()
        connections.close_all()
        stages_path = Path(data_dir) / "stages.txt"
        if args.stages:
            processes, base_url = start_server(
                data_dir,
                args.workers,
                application="bench.agents_server:application",
                environment={**environment, "PARLEY_BENCH_STAGES": str(stages_path)},
            )
        else:
            processes, base_url = start_server(data_dir, args.workers, environment=environment)
        try:
            print(
                f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}. {shape};"
                f"\n{args.calls} live calls held by aiortc clients in this process;"
                " one app, Parley's Python client in a process\nof its own, answering the persona's turns."
                f" Each call types {args.questions} question(s), answered by the app;\nthen each persona"
                f" says a line every {args.say_every:g} s for {args.seconds:g} s.\n",
                flush=True,
            )
            try:
                record, clock, audio = asyncio.run(run(base_url, [server.pid for server in processes], args))
            except (AssertionError, TimeoutError) as failure:
                raise SystemExit(f"FAILED: {failure}\nserver log:\n{server_log_tail(data_dir)}") from None
            events = stored_events()
            stages = Stages.read(stages_path) if args.stages else None
            phases_report(clock, events)
            delivered = delivery_report(clock, events, record, stages)
            heard = reply_report(args, events, record, audio, stages)
            print(
                f"\naims: event delivery {'met' if delivered else 'NOT met'};"
                f" streamed reply {'met' if heard else 'NOT met'}"
            )
        finally:
            for server in processes:
                server.terminate()
            for server in processes:
                try:
                    server.wait(timeout=10)
                except Exception:
                    server.kill()
            connections.close_all()


if __name__ == "__main__":
    main()
