"""The WhatsApp webhook (`/v1/whatsapp/webhook`): verification, signature, store, answer.

GET is Meta's verification; POST a delivery. A POST is checked against the configured
channels' app secrets before anything reads it as JSON, stored as received, and answered 200
at once; processing follows (`calls.whatsapp.processing`). A body that is not what Meta sends
but is correctly signed is still stored and answered 200 (it is reported on its row): a
non-200 would make Meta send it again for 7 days.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, transaction
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from calls.whatsapp.payloads import MAX_DELIVERY_BYTES
from calls.whatsapp.processing import processor_wake
from calls.whatsapp.selectors import whatsapp_channel_for_signature, whatsapp_channel_for_verify_token
from calls.whatsapp.services import whatsapp_delivery_store

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
# Meta's challenge is a short number; anything much longer is not Meta.
MAX_CHALLENGE_LENGTH = 200


def _plain(text: str, status: int) -> HttpResponse:
    return HttpResponse(text, status=status, content_type="text/plain; charset=utf-8")


@csrf_exempt
def whatsapp_webhook(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _verify(request)
    if request.method == "POST":
        return _receive(request)
    response = _plain("method not allowed\n", 405)
    response["Allow"] = "GET, POST"
    return response


def _verify(request: HttpRequest) -> HttpResponse:
    mode = request.GET.get("hub.mode", "")
    token = request.GET.get("hub.verify_token", "")
    challenge = request.GET.get("hub.challenge", "")
    if mode != "subscribe" or not token or not challenge or len(challenge) > MAX_CHALLENGE_LENGTH:
        return _plain("verification refused\n", 403)
    channel = whatsapp_channel_for_verify_token(token=token)
    if channel is None:
        logger.warning("whatsapp webhook verification refused: the verify token matches no channel")
        return _plain("verification refused\n", 403)
    logger.info("whatsapp webhook verified for phone number id %s", channel.phone_number_id)
    return _plain(challenge, 200)


def _receive(request: HttpRequest) -> HttpResponse:
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if not declared.isdigit() or int(declared) > MAX_DELIVERY_BYTES:
        return _plain("body too large\n", 413)
    # Read past Django's DATA_UPLOAD_MAX_MEMORY_SIZE (the API's smaller limit): this one is ours.
    body = request.read(MAX_DELIVERY_BYTES + 1)
    if len(body) > MAX_DELIVERY_BYTES:
        return _plain("body too large\n", 413)
    signature = request.headers.get(SIGNATURE_HEADER, "")
    if not signature:
        return _plain(f"missing {SIGNATURE_HEADER}\n", 401)
    channel = whatsapp_channel_for_signature(body=body, signature=signature)
    if channel is None:
        logger.warning("whatsapp webhook: a delivery with a signature no channel's app secret makes; refused")
        return _plain("invalid signature\n", 403)
    try:
        with transaction.atomic():
            delivery = whatsapp_delivery_store(body=body, signature=signature)
            transaction.on_commit(processor_wake)
    except DatabaseError:
        # Not stored: Meta must send it again, which it does for a non-200.
        logger.exception("whatsapp webhook: storing a delivery failed")
        return _plain("temporarily unavailable\n", 503)
    logger.debug("whatsapp delivery %s stored (%d bytes)", delivery.pk, len(body))
    return _plain("ok\n", 200)
