"""Outbound WhatsApp messages: queued in the database first, then sent once (`calls.whatsapp.answering`).

Every message Parley sends on WhatsApp — the persona's answer, a staff member's, an app's — is
first a `WhatsAppMessage` row with status `pending` and a placeholder id (`parley_…`), written
in the same transaction that marks the inbound messages it answers as answered. The answerer
then sends it. So an answer is never lost (the row outlives a killed process) and never sent
twice: a send is started at most once (`send_started_at`), and a send whose outcome is unknown
(the process died during it, or the request timed out) is not started again. The placeholder
goes to Meta as `biz_opaque_callback_data`, which comes back in status webhooks: a send whose
answer was lost is still recognised when its statuses arrive.

Takeover: while `human_takeover` is set on a session, nobody answers automatically; messages
are still recorded and voice notes transcribed.
"""

from __future__ import annotations

import logging
import secrets

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from calls import events
from calls.models import Direction, WhatsAppMessage, WhatsAppSession
from calls.publishing import call_event_publish
from calls.services import message_record
from calls.whatsapp.graph import TEXT_MAX_CHARACTERS

logger = logging.getLogger(__name__)

PLACEHOLDER_PREFIX = "parley_"


class OutboxRefused(ValueError):
    """A message that cannot be queued; `field` names what is wrong (for a 400 or an error frame)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def placeholder_id() -> str:
    """The id an outbound message has until Meta names it (also its callback data)."""
    return PLACEHOLDER_PREFIX + secrets.token_hex(16)


def text_fitted(text: str, *, limit: int = TEXT_MAX_CHARACTERS) -> str:
    """The persona's own answer within WhatsApp's limit, cut at a sentence end where it can be."""
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    for end in (". ", "! ", "? ", "\n"):
        at = cut.rfind(end)
        if at > limit // 2:
            return cut[: at + 1].rstrip()
    return cut.rstrip() + "…"


def _answer_wake() -> None:
    from calls.whatsapp.answering import answerer_wake  # answering imports this module

    answerer_wake()


def whatsapp_reply_queue(
    *,
    session: WhatsAppSession,
    text: str,
    author: str,
    answering: list[int] | None = None,
    only_if_owed: bool = False,
    metadata: dict[str, str] | None = None,
) -> WhatsAppMessage | None:
    """Queue `text` to the session's contact, answering the inbound messages `answering`
    (None: every one still owed an answer). Sent after the commit, by the answerer.

    `only_if_owed`: queue it only if those messages still await an answer (the persona's
    brain, which must not answer what a human or an app answered meanwhile); None if not.
    A human's or an app's text over WhatsApp's limit is refused (`OutboxRefused`); the
    persona's own is cut to fit.
    """
    if not isinstance(text, str) or not text.strip():
        raise OutboxRefused("text", "text: a WhatsApp message cannot be empty")
    if author == WhatsAppMessage.Author.PERSONA:
        text = text_fitted(text)
    elif len(text) > TEXT_MAX_CHARACTERS:
        raise OutboxRefused(
            "text",
            f"text: a WhatsApp message holds at most {TEXT_MAX_CHARACTERS} characters, this one has {len(text)}",
        )
    with transaction.atomic():
        owed = WhatsAppMessage.objects.select_for_update().filter(
            session=session, direction=Direction.INBOUND, needs_answer=True
        )
        if answering is not None:
            owed = owed.filter(pk__in=answering)
        owed_ids = list(owed.values_list("pk", flat=True))
        if only_if_owed and (not owed_ids or (answering is not None and len(owed_ids) < len(answering))):
            return None
        # Quoted: the newest message it answers (not one that came after it was written).
        newest = WhatsAppMessage.objects.filter(pk=max(owed_ids)).first() if owed_ids else None
        reply = WhatsAppMessage.objects.create(
            session=session,
            meta_message_id=placeholder_id(),
            direction=Direction.OUTBOUND,
            author=author,
            type=WhatsAppMessage.Kind.TEXT,
            text=text,
            status=WhatsAppMessage.Status.PENDING,
            reply_to=newest,
            metadata=metadata or {},
        )
        if owed_ids:
            WhatsAppMessage.objects.filter(pk__in=owed_ids).update(needs_answer=False)
        transaction.on_commit(_answer_wake)
    return reply


def whatsapp_human_send(
    *, session: WhatsAppSession, text: str, author: str = WhatsAppMessage.Author.HUMAN, sent_by: str = ""
) -> WhatsAppMessage:
    """A person (staff in the admin, or an app) writes on the thread; it answers whatever was
    owed. `sent_by`: who (a staff user's name), kept in the message's metadata."""
    if session.ended_at is not None:
        raise OutboxRefused(
            "sessionId",
            "sessionId: this WhatsApp session has ended (the contact has not written for 24 hours); "
            "only a template message may be sent now",
        )
    reply = whatsapp_reply_queue(
        session=session, text=text, author=author, metadata={"sentBy": sent_by} if sent_by else None
    )
    assert reply is not None
    return reply


def whatsapp_takeover_set(*, session: WhatsAppSession, paused: bool) -> bool:
    """Pause (a human takes over) or resume the persona's automatic answers; True if it changed.

    Pausing also drops the answers owed now: the human answers them.
    """
    with transaction.atomic():
        changed = (
            WhatsAppSession.objects.filter(pk=session.pk)
            .exclude(human_takeover=paused)
            .update(human_takeover=paused)
        )
        if paused:
            WhatsAppMessage.objects.filter(
                session=session, direction=Direction.INBOUND, needs_answer=True
            ).update(needs_answer=False)
    session.human_takeover = paused
    if changed:
        logger.info("whatsapp session %s: %s", session.pk, "taken over by a human" if paused else "resumed")
    return bool(changed)


# --- Sending: the answerer's bookkeeping --------------------------------------------------


def whatsapp_unsent(*, session_id: int) -> list[WhatsAppMessage]:
    """The session's queued messages that may be sent now, oldest first."""
    now = timezone.now()
    return list(
        WhatsAppMessage.objects.filter(
            session_id=session_id,
            direction=Direction.OUTBOUND,
            status=WhatsAppMessage.Status.PENDING,
            send_started_at__isnull=True,
        )
        .exclude(next_attempt_at__gt=now)
        .select_related("reply_to")
        .order_by("id")
    )


def whatsapp_send_started(*, message_id: int, worker: str) -> bool:
    """Mark a queued message as being sent by `worker`, which holds its session's claim; False if
    it was already started (by anyone) or the claim is no longer this worker's."""
    return bool(
        WhatsAppMessage.objects.filter(
            pk=message_id,
            status=WhatsAppMessage.Status.PENDING,
            send_started_at__isnull=True,
            session__answer_owner=worker,
            session__answer_until__gt=timezone.now(),
        ).update(send_started_at=timezone.now(), send_attempts=F("send_attempts") + 1)
    )


def whatsapp_send_accepted(*, message_id: int, meta_message_id: str) -> None:
    """Meta accepted it: its wamid replaces the placeholder; `whatsapp.response` and the
    persona's transcript line follow. (`sent` itself comes as a status webhook.)"""
    with transaction.atomic():
        message = WhatsAppMessage.objects.select_related("session", "session__call").get(pk=message_id)
        message.meta_message_id = meta_message_id
        message.status = WhatsAppMessage.Status.SENT
        message.error = ""
        message.save(update_fields=["meta_message_id", "status", "error"])
        _response_publish(message)


def _response_publish(message: WhatsAppMessage) -> None:
    from calls.whatsapp.services import transcript_message_id

    session = message.session
    call = session.call
    if call is None:
        return
    now = timezone.now()
    message_record(
        call=call,
        message_id=transcript_message_id(message.meta_message_id),
        role="persona",
        text=message.text,
        started_at=now,
        ended_at=now,
    )
    call_event_publish(
        call=call,
        event=events.WhatsAppResponse(
            session_id=str(session.pk),
            to_address=session.contact_phone,
            text=message.text,
            message_id=message.meta_message_id,
            author=message.author or WhatsAppMessage.Author.PERSONA,
        ),
    )


def whatsapp_send_failed(
    *, message_id: int, error: str, code: int | None = None, title: str = "", retry_at=None
) -> None:
    """Meta refused it. `retry_at`: refused for now (rate limit, outage), sent again then;
    otherwise it failed for good (outside the window, undeliverable...), with Meta's reason."""
    with transaction.atomic():
        message = WhatsAppMessage.objects.select_related("session", "session__call").get(pk=message_id)
        message.error = error[:2000]
        message.error_code = code
        message.error_title = title[:300]
        fields = ["error", "error_code", "error_title"]
        if retry_at is not None:
            message.send_started_at = None
            message.next_attempt_at = retry_at
            fields += ["send_started_at", "next_attempt_at"]
        else:
            message.status = WhatsAppMessage.Status.FAILED
            message.failed_at = timezone.now()
            fields += ["status", "failed_at"]
        message.save(update_fields=fields)
        if retry_at is None and message.session.call is not None:
            call_event_publish(
                call=message.session.call,
                event=events.WhatsAppStatus(
                    status="failed",
                    recipient=message.session.contact_phone,
                    message_id=message.meta_message_id,
                ),
            )


# Said of a send whose outcome is unknown; not sent again, so it cannot arrive twice.
UNCERTAIN_SEND = (
    "the send's outcome is unknown ({why}): it may have reached the contact, so it was not sent "
    "again (the Cloud API has no idempotency key); a status from Meta will still mark it sent"
)


def whatsapp_sends_interrupted(*, session_id: int) -> int:
    """Sends started by a process whose claim on the session expired (it was killed mid-send):
    marked failed as uncertain, never started again. How many."""
    interrupted = list(
        WhatsAppMessage.objects.filter(
            session_id=session_id,
            direction=Direction.OUTBOUND,
            status=WhatsAppMessage.Status.PENDING,
            send_started_at__isnull=False,
        ).values_list("pk", flat=True)
    )
    for message_id in interrupted:
        logger.warning("whatsapp message %s: its send was interrupted; not sent again", message_id)
        whatsapp_send_failed(
            message_id=message_id, error=UNCERTAIN_SEND.format(why="the sending process stopped during it")
        )
    return len(interrupted)


def whatsapp_outbound_by_callback(*, callback_data: str) -> WhatsAppMessage | None:
    """A message whose send's answer was lost, found by the callback data its statuses carry."""
    if not callback_data.startswith(PLACEHOLDER_PREFIX):
        return None
    return (
        WhatsAppMessage.objects.select_for_update(of=("self",))
        .select_related("session", "session__call")
        .filter(meta_message_id=callback_data, direction=Direction.OUTBOUND)
        .first()
    )
