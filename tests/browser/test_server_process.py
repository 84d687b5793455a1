"""A real Daphne process with a live aiortc call, stopped as operators and crashes stop it.

- SIGTERM: the call ends cleanly (`endsession` to the client, `call.ended` stored as failed)
  and the process exits within its drain time, where it once waited forever on the call's
  threads and had to be killed.
- SIGKILL, then a restart: the call the dead process held is ended as failed by the new one at
  its start, and the dead process's worker processes do not outlive it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from bench.webrtc_client import ParleyWebRTCClient
from calls.models import Call, CallEvent, CallStatus
from tests.browser.conftest import LiveServer, daphne_start, free_port
from tests.browser.test_session_aiortc import bakery, mint  # noqa: F401  (a fixture)

DRAIN_SECONDS = 8.0
# What the test allows beyond the drain time for the process to be reaped and seen gone.
EXIT_SLACK_SECONDS = 3.0
# How long the restarted process may take to end the dead one's call (its first round).
ORPHAN_END_TIMEOUT_SECONDS = 20.0


def children_of(pid: int) -> set[int]:
    """The pids of `pid`'s child processes (Linux /proc)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            children.add(int(entry.name))
    return children


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


async def live_call(server: LiveServer, token: str, then) -> ParleyWebRTCClient:
    """A call that has been greeted; `then(client)` runs while it is live."""
    async with ParleyWebRTCClient(base_url=server.url, session_token=token) as client:
        record = client.record
        await client.wait_for(lambda: record.persona_finished_count() >= 1, "the greeting")
        await then(client)
    return client


def server_start(tmp_path: Path, name: str) -> LiveServer:
    return daphne_start(
        free_port(), tmp_path / f"{name}.log", extra_environment={"PARLEY_DRAIN_SECONDS": str(DRAIN_SECONDS)}
    )


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_sigterm_ends_the_live_call_cleanly_and_the_process_exits_within_the_drain_time(bakery, tmp_path):  # noqa: F811
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    server = server_start(tmp_path, "daphne")
    timings: dict[str, float] = {}
    try:

        async def terminate(client: ParleyWebRTCClient) -> None:
            timings["signalled"] = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            await client.wait_for(
                lambda: any(s["actionType"] == "endsession" for s in client.record.signals), "endsession"
            )

        client = asyncio.run(live_call(server, mint(server.url, bakery), terminate))
        server.process.wait(timeout=DRAIN_SECONDS + EXIT_SLACK_SECONDS)
        exited_after = time.monotonic() - timings["signalled"]
    finally:
        server.stop()
    print(f"exited {exited_after:.1f} s after SIGTERM (drain time {DRAIN_SECONDS:.0f} s)")
    assert server.process.returncode == 0, server.log()
    ended = next(s for s in client.record.signals if s["actionType"] == "endsession")
    assert "restarting" in str(ended["payload"]), ended
    call = Call.objects.get(pk=client.record.session_id)
    assert call.status == CallStatus.ENDED and call.end_reason == "failed"
    assert CallEvent.objects.filter(call=call, type="call.ended").count() == 1
    assert "draining" in server.log() or "drained" in server.log(), server.log()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_after_sigkill_the_restarted_process_ends_the_dead_ones_call_as_failed(bakery, tmp_path):  # noqa: F811
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    first = server_start(tmp_path, "first")
    workers: set[int] = set()
    try:

        async def kill(client: ParleyWebRTCClient) -> None:
            workers.update(children_of(first.process.pid))
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(timeout=10)
            await asyncio.sleep(0.5)

        client = asyncio.run(live_call(first, mint(first.url, bakery), kill))
    finally:
        first.stop()
    call = Call.objects.get(pk=client.record.session_id)
    if call.status == CallStatus.ENDED:
        # A server of another test sharing the database (PostgreSQL leg in CI) may see the pid
        # gone first: its housekeeper ends the call, and only ever as failed.
        assert call.end_reason == "failed", call.end_reason
    assert call.owner_id, "the call records the process that held it"

    deadline = time.monotonic() + 5.0
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if alive(pid)], f"the dead server's workers live on: {workers}"

    second = server_start(tmp_path, "second")
    try:
        deadline = time.monotonic() + ORPHAN_END_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            call.refresh_from_db()
            if call.status == CallStatus.ENDED:
                break
            time.sleep(0.3)
    finally:
        second.stop()
    assert call.status == CallStatus.ENDED and call.end_reason == "failed", second.log()
    assert CallEvent.objects.filter(call=call, type="call.ended").count() == 1
