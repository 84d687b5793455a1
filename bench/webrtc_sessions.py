"""Benchmark of the speaking persona over real WebRTC, against a real Daphne process.

Prints, for 1, 4, 8 and 16 simultaneous sessions (or `--sessions 1,2`), served by one Daphne
process or by `--workers N`:
- session start to first video frame (the SDK's click-to-first-frame, minus the browser) and
  typed message to first reply audio, for the N-1 sessions that start at once (a burst: the
  worst case) and for the last one, which joins while the others talk (a visitor arriving at
  a server that holds N-1 calls),
- audio and video frames per second received per stream while everyone talks,
- the server process's CPU (percent of one core), that of its event-loop thread alone (at
  ~100 % the process is saturated, whatever its total says), and CPU milliseconds per
  session-second (the figure least disturbed by other work on the machine),
- the machine's 1-minute load average when the round was measured.

`--recording on|off|both` records the calls (the demo persona's `recording_enabled`) or not;
`both` runs each round twice, without then with, so that the CPU a recording costs per session
is the difference of the two rows (its encoding threads are in the server's CPU). `--microphone`
has every client send room noise (so the visitor's side of a recording is not empty).

`--profile DIR` samples the server with py-spy during each measured window.

`--memory 100` measures memory instead: the server's RSS (and with its worker processes) idle,
with `--concurrent` calls (8) held open at once (MB per session), and after 10, 25, 50 and 100
whole calls (greeted, one question answered), to show whether it stays flat.

It starts its own server on a throwaway SQLite database with the demo data, so it needs
nothing running: `python bench/webrtc_sessions.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webrtc_client import ParleyWebRTCClient, video_decoding_disable  # noqa: E402

DEMO_KEY = "prl_bench000_benchmark-key-not-secret-000000"
QUESTION = "What are your opening hours?"
LONG_QUESTION = "Tell me about your cakes and your prices, please."
# How long every session keeps talking while frame rates and CPU are measured, in seconds.
MEASURE_SECONDS = 10.0
SERVER_START_TIMEOUT_SECONDS = 60.0
# With --memory, calls after the first rounds run this many at a time.
MEMORY_BATCH = 4
DEMO_PERSONA_SLUG = "mara"
# --microphone: the clients' room noise, of full scale (about -50 dBFS: no speech for the VAD).
MICROPHONE_NOISE_RMS = 100.0


class RoomNoiseMicrophone(MediaStreamTrack):
    """A visitor's microphone in a quiet room: 20 ms frames of low noise, in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._noise = np.random.default_rng(3).normal(0, MICROPHONE_NOISE_RMS, 48_000).astype(np.int16)
        self._sent = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        self._start = self._start or now
        delay = self._start + self._sent / 48_000 - now
        if delay > 0:
            await asyncio.sleep(delay)
        at = self._sent % (self._noise.size - 960)
        frame = av.AudioFrame.from_ndarray(
            self._noise[at : at + 960].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = 48_000, self._sent
        frame.time_base = Fraction(1, 48_000)
        self._sent += 960
        return frame


def persona_recording_set(data_dir: str, on: bool) -> None:
    """Record the demo persona's calls, or not, from the next session on."""
    code = (
        "from personas.models import Persona;"
        f"Persona.objects.filter(slug={DEMO_PERSONA_SLUG!r}).update(recording_enabled={on})"
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=server_environment(data_dir),
        check=True,
        capture_output=True,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_environment(data_dir: str) -> dict[str, str]:
    return {
        "MALLOC_ARENA_MAX": "2",  # as scripts/serve runs the server
        **os.environ,
        "DJANGO_DEBUG": "1",
        "PARLEY_DATA_DIR": data_dir,
        "PARLEY_DEMO_API_KEY": DEMO_KEY,
        "PARLEY_ICE_LOOPBACK_ONLY": "1",
        "PARLEY_DEFAULT_MAX_CONCURRENT_SESSIONS": "100",
        "PARLEY_SESSION_TOKEN_RATE": "1000/min",
        "PARLEY_LOG_LEVEL": os.environ.get("PARLEY_LOG_LEVEL", "WARNING"),
    }


def start_server(
    data_dir: str,
    workers: int = 1,
    *,
    application: str = "webapp.asgi:application",
    environment: dict[str, str] | None = None,
) -> tuple[list[subprocess.Popen[bytes]], str]:
    """`workers` Daphne processes (sessions spread over them, as `make run WORKERS=N`); the
    first one's URL is where sessions start.

    `application`: the ASGI application Daphne serves (a benchmark may wrap Parley's);
    `environment`: variables added to the server's (and its set-up commands') environment.
    """
    env = {**server_environment(data_dir), **(environment or {})}
    python = sys.executable
    for command in (["migrate", "--noinput"], ["seed_demo", "--quiet"]):
        subprocess.run([python, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True)
    ports = [free_port() for _ in range(workers)]
    if workers > 1:
        env["PARLEY_ENGINE_HOSTS"] = ",".join(f"127.0.0.1:{port}" for port in ports)
    processes = []
    for index, port in enumerate(ports):
        # The server's log goes to a file: an unread pipe fills up and then blocks the server.
        log = open(Path(data_dir) / ("server.log" if index == 0 else f"server-{index}.log"), "wb")
        processes.append(
            subprocess.Popen(
                [
                    python,
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "--access-log",
                    "/dev/null",
                    application,
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        )
    started = time.monotonic()
    deadline = started + SERVER_START_TIMEOUT_SECONDS
    waiting = list(ports)
    # Each process answers /healthz at once and warms up meanwhile (calls.warmup); sessions
    # start once it is done, as behind a balancer that waits for it.
    while waiting and time.monotonic() < deadline:
        try:
            response = httpx.get(f"http://127.0.0.1:{waiting[0]}/healthz", timeout=1)
            if response.status_code == 200 and response.json().get("warmUp") != "running":
                waiting.pop(0)
                continue
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    if waiting:
        for process in processes:
            process.kill()
        raise SystemExit(f"the server did not start: {server_log_tail(data_dir)}")
    print(f"server started and warmed up in {time.monotonic() - started:.1f} s")
    return processes, f"http://127.0.0.1:{ports[0]}"


def server_log_tail(data_dir: str, lines: int = 40) -> str:
    path = Path(data_dir) / "server.log"
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of every thread of a process, by thread id (the main thread's id is `pid`)."""
    seconds: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def profile_start(pid: int, seconds: float, output: Path, flags: list[str]) -> subprocess.Popen[bytes]:
    """py-spy, sampling the server for the measured window (collapsed stacks, with thread ids)."""
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [
            str(spy),
            "record",
            *flags,
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(output.with_suffix(".log"), "wb"),
    )


async def mint(http: httpx.AsyncClient) -> str:
    response = await http.post(
        "/v1/auth/session-token",
        json={"personaConfig": {"personaId": "mara"}},
        headers={"Authorization": f"Bearer {DEMO_KEY}"},
    )
    response.raise_for_status()
    return response.json()["sessionToken"]


async def one_session(
    base_url: str,
    token: str,
    ready: list[str],
    busy: asyncio.Event,
    measure_start: asyncio.Event,
    results: list[dict],
    measure_seconds: float,
    *,
    joiner: bool = False,
    microphone: bool = False,
) -> None:
    async with ParleyWebRTCClient(
        base_url=base_url,
        session_token=token,
        step_timeout_seconds=60,
        microphone=RoomNoiseMicrophone() if microphone else None,
    ) as client:
        record = client.record
        await client.wait_for(lambda: bool(record.video_frames), "the first video frame")
        first_frame_ms = (record.video_frames[0] - record.started_at) * 1000
        steps = {
            name: (moment - record.started_at) * 1000
            for name, moment in sorted(
                [*record.steps.items(), ("first frame", record.video_frames[0])], key=lambda item: item[1]
            )
        }
        await client.wait_for(lambda: record.persona_finished_count() >= 1, "the greeting")
        await asyncio.sleep(0.3)
        asked = client.ask(QUESTION)
        await client.wait_for(lambda: any(t > asked for t in record.loud_audio_frames), "reply audio")
        reply_ms = (next(t for t in record.loud_audio_frames if t > asked) - asked) * 1000
        ready.append(record.session_id)
        # Everyone talks while the last session joins and while the rates are measured.
        await busy.wait()
        await asyncio.sleep(0.5)
        client.ask(LONG_QUESTION)
        await measure_start.wait()
        window_start = time.monotonic()
        await asyncio.sleep(measure_seconds)
        window_end = time.monotonic()
        audio = sum(1 for t in record.audio_frames if window_start <= t < window_end)
        video = sum(1 for t in record.video_frames if window_start <= t < window_end)
        results.append(
            {
                "joiner": joiner,
                "steps": steps,
                "first_frame_ms": first_frame_ms,
                "reply_ms": reply_ms,
                "audio_fps": audio / (window_end - window_start),
                "video_fps": video / (window_end - window_start),
            }
        )


async def run_round(
    base_url: str,
    pids: list[int],
    count: int,
    measure_seconds: float,
    profile_dir: Path | None,
    profile_flags: list[str],
    *,
    microphone: bool = False,
) -> dict[str, float]:
    """`count - 1` sessions start at once (a burst); while they talk, one more joins; then all
    `count` are measured together."""
    async with httpx.AsyncClient(base_url=base_url) as http:
        tokens = [await mint(http) for _ in range(count)]
    busy, measure_start = asyncio.Event(), asyncio.Event()
    ready: list[str] = []
    results: list[dict] = []

    def session(token: str, joiner: bool) -> asyncio.Future[None]:
        return asyncio.ensure_future(
            one_session(
                base_url,
                token,
                ready,
                busy,
                measure_start,
                results,
                measure_seconds,
                joiner=joiner,
                microphone=microphone,
            )
        )

    async def until_ready(number: int, tasks: list[asyncio.Future[None]]) -> None:
        while len(ready) < number and not any(task.done() for task in tasks):  # noqa: ASYNC110 (a bench poll)
            await asyncio.sleep(0.2)
        failures = [task.exception() for task in tasks if task.done() and task.exception() is not None]
        if failures:
            # The others are stopped here, with a limit: a peer connection torn down mid-setup
            # can take long to close, and asyncio.run would wait for it forever.
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=10)
            raise AssertionError(f"{len(failures)} session(s) failed: {failures[0]!r}")

    tasks = [session(token, False) for token in tokens[:-1]]
    await until_ready(count - 1, tasks)
    busy.set()
    await asyncio.sleep(1.0)  # the burst's sessions are answering their long question
    tasks.append(session(tokens[-1], True))
    await until_ready(count, tasks)
    await asyncio.sleep(0.6)  # the joiner asks its long question too
    load_before = os.getloadavg()[0]
    profiler = None
    if profile_dir is not None:
        profiler = profile_start(pids[0], measure_seconds, profile_dir / f"server-{count}.txt", profile_flags)
    threads_before = {pid: thread_cpu_seconds(pid) for pid in pids}
    client_before = cpu_seconds(os.getpid())
    wall_before = time.monotonic()
    measure_start.set()
    await asyncio.gather(*tasks, return_exceptions=False)
    threads_after = {pid: thread_cpu_seconds(pid) for pid in pids}
    client_after = cpu_seconds(os.getpid())
    wall = time.monotonic() - wall_before
    if profiler is not None:
        profiler.wait()
    server_seconds = sum(
        sum(after.values())
        - sum(seconds for thread, seconds in threads_before[pid].items() if thread in after)
        for pid, after in threads_after.items()
    )
    # The busiest process's event loop: at ~100 % it is saturated whatever the total says.
    loop_seconds = max(threads_after[pid].get(pid, 0.0) - threads_before[pid].get(pid, 0.0) for pid in pids)

    def pick(name: str, *, burst: bool | None = None) -> list[float]:
        return sorted(result[name] for result in results if burst is None or result["joiner"] is not burst)

    burst_first_frames = pick("first_frame_ms", burst=True) or [float("nan")]
    burst_replies = pick("reply_ms", burst=True) or [float("nan")]
    (join_first_frame,) = pick("first_frame_ms", burst=False)
    (join_reply,) = pick("reply_ms", burst=False)
    (join_steps,) = [result["steps"] for result in results if result["joiner"]]
    burst_steps = [result["steps"] for result in results if not result["joiner"]]
    return {
        "join_steps": join_steps,
        # Each connection step's median over the burst's sessions (in the joiner's order).
        "burst_steps": {
            name: statistics.median(steps[name] for steps in burst_steps if name in steps)
            for name in join_steps
            if any(name in steps for steps in burst_steps)
        },
        "sessions": count,
        "load": load_before,
        "first_frame_ms_median": statistics.median(burst_first_frames),
        "first_frame_ms_max": max(burst_first_frames),
        "first_frame_ms_join": join_first_frame,
        "reply_ms_median": statistics.median(burst_replies),
        "reply_ms_max": max(burst_replies),
        "reply_ms_join": join_reply,
        "audio_fps_min": min(pick("audio_fps")),
        "audio_fps_median": statistics.median(pick("audio_fps")),
        "video_fps_min": min(pick("video_fps")),
        "video_fps_median": statistics.median(pick("video_fps")),
        "server_cpu_percent": server_seconds / wall * 100,
        "loop_cpu_percent": loop_seconds / wall * 100,
        # Milliseconds of server CPU per second of one session: robust to a busy machine.
        "cpu_ms_per_session_second": server_seconds / wall / count * 1000,
        "client_cpu_percent": (client_after - client_before) / wall * 100,
    }


# --- Memory (--memory N) ---------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident memory of one process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the recogniser's and the encoder's worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def memory_now(pid: int) -> tuple[float, float]:
    """(the server process's RSS, that of it and its workers), in MB."""
    tree = 0.0
    for member in process_tree(pid):
        try:
            tree += rss_mb(member)
        except OSError:
            pass
    return rss_mb(pid), tree


async def talked_session(
    base_url: str,
    http: httpx.AsyncClient,
    hold: asyncio.Event | None = None,
    answered: list[str] | None = None,
) -> None:
    """A whole call: greeted, one typed question answered aloud; then, with `hold`, it stays open
    (its id in `answered`) until `hold` is set."""
    token = await mint(http)
    async with ParleyWebRTCClient(base_url=base_url, session_token=token, step_timeout_seconds=60) as client:
        record = client.record
        await client.wait_for(lambda: record.persona_finished_count() >= 1, "the greeting")
        asked = client.ask(QUESTION)
        await client.wait_for(lambda: any(t > asked for t in record.loud_audio_frames), "reply audio")
        if hold is not None and answered is not None:
            answered.append(record.session_id)
            await hold.wait()


async def settled_memory(pid: int, seconds: float = 3.0) -> tuple[float, float]:
    """Memory once the calls that just ended are gone (their ends stored, their tasks done)."""
    await asyncio.sleep(seconds)
    return memory_now(pid)


async def memory_rounds(base_url: str, pid: int, total: int, concurrent: int) -> None:
    """Memory per session (`concurrent` calls held open at once) and after `total` calls."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        await talked_session(base_url, http)  # what the first call loads lazily is not a session's
        idle, idle_tree = await settled_memory(pid)
        print(f"idle after one call: server {idle:.0f} MB, with its workers {idle_tree:.0f} MB", flush=True)

        hold, answered = asyncio.Event(), []
        held = [
            asyncio.ensure_future(talked_session(base_url, http, hold, answered)) for _ in range(concurrent)
        ]
        while len(answered) < concurrent:
            failed = [task for task in held if task.done()]
            if failed:
                await failed[0]  # raises what went wrong
            await asyncio.sleep(0.2)
        during, during_tree = memory_now(pid)
        hold.set()
        await asyncio.gather(*held)
        print(
            f"{concurrent} calls at once: server {during:.0f} MB, with its workers {during_tree:.0f} MB:"
            f" {(during - idle) / concurrent:.1f} MB per session"
            f" ({(during_tree - idle_tree) / concurrent:.1f} with the workers)",
            flush=True,
        )

        done = 1 + concurrent
        marks = sorted({10, 25, 50, total})
        first = last = None
        while done < total:
            batch = min(MEMORY_BATCH, total - done)
            await asyncio.gather(*(talked_session(base_url, http) for _ in range(batch)))
            done += batch
            if any(done - batch < mark <= done for mark in marks):
                last, last_tree = await settled_memory(pid)
                first = last if first is None else first
                print(
                    f"after {done:>3} calls: server {last:.0f} MB, with its workers {last_tree:.0f} MB"
                    f" ({last - idle:+.0f} MB since idle)",
                    flush=True,
                )
        if first is not None and last is not None:
            print(f"growth from the first mark to {done} calls: {last - first:+.0f} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", default="1,4,8,16", help="comma-separated session counts")
    parser.add_argument(
        "--memory",
        type=int,
        metavar="N",
        help="instead of the rounds: memory per session (--concurrent calls held at once) and the"
        " server's RSS after N calls, 4 at a time (aim: <= 25 MB per session, flat after 100)",
    )
    parser.add_argument("--concurrent", type=int, default=8, help="calls held at once for --memory")
    parser.add_argument(
        "--seconds", type=float, default=MEASURE_SECONDS, help="length of each measured window"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Daphne processes, sessions spread over them (as `make run WORKERS=N`); default 1",
    )
    parser.add_argument(
        "--decode-video",
        action="store_true",
        help="decode the received video too (by default frames are counted, not decoded, so the "
        "client leaves the shared cores to the server)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="sample the server with py-spy during each measured window (needs `pip install py-spy`"
        " in the venv; Linux may need ptrace permission); collapsed stacks go to DIR/server-N.txt",
    )
    parser.add_argument(
        "--profile-flags",
        default="--idle",
        help="extra py-spy record flags: '--idle' (default) shows where threads wait too, '' only "
        "what runs, '--gil' only what holds the GIL",
    )
    parser.add_argument(
        "--recording",
        choices=("on", "off", "both"),
        default="off",
        help="record the calls (the demo persona's setting), not, or each round both ways; default off",
    )
    parser.add_argument(
        "--microphone", action="store_true", help="every client sends room noise as its microphone"
    )
    args = parser.parse_args()
    if not args.decode_video:
        video_decoding_disable()
    os.environ.setdefault("PARLEY_ICE_LOOPBACK_ONLY", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("PARLEY_LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from calls.live import ice_address_policy_apply, ice_consent_policy_apply

    ice_address_policy_apply()
    ice_consent_policy_apply()  # a client on a loaded machine answers consent checks late too
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as data_dir:
        processes, base_url = start_server(data_dir, args.workers)
        pids = [process.pid for process in processes]
        try:
            print(
                f"server {base_url} ({len(pids)} Daphne process(es), pids {pids}); {os.cpu_count()} cores;"
                f" {args.seconds:.0f} s windows; load average now {os.getloadavg()[0]:.2f}"
            )
            if args.memory:
                persona_recording_set(data_dir, args.recording == "on")
                asyncio.run(memory_rounds(base_url, pids[0], args.memory, args.concurrent))
                return
            print(
                "In each round N-1 sessions start at once (burst), then one more joins while they talk;"
                " rates are measured with all N."
            )
            print(
                "rec  sessions  load  first-frame ms       reply-audio ms       audio fps   video fps  "
                "server CPU %  busiest loop %  CPU ms per  client"
            )
            print(
                "                       (burst med/max; join)  (burst med/max; join) (min / med) (min / med)  "
                "(total)                       session-s   CPU %"
            )
            recording_modes = {"on": [True], "off": [False], "both": [False, True]}[args.recording]
            rounds = [(int(part), rec) for part in args.sessions.split(",") for rec in recording_modes]
            for count, recording in rounds:
                persona_recording_set(data_dir, recording)
                try:
                    row = asyncio.run(
                        run_round(
                            base_url,
                            pids,
                            count,
                            args.seconds,
                            profile_dir,
                            args.profile_flags.split(),
                            microphone=args.microphone,
                        )
                    )
                except (AssertionError, TimeoutError) as failure:
                    print(
                        f"{count:>8}  FAILED: {failure}\nserver log:\n{server_log_tail(data_dir)}", flush=True
                    )
                    continue
                print(
                    f"{'on' if recording else 'off':<3}  {row['sessions']:>8}  {row['load']:>4.1f}"
                    f"  {row['first_frame_ms_median']:>5.0f}/{row['first_frame_ms_max']:<5.0f}; {row['first_frame_ms_join']:>5.0f}"
                    f"  {row['reply_ms_median']:>5.0f}/{row['reply_ms_max']:<5.0f}; {row['reply_ms_join']:>5.0f}"
                    f"  {row['audio_fps_min']:>4.1f} / {row['audio_fps_median']:<4.1f}"
                    f"  {row['video_fps_min']:>4.1f} / {row['video_fps_median']:<4.1f}"
                    f"  {row['server_cpu_percent']:>7.0f}"
                    f"  {row['loop_cpu_percent']:>13.0f}"
                    f"  {row['cpu_ms_per_session_second']:>10.0f}"
                    f"  {row['client_cpu_percent']:>6.0f}",
                    flush=True,
                )
                print(
                    "          the joiner's first frame: "
                    + ", ".join(f"{name} {ms:.0f}" for name, ms in row["join_steps"].items())
                    + " ms",
                    flush=True,
                )
                if row["burst_steps"]:
                    print(
                        "          the burst's, median: "
                        + ", ".join(f"{name} {ms:.0f}" for name, ms in row["burst_steps"].items())
                        + " ms",
                        flush=True,
                    )
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    main()
