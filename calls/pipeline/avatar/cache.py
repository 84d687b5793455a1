"""One process-wide cache of what a look costs to prepare, shared by every session wearing it.

Drawing a face's layers or scaling a portrait takes 50-150 ms; a session only needs a
reference to them. Entries are keyed by everything they are drawn from (the look, the frame
size, a portrait file's modification time and size), so they never go stale: an edited look or
a re-uploaded portrait is a new key, and the old entry ages out of the LRU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

# Looks prepared at once. A drawn look holds ~5-8 MB, a portrait ~3-6 MB once its caches fill:
# at most ~130 MB, for more distinct looks than a process usually serves at a time.
LOOK_CACHE_ENTRIES = 16

T = TypeVar("T")


class SharedCache:
    """A thread-safe LRU whose misses are built once, however many threads ask at the same time."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._building: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """The entry for `key`, built by `build()` (outside the lock) if it is not there yet."""
        while True:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return self._entries[key]
                pending = self._building.get(key)
                if pending is None:
                    pending = self._building[key] = threading.Event()
                    break
            # Someone else is building it: wait, then read it (or build it ourselves if they failed).
            pending.wait()
        try:
            value = build()
        except BaseException:
            with self._lock:
                del self._building[key]
            pending.set()
            raise
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            del self._building[key]
        pending.set()
        return value

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def values(self) -> list[Any]:
        with self._lock:
            return list(self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


LOOKS = SharedCache(LOOK_CACHE_ENTRIES)


class BoundedCache:
    """A small thread-safe LRU for the entries a shared look fills as frames need them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """The entry for `key`; a miss is built outside the lock (two threads may both build it:
        the results are equal, and the second simply replaces the first)."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                return value
        value = build()
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def values(self) -> list[Any]:
        with self._lock:
            return list(self._entries.values())
