"""Request and response shapes of the calls API (camelCase on the wire)."""

from __future__ import annotations

from rest_framework import serializers

from calls.models import Call, CallEvent, CallStatus, EndReason, Message, Transport
from personas.serializers import StrictSerializer
from webapp.inputs import InputRefused, cursor_parse


class MessageSerializer(serializers.ModelSerializer):
    messageId = serializers.CharField(source="message_id")
    spokenText = serializers.CharField(source="spoken_text")
    startedAt = serializers.DateTimeField(source="started_at")
    endedAt = serializers.DateTimeField(source="ended_at")
    createdAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = Message
        fields = [
            "messageId",
            "role",
            "text",
            "spokenText",
            "interrupted",
            "startedAt",
            "endedAt",
            "createdAt",
        ]


class CallSerializer(serializers.ModelSerializer):
    agent = serializers.CharField(source="persona.slug")
    to = serializers.CharField(source="to_address")
    createdAt = serializers.DateTimeField(source="created_at")
    startedAt = serializers.DateTimeField(source="started_at")
    endedAt = serializers.DateTimeField(source="ended_at")
    duration = serializers.FloatField(source="duration_seconds")
    endReason = serializers.CharField(source="end_reason")

    class Meta:
        model = Call
        fields = [
            "id",
            "agent",
            "from",
            "to",
            "direction",
            "transport",
            "metadata",
            "status",
            "createdAt",
            "startedAt",
            "endedAt",
            "duration",
            "endReason",
        ]

    # "from" is a Python keyword, so it is declared through the class namespace.
    locals()["from"] = serializers.CharField(source="from_address")


class CallDetailSerializer(CallSerializer):
    transcript = MessageSerializer(source="messages", many=True, read_only=True)

    class Meta(CallSerializer.Meta):
        fields = [*CallSerializer.Meta.fields, "transcript"]


class CallFilterSerializer(StrictSerializer):
    """Query parameters of the call list; each bad value is named in the 400."""

    persona = serializers.SlugField(max_length=80, required=False)
    transport = serializers.ChoiceField(choices=Transport.choices, required=False)
    status = serializers.ChoiceField(choices=CallStatus.choices, required=False)
    endReason = serializers.ChoiceField(choices=EndReason.choices, required=False)
    startedAfter = serializers.DateTimeField(required=False)
    startedBefore = serializers.DateTimeField(required=False)
    page = serializers.IntegerField(min_value=1, required=False)
    pageSize = serializers.IntegerField(min_value=1, max_value=200, required=False)

    def validate(self, attrs: dict) -> dict:
        after, before = attrs.get("startedAfter"), attrs.get("startedBefore")
        if after and before and after > before:
            raise serializers.ValidationError({"startedBefore": ["must not be earlier than startedAfter"]})
        return attrs


class CursorField(serializers.Field):
    """An event-log cursor, read by the one cursor parser the event streams use too."""

    def to_internal_value(self, data: object) -> int:
        try:
            return cursor_parse(str(data), field=self.field_name)
        except InputRefused as refusal:
            raise serializers.ValidationError(refusal.problem) from None

    def to_representation(self, value: int) -> int:
        return value


class EventQuerySerializer(StrictSerializer):
    after = CursorField(required=False, default=0)
    limit = serializers.IntegerField(min_value=1, max_value=1000, required=False, default=500)


class CallEventSerializer(serializers.ModelSerializer):
    event = serializers.CharField(source="type")
    createdAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = CallEvent
        fields = ["cursor", "event", "data", "createdAt"]


class CallEventPageSerializer(serializers.Serializer):
    events = CallEventSerializer(many=True)
    nextCursor = serializers.IntegerField()
    hasMore = serializers.BooleanField()
