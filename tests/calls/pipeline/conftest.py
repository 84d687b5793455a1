"""Fixtures of the pipeline tests: a running conversation loop on the demo persona."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.conversation_loop import Loop, loop_make


@pytest.fixture
async def loop_factory():
    loops: list[Loop] = []

    async def make(**overrides: Any) -> Loop:
        loops.append(await loop_make(**overrides))
        return loops[-1]

    yield make
    for loop in loops:
        await loop.stop()
