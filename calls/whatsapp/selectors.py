"""Reads for WhatsApp: channels by their number, their verify token, or a delivery's signature."""

from __future__ import annotations

import hashlib
import hmac

from calls.models import WhatsAppChannel, WhatsAppSession

SIGNATURE_PREFIX = "sha256="


def signature_valid(*, body: bytes, signature: str, app_secret: str) -> bool:
    """`signature` is `sha256=` + the HMAC-SHA256 (hex) of the raw body under `app_secret`."""
    if not app_secret or not signature.startswith(SIGNATURE_PREFIX):
        return False
    expected = hmac.new(app_secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    # Meta sends lowercase hex; compare_digest takes constant time for equal lengths.
    return hmac.compare_digest(expected, signature[len(SIGNATURE_PREFIX) :].lower())


def whatsapp_channels_enabled() -> list[WhatsAppChannel]:
    return list(WhatsAppChannel.objects.filter(enabled=True).select_related("persona"))


def whatsapp_app_secrets() -> list[str]:
    """The app secrets of the enabled channels (decrypted): what a webhook delivery may be signed with."""
    return [channel.app_secret for channel in whatsapp_channels_enabled() if channel.app_secret]


def signed_by_one_of(*, body: bytes, signature: str, app_secrets: list[str]) -> bool:
    """Whether one of `app_secrets` signed `body`. Every secret is checked (no early exit), so
    the time taken does not say which one matched."""
    matched = False
    for app_secret in app_secrets:
        matched = signature_valid(body=body, signature=signature, app_secret=app_secret) or matched
    return matched


def whatsapp_channel_for_verify_token(*, token: str) -> WhatsAppChannel | None:
    found = None
    for channel in whatsapp_channels_enabled():
        expected = channel.verify_token
        if (
            expected
            and hmac.compare_digest(expected.encode("utf-8"), token.encode("utf-8"))
            and found is None
        ):
            found = channel
    return found


def whatsapp_channel_by_phone_number_id(*, phone_number_id: str) -> WhatsAppChannel | None:
    return (
        WhatsAppChannel.objects.filter(phone_number_id=phone_number_id, enabled=True)
        .select_related("persona", "persona__organization")
        .first()
    )


def whatsapp_session_open(*, phone_number_id: str, contact: str) -> WhatsAppSession | None:
    return (
        WhatsAppSession.objects.filter(
            phone_number_id=phone_number_id, contact_phone=contact, ended_at__isnull=True
        )
        .select_related("call", "call__persona", "persona")
        .first()
    )
