"""Secrets at rest: Fernet (cryptography) with a key derived from a setting, and a model field using it.

Fernet is authenticated encryption (AES-128-CBC + HMAC-SHA256) from `cryptography`, a library
Parley already pulled in (pinned in requirements.txt). The key is derived with HKDF from
`PARLEY_SECRETS_KEY`, which defaults to `DJANGO_SECRET_KEY`: rotating that key makes the stored
secrets unreadable (they read as empty, with a warning naming the row, never the value), and
they must be entered again.
"""

from __future__ import annotations

import base64
import functools
import logging
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import models

logger = logging.getLogger(__name__)

# What the derived key is for: another use of the same setting gets another key.
KEY_PURPOSE = b"parley secrets at rest v1"


@functools.cache
def _fernet(key_material: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_PURPOSE).derive(
        key_material.encode("utf-8")
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def secrets_fernet() -> Fernet:
    return _fernet(settings.PARLEY_SECRETS_KEY or settings.SECRET_KEY)


def secret_encrypt(value: str) -> str:
    return secrets_fernet().encrypt(value.encode("utf-8")).decode("ascii") if value else ""


@functools.lru_cache(maxsize=256)
def _decrypt_cached(key_material: str, token: str) -> str:
    # Each webhook POST checks its signature against every channel's app secret: decrypting is
    # cached (the plaintext is in this process's memory anyway while it is used).
    return _fernet(key_material).decrypt(token.encode("ascii")).decode("utf-8")


def secret_decrypt(token: str) -> str:
    """The plaintext, or "" (with a warning) when it was encrypted under another key."""
    if not token:
        return ""
    try:
        return _decrypt_cached(settings.PARLEY_SECRETS_KEY or settings.SECRET_KEY, token)
    except (InvalidToken, ValueError):
        logger.warning(
            "a stored secret cannot be decrypted with the current PARLEY_SECRETS_KEY; set it again"
        )
        return ""


class EncryptedTextField(models.TextField):
    """A text the application reads in plain and the database holds encrypted (not searchable)."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> str:
        return secret_decrypt(value) if value else ""

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        return secret_encrypt(value) if value else ""
