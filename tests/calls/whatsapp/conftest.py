"""WhatsApp fixtures: a configured channel, Meta-shaped payloads, signed webhook POSTs."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from calls.models import WhatsAppChannel

APP_SECRET = "app-secret-7f3a9c1e"
ACCESS_TOKEN = "EAAG-access-token-5b2d"
VERIFY_TOKEN = "verify-token-e81c"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
CONTACT = "16505551234"
WEBHOOK = "/v1/whatsapp/webhook"


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """Voice notes are kept through the storage API: in a folder of the test's own."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def channel(persona_a) -> WhatsAppChannel:
    return WhatsAppChannel.objects.create(
        persona=persona_a,
        phone_number_id=PHONE_NUMBER_ID,
        display_phone_number=DISPLAY_NUMBER,
        access_token=ACCESS_TOKEN,
        app_secret=APP_SECRET,
        verify_token=VERIFY_TOKEN,
    )


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def text_message(
    message_id: str, text: str, *, contact: str = CONTACT, at: int | None = None
) -> dict[str, Any]:
    return {
        "from": contact,
        "id": message_id,
        "timestamp": str(at if at is not None else int(time.time())),
        "type": "text",
        "text": {"body": text},
    }


def status(message_id: str, name: str, *, at: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": message_id,
        "status": name,
        "timestamp": str(at if at is not None else int(time.time())),
        "recipient_id": CONTACT,
        **extra,
    }


def envelope(
    *,
    messages: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    phone_number_id: str = PHONE_NUMBER_ID,
    contact_name: str = "Sheena Nelson",
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY_NUMBER, "phone_number_id": phone_number_id},
    }
    if messages is not None:
        value["contacts"] = [{"profile": {"name": contact_name}, "wa_id": CONTACT}]
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA_ID", "changes": [{"field": "messages", "value": value}]}],
    }


@pytest.fixture
def post_delivery() -> Callable[..., Any]:
    """POST a body (a payload, or raw bytes) to the webhook, signed with `secret` unless told."""
    client = Client()

    def post(payload: Any, *, secret: str | None = APP_SECRET, signature: str | None = None) -> Any:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {}
        if signature is not None:
            headers["HTTP_X_HUB_SIGNATURE_256"] = signature
        elif secret is not None:
            headers["HTTP_X_HUB_SIGNATURE_256"] = sign(body, secret)
        return client.post(WEBHOOK, data=body, content_type="application/json", **headers)

    return post
