"""Benchmark of the speaking persona over real WebRTC, against a real Daphne process.

Prints, for 1, 4, 8 and 16 simultaneous sessions (or `--sessions 1,2`):
- session start to first video frame (the SDK's click-to-first-frame, minus the browser),
- typed message to first reply audio,
- audio and video frames per second received per stream while everyone talks,
- the server process's CPU (percent of one core), that of its event-loop thread alone (at
  ~100 % the process is saturated, whatever its total says), and CPU milliseconds per
  session-second (the figure least disturbed by other work on the machine),
- the machine's 1-minute load average when the round was measured.

`--profile DIR` samples the server with py-spy during each measured window.

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
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webrtc_client import ParleyWebRTCClient, video_decoding_disable  # noqa: E402

DEMO_KEY = "prl_bench000_benchmark-key-not-secret-000000"
QUESTION = "What are your opening hours?"
# How long every session keeps talking while frame rates and CPU are measured, in seconds.
MEASURE_SECONDS = 10.0
SERVER_START_TIMEOUT_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_environment(data_dir: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_DEBUG": "1",
        "PARLEY_DATA_DIR": data_dir,
        "PARLEY_DEMO_API_KEY": DEMO_KEY,
        "PARLEY_ICE_LOOPBACK_ONLY": "1",
        "PARLEY_DEFAULT_MAX_CONCURRENT_SESSIONS": "100",
        "PARLEY_SESSION_TOKEN_RATE": "1000/min",
        "PARLEY_LOG_LEVEL": "WARNING",
    }


def start_server(data_dir: str) -> tuple[subprocess.Popen[bytes], str]:
    env = server_environment(data_dir)
    python = sys.executable
    for command in (["migrate", "--noinput"], ["seed_demo", "--quiet"]):
        subprocess.run([python, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True)
    port = free_port()
    # The server's log goes to a file: an unread pipe fills up and then blocks the server.
    log = open(Path(data_dir) / "server.log", "wb")
    process = subprocess.Popen(
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
            "webapp.asgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return process, base_url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the server did not start: {server_log_tail(data_dir)}")


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
    measure_start: asyncio.Event,
    results: list[dict],
    measure_seconds: float,
) -> None:
    async with ParleyWebRTCClient(base_url=base_url, session_token=token, step_timeout_seconds=60) as client:
        record = client.record
        await client.wait_for(lambda: bool(record.video_frames), "the first video frame")
        first_frame_ms = (record.video_frames[0] - record.started_at) * 1000
        await client.wait_for(lambda: record.persona_finished_count() >= 1, "the greeting")
        await asyncio.sleep(0.3)
        asked = client.ask(QUESTION)
        await client.wait_for(lambda: any(t > asked for t in record.loud_audio_frames), "reply audio")
        reply_ms = (next(t for t in record.loud_audio_frames if t > asked) - asked) * 1000
        ready.append(record.session_id)
        await measure_start.wait()
        window_start = time.monotonic()
        client.ask("Tell me about your cakes and your prices, please.")
        await asyncio.sleep(measure_seconds)
        window_end = time.monotonic()
        audio = sum(1 for t in record.audio_frames if window_start <= t < window_end)
        video = sum(1 for t in record.video_frames if window_start <= t < window_end)
        results.append(
            {
                "first_frame_ms": first_frame_ms,
                "reply_ms": reply_ms,
                "audio_fps": audio / (window_end - window_start),
                "video_fps": video / (window_end - window_start),
            }
        )


async def run_round(
    base_url: str,
    pid: int,
    count: int,
    measure_seconds: float,
    profile_dir: Path | None,
    profile_flags: list[str],
) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base_url) as http:
        tokens = [await mint(http) for _ in range(count)]
    measure_start = asyncio.Event()
    ready: list[str] = []
    results: list[dict] = []
    tasks = [
        asyncio.ensure_future(one_session(base_url, token, ready, measure_start, results, measure_seconds))
        for token in tokens
    ]
    # Every session connects and gets its first answer; then all are measured together.
    while len(ready) < count and not any(task.done() for task in tasks):  # noqa: ASYNC110 (a bench poll)
        await asyncio.sleep(0.2)
    load_before = os.getloadavg()[0]
    profiler = None
    if profile_dir is not None:
        profiler = profile_start(pid, measure_seconds, profile_dir / f"server-{count}.txt", profile_flags)
    threads_before, client_before = thread_cpu_seconds(pid), cpu_seconds(os.getpid())
    wall_before = time.monotonic()
    measure_start.set()
    await asyncio.gather(*tasks, return_exceptions=False)
    threads_after, client_after = thread_cpu_seconds(pid), cpu_seconds(os.getpid())
    wall = time.monotonic() - wall_before
    if profiler is not None:
        profiler.wait()
    server_seconds = sum(threads_after.values()) - sum(
        seconds for thread, seconds in threads_before.items() if thread in threads_after
    )
    loop_seconds = threads_after.get(pid, 0.0) - threads_before.get(pid, 0.0)

    def pick(name: str) -> list[float]:
        return sorted(result[name] for result in results)

    return {
        "sessions": count,
        "load": load_before,
        "first_frame_ms_median": statistics.median(pick("first_frame_ms")),
        "first_frame_ms_max": max(pick("first_frame_ms")),
        "reply_ms_median": statistics.median(pick("reply_ms")),
        "reply_ms_max": max(pick("reply_ms")),
        "audio_fps_min": min(pick("audio_fps")),
        "audio_fps_median": statistics.median(pick("audio_fps")),
        "video_fps_min": min(pick("video_fps")),
        "video_fps_median": statistics.median(pick("video_fps")),
        "server_cpu_percent": server_seconds / wall * 100,
        # The event loop's own thread: at ~100 % the process is saturated whatever the total says.
        "loop_cpu_percent": loop_seconds / wall * 100,
        # Milliseconds of server CPU per second of one session: robust to a busy machine.
        "cpu_ms_per_session_second": server_seconds / wall / count * 1000,
        "client_cpu_percent": (client_after - client_before) / wall * 100,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", default="1,4,8,16", help="comma-separated session counts")
    parser.add_argument(
        "--seconds", type=float, default=MEASURE_SECONDS, help="length of each measured window"
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
    args = parser.parse_args()
    if not args.decode_video:
        video_decoding_disable()
    os.environ.setdefault("PARLEY_ICE_LOOPBACK_ONLY", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("PARLEY_LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as data_dir:
        process, base_url = start_server(data_dir)
        try:
            print(
                f"server {base_url} (pid {process.pid}); {os.cpu_count()} cores; {args.seconds:.0f} s windows;"
                f" load average now {os.getloadavg()[0]:.2f}"
            )
            print(
                "sessions  load  first-frame ms  reply-audio ms  audio fps   video fps  "
                "server CPU %   loop thread %  CPU ms per  client"
            )
            print(
                "                   (med / max)     (med / max)  (min / med) (min / med)  "
                "(total)                         session-s   CPU %"
            )
            for count in [int(part) for part in args.sessions.split(",")]:
                try:
                    row = asyncio.run(
                        run_round(
                            base_url,
                            process.pid,
                            count,
                            args.seconds,
                            profile_dir,
                            args.profile_flags.split(),
                        )
                    )
                except AssertionError as failure:
                    print(
                        f"{count:>8}  FAILED: {failure}\nserver log:\n{server_log_tail(data_dir)}", flush=True
                    )
                    continue
                print(
                    f"{row['sessions']:>8}  {row['load']:>4.1f}"
                    f"  {row['first_frame_ms_median']:>5.0f} / {row['first_frame_ms_max']:<5.0f}"
                    f"  {row['reply_ms_median']:>5.0f} / {row['reply_ms_max']:<5.0f}"
                    f"  {row['audio_fps_min']:>4.1f} / {row['audio_fps_median']:<4.1f}"
                    f"  {row['video_fps_min']:>4.1f} / {row['video_fps_median']:<4.1f}"
                    f"  {row['server_cpu_percent']:>7.0f}"
                    f"  {row['loop_cpu_percent']:>13.0f}"
                    f"  {row['cpu_ms_per_session_second']:>10.0f}"
                    f"  {row['client_cpu_percent']:>6.0f}",
                    flush=True,
                )
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
