"""Reads for the live calls page: who may watch, the ongoing calls, a call's transcript so far, and
which of the event stream's events the page shows.

The page's websocket (`calls.review.consumers.LiveCallsConsumer`) hears the organizations' event
streams (`calls.streams`) and relays what these functions pick out; staff actions on a call go
through `calls.review.services`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from calls.models import Call, CallEvent, CallStatus, Message, Transport
from calls.review.selectors import ConversationNote, ConversationTurn, call_conversation
from personas.models import Organization
from webapp.inputs import InputRefused, text_problem

VIEW_PERMISSION = "calls.view_call"
TAKE_OVER_PERMISSION = "calls.take_over_call"
# The page shows calls one can talk over; a WhatsApp thread's call is open for a day and has its
# own page (the thread), so it is left out.
LIVE_TRANSPORTS = (Transport.WEBRTC, Transport.PHONE, Transport.CHAT)
# The ongoing calls a page lists at most; more than this at once is a call centre's wallboard.
MAX_LIVE_CALLS_SHOWN = 500
# What the page relays of a watched call: captions, final lines, the persona's words, the end.
WATCHED_EVENTS = frozenset(
    {
        "speech.started",
        "speech.ended",
        "user.speaking",
        "user.message",
        "bot.speaking",
        "bot.word",
        "bot.finished",
        "bot.interrupted",
        "message.confirmed",
        "llm.tool_call",
        "session.idle_warning",
        "call.ended",
    }
)
# The page's own messages: short JSON, a typed line at most a few thousand characters.
MAX_FRAME_BYTES = 16 * 1024
MAX_LINE_CHARS = 4000
CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
PAGE_ACTIONS = ("watch", "say", "end")


class LiveAccessRefused(Exception):
    """Someone who may not watch live calls; `close_code` is 4000 + the HTTP status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    @property
    def close_code(self) -> int:
        return 4000 + self.status


@dataclass(frozen=True)
class PageMessage:
    """One checked message of the page: watch a call, make its persona say a line, or end it."""

    action: str
    call_id: str
    text: str = ""


def live_access_check(user: AbstractBaseUser | AnonymousUser) -> None:
    """Raise LiveAccessRefused unless `user` is active staff allowed to view calls. Reads the database."""
    if not getattr(user, "is_authenticated", False):
        raise LiveAccessRefused(401, "log in to the admin first: live calls are for staff")
    if not (getattr(user, "is_active", False) and getattr(user, "is_staff", False)):
        raise LiveAccessRefused(403, "live calls are for staff")
    if not user.has_perm(VIEW_PERMISSION):
        raise LiveAccessRefused(403, "you may not view calls (permission calls.view_call)")


def may_take_over(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Whether `user` may end a call or speak through its persona. Reads the database."""
    return bool(getattr(user, "is_active", False) and user.has_perm(TAKE_OVER_PERMISSION))


def page_message_parse(content: Any) -> PageMessage:
    """The page's JSON message `{type, callId, text?}` checked; InputRefused naming the field."""
    if not isinstance(content, dict):
        raise InputRefused("message", 'must be a JSON object {"type": ..., "callId": ...}')
    action = content.get("type")
    if action not in PAGE_ACTIONS:
        raise InputRefused("type", f"must be one of {', '.join(PAGE_ACTIONS)}")
    call_id = content.get("callId")
    if not isinstance(call_id, str) or not CALL_ID.fullmatch(call_id):
        raise InputRefused("callId", "required: the id of a call")
    text = ""
    if action == "say":
        value = content.get("text")
        if not isinstance(value, str) or not value.strip():
            raise InputRefused("text", "type the line the persona should say")
        problem = text_problem(value)
        if problem is not None:
            raise InputRefused("text", problem)
        if len(value) > MAX_LINE_CHARS:
            raise InputRefused("text", f"at most {MAX_LINE_CHARS} characters")
        text = value.strip()
    return PageMessage(action=action, call_id=call_id, text=text)


def live_organization_ids() -> list[int]:
    """Every organization: staff watch calls across all of them, as the admin lists them."""
    return list(Organization.objects.order_by("id").values_list("id", flat=True))


def _row(call: Call) -> dict[str, Any]:
    return {
        "callId": call.pk,
        "speaking": _message_being_spoken(call),
        "agent": call.persona.slug,
        "persona": call.persona.name,
        "transport": call.transport,
        "from": call.from_address,
        "startedAt": (call.started_at or call.created_at).isoformat(),
    }


def live_calls() -> list[dict[str, Any]]:
    """The calls going on now, newest first, as the page draws a row."""
    calls = (
        Call.objects.filter(status=CallStatus.IN_PROGRESS, transport__in=LIVE_TRANSPORTS)
        .select_related("persona")
        .order_by("-started_at", "-created_at")[:MAX_LIVE_CALLS_SHOWN]
    )
    return [_row(call) for call in calls]


def live_call_row(call_id: str) -> dict[str, Any] | None:
    """The row of a call that just started (None: gone, or not a call the page shows)."""
    call = Call.objects.select_related("persona").filter(pk=call_id, transport__in=LIVE_TRANSPORTS).first()
    return _row(call) if call is not None else None


def _message_being_spoken(call: Call) -> dict[str, str] | None:
    """The persona's message being spoken now (its bot.speaking came, its end not yet): its id
    and what it means to say, so a page that starts watching mid-sentence draws it whole."""
    started = CallEvent.objects.filter(call=call, type="bot.speaking").order_by("-cursor").first()
    if started is None:
        return None
    message_id = str(started.data.get("messageId", ""))
    over = (
        CallEvent.objects.filter(
            call=call, type__in=["bot.finished", "bot.interrupted"], cursor__gt=started.cursor
        )
        .filter(data__messageId=message_id)
        .exists()
    )
    if over or Message.objects.filter(call=call, message_id=message_id).exists():
        return None
    return {"messageId": message_id, "text": str(started.data.get("text", ""))}


def live_call_transcript(call_id: str) -> dict[str, Any] | None:
    """A call's transcript so far, for the page that starts watching it (None: no such call)."""
    call = Call.objects.select_related("persona").filter(pk=call_id).first()
    if call is None:
        return None
    lines: list[dict[str, Any]] = []
    for item in call_conversation(call):
        if isinstance(item, ConversationTurn):
            lines.append(
                {
                    "kind": "turn",
                    "speaker": item.speaker,
                    "messageId": item.message_id,
                    "text": item.text,
                    "spokenText": item.spoken_text,
                    "interrupted": item.interrupted,
                    "channel": item.channel,
                    "at": item.at.isoformat() if item.at else None,
                    "offset": item.offset_label,
                }
            )
        elif isinstance(item, ConversationNote):
            lines.append({"kind": "note", "name": item.name, "text": item.text, "offset": item.offset_label})
    return {
        "callId": call.pk,
        "speaking": _message_being_spoken(call),
        "agent": call.persona.slug,
        "persona": call.persona.name,
        "transport": call.transport,
        "status": call.status,
        "startedAt": (call.started_at or call.created_at).isoformat(),
        "ended": call.status == CallStatus.ENDED,
        "lines": lines,
    }
