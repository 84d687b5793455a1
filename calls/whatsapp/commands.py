"""The agent API on WhatsApp threads (PROTOCOL §4): takeover actions, and call commands on a
thread's call.

- `whatsappPause` / `whatsappResume` (`sessionId` or `contact`): stop / restart the persona's
  automatic answers on the thread (a human takes over); `whatsappSend` (`sessionId` or
  `contact`, `text`): send as a human, recorded as `whatsapp.response` with author `human`.
- A command on the `callId` of a WhatsApp session is carried out on the thread, not on a live
  call: `reply` answers what the contact is owed (author `app`; the brain stays silent while
  an answering app replies in its time), `say` sends a message that answers nothing,
  `replyStream` is gathered and sent whole at `end` (WhatsApp has no streaming: one message),
  `toolResult` answers the LLM's server tools on the thread, `hangup` ends the session.
  `cancel` and `context` have no meaning on a thread and are refused.

Only the app's organisation's sessions: another organisation's is answered as unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async

from calls.agents.commands import Command, CommandRefused
from calls.models import Direction, EndReason, WhatsAppMessage, WhatsAppSession
from calls.whatsapp.graph import TEXT_MAX_CHARACTERS
from calls.whatsapp.outbox import (
    OutboxRefused,
    whatsapp_human_send,
    whatsapp_reply_queue,
    whatsapp_takeover_set,
)
from calls.whatsapp.tools import ToolResultRefused, whatsapp_tool_result
from webapp.database import closing_connections

WHATSAPP_ACTIONS = ("whatsappPause", "whatsappResume", "whatsappSend")


def _db(function: Any) -> Any:
    return database_sync_to_async(closing_connections(function))


# --- Finding the thread ---------------------------------------------------------------------


def whatsapp_session_for_app(
    *,
    organization_id: int | None,
    session_id: str | None = None,
    contact: str | None = None,
    persona_slug: str | None = None,
) -> WhatsAppSession:
    """The session an app names, by id or by its contact's open thread; CommandRefused if none.

    `organization_id` None: a trusted in-process caller; `persona_slug`: only that persona's
    threads (an in-process hook's)."""
    sessions = WhatsAppSession.objects.select_related("call", "persona")
    if organization_id is not None:
        sessions = sessions.filter(organization_id=organization_id)
    if persona_slug is not None:
        sessions = sessions.filter(persona__slug=persona_slug)
    if session_id is not None:
        session = sessions.filter(pk=int(session_id)).first()
        if session is None:
            raise CommandRefused(
                "unknown_session", f"sessionId: no WhatsApp session {session_id} in this organization"
            )
        return session
    assert contact is not None
    open_threads = list(sessions.filter(contact_phone=contact.lstrip("+"), ended_at__isnull=True)[:2])
    if not open_threads:
        raise CommandRefused(
            "unknown_session", f"contact: {contact} has no open WhatsApp session in this organization"
        )
    if len(open_threads) > 1:
        raise CommandRefused(
            "ambiguous_contact",
            f"contact: {contact} has open sessions with several personas' numbers; name one by sessionId",
        )
    return open_threads[0]


def _session_fields(content: dict[str, Any]) -> dict[str, str | None]:
    """`sessionId` or `contact`, exactly one (InputRefused-like CommandRefused otherwise)."""
    session_id, contact = content.get("sessionId"), content.get("contact")
    if (session_id is None) == (contact is None):
        raise CommandRefused("invalid_field", "sessionId: give the session's id, or its contact (not both)")
    if session_id is not None:
        if isinstance(session_id, bool) or not str(session_id).isascii() or not str(session_id).isdigit():
            raise CommandRefused("invalid_field", "sessionId: must be a WhatsApp session's id (digits)")
        if len(str(session_id)) > 18:
            raise CommandRefused("invalid_field", "sessionId: must be a WhatsApp session's id (digits)")
        return {"session_id": str(session_id), "contact": None}
    if not isinstance(contact, str) or not contact.lstrip("+").isascii() or not contact.lstrip("+").isdigit():
        raise CommandRefused("invalid_field", "contact: must be a phone number, digits with its country code")
    if len(contact) > 32:
        raise CommandRefused("invalid_field", "contact: at most 32 characters")
    return {"session_id": None, "contact": contact}


def whatsapp_command_check(content: dict[str, Any], request_id: str | None) -> Command:
    """A takeover action, checked (the agent socket's command_check hands these over)."""
    action = content["action"]
    fields: dict[str, Any] = _session_fields(content)
    if action == "whatsappSend":
        text = content.get("text")
        if not isinstance(text, str) or not text.strip():
            raise CommandRefused("invalid_field", "text: required, a non-empty string")
        if len(text) > TEXT_MAX_CHARACTERS:
            raise CommandRefused(
                "invalid_field", f"text: a WhatsApp message holds at most {TEXT_MAX_CHARACTERS} characters"
            )
        fields["text"] = text
    return Command(action, request_id, fields=fields)


async def whatsapp_command_run(
    *, organization_id: int | None, command: Command, persona_slug: str | None = None
) -> dict[str, Any]:
    """Carry out a takeover action; the ack frame (CommandRefused otherwise)."""
    fields = command.fields
    session = await _db(whatsapp_session_for_app)(
        organization_id=organization_id,
        session_id=fields["session_id"],
        contact=fields["contact"],
        persona_slug=persona_slug,
    )
    ack: dict[str, Any] = {"event": "ack", "requestId": command.request_id, "sessionId": str(session.pk)}
    if command.action in ("whatsappPause", "whatsappResume"):
        await _db(whatsapp_takeover_set)(session=session, paused=command.action == "whatsappPause")
        return ack
    try:
        message = await _db(whatsapp_human_send)(session=session, text=fields["text"])
    except OutboxRefused as refusal:
        code = "session_ended" if refusal.field == "sessionId" else "invalid_field"
        raise CommandRefused(code, refusal.message) from None
    return {**ack, "messageId": message.meta_message_id}


# --- Call commands on a thread's call ---------------------------------------------------------


@dataclass
class _Streams:
    """`replyStream`s being gathered, by (call, message id): an app's frames reach one consumer."""

    texts: dict[tuple[str, str], list[str]] = field(default_factory=dict)


_streams = _Streams()
STREAMS_MAX = 1000


def _thread_of_call(*, call_id: str) -> WhatsAppSession:
    return WhatsAppSession.objects.select_related("call", "persona").get(call_id=call_id)


def _inbound_exists(*, session: WhatsAppSession, meta_message_id: str) -> bool:
    return WhatsAppMessage.objects.filter(
        session=session, direction=Direction.INBOUND, meta_message_id=meta_message_id
    ).exists()


def _session_end(*, session: WhatsAppSession) -> None:
    from calls.whatsapp.services import whatsapp_session_end

    whatsapp_session_end(session=session, reason=EndReason.HANGUP)


async def whatsapp_call_command(*, command: Command) -> dict[str, Any]:
    """A call command on a WhatsApp session's call (its organisation was checked by the caller)."""
    session = await _db(_thread_of_call)(call_id=command.call_id)
    ack: dict[str, Any] = {"event": "ack", "requestId": command.request_id}
    action, fields = command.action, command.fields
    if action in ("say", "reply"):
        in_reply_to = fields.get("in_reply_to")
        if in_reply_to and not await _db(_inbound_exists)(session=session, meta_message_id=in_reply_to):
            raise CommandRefused(
                "unknown_message", f"inReplyTo: {in_reply_to!r} is not a message of this WhatsApp thread"
            )
        sent = await _queue(session, fields["text"], answering=[] if action == "say" else None)
        return {**ack, "messageId": sent}
    if action == "replyStream":
        return await _reply_stream(session, command, ack)
    if action == "toolResult":
        try:
            await whatsapp_tool_result(
                call_id=command.call_id, msg_id=fields["msg_id"], results=fields["results"]
            )
        except ToolResultRefused as refusal:
            raise CommandRefused("unknown_tool_call", refusal.message) from None
        return ack
    if action == "hangup":
        await _db(_session_end)(session=session)
        return ack
    raise CommandRefused(
        "not_supported", f"action: {action} has no meaning on a WhatsApp thread (callId {command.call_id})"
    )


async def _queue(session: WhatsAppSession, text: str, *, answering: list[int] | None) -> str:
    if session.ended_at is not None:
        raise CommandRefused(
            "call_ended",
            "callId: this WhatsApp session has ended (24 hours without a message from the contact)",
        )
    try:
        message = await _db(whatsapp_reply_queue)(
            session=session, text=text, author=WhatsAppMessage.Author.APP, answering=answering
        )
    except OutboxRefused as refusal:
        raise CommandRefused("invalid_field", refusal.message) from None
    return message.meta_message_id


async def _reply_stream(session: WhatsAppSession, command: Command, ack: dict[str, Any]) -> dict[str, Any]:
    fields = command.fields
    key = (command.call_id, fields["message_id"])
    if fields["op"] == "start":
        if key in _streams.texts:
            raise CommandRefused(
                "invalid_field", f"messageId: the stream {fields['message_id']!r} has started already"
            )
        if len(_streams.texts) >= STREAMS_MAX:
            raise CommandRefused("busy", "replyStream: too many streams open at once on WhatsApp threads")
        _streams.texts[key] = [fields.get("text") or ""]
        return ack
    pieces = _streams.texts.get(key)
    if pieces is None:
        raise CommandRefused(
            "unknown_stream", f"messageId: no stream {fields['message_id']!r} started on this call"
        )
    pieces.append(fields.get("text") or "")
    if sum(len(piece) for piece in pieces) > TEXT_MAX_CHARACTERS:
        del _streams.texts[key]
        raise CommandRefused(
            "invalid_field",
            f"text: a WhatsApp message holds at most {TEXT_MAX_CHARACTERS} characters; the stream was dropped",
        )
    if fields["op"] == "chunk":
        return ack
    del _streams.texts[key]
    sent = await _queue(session, "".join(pieces), answering=None)
    return {**ack, "messageId": sent}
