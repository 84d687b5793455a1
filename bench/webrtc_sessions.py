"""Benchmark of the speaking persona over real WebRTC, against a real Daphne process.

Prints, for 1, 4, 8 and 16 simultaneous sessions (or `--sessions 1,2`):
- session start to first video frame (the SDK's click-to-first-frame, minus the browser),
- typed message to first reply audio,
- audio and video frames per second received per stream while everyone talks,
- the server process's CPU (percent of one core) per session.

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


async def mint(http: httpx.AsyncClient) -> str:
    response = await http.post(
        "/v1/auth/session-token",
        json={"personaConfig": {"personaId": "mara"}},
        headers={"Authorization": f"Bearer {DEMO_KEY}"},
    )
    response.raise_for_status()
    return response.json()["sessionToken"]


async def one_session(
    base_url: str, token: str, ready: list[str], measure_start: asyncio.Event, results: list[dict]
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
        await asyncio.sleep(MEASURE_SECONDS)
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


async def run_round(base_url: str, pid: int, count: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base_url) as http:
        tokens = [await mint(http) for _ in range(count)]
    measure_start = asyncio.Event()
    ready: list[str] = []
    results: list[dict] = []
    tasks = [
        asyncio.ensure_future(one_session(base_url, token, ready, measure_start, results)) for token in tokens
    ]
    # Every session connects and gets its first answer; then all are measured together.
    while len(ready) < count and not any(task.done() for task in tasks):  # noqa: ASYNC110 (a bench poll)
        await asyncio.sleep(0.2)
    cpu_before, client_before, wall_before = cpu_seconds(pid), cpu_seconds(os.getpid()), time.monotonic()
    measure_start.set()
    await asyncio.gather(*tasks, return_exceptions=False)
    cpu_after, client_after, wall_after = cpu_seconds(pid), cpu_seconds(os.getpid()), time.monotonic()
    cpu_percent = (cpu_after - cpu_before) / (wall_after - wall_before) * 100
    client_cpu_percent = (client_after - client_before) / (wall_after - wall_before) * 100

    def pick(name: str) -> list[float]:
        return sorted(result[name] for result in results)

    return {
        "sessions": count,
        "first_frame_ms_median": statistics.median(pick("first_frame_ms")),
        "first_frame_ms_max": max(pick("first_frame_ms")),
        "reply_ms_median": statistics.median(pick("reply_ms")),
        "reply_ms_max": max(pick("reply_ms")),
        "audio_fps_min": min(pick("audio_fps")),
        "audio_fps_median": statistics.median(pick("audio_fps")),
        "video_fps_min": min(pick("video_fps")),
        "server_cpu_percent": cpu_percent,
        "server_cpu_percent_per_session": cpu_percent / count,
        "client_cpu_percent": client_cpu_percent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", default="1,4,8,16", help="comma-separated session counts")
    parser.add_argument(
        "--decode-video",
        action="store_true",
        help="decode the received video too (by default frames are counted, not decoded, so the "
        "client leaves the shared cores to the server)",
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
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as data_dir:
        process, base_url = start_server(data_dir)
        try:
            print(
                f"server {base_url} (pid {process.pid}); {os.cpu_count()} cores; {MEASURE_SECONDS:.0f} s windows"
            )
            header = (
                "sessions  first-frame ms (med/max)  reply-audio ms (med/max)  audio fps (min/med)"
                "  video fps (min)  server CPU % (total / per session)  client CPU %"
            )
            print(header)
            for count in [int(part) for part in args.sessions.split(",")]:
                try:
                    row = asyncio.run(run_round(base_url, process.pid, count))
                except AssertionError as failure:
                    print(
                        f"{count:>8}  FAILED: {failure}\nserver log:\n{server_log_tail(data_dir)}", flush=True
                    )
                    continue
                print(
                    f"{row['sessions']:>8}  {row['first_frame_ms_median']:>10.0f} / {row['first_frame_ms_max']:<10.0f}"
                    f"  {row['reply_ms_median']:>10.0f} / {row['reply_ms_max']:<10.0f}"
                    f"  {row['audio_fps_min']:>7.1f} / {row['audio_fps_median']:<7.1f}"
                    f"  {row['video_fps_min']:>13.1f}"
                    f"  {row['server_cpu_percent']:>8.0f} / {row['server_cpu_percent_per_session']:<12.1f}"
                    f"  {row['client_cpu_percent']:>5.0f}",
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
