"""The doorbell that follows every event: its message, its groups, and its ring inside the process.

`calls.publishing` rings it after a commit; the stream hub (`calls.streams.hub`) hears it. A
doorbell travels over the channel layer to every process, and straight to the hub of the
publishing process, whose streams then need not wait for the layer's round trip. The layer's
copy carries the hub's `origin`, so that hub skips it instead of hearing the event twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

# The type of the group message every doorbell is (`event_message` on a Channels consumer).
BROADCAST_TYPE = "event.message"


def group_for_call(call_id: str) -> str:
    return f"events.call.{call_id}"


def group_for_persona(persona_id: int) -> str:
    return f"events.persona.{persona_id}"


def group_for_organization(organization_id: int) -> str:
    return f"events.org.{organization_id}"


# The hub listening on this process's event loop: the loop, its origin and how to ring it.
_listener: tuple[asyncio.AbstractEventLoop, str, Callable[[Mapping[str, Any]], None]] | None = None


def local_listener_set(
    *, loop: asyncio.AbstractEventLoop, origin: str, ring: Callable[[Mapping[str, Any]], None]
) -> None:
    """The hub of `loop` hears this process's doorbells from now on (replacing an older loop's)."""
    global _listener
    _listener = (loop, origin, ring)


def local_ring(message: Mapping[str, Any]) -> str | None:
    """Ring the hub of the running loop, if there is one; returns its origin (None: nobody heard).

    Synchronous, on the loop: the hub only queues the message.
    """
    if _listener is None:
        return None
    loop, origin, ring = _listener
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if running is not loop:
        return None
    ring(message)
    return origin


# Kept events this process is storing right now: each of them rings in a moment.
_rings_expected = 0


def rings_expected_change(by: int) -> None:
    """+1 as a kept event starts on its way to the database, -1 once its trip is over (it has
    rung, or failed): the hub may wait for a burst to pass it on in one go."""
    global _rings_expected
    _rings_expected += by


def rings_expected() -> int:
    return _rings_expected
