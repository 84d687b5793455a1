"""The registry of live sessions: finding, opening and shutting down the calls this process holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from channels.db import database_sync_to_async

from calls.live.persona_config import _build_config
from calls.models import Call, EndReason

if TYPE_CHECKING:
    from calls.live.session import LiveSession

_LIVE: dict[str, LiveSession] = {}


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
    call = await database_sync_to_async(_connectable_call)(session_id)
    if call is None:
        return None
    config = await database_sync_to_async(_build_config)(call)
    return LiveSession(call=call, config=config)


def _connectable_call(session_id: str) -> Call | None:
    from calls.models import CallStatus

    return (
        Call.objects.select_related("persona", "organization", "session_token")
        .prefetch_related("persona__knowledge")
        .filter(pk=session_id, status=CallStatus.CONNECTING)
        .first()
    )


async def live_sessions_shutdown() -> None:
    for live in live_sessions():
        await live.end(reason=EndReason.FAILED, message="the server is shutting down")
