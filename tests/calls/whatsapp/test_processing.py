"""Processing stored deliveries: sessions, calls, events, transcripts, statuses, duplicates, claims."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from calls import events
from calls.models import (
    Call,
    CallEvent,
    CallStatus,
    EndReason,
    Message,
    Transport,
    WhatsAppDelivery,
    WhatsAppMessage,
    WhatsAppSession,
)
from calls.whatsapp import services
from calls.whatsapp.processing import whatsapp_processing_round
from tests.calls.whatsapp.conftest import CONTACT, envelope, status, text_message

# Deliveries are stored by the webhook's own thread, which sees only committed rows.
pytestmark = pytest.mark.django_db(transaction=True)


def event_types(call: Call) -> list[str]:
    return list(CallEvent.objects.filter(call=call).order_by("cursor").values_list("type", flat=True))


def assert_events_match_the_vocabulary() -> None:
    for row in CallEvent.objects.all():
        events.event_validate(row.type, row.data)


def outbound(session: WhatsAppSession, message_id: str) -> WhatsAppMessage:
    return WhatsAppMessage.objects.create(
        session=session,
        meta_message_id=message_id,
        direction="outbound",
        text="Hello from Mara",
        status=WhatsAppMessage.Status.PENDING,
    )


def test_a_first_message_starts_a_session_with_a_whatsapp_call_events_and_a_transcript_line(
    channel, post_delivery, persona_a
):
    post_delivery(envelope(messages=[text_message("wamid.1", "Do you deliver?")]))
    assert whatsapp_processing_round() == 1

    session = WhatsAppSession.objects.get()
    assert (session.persona, session.contact_phone, session.contact_name) == (
        persona_a,
        CONTACT,
        "Sheena Nelson",
    )
    assert session.ended_at is None and session.last_inbound_at is not None
    call = session.call
    assert call.transport == Transport.WHATSAPP
    assert call.status == CallStatus.IN_PROGRESS
    assert call.from_address == CONTACT
    assert call.metadata["whatsapp"]["sessionId"] == str(session.pk)
    assert event_types(call) == ["call.started", "whatsapp.session_started", "whatsapp.message"]
    assert_events_match_the_vocabulary()
    message_event = CallEvent.objects.get(call=call, type="whatsapp.message").data
    assert message_event == {
        "callId": call.id,
        "sessionId": str(session.pk),
        "from": CONTACT,
        "name": "Sheena Nelson",
        "type": "text",
        "text": "Do you deliver?",
        "messageId": "wamid.1",
        "agent": persona_a.slug,
    }
    line = Message.objects.get(call=call)
    assert (line.role, line.text) == ("user", "Do you deliver?")
    recorded = WhatsAppMessage.objects.get(meta_message_id="wamid.1")
    assert (recorded.direction, recorded.status, recorded.type) == ("inbound", "received", "text")


def test_the_hook_for_answering_is_called_once_per_new_message(channel, post_delivery, monkeypatch):
    seen = []
    monkeypatch.setattr(
        services, "whatsapp_message_received", lambda *, message: seen.append(message.meta_message_id)
    )
    payload = envelope(messages=[text_message("wamid.1", "a"), text_message("wamid.2", "b")])
    post_delivery(payload)
    post_delivery(payload)  # Meta's retry
    whatsapp_processing_round()
    assert seen == ["wamid.1", "wamid.2"]


def test_a_batch_of_messages_and_statuses_is_processed_in_one_session(channel, post_delivery):
    post_delivery(envelope(messages=[text_message("wamid.1", "first")]))
    whatsapp_processing_round()
    session = WhatsAppSession.objects.get()
    outbound(session, "wamid.OUT1")
    outbound(session, "wamid.OUT2")
    payload = envelope(
        messages=[text_message("wamid.2", "second"), text_message("wamid.3", "third")],
        statuses=[status("wamid.OUT1", "sent"), status("wamid.OUT2", "delivered")],
    )
    payload["entry"].append(envelope(statuses=[status("wamid.OUT1", "read")])["entry"][0])
    post_delivery(payload)
    whatsapp_processing_round()

    assert WhatsAppSession.objects.count() == 1
    assert list(Message.objects.filter(call=session.call).values_list("text", flat=True)) == [
        "first",
        "second",
        "third",
    ]
    assert WhatsAppMessage.objects.get(meta_message_id="wamid.OUT1").status == "read"
    assert WhatsAppMessage.objects.get(meta_message_id="wamid.OUT2").status == "delivered"
    assert event_types(session.call).count("whatsapp.status") == 3
    assert event_types(session.call).count("whatsapp.message") == 3
    delivery = WhatsAppDelivery.objects.order_by("id").last()
    assert delivery.outcome["messages"] == 2 and delivery.outcome["statuses"] == 3
    assert_events_match_the_vocabulary()


def test_duplicate_message_ids_are_processed_once(channel, post_delivery):
    message = text_message("wamid.DUP", "hello")
    post_delivery(envelope(messages=[message, message]))  # twice in one batch
    post_delivery(envelope(messages=[message]))  # and redelivered
    whatsapp_processing_round()
    post_delivery(envelope(messages=[message]))  # and again after processing
    whatsapp_processing_round()

    assert WhatsAppMessage.objects.filter(meta_message_id="wamid.DUP").count() == 1
    call = WhatsAppSession.objects.get().call
    assert Message.objects.filter(call=call).count() == 1
    assert event_types(call).count("whatsapp.message") == 1
    assert WhatsAppDelivery.objects.filter(state=WhatsAppDelivery.State.PROCESSED).count() == 3


def test_statuses_out_of_order_never_move_a_message_backwards_and_duplicates_change_nothing(
    channel, post_delivery
):
    post_delivery(envelope(messages=[text_message("wamid.1", "hi")]))
    whatsapp_processing_round()
    session = WhatsAppSession.objects.get()
    outbound(session, "wamid.OUT")
    now = int(time.time())
    for name in ("read", "delivered", "sent", "read"):
        post_delivery(envelope(statuses=[status("wamid.OUT", name, at=now)]))
    whatsapp_processing_round()

    message = WhatsAppMessage.objects.get(meta_message_id="wamid.OUT")
    assert message.status == "read"
    assert message.sent_at and message.delivered_at and message.read_at
    assert event_types(session.call).count("whatsapp.status") == 3  # the repeated read: no event
    post_delivery(envelope(statuses=[status("wamid.OUT", "played")]))
    whatsapp_processing_round()
    message.refresh_from_db()
    assert message.status == "played"


def test_a_failed_status_records_metas_error_and_never_undoes_a_delivery(channel, post_delivery):
    post_delivery(envelope(messages=[text_message("wamid.1", "hi")]))
    whatsapp_processing_round()
    session = WhatsAppSession.objects.get()
    outbound(session, "wamid.F")
    outbound(session, "wamid.D")
    error = {
        "code": 131049,
        "title": "This message was not delivered to maintain healthy ecosystem engagement.",
    }
    post_delivery(
        envelope(
            statuses=[
                status("wamid.F", "sent"),
                status("wamid.F", "failed", errors=[{**error, "message": error["title"]}]),
                status("wamid.D", "delivered"),
                status("wamid.D", "failed", errors=[error]),
            ]
        )
    )
    whatsapp_processing_round()
    failed = WhatsAppMessage.objects.get(meta_message_id="wamid.F")
    assert (failed.status, failed.error_code, failed.error_title) == ("failed", 131049, error["title"])
    assert failed.failed_at is not None
    assert WhatsAppMessage.objects.get(meta_message_id="wamid.D").status == "delivered"
    assert_events_match_the_vocabulary()


def test_a_status_for_an_unknown_message_is_counted_and_kept_in_the_raw_delivery(channel, post_delivery):
    post_delivery(envelope(statuses=[status("wamid.NOT-OURS", "sent")]))
    whatsapp_processing_round()
    delivery = WhatsAppDelivery.objects.get()
    assert delivery.state == WhatsAppDelivery.State.PROCESSED
    assert delivery.outcome["unknownStatuses"] == 1


def test_a_message_after_the_window_closed_starts_a_new_session_and_the_old_call_ends(channel, post_delivery):
    day_ago = int(time.time()) - 25 * 3600
    post_delivery(envelope(messages=[text_message("wamid.OLD", "yesterday", at=day_ago)]))
    post_delivery(envelope(messages=[text_message("wamid.NEW", "today")]))
    whatsapp_processing_round()

    old, new = WhatsAppSession.objects.order_by("id")
    assert old.ended_at is not None and new.ended_at is None
    assert old.call_id != new.call_id
    old_call = Call.objects.get(pk=old.call_id)
    assert (old_call.status, old_call.end_reason) == (CallStatus.ENDED, EndReason.IDLE_TIMEOUT)
    assert event_types(old_call)[-1] == "call.ended"
    assert event_types(new.call)[:2] == ["call.started", "whatsapp.session_started"]
    assert old.messages.get().meta_message_id == "wamid.OLD"
    assert new.messages.get().meta_message_id == "wamid.NEW"


def test_a_session_whose_window_closed_is_ended_by_the_processor_without_a_new_message(
    channel, post_delivery
):
    post_delivery(envelope(messages=[text_message("wamid.1", "hi")]))
    whatsapp_processing_round()
    session = WhatsAppSession.objects.get()
    WhatsAppSession.objects.filter(pk=session.pk).update(
        last_inbound_at=timezone.now() - timedelta(hours=24, seconds=1)
    )
    whatsapp_processing_round()
    session.refresh_from_db()
    assert session.ended_at is not None
    assert Call.objects.get(pk=session.call_id).end_reason == EndReason.IDLE_TIMEOUT


def test_other_message_kinds_are_recorded_with_their_media_and_metadata(channel, post_delivery):
    base = {"from": CONTACT, "timestamp": str(int(time.time()))}
    messages = [
        {
            **base,
            "id": "wamid.V",
            "type": "audio",
            "audio": {"id": "MEDIA1", "mime_type": "audio/ogg; codecs=opus", "voice": True},
        },
        {
            **base,
            "id": "wamid.I",
            "type": "image",
            "image": {"id": "MEDIA2", "mime_type": "image/jpeg", "caption": "our cake"},
        },
        {
            **base,
            "id": "wamid.D",
            "type": "document",
            "document": {"id": "MEDIA3", "mime_type": "application/pdf", "filename": "menu.pdf"},
        },
        {**base, "id": "wamid.R", "type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": "👍"}},
        {
            **base,
            "id": "wamid.L",
            "type": "location",
            "location": {"latitude": 1.5, "longitude": 2.5, "name": "Linden St"},
        },
        {
            **base,
            "id": "wamid.B",
            "type": "interactive",
            "interactive": {"type": "button_reply", "button_reply": {"id": "h", "title": "Talk to agent"}},
        },
        {
            **base,
            "id": "wamid.U",
            "type": "unsupported",
            "errors": [{"code": 131051, "title": "Message type unknown"}],
            "unsupported": {"type": "poll_update"},
        },
    ]
    post_delivery(envelope(messages=messages))
    whatsapp_processing_round()
    recorded = {message.meta_message_id: message for message in WhatsAppMessage.objects.all()}
    assert (recorded["wamid.V"].type, recorded["wamid.V"].media_id, recorded["wamid.V"].mime_type) == (
        "audio",
        "MEDIA1",
        "audio/ogg; codecs=opus",
    )
    assert recorded["wamid.V"].metadata["audio"]["voice"] is True
    assert (recorded["wamid.I"].type, recorded["wamid.I"].text) == ("image", "our cake")
    assert recorded["wamid.D"].metadata["document"]["filename"] == "menu.pdf"
    assert (recorded["wamid.R"].type, recorded["wamid.R"].text) == ("reaction", "👍")
    assert (recorded["wamid.L"].type, recorded["wamid.L"].text) == ("location", "Linden St")
    assert (recorded["wamid.B"].type, recorded["wamid.B"].text) == ("text", "Talk to agent")
    assert recorded["wamid.U"].type == "unsupported"
    assert recorded["wamid.U"].metadata["errors"][0]["code"] == 131051
    assert_events_match_the_vocabulary()


# --- Claims ---------------------------------------------------------------------------------


def test_a_claim_left_by_a_killed_worker_is_taken_again_once_its_lease_expired_and_processed_once(
    channel, post_delivery
):
    post_delivery(envelope(messages=[text_message("wamid.K", "hello")]))
    lease = timedelta(seconds=60)
    assert services.whatsapp_deliveries_claim(worker="killed", lease=lease)
    # The killed worker never finishes. While its lease runs, nobody else takes the delivery.
    assert whatsapp_processing_round(worker="survivor") == 0
    WhatsAppDelivery.objects.update(lease_until=timezone.now() - timedelta(seconds=1))
    assert whatsapp_processing_round(worker="survivor") == 1
    delivery = WhatsAppDelivery.objects.get()
    assert (delivery.state, delivery.lease_owner, delivery.attempts) == ("processed", "survivor", 2)
    # The killed worker, had it come back, cannot process it a second time.
    assert services.whatsapp_delivery_process(delivery_id=delivery.pk, worker="killed") is False
    assert whatsapp_processing_round(worker="another") == 0
    assert WhatsAppMessage.objects.filter(meta_message_id="wamid.K").count() == 1
    assert CallEvent.objects.filter(type="whatsapp.message").count() == 1


def test_a_worker_whose_lease_was_taken_over_does_not_process(channel, post_delivery):
    post_delivery(envelope(messages=[text_message("wamid.S", "hello")]))
    services.whatsapp_deliveries_claim(worker="slow", lease=timedelta(seconds=-1))  # already expired
    services.whatsapp_deliveries_claim(worker="fast", lease=timedelta(seconds=60))
    assert (
        services.whatsapp_delivery_process(delivery_id=WhatsAppDelivery.objects.get().pk, worker="slow")
        is False
    )
    assert whatsapp_processing_round(worker="fast") == 0  # still leased to fast, not expired
    assert (
        services.whatsapp_delivery_process(delivery_id=WhatsAppDelivery.objects.get().pk, worker="fast")
        is True
    )
    assert WhatsAppMessage.objects.count() == 1


def test_a_delivery_failing_on_the_database_is_retried_then_given_up(channel, post_delivery, monkeypatch):
    from django.db import OperationalError

    post_delivery(envelope(messages=[text_message("wamid.E", "hello")]))

    def broken(**kwargs):
        raise OperationalError("deadlock detected")

    monkeypatch.setattr(services, "whatsapp_delivery_process", broken)
    for _ in range(services.MAX_PROCESSING_ATTEMPTS):
        WhatsAppDelivery.objects.update(lease_until=None)
        whatsapp_processing_round()
    delivery = WhatsAppDelivery.objects.get()
    assert delivery.state == WhatsAppDelivery.State.FAILED
    assert "deadlock detected" in delivery.error
