"""Tenants, their API keys, personas with their knowledge, and single-use session tokens."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from personas.tools import tools_normalize, tools_problems
from personas.validators import validate_avatar_look


class Organization(models.Model):
    """The tenant: owns personas, API keys, calls and events; nothing crosses between two."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    max_concurrent_sessions = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Live sessions allowed at once; empty uses PARLEY_DEFAULT_MAX_CONCURRENT_SESSIONS.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def session_limit(self) -> int:
        if self.max_concurrent_sessions is not None:
            return self.max_concurrent_sessions
        return settings.PARLEY_DEFAULT_MAX_CONCURRENT_SESSIONS


class ApiKey(models.Model):
    """A server-side credential. Only its SHA-256 is stored; the key itself is shown once."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=120, help_text="What this key is for, e.g. 'production backend'.")
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class BrainProvider(models.TextChoices):
    BUILTIN = "builtin", "Built-in (offline, answers from knowledge)"
    OPENAI = "openai", "OpenAI-compatible chat completions"


class TtsProvider(models.TextChoices):
    ESPEAK = "espeak", "espeak-ng (offline)"
    ELEVENLABS = "elevenlabs", "ElevenLabs"
    OPENAI = "openai", "OpenAI-compatible speech"


class SttProvider(models.TextChoices):
    WHISPER = "whisper", "Whisper tiny.en (offline, English)"
    POCKETSPHINX = "pocketsphinx", "PocketSphinx (offline, English; lighter, less accurate)"
    DEEPGRAM = "deepgram", "Deepgram"
    OPENAI = "openai", "OpenAI-compatible transcription"


def default_avatar_look() -> dict[str, str]:
    return {
        "skin": "#e8b99a",
        "hair": "#3b2a20",
        "eyes": "#2f4a6b",
        "lips": "#b5545c",
        "background": "#dfe8f1",
        "hairStyle": "bob",
    }


class Persona(models.Model):
    """Who answers: what it says, how it sounds and looks, what it knows, and its limits."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="personas")
    slug = models.SlugField(
        max_length=80, unique=True, help_text="Public name in URLs (/p/<slug>/) and events ('agent')."
    )
    name = models.CharField(max_length=120)
    description = models.CharField(max_length=300, blank=True)
    system_prompt = models.TextField(blank=True)
    greeting = models.TextField(blank=True, help_text="Said when a session starts (unless skipped).")
    language_code = models.CharField(max_length=16, default="en-US")

    # Voice (speech synthesis) and hearing (speech recognition).
    tts_provider = models.CharField(max_length=20, choices=TtsProvider.choices, default=TtsProvider.ESPEAK)
    voice = models.CharField(max_length=120, default="en-us+f3", help_text="Voice id for the TTS provider.")
    tts_model = models.CharField(
        max_length=120, blank=True, help_text="Cloud TTS model, e.g. eleven_flash_v2_5."
    )
    tts_base_url = models.URLField(blank=True, help_text="Cloud TTS endpoint; empty uses the provider's own.")
    tts_api_key = models.CharField(max_length=300, blank=True)
    stt_provider = models.CharField(
        max_length=20,
        choices=SttProvider.choices,
        default=SttProvider.WHISPER,
        help_text=(
            "The offline recognisers understand English only; for another language choose "
            "Deepgram or an OpenAI-compatible recogniser."
        ),
    )
    stt_model = models.CharField(
        max_length=120, blank=True, help_text="Cloud recogniser model, e.g. nova-3 or whisper-1."
    )
    stt_base_url = models.URLField(
        blank=True, help_text="Cloud speech-recognition endpoint; empty uses the provider's own."
    )
    stt_api_key = models.CharField(max_length=300, blank=True)
    stt_phrases = models.TextField(
        blank=True,
        help_text=(
            "Words and phrases callers will say to this persona, one per line (names, products, "
            "places). The offline recogniser learns them with the persona's knowledge; "
            "questions from the knowledge need not be repeated here."
        ),
    )

    # Face.
    avatar_look = models.JSONField(default=default_avatar_look, blank=True)
    avatar_portrait = models.ImageField(upload_to="portraits/", blank=True)

    # Brain.
    brain_provider = models.CharField(
        max_length=20, choices=BrainProvider.choices, default=BrainProvider.BUILTIN
    )
    llm_base_url = models.URLField(blank=True, help_text="e.g. http://127.0.0.1:11434/v1 for Ollama.")
    llm_model = models.CharField(max_length=120, blank=True)
    llm_api_key = models.CharField(max_length=300, blank=True)
    llm_temperature = models.FloatField(
        default=0.7, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)]
    )
    tools = models.JSONField(
        default=list,
        blank=True,
        help_text=(
            "Tools the LLM may call: a list of {type: 'client'|'server', name, description, "
            "parameters (JSON schema)}. Client tools are answered by the browser."
        ),
    )

    # Voice detection.
    end_of_speech_sensitivity = models.FloatField(
        default=0.5,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="0..1: higher ends the user's turn sooner.",
    )
    silence_before_auto_end_turn_seconds = models.FloatField(
        default=1.5, validators=[MinValueValidator(0.1), MaxValueValidator(30.0)]
    )

    # Session limits (defaults as in the agent seed).
    max_duration_seconds = models.PositiveIntegerField(default=600)
    idle_timeout_seconds = models.PositiveIntegerField(default=60)
    idle_warning_seconds = models.PositiveIntegerField(
        default=15, help_text="Warn this many seconds before the idle timeout."
    )
    idle_check_in = models.CharField(
        max_length=300,
        blank=True,
        default="Are you still there?",
        help_text="Said at the idle warning unless an app answers it; empty says nothing.",
    )
    skip_greeting = models.BooleanField(default=False)
    send_audio_metrics = models.BooleanField(
        default=False, help_text="Send audio.metrics (energy, VAD) about every 100 ms for apps' meters."
    )
    # Call recording (calls.review.recordings): off unless the persona's owner has the visitors'
    # consent to record them.
    recording_enabled = models.BooleanField(
        "record calls",
        default=False,
        help_text="Record this persona's voice calls (visitor left, persona right, Ogg/Opus) for"
        " review by staff who may listen. Only with the visitors' consent.",
    )
    recording_retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        default=30,
        help_text="`manage.py purge_recordings` deletes this persona's recordings older than this"
        " many days; empty keeps them.",
    )
    # Apps that answer turns (the agent API).
    app_answer_timeout_seconds = models.FloatField(
        default=3.0,
        validators=[MinValueValidator(0.2), MaxValueValidator(30.0)],
        help_text="While an app answers this persona's turns: how long a turn waits for the app to"
        " start answering before the persona's own brain answers instead.",
    )

    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"

    def clean(self) -> None:
        super().clean()
        if self.tools is None:  # an emptied admin field
            self.tools = []
        problems = tools_problems(self.tools)
        if problems:
            raise ValidationError({"tools": problems})
        self.tools = tools_normalize(self.tools)
        try:
            validate_avatar_look(self.avatar_look)
        except ValidationError as error:
            raise ValidationError({"avatar_look": error.messages}) from None
        if self.idle_timeout_seconds and self.idle_warning_seconds >= self.idle_timeout_seconds:
            raise ValidationError(
                {"idle_warning_seconds": "must be shorter than the idle timeout (0 gives no warning)"}
            )


class KnowledgeEntry(models.Model):
    """Something the persona knows: a question with its answer, or a passage of text."""

    class Kind(models.TextChoices):
        QA = "qa", "Question and answer"
        PASSAGE = "passage", "Passage"

    persona = models.ForeignKey(Persona, on_delete=models.CASCADE, related_name="knowledge")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.QA)
    question = models.CharField(max_length=500, blank=True)
    answer = models.TextField(help_text="The answer, or the passage itself.")
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["persona", "position", "id"]
        verbose_name_plural = "knowledge entries"

    def __str__(self) -> str:
        return self.question or self.answer[:60]


class SessionToken(models.Model):
    """The single-use record behind a session token JWT (looked up by its jti)."""

    class Kind(models.TextChoices):
        STATEFUL = "stateful", "Stateful (stored persona)"
        EPHEMERAL = "ephemeral", "Ephemeral (inline config)"

    jti = models.CharField(max_length=64, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="session_tokens")
    persona = models.ForeignKey(Persona, on_delete=models.CASCADE, related_name="session_tokens")
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    persona_config = models.JSONField(default=dict, blank=True)
    session_options = models.JSONField(default=dict, blank=True)
    client_label = models.CharField(max_length=200, blank=True)
    issued_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-issued_at"]
        indexes = [models.Index(fields=["organization", "expires_at"])]

    def __str__(self) -> str:
        return f"{self.kind} token {self.jti[:8]}… for {self.persona.slug}"
