"""The WhatsApp webhook (`/v1/whatsapp/webhook`): verification, signature, store, answer.

GET is Meta's verification; POST a delivery. A POST is checked against the enabled channels'
app secrets before anything reads it as JSON, stored as received, and answered 200 once
stored; processing follows (`calls.whatsapp.processing`). A body that is not what Meta sends
but is correctly signed is still stored and answered 200 (it is reported on its row): a
non-200 would make Meta send it again for 7 days.

A Channels HTTP consumer on the event loop rather than a Django view: Meta waits 250 ms for
the answer, and a view runs every POST through the middleware in a thread of its own with a
database connection of its own. Here a POST costs the loop a signature check, and its storing
is batched with the POSTs that arrive beside it (`calls.whatsapp.intake`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import parse_qsl

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from django.db import DatabaseError, close_old_connections
from django.db.models.signals import post_delete, post_save

from calls.models import WhatsAppChannel
from calls.whatsapp.intake import delivery_intake_store
from calls.whatsapp.payloads import MAX_DELIVERY_BYTES
from calls.whatsapp.selectors import (
    signed_by_one_of,
    whatsapp_app_secrets,
    whatsapp_channel_for_verify_token,
)

logger = logging.getLogger(__name__)

NO_CHANNEL_LAYER = "parley-whatsapp-webhook-needs-no-channel"
SIGNATURE_HEADER = "X-Hub-Signature-256"
# Meta's challenge is a short number; anything much longer is not Meta.
MAX_CHALLENGE_LENGTH = 200
# The channels' app secrets are read from the database at most this often by a process: every
# POST needs them, and a query and a decryption per POST was most of a POST's cost. A channel
# added or a secret changed elsewhere is seen at once all the same: a signature that matches
# none of the known secrets reads them again (at most once per SECRETS_REREAD_SECONDS, so a
# flood of forged POSTs cannot turn into a flood of queries).
SECRETS_FRESH_SECONDS = 30.0
SECRETS_REREAD_SECONDS = 1.0
# Signatures of bodies above this are computed off the loop (hashlib releases the GIL there).
SIGNATURE_ON_LOOP_MAX_BYTES = 64 * 1024


class _AppSecrets:
    """This process's copy of the enabled channels' app secrets (see SECRETS_FRESH_SECONDS)."""

    def __init__(self) -> None:
        self.secrets: list[str] = []
        self.read_at = -1e9  # time.monotonic() of the last read

    def forget(self, **_: Any) -> None:
        self.read_at = -1e9

    async def read(self) -> list[str]:
        self.secrets = await database_sync_to_async(_secrets_read)()
        self.read_at = time.monotonic()
        return self.secrets

    async def signed(self, *, body: bytes, signature: str) -> bool:
        age = time.monotonic() - self.read_at
        secrets = self.secrets if age < SECRETS_FRESH_SECONDS else await self.read()
        if await _signed_by_one_of(body=body, signature=signature, app_secrets=secrets):
            return True
        if time.monotonic() - self.read_at < SECRETS_REREAD_SECONDS:
            return False
        return await _signed_by_one_of(body=body, signature=signature, app_secrets=await self.read())


def _secrets_read() -> list[str]:
    try:
        return whatsapp_app_secrets()
    finally:
        close_old_connections()


async def _signed_by_one_of(*, body: bytes, signature: str, app_secrets: list[str]) -> bool:
    if len(body) <= SIGNATURE_ON_LOOP_MAX_BYTES:
        return signed_by_one_of(body=body, signature=signature, app_secrets=app_secrets)
    return await asyncio.to_thread(signed_by_one_of, body=body, signature=signature, app_secrets=app_secrets)


app_secrets = _AppSecrets()
# A channel saved or deleted in this process (the admin) is seen by the next POST.
post_save.connect(app_secrets.forget, sender=WhatsAppChannel, dispatch_uid="parley-whatsapp-app-secrets")
post_delete.connect(app_secrets.forget, sender=WhatsAppChannel, dispatch_uid="parley-whatsapp-app-secrets")


class WhatsAppWebhookConsumer(AsyncHttpConsumer):
    """`GET` (verification) and `POST` (deliveries) on `/v1/whatsapp/webhook`."""

    channel_layer_alias = NO_CHANNEL_LAYER

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received = 0
        self.refused = False

    async def http_request(self, message: dict[str, Any]) -> None:
        if self.refused:
            return
        if not self.body and self.scope["method"] == "POST" and not _declared_length_ok(self.scope):
            await self._refuse_too_large()
        chunk = message.get("body", b"")
        self.received += len(chunk)
        if self.received > MAX_DELIVERY_BYTES:
            await self._refuse_too_large()
        await super().http_request(message)

    async def _refuse_too_large(self) -> None:
        # Answered now; the rest of the body is not read (Daphne discards it with the request).
        self.refused = True
        self.body = []
        await _plain(self, "body too large\n", 413)
        raise StopConsumer()

    async def handle(self, body: bytes) -> None:
        method = self.scope["method"]
        if method == "GET":
            await self._verify()
        elif method == "POST":
            await self._receive(body)
        else:
            await _plain(self, "method not allowed\n", 405, extra=[(b"allow", b"GET, POST")])

    async def _verify(self) -> None:
        query = dict(parse_qsl(self.scope.get("query_string", b"").decode("utf-8", "replace")))
        mode = query.get("hub.mode", "")
        token = query.get("hub.verify_token", "")
        challenge = query.get("hub.challenge", "")
        if mode != "subscribe" or not token or not challenge or len(challenge) > MAX_CHALLENGE_LENGTH:
            await _plain(self, "verification refused\n", 403)
            return
        channel = await database_sync_to_async(_channel_for_verify_token)(token)
        if channel is None:
            logger.warning("whatsapp webhook verification refused: the verify token matches no channel")
            await _plain(self, "verification refused\n", 403)
            return
        logger.info("whatsapp webhook verified for phone number id %s", channel.phone_number_id)
        await _plain(self, challenge, 200)

    async def _receive(self, body: bytes) -> None:
        signature = _header(self.scope, SIGNATURE_HEADER)
        if not signature:
            await _plain(self, f"missing {SIGNATURE_HEADER}\n", 401)
            return
        if not await app_secrets.signed(body=body, signature=signature):
            logger.warning(
                "whatsapp webhook: a delivery with a signature no channel's app secret makes; refused"
            )
            await _plain(self, "invalid signature\n", 403)
            return
        try:
            delivery_id = await delivery_intake_store(body=body, signature=signature)
        except DatabaseError:
            # Not stored: Meta must send it again, which it does for a non-200.
            await _plain(self, "temporarily unavailable\n", 503)
            return
        logger.debug("whatsapp delivery %s stored (%d bytes)", delivery_id, len(body))
        await _plain(self, "ok\n", 200)


def _channel_for_verify_token(token: str) -> WhatsAppChannel | None:
    try:
        return whatsapp_channel_for_verify_token(token=token)
    finally:
        close_old_connections()


def _header(scope: dict[str, Any], name: str) -> str:
    wanted = name.lower().encode("latin-1")
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return bytes(value).decode("latin-1")
    return ""


def _declared_length_ok(scope: dict[str, Any]) -> bool:
    declared = _header(scope, "Content-Length")
    if not declared:
        return True  # chunked: counted as it comes
    return declared.isdigit() and int(declared) <= MAX_DELIVERY_BYTES


async def _plain(
    consumer: AsyncHttpConsumer, text: str, status: int, *, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), *(extra or [])]
    await consumer.send_response(status, text.encode("utf-8"), headers=headers)
