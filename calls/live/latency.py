"""Storing what a live call measured of its turns and learned of its tools, off the voice path.

The pipeline stamps each turn's stages on the monotonic clock (`calls.pipeline.latency`); here
they become a `TurnLatency` row, and a tool call's outcome a `ToolResult` row, through
`calls.review.services`. The live session hands these writes to the event store behind its
events (`LiveSession._write_in_order`), so nothing here is ever awaited by the voice.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from calls.models import Call
from calls.pipeline.latency import TurnStamps
from calls.pipeline.tools import PendingToolCall
from calls.review.services import tool_result_record, turn_latency_record


def stamp_wall_time(
    stamp: float, *, now_monotonic: float | None = None, now: datetime | None = None
) -> datetime:
    """The wall-clock time of a monotonic stamp."""
    now_monotonic = time.monotonic() if now_monotonic is None else now_monotonic
    now = timezone.now() if now is None else now
    return now - timedelta(seconds=now_monotonic - stamp)


def turn_latency_write(*, call: Call, stamps: TurnStamps, started_at: datetime) -> Callable[[], Any]:
    """The write of one answered turn's stages (blocking: for the event store's thread)."""
    return functools.partial(
        turn_latency_record,
        call=call,
        message_id=stamps.message_id,
        user_message_id=stamps.user_message_id,
        channel=stamps.channel,
        started_at=started_at,
        stages_ms=stamps.stages_ms(),
    )


def _started_at(call: PendingToolCall) -> datetime | None:
    try:
        return datetime.fromisoformat(call.started_at.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None


def _json_safe(value: Any) -> Any:
    """The result as JSON can hold it (an in-process hook may hand back any Python value)."""
    return json.loads(json.dumps(value, default=str))


def tool_result_write(
    *, call: Call, tool_call: PendingToolCall, result: Any = None, error: str = ""
) -> Callable[[], Any]:
    """The write of what one tool call came to (blocking: for the event store's thread)."""
    return functools.partial(
        tool_result_record,
        call=call,
        tool_call_id=tool_call.tool_call_id,
        name=tool_call.name,
        kind=tool_call.kind,
        message_id=tool_call.message_id,
        result=_json_safe(result),
        error=error,
        started_at=_started_at(tool_call),
    )
