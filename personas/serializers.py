"""Request and response shapes of the personas API (camelCase on the wire, as the Anam protocol)."""

from __future__ import annotations

import json
from typing import Any

from rest_framework import serializers

from personas.models import KnowledgeEntry, Persona

# Inline persona configs and session options are stored with each token; keep them small.
MAX_CONFIG_JSON_BYTES = 16 * 1024


# The JSON type each kind of field takes in a body (DRF also takes "5" for 5, 1 for true).
_JSON_TYPES: tuple[tuple[type[serializers.Field], tuple[type, ...], str], ...] = (
    (serializers.BooleanField, (bool,), "a boolean"),
    (serializers.IntegerField, (int,), "an integer"),
    (serializers.FloatField, (int, float), "a number"),
    (serializers.CharField, (str,), "a string"),
    (serializers.DictField, (dict,), "an object"),
    (serializers.ListField, (list,), "an array"),
    (serializers.Serializer, (dict,), "an object"),
)


def _json_type_problem(field: serializers.Field, value: Any) -> str | None:
    if value is None:
        return None  # DRF's own `allow_null` check names it
    for kind, types, name in _JSON_TYPES:
        if isinstance(field, kind):
            if isinstance(value, bool) and bool not in types:
                return f"must be {name}"
            return None if isinstance(value, types) else f"must be {name}"
    return None


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, naming them, instead of silently dropping them; in a JSON
    body (`json_types`), also values of another JSON type than the field's (as the schema says)."""

    json_types = True

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                allowed = ", ".join(sorted(self.fields))
                raise serializers.ValidationError(
                    {name: [f"unknown field; allowed fields are: {allowed}"] for name in unknown}
                )
            if self.json_types:
                wrong = {
                    name: [problem]
                    for name, value in data.items()
                    if (problem := _json_type_problem(self.fields[name], value))
                }
                if wrong:
                    raise serializers.ValidationError(wrong)
        return super().to_internal_value(data)


class VoiceDetectionOptionsSerializer(StrictSerializer):
    endOfSpeechSensitivity = serializers.FloatField(min_value=0.0, max_value=1.0, required=False)
    silenceBeforeAutoEndTurnSeconds = serializers.FloatField(min_value=0.1, max_value=30.0, required=False)
    silenceBeforeSessionEndSeconds = serializers.FloatField(min_value=1.0, max_value=3600.0, required=False)
    silenceBeforeSkipTurnSeconds = serializers.FloatField(min_value=0.1, max_value=60.0, required=False)
    speechEnhancementLevel = serializers.FloatField(min_value=0.0, max_value=1.0, required=False)


class PersonaConfigSerializer(StrictSerializer):
    """`{"personaId"}` for a stored persona (stateful), or inline fields (ephemeral).

    Inline fields override a base persona: the one named by `personaId`, or else the
    organization's first active persona.
    """

    personaId = serializers.CharField(max_length=80, required=False)
    name = serializers.CharField(max_length=120, required=False)
    avatarId = serializers.CharField(max_length=120, required=False)
    voiceId = serializers.CharField(max_length=120, required=False)
    llmId = serializers.CharField(max_length=120, required=False)
    systemPrompt = serializers.CharField(max_length=20000, required=False, allow_blank=True)
    maxSessionLengthSeconds = serializers.IntegerField(min_value=10, max_value=24 * 3600, required=False)
    skipGreeting = serializers.BooleanField(required=False)
    languageCode = serializers.RegexField(
        r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$", max_length=16, required=False
    )
    voiceDetectionOptions = VoiceDetectionOptionsSerializer(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError("give a personaId, or an inline persona configuration")
        return attrs

    @property
    def is_ephemeral(self) -> bool:
        return set(self.validated_data) != {"personaId"}


def _json_size_limited(value: dict[str, Any], field: str) -> dict[str, Any]:
    if len(json.dumps(value)) > MAX_CONFIG_JSON_BYTES:
        raise serializers.ValidationError({field: [f"must be at most {MAX_CONFIG_JSON_BYTES} bytes of JSON"]})
    return value


class SessionTokenRequestSerializer(StrictSerializer):
    personaConfig = PersonaConfigSerializer()
    clientLabel = serializers.CharField(max_length=200, required=False, allow_blank=True)
    sessionOptions = serializers.DictField(required=False)

    def validate_sessionOptions(self, value: dict[str, Any]) -> dict[str, Any]:
        return _json_size_limited(value, "sessionOptions")


class SessionTokenResponseSerializer(serializers.Serializer):
    sessionToken = serializers.CharField()


class StreamTokenRequestSerializer(StrictSerializer):
    agents = serializers.ListField(
        child=serializers.SlugField(max_length=80),
        required=False,
        allow_empty=False,
        min_length=1,
        max_length=100,
    )
    ttlSeconds = serializers.IntegerField(min_value=10, required=False)


class StreamTokenResponseSerializer(serializers.Serializer):
    streamToken = serializers.CharField()
    expiresAt = serializers.DateTimeField()
    agents = serializers.ListField(child=serializers.CharField(), allow_null=True)


class KnowledgeEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = KnowledgeEntry
        fields = ["kind", "question", "answer"]


class PersonaSerializer(serializers.ModelSerializer):
    """A persona as API clients see it; provider secrets never leave the server."""

    languageCode = serializers.CharField(source="language_code")
    systemPrompt = serializers.CharField(source="system_prompt")
    voice = serializers.SerializerMethodField()
    brain = serializers.SerializerMethodField()
    avatarLook = serializers.JSONField(source="avatar_look")
    voiceDetection = serializers.SerializerMethodField()
    sessionLimits = serializers.SerializerMethodField()
    isActive = serializers.BooleanField(source="is_active")
    knowledgeCount = serializers.SerializerMethodField()
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    class Meta:
        model = Persona
        fields = [
            "id",
            "slug",
            "name",
            "description",
            "greeting",
            "systemPrompt",
            "languageCode",
            "voice",
            "brain",
            "avatarLook",
            "voiceDetection",
            "sessionLimits",
            "isActive",
            "knowledgeCount",
            "createdAt",
            "updatedAt",
        ]

    def get_voice(self, persona: Persona) -> dict[str, str]:
        return {
            "ttsProvider": persona.tts_provider,
            "voiceId": persona.voice,
            "sttProvider": persona.stt_provider,
        }

    def get_brain(self, persona: Persona) -> dict[str, Any]:
        return {
            "provider": persona.brain_provider,
            "model": persona.llm_model,
            "baseUrl": persona.llm_base_url,
            "temperature": persona.llm_temperature,
        }

    def get_voiceDetection(self, persona: Persona) -> dict[str, float]:
        return {
            "endOfSpeechSensitivity": persona.end_of_speech_sensitivity,
            "silenceBeforeAutoEndTurnSeconds": persona.silence_before_auto_end_turn_seconds,
        }

    def get_sessionLimits(self, persona: Persona) -> dict[str, Any]:
        return {
            "maxDurationSeconds": persona.max_duration_seconds,
            "idleTimeoutSeconds": persona.idle_timeout_seconds,
            "idleWarningSeconds": persona.idle_warning_seconds,
            "skipGreeting": persona.skip_greeting,
            "sendAudioMetrics": persona.send_audio_metrics,
        }

    def get_knowledgeCount(self, persona: Persona) -> int:
        return len(persona.knowledge.all())


class PersonaDetailSerializer(PersonaSerializer):
    knowledge = KnowledgeEntrySerializer(many=True, read_only=True)

    class Meta(PersonaSerializer.Meta):
        fields = [*PersonaSerializer.Meta.fields, "knowledge"]
