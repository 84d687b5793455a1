"""Writes for WhatsApp: stored deliveries, their claims, sessions per contact, messages, statuses.

Processing a delivery is one transaction: its sessions, messages, transcript lines and events,
and the mark that it was processed, commit together or not at all. A claim (`lease_owner`,
`lease_until`) says which process works on it; a claim whose lease expired is taken by
another, and the mark is only written by the claim's owner, under the delivery's row lock, so
a delivery's effects happen once. Inside a delivery, a message id already recorded is a
duplicate (Meta delivers at least once) and a status already recorded changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from calls import events
from calls.models import (
    Call,
    Direction,
    EndReason,
    Transport,
    WhatsAppChannel,
    WhatsAppDelivery,
    WhatsAppMessage,
    WhatsAppSession,
)
from calls.publishing import call_event_publish, call_events_lock
from calls.services import call_end, call_start, message_record
from calls.whatsapp.outbox import whatsapp_outbound_by_callback
from calls.whatsapp.payloads import InboundMessage, PayloadProblem, StatusUpdate, delivery_parse
from calls.whatsapp.selectors import (
    signature_valid,
    whatsapp_channel_by_phone_number_id,
    whatsapp_session_open,
)
from personas.models import Persona

logger = logging.getLogger(__name__)

# Meta's customer-service window: free-form replies are allowed this long after the contact's
# last message; when it closes the session ends, and a later message starts a new one.
CUSTOMER_SERVICE_WINDOW = timedelta(hours=24)
# A delivery whose processing failed on the database (a conflict with another process, say)
# is tried again this many times in all before it is marked failed.
MAX_PROCESSING_ATTEMPTS = 5
# Seconds before a delivery that failed that way is tried again, times its attempts so far.
RETRY_BACKOFF_SECONDS = 2.0

# Kinds a person would not answer: a reaction to a message, a sticker on its own.
NO_REPLY_KINDS = frozenset({WhatsAppMessage.Kind.REACTION, WhatsAppMessage.Kind.STICKER})

# Statuses only move forward in this order (Meta's arrive out of order: `read` may come
# before `delivered`); `failed` follows `sent` but never undoes a delivery.
STATUS_RANK = {
    WhatsAppMessage.Status.RECEIVED: 0,
    WhatsAppMessage.Status.PENDING: 0,
    WhatsAppMessage.Status.SENT: 1,
    WhatsAppMessage.Status.FAILED: 2,
    WhatsAppMessage.Status.DELIVERED: 3,
    WhatsAppMessage.Status.READ: 4,
    WhatsAppMessage.Status.PLAYED: 5,
}


# --- Deliveries: store, claim, release ----------------------------------------------------


def whatsapp_delivery_store(*, body: bytes, signature: str) -> WhatsAppDelivery:
    """Keep a webhook POST exactly as received; it is processed after the answer."""
    return WhatsAppDelivery.objects.create(body=body, signature=signature[:100])


def whatsapp_deliveries_claim(*, worker: str, lease: timedelta, limit: int = 20) -> list[int]:
    """Claim pending deliveries nobody holds (or whose holder's lease expired), oldest first.

    PostgreSQL: rows another process is claiming are skipped (`skip_locked`), not waited for.
    SQLite: the transaction takes the database's one write lock at BEGIN (IMMEDIATE), so
    claims are serialised and `select_for_update` is not needed (Django leaves it out).
    """
    now = timezone.now()
    with transaction.atomic():
        claimable = (
            WhatsAppDelivery.objects.filter(state=WhatsAppDelivery.State.PENDING)
            .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
            .order_by("id")
            .select_for_update(skip_locked=True)
        )
        ids = list(claimable.values_list("pk", flat=True)[:limit])
        if ids:
            WhatsAppDelivery.objects.filter(pk__in=ids).update(
                lease_owner=worker, lease_until=now + lease, attempts=F("attempts") + 1
            )
    return ids


def whatsapp_delivery_release(*, delivery_id: int, worker: str, error: str) -> None:
    """Processing failed on the database: try again later, or give up after enough attempts."""
    now = timezone.now()
    claimed = WhatsAppDelivery.objects.filter(
        pk=delivery_id, state=WhatsAppDelivery.State.PENDING, lease_owner=worker
    )
    delivery = claimed.first()
    if delivery is None:
        return
    if delivery.attempts >= MAX_PROCESSING_ATTEMPTS:
        claimed.update(state=WhatsAppDelivery.State.FAILED, processed_at=now, lease_until=None, error=error)
        logger.error(
            "whatsapp delivery %s failed %d times; given up: %s", delivery_id, delivery.attempts, error
        )
    else:
        retry_at = now + timedelta(seconds=RETRY_BACKOFF_SECONDS * delivery.attempts)
        claimed.update(lease_until=retry_at, error=error)
        logger.warning("whatsapp delivery %s will be retried: %s", delivery_id, error)


# --- Processing one delivery ----------------------------------------------------------------


@dataclass
class _Processing:
    delivery: WhatsAppDelivery
    now: datetime
    channels: dict[str, WhatsAppChannel | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    received: list[WhatsAppMessage] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "messages": 0,
            "duplicateMessages": 0,
            "statuses": 0,
            "duplicateStatuses": 0,
            "unknownStatuses": 0,
            "skipped": 0,
        }
    )

    def channel(self, phone_number_id: str) -> WhatsAppChannel | None:
        """The channel of that number, if its app secret is the one that signed this delivery.

        A delivery signed with one app's secret cannot speak for another app's number.
        """
        if phone_number_id not in self.channels:
            channel = whatsapp_channel_by_phone_number_id(phone_number_id=phone_number_id)
            if channel is None:
                self.problems.append(f"phone number id {phone_number_id}: no enabled WhatsApp channel")
            elif not signature_valid(
                body=bytes(self.delivery.body),
                signature=self.delivery.signature,
                app_secret=channel.app_secret,
            ):
                self.problems.append(
                    f"phone number id {phone_number_id}: not signed with its channel's app secret"
                )
                channel = None
            self.channels[phone_number_id] = channel
        return self.channels[phone_number_id]


def whatsapp_delivery_process(*, delivery_id: int, worker: str) -> bool:
    """Process a delivery this worker has claimed; False if it no longer holds it.

    A malformed body is marked failed with the reason (visible in the admin) and logged; one
    bad item in a batch is reported the same way and the others are processed. Database errors
    propagate (the caller releases the claim, and the delivery is tried again).
    """
    with transaction.atomic():
        # The event log's lock first (PostgreSQL): processing waits on other processes' rows
        # (a message id they are recording), and they on the log; always in this order, the
        # two cannot deadlock. It holds other events back while a delivery is processed
        # (milliseconds for Meta's usual one-update deliveries).
        call_events_lock()
        delivery = (
            WhatsAppDelivery.objects.select_for_update()
            .filter(pk=delivery_id, state=WhatsAppDelivery.State.PENDING, lease_owner=worker)
            .first()
        )
        if delivery is None:
            return False
        run = _Processing(delivery=delivery, now=timezone.now())
        try:
            contents = delivery_parse(bytes(delivery.body))
        except PayloadProblem as problem:
            logger.warning("whatsapp delivery %s is malformed: %s", delivery.pk, problem)
            _delivery_finish(delivery, state=WhatsAppDelivery.State.FAILED, error=f"malformed: {problem}")
            return True
        run.problems.extend(contents.problems)
        for message in contents.messages:
            _item_apply(
                run, message.message_id, lambda message=message: _inbound_apply(run, message), inbound=True
            )
        for status in contents.statuses:
            _item_apply(run, status.message_id, lambda status=status: _status_apply(run, status))
        if contents.errors:
            run.problems.append(f"Meta reported errors: {contents.errors!r}"[:2000])
        if run.problems:
            logger.warning(
                "whatsapp delivery %s: %d problem(s): %s",
                delivery.pk,
                len(run.problems),
                "; ".join(run.problems),
            )
        delivery.outcome = run.counts
        _delivery_finish(delivery, state=WhatsAppDelivery.State.PROCESSED, error="\n".join(run.problems))
    for message in run.received:
        try:
            whatsapp_message_received(message=message)
        except Exception:
            logger.exception("whatsapp: answering message %s failed", message.meta_message_id)
    return True


def _delivery_finish(delivery: WhatsAppDelivery, *, state: str, error: str) -> None:
    delivery.state = state
    delivery.error = error
    delivery.processed_at = timezone.now()
    delivery.lease_until = None
    delivery.save(update_fields=["state", "error", "processed_at", "lease_until", "outcome"])


def _item_apply(run: _Processing, item_id: str, apply: Any, *, inbound: bool = False) -> None:
    """One message or status, in a savepoint: a bug with one item does not lose the others."""
    try:
        with transaction.atomic():
            apply()
    except IntegrityError:
        if inbound and WhatsAppMessage.objects.filter(meta_message_id=item_id).exists():
            # Another process recorded the same message (Meta's redelivery) as this one tried.
            run.counts["duplicateMessages"] += 1
            return
        raise  # another conflict (two first messages of a contact at once): tried again
    except DatabaseError:
        raise  # a conflict with another process: the whole delivery is tried again
    except Exception as error:
        logger.exception("whatsapp delivery %s: item %s failed", run.delivery.pk, item_id)
        run.problems.append(f"{item_id}: {type(error).__name__}: {error}")
        run.counts["skipped"] += 1


# --- Sessions -----------------------------------------------------------------------------


def _window_closed(session: WhatsAppSession, at: datetime) -> bool:
    return session.last_inbound_at is not None and at >= session.last_inbound_at + CUSTOMER_SERVICE_WINDOW


def whatsapp_session_start(
    *, channel: WhatsAppChannel, contact: str, contact_name: str, at: datetime
) -> WhatsAppSession:
    """A new session for a contact: its Call (transport whatsapp) starts, then the session event."""
    persona = channel.persona
    session = WhatsAppSession.objects.create(
        organization_id=persona.organization_id,
        persona=persona,
        phone_number_id=channel.phone_number_id,
        contact_phone=contact,
        contact_name=contact_name[:200],
        last_inbound_at=at,
    )
    call = Call.objects.create(
        organization_id=persona.organization_id,
        persona=persona,
        transport=Transport.WHATSAPP,
        direction=Direction.INBOUND,
        from_address=contact,
        to_address=channel.display_phone_number or channel.phone_number_id,
        metadata={
            "whatsapp": {
                "sessionId": str(session.pk),
                "phoneNumberId": channel.phone_number_id,
                "contactName": contact_name,
            }
        },
    )
    session.call = call_start(call=call)
    session.save(update_fields=["call"])
    call_event_publish(
        call=session.call,
        event=events.WhatsAppSessionStarted(
            session_id=str(session.pk), contact_phone=contact, contact_name=contact_name
        ),
        at=at,
    )
    return session


def whatsapp_session_end(*, session: WhatsAppSession, reason: str = EndReason.IDLE_TIMEOUT) -> bool:
    """End a session (once) and its call. The window closing is `idle_timeout`: the contact
    has been silent for 24 hours (the seed's reasons have none closer)."""
    with transaction.atomic():
        call_events_lock()  # before the session's row: see whatsapp_delivery_process
        ended = WhatsAppSession.objects.filter(pk=session.pk, ended_at__isnull=True).update(
            ended_at=timezone.now()
        )
        if ended and session.call_id:
            call_end(call=Call.objects.select_related("persona").get(pk=session.call_id), reason=reason)
    return bool(ended)


def whatsapp_sessions_expire(*, now: datetime | None = None) -> int:
    """End the sessions whose window has closed; how many."""
    cutoff = (now or timezone.now()) - CUSTOMER_SERVICE_WINDOW
    expired = WhatsAppSession.objects.filter(ended_at__isnull=True, last_inbound_at__lt=cutoff)
    return sum(whatsapp_session_end(session=session) for session in expired)


# --- Inbound messages and statuses --------------------------------------------------------


def transcript_message_id(meta_message_id: str) -> str:
    """The transcript line's id for a WhatsApp message (wamids can exceed the column's 64)."""
    return "wa_" + hashlib.sha256(meta_message_id.encode("utf-8")).hexdigest()[:32]


def transcript_line(kind: str, text: str) -> str:
    if kind in (WhatsAppMessage.Kind.TEXT, WhatsAppMessage.Kind.AUDIO):
        return text or ("[voice note]" if kind == WhatsAppMessage.Kind.AUDIO else "")
    return f"[{kind}] {text}".strip()


def _inbound_apply(run: _Processing, message: InboundMessage) -> None:
    if WhatsAppMessage.objects.filter(meta_message_id=message.message_id).exists():
        run.counts["duplicateMessages"] += 1
        return
    channel = run.channel(message.phone_number_id)
    if channel is None:
        run.counts["skipped"] += 1
        return
    at = message.sent_at or run.now
    session = whatsapp_session_open(phone_number_id=channel.phone_number_id, contact=message.contact)
    if session is not None and _window_closed(session, at):
        whatsapp_session_end(session=session)
        session = None
    if session is None:
        session = whatsapp_session_start(
            channel=channel, contact=message.contact, contact_name=message.contact_name, at=at
        )
    else:
        changed = []
        if session.last_inbound_at is None or at > session.last_inbound_at:
            session.last_inbound_at, changed = at, [*changed, "last_inbound_at"]
        if message.contact_name and message.contact_name != session.contact_name:
            session.contact_name, changed = message.contact_name[:200], [*changed, "contact_name"]
        if changed:
            session.save(update_fields=changed)
    # A voice note is told (`whatsapp.message`, the transcript line) once transcribed: its
    # `text` is the transcript (`calls.whatsapp.answering`).
    transcribe = message.kind == WhatsAppMessage.Kind.AUDIO and bool(message.media_id)
    recorded = WhatsAppMessage.objects.create(
        session=session,
        meta_message_id=message.message_id,
        direction=Direction.INBOUND,
        type=message.kind,
        text=message.text,
        media_id=message.media_id,
        mime_type=message.mime_type,
        metadata=message.metadata,
        sent_by_contact_at=message.sent_at,
        status=WhatsAppMessage.Status.RECEIVED,
        delivery=run.delivery,
        needs_transcript=transcribe,
        needs_answer=not session.human_takeover and message.kind not in NO_REPLY_KINDS,
    )
    if not transcribe:
        whatsapp_message_tell(message=recorded, session=session)
    run.counts["messages"] += 1
    run.received.append(recorded)


def whatsapp_message_tell(*, message: WhatsAppMessage, session: WhatsAppSession) -> None:
    """An inbound message's transcript line and `whatsapp.message` event."""
    call = session.call
    assert call is not None  # every session made here has one
    at = message.sent_by_contact_at or timezone.now()
    message_record(
        call=call,
        message_id=transcript_message_id(message.meta_message_id),
        role="user",
        text=transcript_line(message.type, message.text),
        started_at=at,
        ended_at=at,
    )
    call_event_publish(
        call=call,
        event=events.WhatsAppMessageReceived(
            session_id=str(session.pk),
            from_address=session.contact_phone,
            name_=session.contact_name,
            type=message.type,
            text=message.text,
            message_id=message.meta_message_id,
        ),
        at=at,
    )


def _status_apply(run: _Processing, status: StatusUpdate) -> None:
    message = (
        WhatsAppMessage.objects.select_for_update(of=("self",))
        .select_related("session", "session__call", "session__call__persona")
        .filter(meta_message_id=status.message_id)
        .first()
    )
    if message is None and status.callback_data:
        # A send whose answer was lost (timed out, or its process stopped): Meta's statuses
        # still carry the placeholder id, so the message is recognised and takes its wamid.
        message = whatsapp_outbound_by_callback(callback_data=status.callback_data)
        if message is not None:
            logger.info("whatsapp message %s: a send thought lost reached Meta", message.pk)
            message.meta_message_id = status.message_id
            message.status = WhatsAppMessage.Status.SENT
            message.error = ""
            message.failed_at = None
            message.save(update_fields=["meta_message_id", "status", "error", "failed_at"])
    if message is None:
        # Not a message Parley recorded (sent by another system on the number, or the send's
        # row is not committed yet); the raw delivery keeps it.
        run.counts["unknownStatuses"] += 1
        return
    time_field = f"{status.status}_at"
    if getattr(message, time_field) is not None:
        run.counts["duplicateStatuses"] += 1
        return
    setattr(message, time_field, status.at or run.now)
    changed = [time_field]
    if STATUS_RANK[status.status] > STATUS_RANK.get(message.status, 0):
        message.status = status.status
        changed.append("status")
    if status.status == WhatsAppMessage.Status.FAILED:
        message.error_code = status.error_code
        message.error_title = status.error_title
        message.error = status.error_message or status.error_title
        changed += ["error_code", "error_title", "error"]
    message.save(update_fields=changed)
    call = message.session.call
    if call is not None:
        call_event_publish(
            call=call,
            event=events.WhatsAppStatus(
                status=status.status,
                recipient=status.recipient or message.session.contact_phone,
                message_id=status.message_id,
            ),
            at=status.at,
        )
    run.counts["statuses"] += 1


# --- Where answering hooks in ---------------------------------------------------------------


def whatsapp_message_received(*, message: WhatsAppMessage) -> None:
    """A contact's message was recorded (once per message id), after its delivery committed.

    The answerer (`calls.whatsapp.answering`) owes it its transcript and answer; the work is
    in the message's row (`needs_transcript`, `needs_answer`), so a process killed before it
    is done leaves it to another.
    """
    from calls.whatsapp.answering import answerer_wake

    answerer_wake()


# --- Kept media: purged with the persona's recordings ---------------------------------------


def whatsapp_media_expired(*, now: datetime | None = None) -> QuerySet[WhatsAppMessage]:
    """Messages whose kept media (a voice note's audio) is older than their persona's recording
    retention (a persona without one keeps it): contacts' voice are kept as long as calls' are."""
    now = now or timezone.now()
    retentions = (
        Persona.objects.filter(recording_retention_days__isnull=False)
        .values_list("recording_retention_days", flat=True)
        .distinct()
    )
    expired = Q(pk__in=[])
    for days in retentions:
        expired |= Q(
            session__persona__recording_retention_days=days, created_at__lt=now - timedelta(days=days)
        )
    return WhatsAppMessage.objects.exclude(media_file="").filter(expired).select_related("session")


def whatsapp_media_purge(
    *, now: datetime | None = None, dry_run: bool = False
) -> tuple[list[tuple[WhatsAppMessage, str]], list[tuple[WhatsAppMessage, str]]]:
    """Delete expired kept media, file then reference (the message and its transcript stay);
    with `dry_run`, only say which. What was (or would be) deleted with its file's name, and
    what failed with why."""
    purged: list[tuple[WhatsAppMessage, str]] = []
    failed: list[tuple[WhatsAppMessage, str]] = []
    for message in whatsapp_media_expired(now=now):
        name = message.media_file.name
        if not dry_run:
            try:
                message.media_file.delete(save=False)
            except Exception as error:
                logger.exception("whatsapp message %s: its media file could not be deleted", message.pk)
                failed.append((message, str(error)))
                continue
            WhatsAppMessage.objects.filter(pk=message.pk).update(media_file="")
        purged.append((message, name))
    return purged, failed
