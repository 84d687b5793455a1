"""Writes for call review: the audit log of what staff did with calls; what a live call measured
of its turns (their latency) and learned of its tools (their results)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.utils import timezone

from calls.models import Call
from calls.review.models import ReviewAction, ReviewAuditEntry, ToolResult, TurnChannel, TurnLatency

# The stage fields of a TurnLatency row, in the order the stages happen.
TURN_LATENCY_STAGE_FIELDS = ("vad_ms", "transcript_ms", "turn_ms", "brain_ms", "audio_ms")


def review_audit_record(
    *,
    user: AbstractBaseUser | AnonymousUser,
    action: ReviewAction | str,
    call: Call | None = None,
    detail: dict[str, Any] | None = None,
) -> ReviewAuditEntry:
    """Record that `user` did `action` (to `call`, if it concerns one); `detail` says the rest."""
    action = ReviewAction(action)  # an unknown action is a bug where it is made
    authenticated = getattr(user, "is_authenticated", False)
    return ReviewAuditEntry.objects.create(
        user=user if authenticated else None,
        username=user.get_username() if authenticated else "",
        action=action,
        call=call,
        call_ref=call.pk if call is not None else "",
        detail=detail or {},
    )


def turn_latency_record(
    *,
    call: Call,
    message_id: str,
    channel: TurnChannel | str,
    started_at: datetime,
    stages_ms: dict[str, int | None],
    user_message_id: str = "",
) -> TurnLatency:
    """Store how long the turn answered by `message_id` took, stage by stage (once per message).

    `stages_ms` maps `vad`, `transcript`, `turn`, `brain`, `audio` to milliseconds (None: no
    such stage, e.g. a typed turn's listening); the total is their sum.
    """
    channel = TurnChannel(channel)
    values = {f"{name}_ms": stages_ms.get(name) for name in ("vad", "transcript", "turn", "brain", "audio")}
    if any(value is not None and value < 0 for value in values.values()):
        raise ValueError(f"turn latency stages must not be negative: {stages_ms}")
    total = sum(value for value in values.values() if value is not None)
    latency, _ = TurnLatency.objects.update_or_create(
        call=call,
        message_id=message_id,
        defaults={
            "user_message_id": user_message_id,
            "channel": channel,
            "started_at": started_at,
            "total_ms": total,
            **values,
        },
    )
    return latency


def tool_result_record(
    *,
    call: Call,
    tool_call_id: str,
    name: str,
    kind: str,
    message_id: str = "",
    result: Any = None,
    error: str = "",
    started_at: datetime | None = None,
) -> ToolResult:
    """Store what a tool call came to (its result, or its error), once per tool call id."""
    record, _ = ToolResult.objects.update_or_create(
        call=call,
        tool_call_id=tool_call_id,
        defaults={
            "name": name,
            "kind": kind,
            "message_id": message_id,
            "result": None if error else result,
            "error": error,
            "started_at": started_at,
            "finished_at": timezone.now(),
        },
    )
    return record
