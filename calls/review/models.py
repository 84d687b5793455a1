"""The review audit log (who exported, listened to, took over or ended a call) and call recordings.

A model of the `calls` app (imported by `calls.models`), kept here with the rest of review.
"""

from __future__ import annotations

from django.conf import settings
from django.core.files.storage import Storage, storages
from django.db import models
from django.utils import timezone


class ReviewAction(models.TextChoices):
    EXPORTED = "exported", "Exported calls"
    LISTENED = "listened", "Listened to a recording"
    TOOK_OVER = "took_over", "Took over a call"
    ENDED = "ended", "Ended a call"


class ReviewAuditEntry(models.Model):
    """One thing a staff member did with calls. Kept when the user or the call is deleted."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Copies that outlive the rows they name: an audit log must still say who and which.
    username = models.CharField(max_length=150)
    call = models.ForeignKey(
        "calls.Call", on_delete=models.SET_NULL, null=True, blank=True, related_name="review_audit"
    )
    call_ref = models.CharField("call id", max_length=34, blank=True)
    action = models.CharField(max_length=12, choices=ReviewAction.choices)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        app_label = "calls"
        ordering = ["-created_at", "-id"]
        verbose_name = "review audit entry"
        verbose_name_plural = "review audit log"

    def __str__(self) -> str:
        return f"{self.username} {self.action} {self.call_ref}".strip()


def recordings_storage() -> Storage:
    """Where recordings are kept: the `recordings` entry of `settings.STORAGES` (local files
    unless an S3-compatible bucket is configured).

    Read through this at each use, not through `CallRecording.file.storage`: a FileField
    resolves its storage once, when the model loads.
    """
    return storages["recordings"]


def recording_file_name(recording: CallRecording, filename: str) -> str:
    return f"calls/{timezone.now():%Y/%m/%d}/{filename}"


class CallRecording(models.Model):
    """A voice call's audio: stereo Ogg/Opus, the visitor on the left, the persona on the right."""

    call = models.OneToOneField("calls.Call", on_delete=models.CASCADE, related_name="recording")
    file = models.FileField(storage=recordings_storage, upload_to=recording_file_name, max_length=255)
    # The instant the recording's 0:00 stands for (the call's start, within milliseconds): the
    # player adds the difference to a transcript line's time since the call started.
    started_at = models.DateTimeField()
    duration_seconds = models.FloatField()
    size_bytes = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        app_label = "calls"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"recording of {self.call_id}"
