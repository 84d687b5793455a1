"""Channel secrets: encrypted at rest, write-only in the admin, never in a log line; seed_demo."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test import Client

from calls.models import WhatsAppChannel
from calls.whatsapp.processing import whatsapp_processing_round
from tests.calls.whatsapp.conftest import (
    ACCESS_TOKEN,
    APP_SECRET,
    VERIFY_TOKEN,
    envelope,
    status,
    text_message,
)

# Deliveries are stored by the webhook's own thread, which sees only committed rows.
pytestmark = pytest.mark.django_db(transaction=True)

SECRETS = (ACCESS_TOKEN, APP_SECRET, VERIFY_TOKEN)


@pytest.fixture
def admin_client(db) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(user)
    return client


def test_secrets_are_stored_encrypted(channel):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT access_token, app_secret, verify_token FROM calls_whatsappchannel WHERE id = %s",
            [channel.pk],
        )
        stored = cursor.fetchone()
    for plain, raw in zip(SECRETS, stored, strict=True):
        assert raw and plain not in raw
    fresh = WhatsAppChannel.objects.get(pk=channel.pk)
    assert (fresh.access_token, fresh.app_secret, fresh.verify_token) == SECRETS


def test_the_admin_change_form_never_shows_a_secret(admin_client, channel):
    for url in (f"/admin/calls/whatsappchannel/{channel.pk}/change/", "/admin/calls/whatsappchannel/"):
        html = admin_client.get(url).content.decode()
        for secret in SECRETS:
            assert secret not in html


def test_saving_with_blank_secrets_keeps_them_and_a_typed_one_replaces_it(admin_client, channel):
    url = f"/admin/calls/whatsappchannel/{channel.pk}/change/"
    form = {
        "persona": channel.persona_id,
        "phone_number_id": channel.phone_number_id,
        "display_phone_number": "+1 555 078 3881",
        "access_token": "",
        "app_secret": "",
        "verify_token": "new-verify-token",
        "enabled": "on",
    }
    response = admin_client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    channel.refresh_from_db()
    assert (channel.access_token, channel.app_secret, channel.verify_token) == (
        ACCESS_TOKEN,
        APP_SECRET,
        "new-verify-token",
    )
    assert channel.display_phone_number == "+1 555 078 3881"


def test_a_new_channel_needs_its_secrets(admin_client, persona_a):
    form = {"persona": persona_a.pk, "phone_number_id": "123", "enabled": "on"}
    response = admin_client.post("/admin/calls/whatsappchannel/add/", form)
    assert response.status_code == 200
    assert not WhatsAppChannel.objects.exists()


def test_the_delivery_admin_shows_a_malformed_deliverys_error(admin_client, channel, post_delivery):
    post_delivery(b"not json")
    whatsapp_processing_round()
    from calls.models import WhatsAppDelivery

    delivery = WhatsAppDelivery.objects.get()
    html = admin_client.get(f"/admin/calls/whatsappdelivery/{delivery.pk}/change/").content.decode()
    assert "malformed" in html and "not json" in html


def test_no_secret_appears_in_any_log_line(channel, post_delivery, caplog):
    from tests.calls.whatsapp.conftest import webhook_request

    with caplog.at_level(logging.DEBUG):
        webhook_request(
            "GET", query={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"}
        )
        webhook_request(
            "GET", query={"hub.mode": "subscribe", "hub.verify_token": "bad", "hub.challenge": "1"}
        )
        post_delivery(envelope(messages=[text_message("wamid.1", "hi")]))
        post_delivery(envelope(messages=[text_message("wamid.2", "hi")]), secret="wrong")
        post_delivery(b"garbage")
        post_delivery(envelope(statuses=[status("wamid.X", "sent")]))
        whatsapp_processing_round()
    text = "\n".join(record.getMessage() for record in caplog.records) + caplog.text
    assert caplog.records  # the flow did log
    for secret in SECRETS:
        assert secret not in text


def test_seed_demo_configures_the_demo_personas_channel_from_the_settings(db, settings, tmp_path):
    settings.PARLEY_DATA_DIR = tmp_path
    settings.PARLEY_DEMO_WHATSAPP_PHONE_NUMBER_ID = "555000111"
    settings.PARLEY_DEMO_WHATSAPP_ACCESS_TOKEN = "demo-token"
    settings.PARLEY_DEMO_WHATSAPP_APP_SECRET = "demo-secret"
    settings.PARLEY_DEMO_WHATSAPP_VERIFY_TOKEN = "demo-verify"
    call_command("seed_demo", "--quiet")
    call_command("seed_demo", "--quiet")  # idempotent
    channel = WhatsAppChannel.objects.get()
    assert channel.persona.slug == "mara"
    assert (channel.phone_number_id, channel.access_token, channel.app_secret, channel.verify_token) == (
        "555000111",
        "demo-token",
        "demo-secret",
        "demo-verify",
    )


def test_seed_demo_leaves_whatsapp_alone_when_not_configured(db, settings, tmp_path):
    settings.PARLEY_DATA_DIR = tmp_path
    call_command("seed_demo", "--quiet")
    assert not WhatsAppChannel.objects.exists()
