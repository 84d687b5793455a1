"""Every server process, periodically: heartbeat, and end the calls nobody is in.

It runs as a task on the server's event loop (the database work on Channels' database thread),
so that the `call.ended` it publishes is broadcast as a live call's would be. Its first round is
at start-up: a process restarted after a crash ends its predecessor's calls at once.
"""

from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async
from django.conf import settings

from calls.lifecycle import services

logger = logging.getLogger(__name__)

_task: asyncio.Task[None] | None = None


def housekeeping_round() -> None:
    """One round (sync): each step on its own, so that one failing does not stop the others."""
    for step in (services.process_heartbeat, services.calls_orphaned_end, services.calls_unconnected_expire):
        try:
            step()
        except Exception:
            logger.exception("housekeeping: %s failed", step.__name__)


async def _run() -> None:
    while True:
        await database_sync_to_async(housekeeping_round)()
        await asyncio.sleep(settings.PARLEY_PROCESS_HEARTBEAT_SECONDS)


def housekeeper_start() -> None:
    """Start the housekeeping task on the server's loop (once; Daphne may not be running it yet)."""
    global _task
    if _task is None or _task.done():
        _task = asyncio.get_event_loop().create_task(_run(), name="parley-housekeeper")


def housekeeper_stop() -> None:
    if _task is not None:
        _task.cancel()
