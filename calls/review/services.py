"""Writes for call review: the audit log of what staff did with calls, and staff actions on live
calls (a line said through the persona, the call ended)."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from calls.agents.commands import CommandRefused, command_check
from calls.agents.routing import command_deliver
from calls.models import Call
from calls.review.live import may_take_over
from calls.review.models import ReviewAction, ReviewAuditEntry
from webapp.database import closing_connections


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
