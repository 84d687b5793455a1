"""ICE consent freshness (RFC 7675) as Parley applies it to aioice: late answers still count.

Two real aioice connections over loopback UDP. The shortened intervals are the only change
from production: the checks, their STUN transactions and the closing are aioice's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aioice.ice
import pytest
from aioice import Connection

from calls import live


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.fixture
def parley_consent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice.Connection, "query_consent", aioice.ice.Connection.query_consent)
    live.ice_consent_policy_apply()


async def connected_pair() -> tuple[Connection, Connection]:
    controlling, controlled = Connection(ice_controlling=True), Connection(ice_controlling=False)
    for local in (controlling, controlled):
        await local.gather_candidates()
    for local, remote in ((controlling, controlled), (controlled, controlling)):
        for candidate in remote.local_candidates:
            await local.add_remote_candidate(candidate)
        await local.add_remote_candidate(None)
        local.remote_username, local.remote_password = remote.local_username, remote.local_password
    await asyncio.wait_for(asyncio.gather(controlling.connect(), controlled.connect()), 10)
    return controlling, controlled


def answers_delayed(connection: Connection, seconds: float | None) -> None:
    """The connection answers STUN checks `seconds` late (as a lagging event loop does), or
    never (None)."""
    answer = connection.request_received
    loop = asyncio.get_running_loop()

    def request_received(message: Any, addr: Any, protocol: Any) -> None:
        if seconds is not None:
            loop.call_later(seconds, answer, message, addr, protocol)

    connection.request_received = request_received  # type: ignore[method-assign]


async def test_consent_answered_late_again_and_again_keeps_the_connection(
    loopback_only: None, parley_consent: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "ICE_CONSENT_INTERVAL_SECONDS", 0.05)
    monkeypatch.setattr(live, "ICE_CONSENT_EXPIRY_SECONDS", 2.0)
    controlling, controlled = await connected_pair()
    try:
        answers_delayed(controlled, 0.7)  # each answer later than aioice's 0.5 s timeout
        # aioice alone closes after 6 late answers in a row (~3.6 s at this interval).
        await asyncio.sleep(4.5)
        assert not controlling._closed
        assert controlling._query_consent_task is not None and not controlling._query_consent_task.done()
        await controlling.send(b"still here")
        assert await asyncio.wait_for(controlled.recv(), 2) == b"still here"
    finally:
        await controlling.close()
        await controlled.close()


async def test_consent_never_answered_expires_and_closes_the_connection(
    loopback_only: None, parley_consent: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "ICE_CONSENT_INTERVAL_SECONDS", 0.05)
    monkeypatch.setattr(live, "ICE_CONSENT_EXPIRY_SECONDS", 1.0)
    monkeypatch.setattr(live, "ICE_CONSENT_RETRANSMISSIONS", 0)
    controlling, controlled = await connected_pair()
    try:
        answers_delayed(controlled, None)
        for _ in range(50):
            if controlling._closed:
                break
            await asyncio.sleep(0.1)
        assert controlling._closed
    finally:
        await controlling.close()
        await controlled.close()
