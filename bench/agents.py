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
Each phase is described by its length, the personas speaking at once on average, the server's
CPU and the 1-minute load average. The client holds the voice in a 2-packet (40 ms) playout
buffer, about what a browser's adaptive buffer holds on loopback.

It sets up everything itself (a throwaway SQLite database, an organisation, a persona with the
built-in brain and no greeting, an API key, its Daphne process) and removes it afterwards:

    python bench/agents.py              # 20 calls
    python bench/agents.py --calls 4    # a quick check
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
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))

from bench.streams import percentile  # noqa: E402
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
    """A stretch of the run, with what the server and the machine did meanwhile."""

    name: str
    started: float  # time.time()
    ended: float = 0.0
    server_cpu_seconds: float = 0.0
    load: float = 0.0


class PhaseClock:
    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.phases: list[Phase] = []
        self._cpu = 0.0

    def begin(self, name: str) -> None:
        now, cpu = time.time(), cpu_seconds(self.server_pid)
        if self.phases:
            self._close(now, cpu)
        self.phases.append(Phase(name, now, load=os.getloadavg()[0]))
        self._cpu = cpu

    def end(self) -> None:
        self._close(time.time(), cpu_seconds(self.server_pid))

    def _close(self, now: float, cpu: float) -> None:
        phase = self.phases[-1]
        phase.ended, phase.server_cpu_seconds = now, cpu - self._cpu


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
    base_url: str, server_pid: int, args: argparse.Namespace
) -> tuple[AppRecord, PhaseClock, dict[str, list[float]]]:
    """The calls and the app through both phases; what the app recorded, the phases, and each
    call's loud audio frames (monotonic times) by call id."""
    clock = PhaseClock(server_pid)
    app = AppProcess(base_url, API_KEY, args.token_ms / 1000)
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


def milliseconds(values: list[float]) -> str:
    if not values:
        return "none"
    return (
        f"p50 {percentile(values, 0.5) * 1000:6.1f}  p99 {percentile(values, 0.99) * 1000:6.1f}"
        f"  max {max(values) * 1000:6.1f} ms"
    )


def delivery(
    events: list[tuple[int, str, str, dict[str, Any], float]], record: AppRecord
) -> tuple[list[tuple[float, float, str]], int, int]:
    """(created_at, delay, type) of each kept event the app received, how many it never did,
    how many it received twice. Events of one call and type are matched in order (by their
    messageId too, where they have one): a call's events reach an app in cursor order."""
    received: dict[tuple[str, str, str], list[float]] = {}
    for call_id, name, message_id, at in record.receipts:
        received.setdefault((call_id, name, message_id), []).append(at)
    stored: dict[tuple[str, str, str], list[tuple[float, str]]] = {}
    for _, name, call_id, data, created in events:
        stored.setdefault((call_id, name, str(data.get("messageId") or "")), []).append((created, name))
    delays: list[tuple[float, float, str]] = []
    lost = duplicates = 0
    for key, published in stored.items():
        arrivals = received.get(key, [])
        for (created, name), arrived in zip(published, arrivals, strict=False):
            delays.append((created, arrived - created, name))
        lost += max(0, len(published) - len(arrivals))
        duplicates += max(0, len(arrivals) - len(published))
    duplicates += sum(len(arrivals) for key, arrivals in received.items() if key not in stored)
    return delays, lost, duplicates


def speaking_seconds(
    events: list[tuple[int, str, str, dict[str, Any], float]], start: float, end: float
) -> float:
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


def report(
    args: argparse.Namespace,
    events: list[tuple[int, str, str, dict[str, Any], float]],
    record: AppRecord,
    clock: PhaseClock,
    audio: dict[str, list[float]],
) -> None:
    offset = statistics.median(time.time() - time.monotonic() for _ in range(5))  # wall = mono + offset
    print("phase                               seconds  speaking at once  server CPU %  load at start")
    for phase in clock.phases:
        seconds = phase.ended - phase.started
        speaking = speaking_seconds(events, phase.started, phase.ended) / seconds
        print(
            f"  {phase.name:<33} {seconds:>6.1f}  {speaking:>16.1f}  {phase.server_cpu_seconds / seconds * 100:>12.0f}"
            f"  {phase.load:>13.2f}"
        )

    delays, lost, duplicates = delivery(events, record)
    print(
        "\n1. Event delivery: from the server publishing a kept event (its created_at, stamped as the"
        "\n   live call publishes it, before it is stored) to the app's '*' handler starting in Parley's"
        "\n   Python client (its own process, over /ws/agent/); every kept event of the organisation."
        "\n   Aim: p99 <= 20 ms, none lost."
    )
    print(f"   all {len(delays):>5} events  {milliseconds([delay for _, delay, _ in delays])}")
    for phase in clock.phases:
        within = [delay for created, delay, _ in delays if phase.started <= created < phase.ended]
        print(f"   {phase.name:<33} {len(within):>5}  {milliseconds(within)}")
    kinds = sorted({name for _, _, name in delays})
    for name in kinds:
        of_kind = [delay for _, delay, kind in delays if kind == name]
        print(f"   {name:<33} {len(of_kind):>5}  {milliseconds(of_kind)}")
    print(f"   lost {lost} of {len(events)} stored, received twice {duplicates}")
    expected_words = sum(len(text.split()) for text in record.said.values())
    received_words = sum(record.words.get(message_id, 0) for message_id in record.said)
    print(
        f"   bot.word (ephemeral: not stored, so not timed): {received_words} received of the"
        f" {expected_words} words of the {len(record.said)} lines said"
    )

    speaking_at = {
        data["messageId"]: created - offset for _, name, _, data, created in events if name == "bot.speaking"
    }
    from_first, from_sentence, parts = [], [], {"wait": [], "server": [], "client": []}
    missing = 0
    for reply in record.replies:
        sent = reply["sent"]
        loud = [at for at in audio.get(reply["callId"], []) if at > sent[0]] if sent else []
        if len(sent) <= SENTENCE_END_TOKEN + 1 or not loud:
            missing += 1
            continue
        heard = loud[0]
        from_first.append(heard - sent[0])
        from_sentence.append(heard - sent[SENTENCE_END_TOKEN])
        speaking = speaking_at.get(reply.get("messageId", ""))
        if speaking is not None:
            parts["wait"].append(sent[SENTENCE_END_TOKEN + 1] - sent[SENTENCE_END_TOKEN])
            parts["server"].append(speaking - sent[SENTENCE_END_TOKEN + 1])
            parts["client"].append(heard - speaking)

    def median_p95(values: list[float]) -> str:
        if not values:
            return "none"
        return (
            f"median {statistics.median(values) * 1000:5.0f}  p95 {percentile(values, 0.95) * 1000:5.0f} ms"
        )

    print(
        "\n2. Streamed reply to the ear: the app answers each typed question with replyStream (start,"
        f"\n   then {len(ANSWER_TOKENS)} tokens {args.token_ms:g} ms apart, an LLM's pace); from the app sending a token to the"
        "\n   first loud audio frame (peak > 500) of the reply at the aiortc client (after its 2-packet"
        "\n   playout buffer). Aim: median <= 150 ms from the token that completes the first sentence."
    )
    print(
        f"   from the sentence-ending token ('.')    {median_p95(from_sentence)}  ({len(from_sentence)} replies)"
    )
    print(f"   from the first token                    {median_p95(from_first)}")
    if parts["server"]:
        print(
            "   the median's parts: Parley waits for the next token (a sentence ends at punctuation"
            f"\n   followed by whitespace) {statistics.median(parts['wait']) * 1000:.0f} ms; that token sent to bot.speaking (the"
            "\n   command delivered, the sentence synthesised, its voice at the output)"
            f" {statistics.median(parts['server']) * 1000:.0f} ms; bot.speaking to the first loud"
            f"\n   frame at the client (pacing, RTP, jitter buffer, the voice's quiet onset) {statistics.median(parts['client']) * 1000:.0f} ms"
        )
    if missing:
        print(f"   {missing} replies were not heard or not sent whole")
    for error in record.errors[:5]:
        print(f"   app error: {error}")
    if len(record.errors) > 5:
        print(f"   ... {len(record.errors) - 5} more app errors")


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
    args = parser.parse_args()
    video_decoding_disable()
    with tempfile.TemporaryDirectory(prefix="parley-bench-agents-") as data_dir:
        # This process reads and writes the server's database too (set-up, then the stored events).
        os.environ.update({**server_environment(data_dir), **SERVER_ENVIRONMENT})
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
        processes, base_url = start_server(data_dir, environment=SERVER_ENVIRONMENT)
        (server,) = processes
        try:
            print(
                f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; one Daphne process"
                f" (SQLite, in-memory channel layer); {args.calls} live calls (aiortc, this process),"
                f" one app (Parley's Python client, its own process); {args.questions} typed questions a call,"
                f" then each persona says a line every {args.say_every:g} s for {args.seconds:g} s",
                flush=True,
            )
            try:
                record, clock, audio = asyncio.run(run(base_url, server.pid, args))
            except (AssertionError, TimeoutError) as failure:
                raise SystemExit(f"FAILED: {failure}\nserver log:\n{server_log_tail(data_dir)}") from None
            report(args, stored_events(), record, clock, audio)
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except Exception:
                server.kill()
            connections.close_all()


if __name__ == "__main__":
    main()
