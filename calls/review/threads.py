"""Reads for a WhatsApp thread's review page: its messages as conversation bubbles, with ticks.

Drawn as a call is (`calls.review.selectors.call_conversation`): the contact's bubbles left, the
persona's (or a staff member's, or an app's) right, each with its clock time and the time since
the thread began; outbound ones carry WhatsApp's ticks, and a failed one Meta's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from calls.models import WhatsAppMessage, WhatsAppSession
from calls.review.selectors import offset_label

# Ticks as WhatsApp shows them, by status.
TICKS = {
    WhatsAppMessage.Status.PENDING: "🕓",
    WhatsAppMessage.Status.SENT: "✓",
    WhatsAppMessage.Status.DELIVERED: "✓✓",
    WhatsAppMessage.Status.READ: "✓✓",
    WhatsAppMessage.Status.PLAYED: "✓✓",
    WhatsAppMessage.Status.FAILED: "✗",
}
# What each status means, said in full beside the ticks.
TICK_WORDS = {
    WhatsAppMessage.Status.PENDING: "waiting to be sent",
    WhatsAppMessage.Status.SENT: "sent",
    WhatsAppMessage.Status.DELIVERED: "delivered",
    WhatsAppMessage.Status.READ: "read",
    WhatsAppMessage.Status.PLAYED: "played",
    WhatsAppMessage.Status.FAILED: "failed",
}


@dataclass(frozen=True)
class ThreadBubble:
    """One message of the thread as the page draws it."""

    pk: int
    outbound: bool
    author: str  # "contact", "persona", "human" or "app"
    author_label: str
    kind: str
    kind_label: str
    text: str
    at: datetime
    offset_label: str
    status: str
    ticks: str
    tick_words: str
    failure: str  # Meta's reason for a failed send
    transcript_error: str
    has_audio: bool

    @property
    def is_voice_note(self) -> bool:
        return self.kind == WhatsAppMessage.Kind.AUDIO


def failure_reason(message: WhatsAppMessage) -> str:
    """Meta's reason for a failed send: its code and title, and the detail if it adds to them."""
    if message.status != WhatsAppMessage.Status.FAILED:
        return ""
    head = f"{message.error_code}: " if message.error_code else ""
    title = message.error_title or message.error or "no reason given"
    detail = message.error if message.error and message.error != title and message.error_title else ""
    return f"{head}{title}" + (f" ({detail})" if detail else "")


def whatsapp_thread_bubbles(session: WhatsAppSession) -> list[ThreadBubble]:
    """The thread's messages, oldest first, as bubbles."""
    messages = list(session.messages.order_by("created_at", "id"))
    # From the first message: the contact wrote it (Meta's time) a moment before the thread began.
    times = [moment for moment in (session.started_at, *(m.sent_by_contact_at for m in messages)) if moment]
    start = min(times) if times else None
    bubbles = []
    for message in messages:
        outbound = message.direction == "outbound"
        author = (message.author or WhatsAppMessage.Author.PERSONA) if outbound else "contact"
        if not outbound:
            label = session.contact_name or session.contact_phone
        elif author == WhatsAppMessage.Author.HUMAN:
            label = (message.metadata or {}).get("sentBy") or "Staff"
        elif author == WhatsAppMessage.Author.APP:
            label = "An app"
        else:
            label = session.persona.name
        at = message.sent_by_contact_at or message.created_at
        bubbles.append(
            ThreadBubble(
                pk=message.pk,
                outbound=outbound,
                author=author,
                author_label=label,
                kind=message.type,
                kind_label=message.get_type_display(),
                text=message.text,
                at=at,
                offset_label=offset_label((at - start).total_seconds() if start else None),
                status=message.status,
                ticks=TICKS.get(message.status, "") if outbound else "",
                tick_words=TICK_WORDS.get(message.status, message.status) if outbound else "",
                failure=failure_reason(message),
                transcript_error=(message.metadata or {}).get("transcriptError", ""),
                has_audio=bool(message.media_file),
            )
        )
    return bubbles


def whatsapp_voice_note(*, session_id: int, message_id: int) -> WhatsAppMessage | None:
    """A stored voice note of the thread (None: no such message, or its audio is not kept)."""
    message = (
        WhatsAppMessage.objects.select_related("session", "session__call")
        .filter(pk=message_id, session_id=session_id)
        .first()
    )
    return message if message is not None and message.media_file else None
