"""Storing what a live call measured of its turns and learned of its tools, off the voice path.

The pipeline stamps each turn's stages on the monotonic clock (`calls.pipeline.latency`); here
they become a `TurnLatency` row, and a tool call's outcome a `ToolResult` row, through
`calls.review.services`. The live session queues these writes behind its events
(`LiveSession._in_order`), so nothing here is ever awaited by the voice.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from django.utils import timezone

from calls.models import Call
from calls.pipeline.latency import TurnStamps
from calls.pipeline.tools import PendingToolCall
from calls.review.services import tool_result_record, turn_latency_record

logger = logging.getLogger(__name__)


def stamp_wall_time(
    stamp: float, *, now_monotonic: float | None = None, now: datetime | None = None
) -> datetime:
    """The wall-clock time of a monotonic stamp."""
    now_monotonic = time.monotonic() if now_monotonic is None else now_monotonic
    now = timezone.now() if now is None else now
    return now - timedelta(seconds=now_monotonic - stamp)


async def turn_latency_write(*, call: Call, stamps: TurnStamps, started_at: datetime) -> None:
    """Store one answered turn's stages (a failure is logged: the call goes on)."""
    try:
        await database_sync_to_async(turn_latency_record)(
            call=call,
            message_id=stamps.message_id,
            user_message_id=stamps.user_message_id,
            channel=stamps.channel,
            started_at=started_at,
            stages_ms=stamps.stages_ms(),
        )
    except Exception:
        logger.exception("call %s: could not store the latency of %s", call.pk, stamps.message_id)


def _started_at(call: PendingToolCall) -> datetime | None:
    try:
        return datetime.fromisoformat(call.started_at.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None


def _json_safe(value: Any) -> Any:
    """The result as JSON can hold it (an in-process hook may hand back any Python value)."""
    return json.loads(json.dumps(value, default=str))


async def tool_result_write(
    *, call: Call, tool_call: PendingToolCall, result: Any = None, error: str = ""
) -> None:
    """Store what one tool call came to (a failure is logged: the call goes on)."""
    try:
        await database_sync_to_async(tool_result_record)(
            call=call,
            tool_call_id=tool_call.tool_call_id,
            name=tool_call.name,
            kind=tool_call.kind,
            message_id=tool_call.message_id,
            result=_json_safe(result),
            error=error,
            started_at=_started_at(tool_call),
        )
    except Exception:
        logger.exception(
            "call %s: could not store the result of tool call %s", call.pk, tool_call.tool_call_id
        )
