"""WhatsApp fixtures: a configured channel, Meta-shaped payloads, signed webhook POSTs."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync
from channels.routing import URLRouter
from channels.testing import HttpCommunicator

from calls.models import WhatsAppChannel
from calls.whatsapp.consumers import app_secrets
from webapp.routing import http_consumer_routes

APP_SECRET = "app-secret-7f3a9c1e"
ACCESS_TOKEN = "EAAG-access-token-5b2d"
VERIFY_TOKEN = "verify-token-e81c"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
CONTACT = "16505551234"
WEBHOOK = "/v1/whatsapp/webhook"
# Generous: a test waits this long for the webhook before calling it hung.
WEBHOOK_ANSWER_TIMEOUT_SECONDS = 30.0


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


class WebhookResponse:
    """What the webhook answered: `status_code`, `content`, and headers by name."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.status_code: int = answer["status"]
        self.content: bytes = answer["body"]
        self.headers = {
            bytes(name).decode("latin-1").lower(): bytes(value).decode("latin-1")
            for name, value in answer["headers"]
        }

    def __getitem__(self, name: str) -> str:
        return self.headers[name.lower()]


def _webhook_scope(
    method: str,
    query: dict[str, str] | None,
    body: bytes,
    headers: dict[str, str] | None,
    declare_length: bool,
):
    path = WEBHOOK + ("?" + urlencode(query) if query else "")
    sent = [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()
    ]
    if body and declare_length:
        sent.append((b"content-length", str(len(body)).encode()))
    return path, sent


async def webhook_request_async(
    method: str,
    *,
    query: dict[str, str] | None = None,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    declare_length: bool = True,
) -> WebhookResponse:
    """One request to the webhook through the server's own HTTP routes (the Channels consumer)."""
    path, sent = _webhook_scope(method, query, body, headers, declare_length)
    communicator = HttpCommunicator(URLRouter(http_consumer_routes()), method, path, body=body, headers=sent)
    return WebhookResponse(await communicator.get_response(timeout=WEBHOOK_ANSWER_TIMEOUT_SECONDS))


def webhook_request(
    method: str,
    *,
    query: dict[str, str] | None = None,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    declare_length: bool = True,
) -> WebhookResponse:
    """`webhook_request_async` from a sync test. Not from a thread of `sync_to_async`: the
    consumer's own thread-sensitive calls would wait for that busy thread (async tests use
    `post_delivery.posted`)."""
    return async_to_sync(webhook_request_async)(
        method, query=query, body=body, headers=headers, declare_length=declare_length
    )


@pytest.fixture(autouse=True)
def _app_secrets_read_afresh() -> None:
    """Each test's channels are read by its first POST (a process keeps them a while)."""
    app_secrets.forget()


class WebhookPoster:
    """POST a body (a payload, or raw bytes) to the webhook, signed with `secret` unless told:
    called from a sync test, `await posted(...)` from an async one."""

    def _request(
        self, payload: Any, secret: str | None, signature: str | None
    ) -> tuple[bytes, dict[str, str]]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        elif secret is not None:
            headers["X-Hub-Signature-256"] = sign(body, secret)
        return body, headers

    def __call__(
        self, payload: Any, *, secret: str | None = APP_SECRET, signature: str | None = None
    ) -> WebhookResponse:
        body, headers = self._request(payload, secret, signature)
        return webhook_request("POST", body=body, headers=headers)

    async def posted(
        self, payload: Any, *, secret: str | None = APP_SECRET, signature: str | None = None
    ) -> WebhookResponse:
        body, headers = self._request(payload, secret, signature)
        return await webhook_request_async("POST", body=body, headers=headers)


@pytest.fixture
def post_delivery() -> WebhookPoster:
    return WebhookPoster()
