"""The webhook's edge: verification, signatures, size, and storing before answering."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from asgiref.sync import async_to_sync
from django.db import OperationalError
from rest_framework import status as http

from calls.models import Direction, WhatsAppDelivery, WhatsAppMessage
from calls.whatsapp.consumers import SECRETS_REREAD_SECONDS, WhatsAppWebhookConsumer
from calls.whatsapp.processing import whatsapp_processing_round
from tests.calls.whatsapp.conftest import (
    APP_SECRET,
    VERIFY_TOKEN,
    envelope,
    sign,
    text_message,
    webhook_request,
    webhook_request_async,
)

# Deliveries are stored by the webhook's own thread, which sees only committed rows.
pytestmark = pytest.mark.django_db(transaction=True)


def verify(token: str, *, mode: str = "subscribe", challenge: str = "1158201444"):
    return webhook_request(
        "GET", query={"hub.mode": mode, "hub.verify_token": token, "hub.challenge": challenge}
    )


def test_verification_echoes_the_challenge_as_plain_text_for_a_channels_verify_token(channel):
    response = verify(VERIFY_TOKEN)
    assert response.status_code == http.HTTP_200_OK
    assert response.content == b"1158201444"
    assert response["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("token", "mode"), [("wrong-token", "subscribe"), (VERIFY_TOKEN, "unsubscribe"), ("", "subscribe")]
)
def test_verification_with_a_wrong_token_or_mode_is_refused(channel, token, mode):
    response = verify(token, mode=mode)
    assert response.status_code == http.HTTP_403_FORBIDDEN
    assert b"1158201444" not in response.content


def test_verification_with_no_channel_configured_is_refused(db):
    assert verify(VERIFY_TOKEN).status_code == http.HTTP_403_FORBIDDEN


def test_a_delivery_without_a_signature_is_refused_401_and_nothing_is_stored(channel, post_delivery):
    response = post_delivery(envelope(messages=[text_message("wamid.A", "hi")]), secret=None)
    assert response.status_code == http.HTTP_401_UNAUTHORIZED
    assert not WhatsAppDelivery.objects.exists()


@pytest.mark.parametrize(
    "signature",
    ["sha256=" + "0" * 64, "sha256=nothex", "md5=abc", "sha256="],
)
def test_a_delivery_with_a_wrong_signature_is_refused_403_and_nothing_is_stored(
    channel, post_delivery, signature
):
    response = post_delivery(envelope(messages=[text_message("wamid.A", "hi")]), signature=signature)
    assert response.status_code == http.HTTP_403_FORBIDDEN
    assert not WhatsAppDelivery.objects.exists()


def test_a_delivery_signed_with_another_secret_is_refused(channel, post_delivery):
    response = post_delivery(envelope(messages=[text_message("wamid.A", "hi")]), secret="not-the-app-secret")
    assert response.status_code == http.HTTP_403_FORBIDDEN
    assert not WhatsAppDelivery.objects.exists()


def test_the_signature_is_of_the_raw_body_as_sent(channel, post_delivery):
    """Meta signs its escaped-unicode bytes: the same JSON serialised otherwise does not match."""
    payload = envelope(messages=[text_message("wamid.A", "Grüße")])
    raw = json.dumps(payload).encode()  # ensure_ascii: "Gr\\u00fc\\u00dfe"
    assert post_delivery(raw).status_code == http.HTTP_200_OK
    reserialised = json.dumps(payload, ensure_ascii=False).encode()
    response = post_delivery(reserialised, signature=sign(raw))
    assert response.status_code == http.HTTP_403_FORBIDDEN
    assert WhatsAppDelivery.objects.count() == 1


def test_a_valid_delivery_is_stored_as_received_and_answered_before_it_is_processed(channel, post_delivery):
    payload = envelope(messages=[text_message("wamid.A", "hi")])
    response = post_delivery(payload)
    assert response.status_code == http.HTTP_200_OK
    delivery = WhatsAppDelivery.objects.get()
    assert bytes(delivery.body) == json.dumps(payload).encode()
    assert delivery.state == WhatsAppDelivery.State.PENDING
    assert not WhatsAppMessage.objects.exists()  # processing comes after the answer
    assert whatsapp_processing_round() == 1
    delivery.refresh_from_db()
    assert delivery.state == WhatsAppDelivery.State.PROCESSED
    assert WhatsAppMessage.objects.filter(meta_message_id="wamid.A").exists()


def test_a_body_over_one_mebibyte_is_refused_413(channel, post_delivery):
    big = json.dumps({"object": "whatsapp_business_account", "padding": "x" * (1024 * 1024)}).encode()
    assert post_delivery(big).status_code == http.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    assert not WhatsAppDelivery.objects.exists()


def test_a_body_above_the_apis_limit_but_within_a_mebibyte_is_taken(channel, post_delivery):
    """The rest of the API refuses over 256 KiB; Meta's batches may be bigger."""
    messages = [text_message(f"wamid.{index}", "x" * 1000) for index in range(400)]
    assert post_delivery(envelope(messages=messages)).status_code == http.HTTP_200_OK


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b'{"object": "page", "entry": []}',
        b'{"object": "whatsapp_business_account", "entry": {"not": "a list"}}',
        b"\xff\xfe garbage",
        b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": "x\\u0000"}]}]}',
    ],
)
def test_a_malformed_delivery_with_a_valid_signature_is_stored_reported_and_answered_200(
    channel, post_delivery, body, caplog
):
    assert post_delivery(body).status_code == http.HTTP_200_OK
    delivery = WhatsAppDelivery.objects.get()
    assert bytes(delivery.body) == body
    with caplog.at_level(logging.WARNING, logger="calls.whatsapp"):
        whatsapp_processing_round()
    delivery.refresh_from_db()
    assert delivery.state in {WhatsAppDelivery.State.FAILED, WhatsAppDelivery.State.PROCESSED}
    assert delivery.error  # visible on the row in the admin
    assert any(f"delivery {delivery.pk}" in record.getMessage() for record in caplog.records)
    assert not WhatsAppMessage.objects.exists()


def test_a_bad_item_in_a_batch_is_reported_and_the_others_processed(channel, post_delivery):
    payload = envelope(
        messages=[{"type": "text", "text": {"body": "no id"}}, text_message("wamid.OK", "fine")]
    )
    assert post_delivery(payload).status_code == http.HTTP_200_OK
    whatsapp_processing_round()
    delivery = WhatsAppDelivery.objects.get()
    assert delivery.state == WhatsAppDelivery.State.PROCESSED
    assert "messages[0]" in delivery.error
    assert list(WhatsAppMessage.objects.values_list("meta_message_id", flat=True)) == ["wamid.OK"]


def test_a_number_signed_with_another_channels_app_secret_is_not_processed(
    channel, make_persona, org_b, post_delivery
):
    """One tenant's app secret cannot inject messages into another tenant's number."""
    from calls.models import WhatsAppChannel

    WhatsAppChannel.objects.create(
        persona=make_persona(org_b, "otto"),
        phone_number_id="999",
        access_token="t",
        app_secret="other-app-secret",
        verify_token="v",
    )
    payload = envelope(messages=[text_message("wamid.X", "hi")])  # channel's number
    assert post_delivery(payload, secret="other-app-secret").status_code == http.HTTP_200_OK
    whatsapp_processing_round()
    delivery = WhatsAppDelivery.objects.get()
    assert "not signed with its channel's app secret" in delivery.error
    assert not WhatsAppMessage.objects.exists()


def test_other_methods_are_refused(channel):
    response = webhook_request("PUT", body=b"{}", headers={"X-Hub-Signature-256": sign(b"{}", APP_SECRET)})
    assert response.status_code == 405
    assert response["Allow"] == "GET, POST"
    assert not WhatsAppDelivery.objects.exists()


def test_deliveries_posted_together_are_each_stored_once_and_answered_200(channel):
    """POSTs in flight at once are stored in batches; each is answered only once committed."""

    async def burst() -> list[int]:
        bodies = [
            json.dumps(envelope(messages=[text_message(f"wamid.B{n}", "hi")])).encode() for n in range(30)
        ]
        answers = await asyncio.gather(
            *(
                webhook_request_async(
                    "POST",
                    body=body,
                    headers={"X-Hub-Signature-256": sign(body), "Content-Type": "application/json"},
                )
                for body in bodies
            )
        )
        return [answer.status_code for answer in answers]

    assert async_to_sync(burst)() == [http.HTTP_200_OK] * 30
    assert WhatsAppDelivery.objects.count() == 30
    whatsapp_processing_round()
    assert WhatsAppMessage.objects.filter(direction=Direction.INBOUND).count() == 30


def test_a_delivery_that_cannot_be_stored_is_answered_503_so_meta_sends_it_again(
    channel, post_delivery, monkeypatch
):
    from calls.whatsapp import intake

    def refuse(**_: object) -> None:
        raise OperationalError("database is locked")

    monkeypatch.setattr(intake, "whatsapp_delivery_store", refuse)
    response = post_delivery(envelope(messages=[text_message("wamid.A", "hi")]))
    assert response.status_code == http.HTTP_503_SERVICE_UNAVAILABLE
    assert not WhatsAppDelivery.objects.exists()
    monkeypatch.undo()
    assert post_delivery(envelope(messages=[text_message("wamid.A", "hi")])).status_code == http.HTTP_200_OK


def test_a_channel_added_after_the_secrets_were_read_is_accepted_at_once(
    channel, post_delivery, make_persona, org_b
):
    from calls.models import WhatsAppChannel

    assert post_delivery(envelope(messages=[text_message("wamid.A", "hi")])).status_code == http.HTTP_200_OK
    # Added by another process: this one's signal does not fire, so its copy is stale.
    WhatsAppChannel.objects.bulk_create(
        [
            WhatsAppChannel(
                persona=make_persona(org_b, "otto"),
                phone_number_id="999",
                access_token="t",
                app_secret="new-app-secret",
                verify_token="v",
            )
        ]
    )
    time.sleep(SECRETS_REREAD_SECONDS)
    assert post_delivery(
        envelope(messages=[text_message("wamid.B", "hi")]), secret="new-app-secret"
    ).status_code == (http.HTTP_200_OK)


def test_forged_deliveries_do_not_each_read_the_secrets_again(
    channel, post_delivery, django_assert_max_num_queries
):
    post_delivery(envelope(messages=[text_message("wamid.A", "hi")]))
    with django_assert_max_num_queries(1):
        for _ in range(20):
            assert post_delivery(b"{}", secret="forged").status_code == http.HTTP_403_FORBIDDEN


def test_a_chunked_body_over_one_mebibyte_is_refused_413(channel):
    body = b"x" * (1024 * 1024 + 1)
    answer = webhook_request(
        "POST", body=body, headers={"X-Hub-Signature-256": sign(body)}, declare_length=False
    )
    assert answer.status_code == http.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    assert not WhatsAppDelivery.objects.exists()


def test_the_webhook_is_served_by_the_servers_http_routes():
    from webapp.asgi import application  # noqa: F401  (the routes it serves are these)
    from webapp.routing import http_consumer_routes

    assert any(
        getattr(route.callback, "consumer_class", None) is WhatsAppWebhookConsumer
        for route in http_consumer_routes()
        if str(route.pattern) == "v1/whatsapp/webhook"
    )
