"""Staff on WhatsApp threads in the admin: the conversation with ticks, takeover, a human's message."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from calls.models import WhatsAppMessage, WhatsAppSession
from calls.review.models import ReviewAction, ReviewAuditEntry
from calls.whatsapp.processing import whatsapp_processing_round
from tests.calls.whatsapp.conftest import CONTACT, envelope, text_message

# Deliveries are stored by the webhook's own thread, which sees only committed rows.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def session(channel, post_delivery) -> WhatsAppSession:
    assert (
        post_delivery(envelope(messages=[text_message("wamid.AD1", "Can I talk to someone?")])).status_code
        == 200
    )
    whatsapp_processing_round()
    return WhatsAppSession.objects.get(contact_phone=CONTACT)


def page(session: WhatsAppSession) -> str:
    return reverse("admin:calls_whatsappsession_change", args=[session.pk])


def test_the_thread_page_shows_the_conversation_and_the_takeover_controls(admin_client, session):
    reply = WhatsAppMessage.objects.create(
        session=session,
        meta_message_id="wamid.OUT1",
        direction="outbound",
        author="persona",
        text="Of course, one moment.",
        status=WhatsAppMessage.Status.DELIVERED,
    )
    WhatsAppMessage.objects.create(
        session=session,
        meta_message_id="wamid.OUT2",
        direction="outbound",
        author="persona",
        text="Are you still there?",
        status=WhatsAppMessage.Status.FAILED,
        error_code=131047,
        error_title="Re-engagement message",
    )
    html = admin_client.get(page(session)).content.decode()
    assert "Can I talk to someone?" in html
    assert reply.text in html
    assert "✓✓" in html
    assert "131047: Re-engagement message" in html
    assert "Take over (pause the persona)" in html
    assert "Write to the contact as" in html
    assert 'name="_save"' not in html and 'name="_continue"' not in html  # nothing to save here


def test_staff_take_the_thread_over_write_as_themselves_and_hand_it_back(admin_client, admin_user, session):
    response = admin_client.post(
        reverse("admin:calls_whatsappsession_takeover", args=[session.pk]), {"paused": "1"}
    )
    assert response.status_code == 302
    session.refresh_from_db()
    assert session.human_takeover is True
    assert not session.messages.filter(needs_answer=True).exists()  # the human answers it
    assert "Hand back to the persona" in admin_client.get(page(session)).content.decode()

    response = admin_client.post(
        reverse("admin:calls_whatsappsession_send", args=[session.pk]), {"text": "Hi, Ana here."}, follow=True
    )
    assert "Your message is on its way" in response.content.decode()
    sent = WhatsAppMessage.objects.get(direction="outbound")
    assert (sent.text, sent.author, sent.status) == ("Hi, Ana here.", "human", "pending")
    assert sent.metadata == {"sentBy": admin_user.get_username()}

    admin_client.post(reverse("admin:calls_whatsappsession_takeover", args=[session.pk]), {"paused": "0"})
    session.refresh_from_db()
    assert session.human_takeover is False


def test_a_message_too_long_or_empty_is_refused_with_a_clear_message_and_nothing_sent(admin_client, session):
    url = reverse("admin:calls_whatsappsession_send", args=[session.pk])
    for text in ("", "x" * 4097):
        body = admin_client.post(url, {"text": text}, follow=True).content.decode()
        assert "Not sent:" in body
    assert not WhatsAppMessage.objects.filter(direction="outbound").exists()


def test_an_ended_thread_takes_no_human_message(admin_client, session):
    from django.utils import timezone

    WhatsAppSession.objects.filter(pk=session.pk).update(ended_at=timezone.now())
    body = admin_client.post(
        reverse("admin:calls_whatsappsession_send", args=[session.pk]), {"text": "Hello?"}, follow=True
    ).content.decode()
    assert "Not sent:" in body
    assert "template" in body
    assert not WhatsAppMessage.objects.filter(direction="outbound").exists()


def test_staff_who_may_only_view_threads_cannot_take_over_or_write(session):
    viewer = User.objects.create_user("viewer", password="pw-viewer-1", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_whatsappsession"))
    client = Client()
    client.force_login(viewer)
    html = client.get(page(session)).content.decode()
    assert "Can I talk to someone?" in html
    assert "Take over" not in html
    assert (
        client.post(
            reverse("admin:calls_whatsappsession_takeover", args=[session.pk]), {"paused": "1"}
        ).status_code
        == 403
    )
    assert (
        client.post(reverse("admin:calls_whatsappsession_send", args=[session.pk]), {"text": "x"}).status_code
        == 403
    )
    session.refresh_from_db()
    assert session.human_takeover is False
    assert client.get(reverse("admin:calls_whatsappsession_takeover", args=[session.pk])).status_code == 405


def test_the_changelist_takes_several_threads_over_at_once(admin_client, session):
    response = admin_client.post(
        reverse("admin:calls_whatsappsession_changelist"),
        {"action": "take_over", "_selected_action": [session.pk]},
        follow=True,
    )
    assert "1 thread(s) taken over" in response.content.decode()
    session.refresh_from_db()
    assert session.human_takeover is True


# --- The thread as a conversation: voice notes, permissions, the audit log ----------------


def _staff(username: str, *codenames: str) -> Client:
    user = User.objects.create_user(username, password=f"pw-{username}-1", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="calls"))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def voice_note(session) -> WhatsAppMessage:
    """A voice note of the contact, transcribed, its audio kept as the answerer keeps it."""
    from calls.whatsapp.answering import whatsapp_media_keep

    message = WhatsAppMessage.objects.create(
        session=session,
        meta_message_id="wamid.VN1",
        direction="inbound",
        type="audio",
        media_id="MEDIA7",
        mime_type="audio/ogg; codecs=opus",
        text="Do you deliver on Saturday?",
        status=WhatsAppMessage.Status.RECEIVED,
    )
    whatsapp_media_keep(message_id=message.pk, data=b"OggS-voice-note-bytes", mime_type=message.mime_type)
    message.refresh_from_db()
    return message


def voice_url(message: WhatsAppMessage) -> str:
    return reverse("admin:calls_whatsappsession_voice_note", args=[message.session_id, message.pk])


def test_a_voice_note_plays_beside_its_transcript_and_listening_is_audited(admin_client, voice_note):
    html = admin_client.get(page(voice_note.session)).content.decode()
    assert "Do you deliver on Saturday?" in html
    assert f'src="{voice_url(voice_note)}"' in html
    assert ReviewAuditEntry.objects.count() == 0  # shown is not listened: the player loads on play

    response = admin_client.get(voice_url(voice_note))
    assert response.status_code == 200
    assert response["Content-Type"] == "audio/ogg; codecs=opus"
    assert b"".join(response.streaming_content) == b"OggS-voice-note-bytes"
    [entry] = ReviewAuditEntry.objects.all()
    assert entry.action == ReviewAction.LISTENED and entry.call_ref == voice_note.session.call_id
    assert entry.detail == {"whatsappThread": voice_note.session_id, "voiceNote": "wamid.VN1"}


def test_keeping_a_voice_note_twice_keeps_the_first(voice_note):
    from calls.whatsapp.answering import whatsapp_media_keep

    name = voice_note.media_file.name
    whatsapp_media_keep(message_id=voice_note.pk, data=b"other", mime_type="audio/ogg")
    voice_note.refresh_from_db()
    assert voice_note.media_file.name == name
    with voice_note.media_file.open("rb") as kept:
        assert kept.read() == b"OggS-voice-note-bytes"


def test_staff_without_listen_permission_see_the_transcript_but_cannot_play(voice_note):
    client = _staff("reader", "view_whatsappsession")
    html = client.get(page(voice_note.session)).content.decode()
    assert "Do you deliver on Saturday?" in html
    assert voice_url(voice_note) not in html
    assert "Can listen to call recordings" in html
    assert client.get(voice_url(voice_note)).status_code == 403
    assert not ReviewAuditEntry.objects.exists()


def test_a_message_that_is_no_kept_voice_note_is_not_found(admin_client, session):
    text = session.messages.get()
    assert admin_client.get(voice_url(text)).status_code == 404
    assert not ReviewAuditEntry.objects.exists()


def test_ticks_and_meta_reasons_are_shown_on_each_bubble(admin_client, session):
    for index, status in enumerate(("sent", "delivered", "read", "failed")):
        WhatsAppMessage.objects.create(
            session=session,
            meta_message_id=f"wamid.T{index}",
            direction="outbound",
            author="persona",
            text=f"reply {status}",
            status=status,
            error_code=131026 if status == "failed" else None,
            error_title="Message undeliverable" if status == "failed" else "",
            error="Receiver is incapable of receiving this message" if status == "failed" else "",
        )
    html = admin_client.get(page(session)).content.decode()
    assert 'class="parley-ticks sent" title="sent">✓<' in html
    assert 'class="parley-ticks delivered" title="delivered">✓✓<' in html
    assert 'class="parley-ticks read" title="read">✓✓<' in html
    assert (
        "Not delivered: 131026: Message undeliverable (Receiver is incapable of receiving this message)"
        in html
    )


def test_staff_who_may_change_threads_but_not_take_over_calls_cannot_act(session):
    client = _staff("changer", "view_whatsappsession", "change_whatsappsession")
    html = client.get(page(session)).content.decode()
    assert "Take over (pause the persona)" not in html and 'id="wa-send"' not in html
    assert "Can take over a call" in html
    takeover = reverse("admin:calls_whatsappsession_takeover", args=[session.pk])
    assert client.post(takeover, {"paused": "1"}).status_code == 403
    send = reverse("admin:calls_whatsappsession_send", args=[session.pk])
    assert client.post(send, {"text": "Hello"}).status_code == 403
    changelist = reverse("admin:calls_whatsappsession_changelist")
    client.post(changelist, {"action": "take_over", "_selected_action": [session.pk]})
    session.refresh_from_db()
    assert session.human_takeover is False
    assert not WhatsAppMessage.objects.filter(direction="outbound").exists()
    assert not ReviewAuditEntry.objects.exists()


def test_taking_over_writing_and_handing_back_are_in_the_audit_log(session):
    client = _staff("ana", "view_whatsappsession", "take_over_call")
    takeover = reverse("admin:calls_whatsappsession_takeover", args=[session.pk])
    client.post(takeover, {"paused": "1"})
    client.post(reverse("admin:calls_whatsappsession_send", args=[session.pk]), {"text": "Hi, Ana here."})
    client.post(takeover, {"paused": "0"})
    entries = list(
        ReviewAuditEntry.objects.order_by("id").values_list("username", "action", "call_ref", "detail")
    )
    assert entries == [
        ("ana", "took_over", session.call_id, {"whatsappThread": session.pk, "did": "paused the persona"}),
        (
            "ana",
            "took_over",
            session.call_id,
            {"whatsappThread": session.pk, "did": "wrote to the contact", "text": "Hi, Ana here."},
        ),
        (
            "ana",
            "took_over",
            session.call_id,
            {"whatsappThread": session.pk, "did": "handed back to the persona"},
        ),
    ]


def test_the_purge_deletes_kept_voice_notes_past_their_personas_retention_and_keeps_transcripts(
    voice_note,
):
    from datetime import timedelta
    from io import StringIO

    from django.core.management import call_command
    from django.utils import timezone

    persona = voice_note.session.persona
    persona.recording_retention_days = 7
    persona.save(update_fields=["recording_retention_days"])
    name = voice_note.media_file.name
    storage = voice_note.media_file.storage
    WhatsAppMessage.objects.filter(pk=voice_note.pk).update(created_at=timezone.now() - timedelta(days=6))
    out = StringIO()
    call_command("purge_recordings", stdout=out)
    assert "0 WhatsApp voice note(s) deleted" in out.getvalue()
    assert storage.exists(name)

    WhatsAppMessage.objects.filter(pk=voice_note.pk).update(created_at=timezone.now() - timedelta(days=8))
    out = StringIO()
    call_command("purge_recordings", "--dry-run", stdout=out)
    assert "1 WhatsApp voice note(s) would delete" in out.getvalue()
    assert storage.exists(name)
    out = StringIO()
    call_command("purge_recordings", stdout=out)
    assert f"deleted {name}" in out.getvalue()
    assert not storage.exists(name)
    voice_note.refresh_from_db()
    assert not voice_note.media_file
    assert voice_note.text == "Do you deliver on Saturday?"  # the transcript stays
