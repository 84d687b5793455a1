"""Worker processes (the recogniser's, the question encoder's) end with the server process.

A server killed with SIGKILL runs no exit handlers: its spawned workers would stay under init,
each with a model in memory (~230 MB). A worker whose parent is gone exits by itself. Plain
Python, no Django: it runs inside the workers.
"""

from __future__ import annotations

import os
import threading
import time

# How often a worker looks for its parent (seconds).
PARENT_CHECK_SECONDS = 1.0


def exit_with_parent(parent_pid: int) -> None:
    """In a worker process: exit as soon as `parent_pid` is no longer this process's parent."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="parley-parent-watch", daemon=True).start()
