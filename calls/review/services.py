"""Writes for call review: the audit log of what staff did with calls; staff actions on live
calls (a line said through the persona, the call ended); what a live call measured of its
turns (their latency) and learned of its tools (their results)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.utils import timezone

from calls.agents.commands import CommandRefused, command_check
from calls.agents.routing import command_deliver
from calls.models import Call
from calls.review.live import may_take_over
from calls.review.models import ReviewAction, ReviewAuditEntry, ToolResult, TurnChannel, TurnLatency
from webapp.database import closing_connections

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


# --- Live calls: staff speak through the persona or end the call -------------------------


class LiveActionRefused(Exception):
    """A staff action on a live call that was not carried out; `detail` says why, for people."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


LIVE_ACTIONS = {"say": ("say", ReviewAction.TOOK_OVER), "end": ("hangup", ReviewAction.ENDED)}


async def live_call_act(
    *,
    user: AbstractBaseUser | AnonymousUser,
    call_id: str,
    action: str,
    text: str = "",
) -> dict[str, Any]:
    """Make a live call's persona say `text` (`say`) or end the call (`end`), as `user`.

    The agent API's own path (`calls.agents.routing.command_deliver`): the command reaches
    whichever process holds the call. Refused (LiveActionRefused) without the `take_over_call`
    permission, for bad input, an unknown or ended call; done, it is in the audit log. Returns
    `{"action", "callId", "messageId"?}`.
    """
    if action not in LIVE_ACTIONS:
        raise LiveActionRefused("invalid_field", f"type: must be one of {', '.join(LIVE_ACTIONS)}")
    command_action, audit_action = LIVE_ACTIONS[action]
    if not await database_sync_to_async(closing_connections(may_take_over))(user):
        raise LiveActionRefused(
            "forbidden", "you may not take over calls (permission calls.take_over_call); nothing was done"
        )
    content: dict[str, Any] = {"action": command_action, "callId": call_id}
    if command_action == "say":
        content["text"] = text
    try:
        command = command_check(content)
    except CommandRefused as refusal:
        raise LiveActionRefused(refusal.code, refusal.message) from None
    answer = await command_deliver(organization_id=None, command=command)
    if answer.get("event") != "ack":
        raise LiveActionRefused(
            str(answer.get("code", "refused")), str(answer.get("message", "the call refused it"))
        )
    detail: dict[str, Any] = {"via": "live calls page"}
    if command_action == "say":
        detail.update(line=command.fields["text"], messageId=command.fields["message_id"])
    await database_sync_to_async(closing_connections(_live_audit_record))(
        user=user, call_id=call_id, action=audit_action, detail=detail
    )
    done: dict[str, Any] = {"action": action, "callId": call_id}
    if command_action == "say":
        done["messageId"] = command.fields["message_id"]
        done["text"] = command.fields["text"]
    return done


def _live_audit_record(
    *, user: AbstractBaseUser | AnonymousUser, call_id: str, action: ReviewAction, detail: dict[str, Any]
) -> ReviewAuditEntry:
    return review_audit_record(user=user, action=action, call=Call.objects.get(pk=call_id), detail=detail)
