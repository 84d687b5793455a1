"""Processing stored webhook deliveries after the webhook has answered, in every server process.

Choice (issue "WhatsApp: the persona answers on WhatsApp"): the durable raw-delivery table is
the queue, with claims that expire, rather than a task library. Checked in December 2026:
- django-tasks' database backend (django-tasks-db 0.13.0) marks a claimed task RUNNING and
  nothing ever returns it: a worker killed with SIGKILL leaves it there for good (upstream
  issue RealOrangeOne/django-tasks#46, open; its worker-ping PR #133 was closed unmerged). Its
  worker is also a separate `db_worker` process, not something the server runs embedded.
- Procrastinate needs PostgreSQL (no embedded SQLite); Celery needs a broker.
Here a claim is a lease (`PARLEY_WHATSAPP_LEASE_SECONDS`): a process killed mid-delivery
leaves its claim to expire and another process (or itself, restarted) takes it. Processing a
delivery commits its effects and its "processed" mark together, so it happens once
(`calls.whatsapp.services`). It runs embedded on SQLite (one process, no other service) and
with several Daphne workers on PostgreSQL (claims with `select_for_update(skip_locked=True)`).

Each server process runs one processor task on its event loop (started with the housekeeper,
`calls.lifecycle.drain`); its database work runs on a thread of its own, so a large batch does
not hold up the database thread live calls publish on. The webhook wakes this process's
processor when it stores a delivery; every processor also polls, for deliveries stored by
other processes and for claims that expired.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import DatabaseError

from calls.whatsapp import services
from webapp.database import closing_connections

logger = logging.getLogger(__name__)

# This process's name on its claims.
WORKER_ID = f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

_task: asyncio.Task[None] | None = None
_wake: asyncio.Event | None = None
_loop: asyncio.AbstractEventLoop | None = None
# Intake first. Meta waits 250 ms for the webhook's answer, and the webhook's answer waits for
# its delivery's commit. In one process on SQLite every writer shares one lock, and SQLite's
# busy handler backs off with sleeps, so a storing batch could wait 2 s behind processing and
# answering that kept taking it; on 2 cores their CPU (and the GIL) slowed the webhook too. So
# while this process's webhook is taking deliveries (storing some or, in a burst, stored some
# less than INTAKE_QUIET_SECONDS ago), the background writers (processing, answering) wait before each
# database trip, at most INTAKE_FIRST_MAX_SECONDS at a time, so they still progress under a
# sustained flood. Under a burst of 1,000 (bench/whatsapp.py, SQLite, 2 cores) the webhook's
# median answer was 58 ms waiting only while a batch was being stored, and 19 ms with no
# processing at all. A lone delivery (none came in the INTAKE_QUIET_SECONDS before it) is not
# a burst: processing it waits for nothing.
INTAKE_QUIET_SECONDS = 0.05
INTAKE_FIRST_MAX_SECONDS = 0.5
_intake_idle = threading.Event()
_intake_idle.set()
_intake_last_active = -1e9  # time.monotonic() when the webhook last stored or took a delivery
_intake_burst = False  # deliveries are coming close together


def intake_busy() -> None:
    """The webhook has deliveries to store (from any thread)."""
    global _intake_last_active, _intake_burst
    now = time.monotonic()
    _intake_burst = now - _intake_last_active < INTAKE_QUIET_SECONDS
    _intake_last_active = now
    _intake_idle.clear()


def intake_idle() -> None:
    """The webhook has stored all it was given (from any thread)."""
    global _intake_last_active
    _intake_last_active = time.monotonic()
    _intake_idle.set()


def intake_first(*, max_seconds: float = INTAKE_FIRST_MAX_SECONDS) -> None:
    """On a background writer's thread: let the webhook's storing go first (see above)."""
    deadline = time.monotonic() + max_seconds
    while (left := deadline - time.monotonic()) > 0:
        if not _intake_idle.wait(left):
            return
        quiet_for = time.monotonic() - _intake_last_active
        if not _intake_burst or quiet_for >= INTAKE_QUIET_SECONDS:
            return
        time.sleep(min(INTAKE_QUIET_SECONDS - quiet_for, max(0.0, deadline - time.monotonic())))


def whatsapp_processing_round(*, worker: str = WORKER_ID, max_batches: int = 1_000_000) -> int:
    """End the sessions whose window closed, then claim and process deliveries until none is
    left (or `max_batches` claims were made); how many were processed. Sync: tests and
    management code call it directly."""
    try:
        services.whatsapp_sessions_expire()
    except Exception:
        logger.exception("whatsapp: ending sessions whose window closed failed")
    lease = timedelta(seconds=settings.PARLEY_WHATSAPP_LEASE_SECONDS)
    processed = 0
    rounds = 0
    while (rounds := rounds + 1) <= max_batches and (
        claimed := services.whatsapp_deliveries_claim(worker=worker, lease=lease)
    ):
        for delivery_id in claimed:
            intake_first()
            try:
                processed += services.whatsapp_delivery_process(delivery_id=delivery_id, worker=worker)
            except DatabaseError as error:
                services.whatsapp_delivery_release(
                    delivery_id=delivery_id, worker=worker, error=f"{type(error).__name__}: {error}"
                )
            except Exception as error:  # a bug: reported on the row, tried again, then given up
                logger.exception("whatsapp delivery %s: processing failed", delivery_id)
                services.whatsapp_delivery_release(
                    delivery_id=delivery_id, worker=worker, error=f"{type(error).__name__}: {error}"
                )
    return processed


async def _run() -> None:
    assert _wake is not None
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-whatsapp")
    # SyncToAsync (not a bare executor) so the thread knows the loop: the events it publishes
    # are broadcast on it as any other's (`calls.publishing._broadcast_sync`).
    round_async = SyncToAsync(
        closing_connections(whatsapp_processing_round), thread_sensitive=False, executor=executor
    )
    try:
        while True:
            _wake.clear()
            try:
                await round_async()
            except Exception:
                logger.exception("whatsapp: a processing round failed")
            try:
                await asyncio.wait_for(_wake.wait(), timeout=settings.PARLEY_WHATSAPP_POLL_SECONDS)
            except TimeoutError:
                pass
    finally:
        executor.shutdown(wait=False)


def processor_start() -> None:
    """Start this process's processor on the running loop (once)."""
    global _task, _wake, _loop
    if _task is None or _task.done():
        _loop = asyncio.get_event_loop()
        _wake = asyncio.Event()
        _task = _loop.create_task(_run(), name="parley-whatsapp-processor")


def processor_stop() -> None:
    """Stop taking deliveries; one being processed finishes on its thread, or its lease expires."""
    if _task is not None:
        _task.cancel()


def processor_wake() -> None:
    """From any thread: a delivery was stored; process it soon (no-op where no processor runs)."""
    loop, wake = _loop, _wake
    if loop is None or wake is None or loop.is_closed():
        return
    try:
        loop.call_soon_threadsafe(wake.set)
    except RuntimeError:  # the loop closed meanwhile
        pass
