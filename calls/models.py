"""Calls, their transcripts, the event log, and WhatsApp threads."""

from __future__ import annotations

import secrets

from django.db import models
from django.utils import timezone

from calls.lifecycle.models import EngineProcess  # a model of this app, kept with its lifecycle
from personas.models import Organization, Persona, SessionToken


def new_call_id() -> str:
    """An id shaped like the agent seed's (`CA` + 32 hex digits)."""
    return "CA" + secrets.token_hex(16)


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


class Direction(models.TextChoices):
    INBOUND = "inbound", "Inbound"
    OUTBOUND = "outbound", "Outbound"


class Transport(models.TextChoices):
    WEBRTC = "webrtc", "WebRTC"
    CHAT = "chat", "Chat"
    WHATSAPP = "whatsapp", "WhatsApp"
    PHONE = "phone", "Phone"


class CallStatus(models.TextChoices):
    CONNECTING = "connecting", "Connecting"
    IN_PROGRESS = "in_progress", "In progress"
    ENDED = "ended", "Ended"


class EndReason(models.TextChoices):
    """The agent seed's list of reasons a call ends."""

    HANGUP = "hangup", "Hang-up"
    TIMEOUT = "timeout", "Timeout"
    IDLE_TIMEOUT = "idle_timeout", "Idle timeout"
    MAX_DURATION = "max_duration", "Maximum duration"
    NO_ANSWER = "no_answer", "No answer"
    BUSY = "busy", "Busy"
    FAILED = "failed", "Failed"


LIVE_STATUSES = (CallStatus.CONNECTING, CallStatus.IN_PROGRESS)


class Call(models.Model):
    """One conversation with a persona, over any transport."""

    id = models.CharField(primary_key=True, max_length=34, default=new_call_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="calls")
    persona = models.ForeignKey(Persona, on_delete=models.PROTECT, related_name="calls")
    session_token = models.OneToOneField(
        SessionToken, on_delete=models.SET_NULL, null=True, blank=True, related_name="call"
    )
    from_address = models.CharField("from", max_length=200, blank=True)
    to_address = models.CharField("to", max_length=200, blank=True)
    direction = models.CharField(max_length=10, choices=Direction.choices, default=Direction.INBOUND)
    transport = models.CharField(max_length=10, choices=Transport.choices)
    metadata = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=12, choices=CallStatus.choices, default=CallStatus.CONNECTING)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)
    end_reason = models.CharField(max_length=14, choices=EndReason.choices, blank=True)
    # The Parley process (host[:port], as browsers reach it) that holds this call's media;
    # blank for calls without a browser session (WhatsApp, the REST API).
    engine_host = models.CharField(max_length=255, blank=True)
    # The process holding its live session (set when its signalling socket first opens); a call
    # whose owner has died is ended as failed (`calls.lifecycle`).
    owner = models.ForeignKey(
        EngineProcess, on_delete=models.SET_NULL, null=True, blank=True, related_name="calls"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organization", "-created_at"]),
            models.Index(fields=["organization", "status"]),
            models.Index(fields=["engine_host", "status"]),
        ]
        # Staff review (`calls.review`): Django's own view permission covers reading a call.
        permissions = [
            ("listen_call", "Can listen to call recordings"),
            ("take_over_call", "Can take over a call"),
            ("export_call", "Can export calls with their transcripts"),
        ]

    def __str__(self) -> str:
        return self.id


class Message(models.Model):
    """One turn of the transcript. `spoken_text` is what the listener actually heard."""

    class Role(models.TextChoices):
        USER = "user", "User"
        PERSONA = "persona", "Persona"

    class Channel(models.TextChoices):
        SPOKEN = "spoken", "Spoken"
        TYPED = "typed", "Typed"
        VOICE_NOTE = "voice_note", "Voice note"

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="messages")
    message_id = models.CharField(max_length=64, default=new_message_id)
    role = models.CharField(max_length=10, choices=Role.choices)
    text = models.TextField(help_text="The full text (for the persona: what it meant to say).")
    spoken_text = models.TextField(blank=True, help_text="What was actually spoken before any interruption.")
    interrupted = models.BooleanField(default=False)
    # How the visitor said it, recorded as it arrived (empty: persona lines, and older rows).
    channel = models.CharField(max_length=10, choices=Channel.choices, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["call", "created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["call", "message_id"], name="unique_message_id_per_call")
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.text[:60]}"


class CallEvent(models.Model):
    """The call log. `cursor` is strictly increasing in commit order (see calls.publishing)."""

    cursor = models.BigAutoField(primary_key=True)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    persona = models.ForeignKey(Persona, on_delete=models.CASCADE, related_name="+")
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=40, db_index=True)
    data = models.JSONField()
    # When it happened (a live call stamps it as it publishes; the write may come a little later).
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["cursor"]
        indexes = [
            models.Index(fields=["organization", "cursor"]),
            models.Index(fields=["call", "cursor"]),
        ]

    def __str__(self) -> str:
        return f"#{self.cursor} {self.type}"


class WhatsAppSession(models.Model):
    """A contact's thread with a persona on one business phone number."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    persona = models.ForeignKey(Persona, on_delete=models.CASCADE, related_name="whatsapp_sessions")
    call = models.OneToOneField(
        Call, on_delete=models.SET_NULL, null=True, blank=True, related_name="whatsapp"
    )
    phone_number_id = models.CharField(max_length=64, help_text="Meta's id of the business number.")
    contact_phone = models.CharField(max_length=32)
    contact_name = models.CharField(max_length=200, blank=True)
    human_takeover = models.BooleanField(default=False, help_text="Staff answer; the persona stays quiet.")
    started_at = models.DateTimeField(auto_now_add=True)
    last_inbound_at = models.DateTimeField(
        null=True, blank=True, help_text="Free-form replies are allowed for 24 hours after this."
    )
    ended_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the 24-hour window closed (empty while it is open); the contact's next message then starts a new session.",
    )
    # The claim of the process answering this thread now (`calls.whatsapp.answering`): a lease,
    # taken by another process once it expires (its holder was killed).
    answer_owner = models.CharField(max_length=120, blank=True)
    answer_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            # One open session per contact and number; ended ones stay as history.
            models.UniqueConstraint(
                fields=["phone_number_id", "contact_phone"],
                condition=models.Q(ended_at__isnull=True),
                name="unique_open_whatsapp_session_per_contact",
            )
        ]
        verbose_name = "WhatsApp session"

    def __str__(self) -> str:
        return f"{self.contact_name or self.contact_phone} ↔ {self.persona.slug}"


def whatsapp_media_path(message: WhatsAppMessage, filename: str) -> str:
    """Where a thread's media is stored: by day, named by the message (never by the contact)."""
    return f"whatsapp/media/{timezone.now():%Y/%m/%d}/{filename}"


class WhatsAppMessage(models.Model):
    """One message of a thread, either way; statuses only ever move it forward."""

    class Kind(models.TextChoices):
        # Interactive and template-button replies are recorded as text (their title).
        TEXT = "text", "Text"
        AUDIO = "audio", "Audio"
        IMAGE = "image", "Image"
        VIDEO = "video", "Video"
        DOCUMENT = "document", "Document"
        STICKER = "sticker", "Sticker"
        REACTION = "reaction", "Reaction"
        LOCATION = "location", "Location"
        CONTACTS = "contacts", "Contacts"
        UNSUPPORTED = "unsupported", "Unsupported"

    class Author(models.TextChoices):
        # Who wrote an outbound message; inbound ones are the contact's (blank).
        PERSONA = "persona", "Persona"
        HUMAN = "human", "Human (staff)"
        APP = "app", "App"

    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        READ = "read", "Read"
        PLAYED = "played", "Played"
        FAILED = "failed", "Failed"

    session = models.ForeignKey(WhatsAppSession, on_delete=models.CASCADE, related_name="messages")
    meta_message_id = models.CharField(max_length=128, unique=True, help_text="Meta's wamid.")
    direction = models.CharField(max_length=10, choices=Direction.choices)
    type = models.CharField(max_length=16, choices=Kind.choices, default=Kind.TEXT)
    text = models.TextField(
        blank=True, help_text="The text, a voice note's transcript, a caption, an emoji, a place."
    )
    media_id = models.CharField(max_length=128, blank=True)
    mime_type = models.CharField(max_length=100, blank=True)
    # A voice note's audio as downloaded from Meta (its media URL lasts five minutes), kept through
    # Django's storage API so staff can listen to it beside its transcript.
    media_file = models.FileField(upload_to=whatsapp_media_path, blank=True, max_length=200)
    metadata = models.JSONField(
        default=dict, blank=True, help_text="What Meta sent about it: the type's object, context, errors."
    )
    sent_by_contact_at = models.DateTimeField(
        null=True, blank=True, help_text="Inbound: when the contact sent it (Meta's timestamp)."
    )
    status = models.CharField(max_length=10, choices=Status.choices)
    error = models.TextField(blank=True)
    error_code = models.IntegerField(null=True, blank=True, help_text="Meta's error code of a failed send.")
    error_title = models.CharField(max_length=300, blank=True)
    delivery = models.ForeignKey(
        "calls.WhatsAppDelivery", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    author = models.CharField(max_length=10, choices=Author.choices, blank=True)
    # Inbound: work still owed to it. A voice note waits for its transcript (even while a human
    # has taken over), a message for the persona's answer; both survive a killed process.
    needs_transcript = models.BooleanField(default=False)
    needs_answer = models.BooleanField(default=False)
    # Outbound: the newest inbound message it answers (quoted in the reply), and its sending:
    # `pending` until Meta accepted it; a send once started is never started again (no
    # duplicate), and `next_attempt_at` holds a send Meta refused for now (rate limit, outage).
    reply_to = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="replies"
    )
    send_started_at = models.DateTimeField(null=True, blank=True)
    send_attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    played_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["session", "created_at", "id"]
        verbose_name = "WhatsApp message"
        indexes = [
            models.Index(
                fields=["session"],
                condition=models.Q(needs_transcript=True) | models.Q(needs_answer=True),
                name="whatsapp_message_owed",
            ),
            models.Index(
                fields=["session"],
                condition=models.Q(status="pending"),
                name="whatsapp_message_unsent",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.direction} {self.type}: {self.text[:60]}"


# Models of this app kept with their capability (registered when this module loads).
from calls.review.models import CallRecording, ReviewAuditEntry, ToolResult, TurnLatency  # noqa: E402, F401
from calls.whatsapp.models import WhatsAppChannel, WhatsAppDelivery  # noqa: E402, F401
