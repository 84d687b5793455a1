"""The registry of live sessions: finding, opening and shutting down the calls this process holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from channels.db import database_sync_to_async

from calls.lifecycle import services as lifecycle
from calls.live.persona_config import _build_config
from calls.models import Call

if TYPE_CHECKING:
    from calls.live.session import LiveSession

_LIVE: dict[str, LiveSession] = {}


class LiveSessionRefused(Exception):
    """No new live session here now (the process is draining); the message says why."""


def live_session_get(session_id: str) -> LiveSession | None:
    return _LIVE.get(session_id)


def live_sessions() -> list[LiveSession]:
    return list(_LIVE.values())


async def live_session_open(*, session_id: str) -> LiveSession | None:
    """The live session for a signalling socket: the existing one, or a new one for a new call."""
    from calls.live.session import LiveSession  # not at the top: `session` imports `_LIVE` from here

    existing = _LIVE.get(session_id)
    if existing is not None and not existing.ended:
        return existing
    if lifecycle.process_draining():
        raise LiveSessionRefused("the server is restarting; please start again")
    call = await database_sync_to_async(_connectable_call)(session_id)
    if call is None:
        return None
    config = await database_sync_to_async(_build_config)(call)
    return LiveSession(call=call, config=config)


def _connectable_call(session_id: str) -> Call | None:
    """The connecting call, now held by this process; None if there is none to hold (it never
    existed, ended — a session not connected in time expires — or another process holds it)."""
    from calls.models import CallStatus

    if not lifecycle.call_claim(call_id=session_id):
        return None
    return (
        Call.objects.select_related("persona", "organization", "session_token")
        .prefetch_related("persona__knowledge")
        .filter(pk=session_id, status=CallStatus.CONNECTING)
        .first()
    )


async def live_sessions_end(*, reason: str, message: str, within: float) -> int:
    """End every live session of this process at once (each tells its browser `message`); how
    many are still live after `within` seconds."""
    import asyncio

    ends = [asyncio.ensure_future(live.end(reason=reason, message=message)) for live in live_sessions()]
    if ends:
        _, pending = await asyncio.wait(ends, timeout=within)
        for end in pending:
            end.cancel()
    return len(live_sessions())
