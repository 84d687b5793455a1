"""A persona's WhatsApp channel, and the raw webhook deliveries (kept as received: also the queue).

Models of the `calls` app (imported by `calls.models`), kept here with the rest of WhatsApp.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from calls.whatsapp.encryption import EncryptedTextField
from personas.models import Persona


class WhatsAppChannel(models.Model):
    """One business phone number on which a persona answers. Its secrets are encrypted at rest."""

    persona = models.OneToOneField(Persona, on_delete=models.CASCADE, related_name="whatsapp_channel")
    phone_number_id = models.CharField(
        max_length=64, unique=True, help_text="Meta's id of the business number (WhatsApp > API Setup)."
    )
    display_phone_number = models.CharField(
        max_length=32, blank=True, help_text="The number as people see it."
    )
    access_token = EncryptedTextField(
        blank=True, help_text="Graph API token (system user). Never shown again."
    )
    app_secret = EncryptedTextField(blank=True, help_text="The Meta app's secret; signs webhooks.")
    verify_token = EncryptedTextField(blank=True, help_text="The string typed in Meta's webhook settings.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        app_label = "calls"
        verbose_name = "WhatsApp channel"
        ordering = ["phone_number_id"]

    def __str__(self) -> str:
        return f"{self.display_phone_number or self.phone_number_id} → {self.persona.slug}"


class WhatsAppDelivery(models.Model):
    """One webhook POST, stored as received before it is answered; processed after the answer.

    A processor claims a pending delivery by setting `lease_owner` and `lease_until`; a claim
    whose lease has expired (its process was killed) is claimed again by another.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSED = "processed", "Processed"
        FAILED = "failed", "Failed"

    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    # The raw bytes, as signed: Meta signs the body exactly as sent.
    body = models.BinaryField()
    signature = models.CharField(max_length=100, help_text="The X-Hub-Signature-256 header.")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    lease_owner = models.CharField(max_length=120, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="What could not be processed, and why.")
    outcome = models.JSONField(default=dict, blank=True, help_text="What processing found (counts).")

    class Meta:
        app_label = "calls"
        verbose_name = "WhatsApp webhook delivery"
        verbose_name_plural = "WhatsApp webhook deliveries"
        ordering = ["-id"]
        indexes = [models.Index(fields=["state", "lease_until"])]

    def __str__(self) -> str:
        return f"delivery #{self.pk} ({self.state})"
