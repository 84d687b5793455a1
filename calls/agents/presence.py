"""Which apps answer which personas' turns now: a short-lived register in the cache.

An app that subscribes with `answer: true` is entered for its personas (or for all of its
organization's) and refreshes its entry while connected; an entry it stops refreshing (its
process died) lapses after `ENTRY_SECONDS`. Live sessions read it about once a second. The
cache is the local-memory one embedded and Redis in production, so every Daphne process sees
the same register. A stale "yes" costs a turn the app's answer timeout, never an answer: the
brain answers when the app does not.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from django.core.cache import cache

logger = logging.getLogger(__name__)

# An entry lapses this long after its last refresh (seconds); apps refresh every third of it.
ENTRY_SECONDS = 30.0
REFRESH_SECONDS = ENTRY_SECONDS / 3
ALL_PERSONAS = "*"
# A persona's register is read, changed and written under a lock (`cache.add`, atomic in Redis
# and in local memory), so two apps entering at once both count. The lock lapses after
# LOCK_SECONDS (its holder died); a writer that waited LOCK_WAIT_SECONDS for it writes anyway,
# as the next refresh repairs a lost entry. Both in seconds.
LOCK_SECONDS = 5
LOCK_WAIT_SECONDS = 1.0
LOCK_RETRY_SECONDS = 0.01


def _key(organization_id: int, slug: str) -> str:
    return f"parley:agents:answering:{organization_id}:{slug}"


@asynccontextmanager
async def _locked(key: str) -> AsyncIterator[None]:
    lock, token = f"{key}:lock", secrets.token_hex(8)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    held = False
    while not (held := await cache.aadd(lock, token, timeout=LOCK_SECONDS)):
        if time.monotonic() > deadline:
            logger.warning("the answering register %s stayed locked; writing without the lock", key)
            break
        await asyncio.sleep(LOCK_RETRY_SECONDS)
    try:
        yield
    finally:
        if held and await cache.aget(lock) == token:
            await cache.adelete(lock)


async def answerer_enter(*, organization_id: int, agents: list[str] | None, app_id: str) -> None:
    """Enter (or refresh) this app as answering these personas' turns (None: all of them)."""
    expires = time.time() + ENTRY_SECONDS
    for slug in agents or [ALL_PERSONAS]:
        key = _key(organization_id, slug)
        async with _locked(key):
            entries = _live_entries(await cache.aget(key))
            entries[app_id] = expires
            await cache.aset(key, entries, timeout=int(ENTRY_SECONDS) + 5)


async def answerer_leave(*, organization_id: int, agents: list[str] | None, app_id: str) -> None:
    for slug in agents or [ALL_PERSONAS]:
        key = _key(organization_id, slug)
        async with _locked(key):
            entries = _live_entries(await cache.aget(key))
            if entries.pop(app_id, None) is not None:
                await cache.aset(key, entries, timeout=int(ENTRY_SECONDS) + 5)


async def answering_apps(*, organization_id: int, slug: str) -> int:
    """How many apps answer this persona's turns now."""
    keys = [_key(organization_id, slug), _key(organization_id, ALL_PERSONAS)]
    found = await cache.aget_many(keys)
    return sum(len(_live_entries(value)) for value in found.values())


def _live_entries(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    now = time.time()
    return {app: expires for app, expires in value.items() if isinstance(expires, float) and expires > now}
