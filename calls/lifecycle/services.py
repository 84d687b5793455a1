"""Writes for the processes that hold calls: this process's row, its heartbeat, its claims, and
the ending of calls nobody is in any more.

A call is live (`connecting` or `in_progress`) until something ends it. Two kinds would
otherwise stay live forever and hold one of their organization's session slots:

- a session started with `POST /v1/engine/session` whose signalling socket never opened
  (a page abandoned, a script): after `PARLEY_CONNECT_TIMEOUT_SECONDS` it ends as `timeout`;
- a call whose process died (SIGKILL, a crash, a machine gone): it ends as `failed`, at once
  when a process on the same machine sees its pid gone (a restart), else once its heartbeat
  is older than `PARLEY_PROCESS_STALE_SECONDS`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from calls import services
from calls.lifecycle.models import EngineProcess
from calls.models import LIVE_STATUSES, Call, CallStatus, EndReason, Transport

logger = logging.getLogger(__name__)


@dataclass
class ProcessState:
    """What this process knows of itself (one per process)."""

    id: str | None = None
    draining: bool = False


_state = ProcessState()
_register_lock = threading.Lock()


# --- Who is this process, and is another one alive ------------------------------------


def _proc_start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot, Linux), to tell a reused pid apart; else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields count from its end.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _pid_namespace() -> str:
    """Processes that see each other's pids: the same boot of the same machine, the same pid
    namespace (containers have their own). Empty where that cannot be told (not Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def _process_identity() -> tuple[str, str]:
    """(hostname field, id): the pid namespace is kept in the hostname field after a '|'."""
    namespace = _pid_namespace()
    host = socket.gethostname()[:120]
    return (f"{host}|{namespace}" if namespace else host), uuid.uuid4().hex


def this_process_id(*, verify: bool = False) -> str:
    """This process's `EngineProcess` id, registering it on first use; with `verify`, again if
    its row has gone (a database restored, or emptied by a test)."""
    with _register_lock:
        if _state.id is not None and verify and not EngineProcess.objects.filter(pk=_state.id).exists():
            logger.warning("server process %s: its row has gone; registering again", _state.id)
            _state.id = None
        if _state.id is None:
            _state.id = process_register().pk
        return _state.id


def process_register() -> EngineProcess:
    hostname, process_id = _process_identity()
    now = timezone.now()
    started = _proc_start_ticks(os.getpid())
    process = EngineProcess.objects.create(
        id=process_id,
        hostname=hostname,
        pid=os.getpid(),
        pid_started=started,
        engine_host=settings.PARLEY_PROCESS_ENGINE_HOST,
        started_at=now,
        heartbeat_at=now,
    )
    logger.info("server process %s registered (pid %s)", process.pk, process.pid)
    return process


def process_heartbeat() -> None:
    EngineProcess.objects.filter(pk=this_process_id(verify=True)).update(heartbeat_at=timezone.now())


def process_draining() -> bool:
    return _state.draining


def process_drain_begin() -> None:
    """From now on this process takes no new sessions (health checks say so)."""
    _state.draining = True
    EngineProcess.objects.filter(pk=this_process_id()).update(draining_since=timezone.now())


def process_stopped() -> None:
    """This process holds no call any more and is about to exit."""
    if _state.id is not None:
        EngineProcess.objects.filter(pk=_state.id).update(stopped_at=timezone.now())


def draining_engine_hosts() -> set[str]:
    """The engine hosts whose current process is draining (no new sessions go there)."""
    return set(
        EngineProcess.objects.filter(
            stopped_at__isnull=True, draining_since__isnull=False, engine_host__gt=""
        ).values_list("engine_host", flat=True)
    )


def _gone(process: EngineProcess, *, now: datetime, namespace: str) -> bool:
    if process.heartbeat_at < now - timedelta(seconds=settings.PARLEY_PROCESS_STALE_SECONDS):
        return True
    if not namespace or process.hostname.partition("|")[2] != namespace:
        return False  # another machine or container: only its heartbeat tells
    started = _proc_start_ticks(process.pid)
    return started is None or (process.pid_started is not None and started != process.pid_started)


def processes_gone_mark() -> list[str]:
    """Mark the processes that are no longer running as stopped; their ids."""
    now = timezone.now()
    namespace = _pid_namespace()
    gone = [
        process.pk
        for process in EngineProcess.objects.filter(stopped_at__isnull=True).exclude(pk=this_process_id())
        if _gone(process, now=now, namespace=namespace)
    ]
    if gone:
        EngineProcess.objects.filter(pk__in=gone, stopped_at__isnull=True).update(stopped_at=now)
        logger.warning("server processes gone without ending their calls: %s", ", ".join(gone))
    return gone


# --- Calls ------------------------------------------------------------------------------


def call_claim(*, call_id: str) -> bool:
    """Make this process the owner of a connecting call whose signalling socket just opened.

    False if the call can no longer be claimed: it ended (expired, say), or another process
    holds it.
    """
    me = this_process_id(verify=True)
    claimed = (
        Call.objects.filter(pk=call_id, status=CallStatus.CONNECTING)
        .filter(owner__isnull=True)
        .update(owner_id=me)
    )
    return claimed == 1 or Call.objects.filter(pk=call_id, status__in=LIVE_STATUSES, owner_id=me).exists()


def _end_if(call_id: str, reason: str, **still: object) -> bool:
    """End the call with `reason` if it still matches `still` (checked under its row lock)."""
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(pk=call_id, status__in=LIVE_STATUSES, **still).first()
        if call is None:
            return False
        services.call_end(call=call, reason=reason)
    return True


def calls_unconnected_expire() -> list[str]:
    """End (`timeout`) the browser sessions whose signalling socket never opened in time."""
    cutoff = timezone.now() - timedelta(seconds=settings.PARLEY_CONNECT_TIMEOUT_SECONDS)
    candidates = Call.objects.filter(
        status=CallStatus.CONNECTING, owner__isnull=True, transport=Transport.WEBRTC, created_at__lt=cutoff
    ).values_list("pk", flat=True)
    ended = [
        call_id
        for call_id in list(candidates)
        if _end_if(call_id, EndReason.TIMEOUT, status=CallStatus.CONNECTING, owner__isnull=True)
    ]
    if ended:
        logger.info("sessions never connected, ended as timeout: %s", ", ".join(ended))
    return ended


def calls_orphaned_end() -> list[str]:
    """End (`failed`) the live calls of processes that are gone."""
    processes_gone_mark()
    candidates = (
        Call.objects.filter(status__in=LIVE_STATUSES, owner__stopped_at__isnull=False)
        .exclude(owner_id=this_process_id())
        .values_list("pk", flat=True)
    )
    ended = [
        call_id
        for call_id in list(candidates)
        if _end_if(call_id, EndReason.FAILED, owner__stopped_at__isnull=False)
    ]
    if ended:
        logger.warning("calls of a process that is gone, ended as failed: %s", ", ".join(ended))
    return ended
