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


class TurnChannel(models.TextChoices):
    SPOKEN = "spoken", "Spoken"
    TYPED = "typed", "Typed"


class TurnLatency(models.Model):
    """How long one persona answer took, stage by stage, as the live call stamped it.

    The stages run from the end of the visitor's speech (a typed turn: its arrival) to the
    answer's first voice sent, each from the moment before it: the VAD noticing the silence,
    the final transcript, the turn decision, the brain's first sentence, the first audio.
    They add up to `total_ms` (the server's voice-to-voice; the visitor also hears the network
    and their playout buffer). A typed turn has no listening stages (None).
    """

    call = models.ForeignKey("calls.Call", on_delete=models.CASCADE, related_name="turn_latencies")
    message_id = models.CharField(max_length=64, help_text="The persona message answering the turn.")
    user_message_id = models.CharField(max_length=64, blank=True, help_text="The visitor's line it answers.")
    channel = models.CharField(max_length=8, choices=TurnChannel.choices)
    started_at = models.DateTimeField(help_text="The end of the visitor's speech, or a typed line's arrival.")
    vad_ms = models.PositiveIntegerField(null=True, blank=True, help_text="End of speech → VAD stop.")
    transcript_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="VAD stop → final transcript."
    )
    turn_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="Final transcript → turn decision."
    )
    brain_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Turn decision → first sentence.")
    audio_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="First sentence → first audio sent."
    )
    total_ms = models.PositiveIntegerField(db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "calls"
        ordering = ["call", "started_at", "id"]
        verbose_name = "turn latency"
        verbose_name_plural = "turn latencies"
        constraints = [
            models.UniqueConstraint(fields=["call", "message_id"], name="unique_turn_latency_per_message")
        ]

    def __str__(self) -> str:
        return f"{self.message_id}: {self.total_ms} ms"


class ToolResult(models.Model):
    """What one tool call the persona's LLM made came to: its result, or its error.

    `llm.tool_call` in the event log names the call and its arguments; the result is kept here
    (the event vocabulary has no result event), stored as the call learns it.
    """

    call = models.ForeignKey("calls.Call", on_delete=models.CASCADE, related_name="tool_results")
    tool_call_id = models.CharField(max_length=100)
    message_id = models.CharField(max_length=64, blank=True, help_text="The llm.tool_call batch (msgId).")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=8, help_text="client (the browser answers) or server (an app).")
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="Empty when the tool succeeded.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField()

    class Meta:
        app_label = "calls"
        ordering = ["call", "finished_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["call", "tool_call_id"], name="unique_tool_result_per_call")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.tool_call_id}): {'error' if self.error else 'ok'}"


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
