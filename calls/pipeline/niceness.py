"""Threads that yield to the event loop: their Linux niceness raised.

The event loop of a server process carries every call's audio, voice activity detection and
voice; batch work on threads of the same process (Whisper's decodes, the recordings' encoding)
matters less from one moment to the next, and on saturated cores it took the loop's time. Its
threads are made nicer than the loop, so the loop goes first and they use what it leaves.
Linux keeps a niceness per thread, and a thread starts with its creator's.

Only threads that never take the GIL may be made nicer (native workers such as CTranslate2's):
a nice thread that runs Python is descheduled while it holds the GIL, and the loop waits for
it. The recordings' encoding threads made nicer by 10 held 16 greetings to a third of their
pace (bench/voice_loop.py --sessions 16: the 8.8 s greeting played in 30 s, not 12).
Batch work that runs Python yields another way: it holds back while latency-critical work is
in flight in the process (`FOREGROUND`: a live call's final decode, which a user is waiting
for), and catches up after.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def thread_niceness_raise(niceness: int) -> None:
    """Make the calling thread `niceness` nicer (Linux, where niceness is per thread; threads it
    starts inherit it). Elsewhere, or if refused, the thread runs as it was."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + niceness)
    except OSError as error:
        logger.warning("a thread keeps its priority (niceness not raised by %d): %s", niceness, error)


def on_thread_at_niceness(build: Callable[[], Any], niceness: int) -> Any:
    """`build()` run on a thread of its own made `niceness` nicer: the threads it starts (a
    CTranslate2 model's workers) are as nice. Its exception is raised here."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        thread_niceness_raise(niceness)
        try:
            outcome["value"] = build()
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=run, name="parley-nicer-start", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class Foreground:
    """A count of latency-critical jobs in flight in this process (thread-safe): `enter()` when
    one is queued, `leave()` once it is done. Batch work asks `busy()` and, if so, puts itself
    off (within a bound of its own)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def enter(self) -> None:
        with self._lock:
            self._count += 1

    def leave(self) -> None:
        with self._lock:
            self._count = max(0, self._count - 1)

    def busy(self) -> bool:
        return self._count > 0


FOREGROUND = Foreground()
