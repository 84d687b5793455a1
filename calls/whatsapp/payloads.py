"""Meta's webhook JSON read into small typed records, item by item.

A delivery may batch many entries, changes, messages and statuses; one item that does not
have the expected shape is reported (`PayloadProblem`) and the others are still read. Only
a body that is not JSON at all, or not Meta's envelope, refuses the whole delivery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from webapp.inputs import InputRefused, json_parse

# Meta's payloads are small (a batch holds at most 1,000 updates): the webhook refuses more.
MAX_DELIVERY_BYTES = 1024 * 1024


class PayloadProblem(ValueError):
    """Something in a delivery that cannot be read; the message says where and what."""


@dataclass(frozen=True)
class InboundMessage:
    """One message a contact sent, normalised to what Parley records."""

    phone_number_id: str
    display_phone_number: str
    message_id: str
    contact: str  # the phone number (`from`), or the business-scoped user id when it is omitted
    contact_name: str
    sent_at: datetime | None
    kind: str  # a WhatsAppMessage.Kind value
    text: str
    media_id: str = ""
    mime_type: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StatusUpdate:
    """What happened to a message the persona sent."""

    phone_number_id: str
    message_id: str
    status: str  # sent, delivered, read, played, failed
    recipient: str
    at: datetime | None
    error_code: int | None = None
    error_title: str = ""
    error_message: str = ""
    # What the sender put in `biz_opaque_callback_data`: Parley's placeholder id of the message.
    callback_data: str = ""


@dataclass
class DeliveryContents:
    messages: list[InboundMessage] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # Account-level errors Meta reported (`value.errors`), kept as they came.
    errors: list[Any] = field(default_factory=list)
    ignored_fields: list[str] = field(default_factory=list)


STATUSES = ("sent", "delivered", "read", "played", "failed")
MEDIA_KINDS = ("audio", "image", "video", "document", "sticker")


def _text(value: Any, *, limit: int = 10_000) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _timestamp(value: Any) -> datetime | None:
    """Meta's Unix seconds (a string), or None when absent or unreadable."""
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadProblem(f"{where}: expected an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadProblem(f"{where}: expected a list")
    return value


def delivery_parse(body: bytes) -> DeliveryContents:
    """Read a delivery; raises PayloadProblem when the body is not JSON or not the envelope."""
    try:
        document = json_parse(body, max_bytes=MAX_DELIVERY_BYTES)
    except InputRefused as refusal:
        raise PayloadProblem(refusal.detail) from None
    root = _object(document, "body")
    if root.get("object") != "whatsapp_business_account":
        raise PayloadProblem(f"body.object: expected 'whatsapp_business_account', got {root.get('object')!r}")
    contents = DeliveryContents()
    for entry_index, entry in enumerate(_list(root.get("entry"), "body.entry")):
        where_entry = f"entry[{entry_index}]"
        try:
            changes = _list(_object(entry, where_entry).get("changes"), f"{where_entry}.changes")
        except PayloadProblem as problem:
            contents.problems.append(str(problem))
            continue
        for change_index, change in enumerate(changes):
            where = f"{where_entry}.changes[{change_index}]"
            try:
                _change_read(_object(change, where), where, contents)
            except PayloadProblem as problem:
                contents.problems.append(str(problem))
    return contents


def _change_read(change: dict[str, Any], where: str, contents: DeliveryContents) -> None:
    if change.get("field") != "messages":
        contents.ignored_fields.append(str(change.get("field")))
        return
    value = _object(change.get("value"), f"{where}.value")
    metadata = _object(value.get("metadata"), f"{where}.value.metadata")
    phone_number_id = metadata.get("phone_number_id")
    if not isinstance(phone_number_id, str) or not phone_number_id:
        raise PayloadProblem(f"{where}.value.metadata.phone_number_id: missing")
    display = _text(metadata.get("display_phone_number"))
    names: dict[str, str] = {}
    for contact in _list(value.get("contacts"), f"{where}.value.contacts"):
        if isinstance(contact, dict):
            name = _text(
                (contact.get("profile") or {}).get("name") if isinstance(contact.get("profile"), dict) else ""
            )
            for key in ("wa_id", "user_id"):
                if isinstance(contact.get(key), str):
                    names[contact[key]] = name
    for index, message in enumerate(_list(value.get("messages"), f"{where}.value.messages")):
        try:
            contents.messages.append(
                _message_read(
                    _object(message, f"{where}.value.messages[{index}]"), phone_number_id, display, names
                )
            )
        except PayloadProblem as problem:
            contents.problems.append(f"{where}.value.messages[{index}]: {problem}")
    for index, status in enumerate(_list(value.get("statuses"), f"{where}.value.statuses")):
        try:
            contents.statuses.append(
                _status_read(_object(status, f"{where}.value.statuses[{index}]"), phone_number_id)
            )
        except PayloadProblem as problem:
            contents.problems.append(f"{where}.value.statuses[{index}]: {problem}")
    contents.errors.extend(_list(value.get("errors"), f"{where}.value.errors"))


def _message_read(
    message: dict[str, Any], phone_number_id: str, display: str, names: dict[str, str]
) -> InboundMessage:
    message_id = message.get("id")
    if not isinstance(message_id, str) or not message_id or len(message_id) > 128:
        raise PayloadProblem("id: missing or not a message id")
    contact = message.get("from") or message.get("from_user_id")
    if not isinstance(contact, str) or not contact or len(contact) > 32:
        raise PayloadProblem("from: missing")
    meta_type = message.get("type")
    if not isinstance(meta_type, str):
        raise PayloadProblem("type: missing")
    body = message.get(meta_type) if isinstance(message.get(meta_type), dict) else {}
    kind, text, media_id, mime_type = "unsupported", "", "", ""
    if meta_type == "text":
        kind, text = "text", _text(body.get("body"))
    elif meta_type == "interactive":
        reply = body.get(body.get("type")) if isinstance(body.get("type"), str) else None
        reply = reply if isinstance(reply, dict) else {}
        kind, text = "text", _text(reply.get("title") or reply.get("body"))
    elif meta_type == "button":
        kind, text = "text", _text(body.get("text") or body.get("payload"))
    elif meta_type in MEDIA_KINDS:
        kind, text = meta_type, _text(body.get("caption"))
        media_id, mime_type = _text(body.get("id"), limit=128), _text(body.get("mime_type"), limit=100)
    elif meta_type == "reaction":
        kind, text = "reaction", _text(body.get("emoji"))
    elif meta_type == "location":
        place = [_text(body.get("name")), _text(body.get("address"))]
        coordinates = f"{body.get('latitude')},{body.get('longitude')}"
        kind, text = "location", " — ".join(part for part in place if part) or coordinates
    elif meta_type == "contacts":
        kind = "contacts"
    metadata: dict[str, Any] = {"type": meta_type}
    if body:
        metadata[meta_type] = body
    for key in ("context", "errors", "referral"):
        if key in message:
            metadata[key] = message[key]
    return InboundMessage(
        phone_number_id=phone_number_id,
        display_phone_number=display,
        message_id=message_id,
        contact=contact,
        contact_name=names.get(contact, "") or names.get(_text(message.get("from_user_id")), ""),
        sent_at=_timestamp(message.get("timestamp")),
        kind=kind,
        text=text,
        media_id=media_id,
        mime_type=mime_type,
        metadata=metadata,
    )


def _status_read(status: dict[str, Any], phone_number_id: str) -> StatusUpdate:
    message_id = status.get("id")
    if not isinstance(message_id, str) or not message_id or len(message_id) > 128:
        raise PayloadProblem("id: missing or not a message id")
    name = status.get("status")
    if name not in STATUSES:
        raise PayloadProblem(f"status: {name!r} is not one of {', '.join(STATUSES)}")
    error_code, error_title, error_message = None, "", ""
    errors = status.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("code")
        error_code = code if isinstance(code, int) and abs(code) < 2**31 else None
        error_title = _text(errors[0].get("title"), limit=300)
        error_message = _text(errors[0].get("message"), limit=2000)
    return StatusUpdate(
        phone_number_id=phone_number_id,
        message_id=message_id,
        status=name,
        recipient=_text(status.get("recipient_id") or status.get("recipient_user_id"), limit=64),
        at=_timestamp(status.get("timestamp")),
        error_code=error_code,
        error_title=error_title,
        error_message=error_message,
        callback_data=_text(status.get("biz_opaque_callback_data"), limit=512),
    )
