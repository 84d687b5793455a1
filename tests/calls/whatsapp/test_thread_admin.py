"""Staff on WhatsApp threads in the admin: the conversation with ticks, takeover, a human's message."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from calls.models import WhatsAppMessage, WhatsAppSession
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
