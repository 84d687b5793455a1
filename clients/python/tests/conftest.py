"""Fixtures: a fake Parley on a random local port, and clients with short timeouts pointed at it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fake_parley import API_KEY, FakeParley

from parley_agent import Agent

# Short enough for quick tests, long enough for a loaded 2-core machine.
TEST_COMMAND_TIMEOUT = 2.0
WAIT_SECONDS = 5.0


@pytest.fixture
async def fake() -> AsyncIterator[FakeParley]:
    server = FakeParley()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def make_agent(fake: FakeParley) -> Callable[..., Agent]:
    def make(**options: Any) -> Agent:
        settings: dict[str, Any] = {
            "api_key": API_KEY,
            "agents": ["mara"],
            "answer": True,
            "command_timeout": TEST_COMMAND_TIMEOUT,
            "reconnect_wait": WAIT_SECONDS,
            "backoff_first": 0.05,
            "backoff_max": 0.2,
        }
        settings.update(options)
        return Agent(fake.url, **settings)

    return make


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[asyncio.Task[None]]:
    """Run the agent in a task until the block ends, and wait until it has subscribed."""
    task = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: agent.connected or task.done())
        yield task
    finally:
        agent.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, WAIT_SECONDS)


async def wait_until(predicate: Callable[[], Any], seconds: float = WAIT_SECONDS) -> None:
    """Poll a condition on plain objects (nothing to await there), failing after `seconds`."""
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 - a predicate, not an event
            await asyncio.sleep(0.01)


def event_data(call_id: str = "CA1", **fields: Any) -> dict[str, Any]:
    return {"callId": call_id, "agent": "mara", **fields}
