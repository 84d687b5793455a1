"""Request and response shapes of the calls API (camelCase on the wire)."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from calls.models import Call, CallEvent, CallStatus, EndReason, Message, Transport
from personas.serializers import StrictSerializer
from webapp.inputs import MAX_CURSOR, InputRefused, cursor_parse

_DIGITS = re.compile(r"[0-9]+")


class MessageSerializer(serializers.ModelSerializer):
    messageId = serializers.CharField(source="message_id")
    spokenText = serializers.CharField(source="spoken_text")
    startedAt = serializers.DateTimeField(source="started_at", allow_null=True)
    endedAt = serializers.DateTimeField(source="ended_at", allow_null=True)
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
    # Null until the call connects (startedAt) and ends (endedAt, duration).
    startedAt = serializers.DateTimeField(source="started_at", allow_null=True)
    endedAt = serializers.DateTimeField(source="ended_at", allow_null=True)
    duration = serializers.FloatField(source="duration_seconds", allow_null=True)
    endReason = serializers.CharField(source="end_reason", help_text="Empty until the call ends.")

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


class QueryIntegerField(serializers.IntegerField):
    """An integer in a query string: ASCII digits only (DRF's IntegerField also takes ' 5', '5.0'
    and other scripts' digits, which the schema's `integer` does not)."""

    def to_internal_value(self, data: Any) -> int:
        if not isinstance(data, str) or not _DIGITS.fullmatch(data):
            self.fail("invalid")
        return super().to_internal_value(data)


class CallFilterSerializer(StrictSerializer):
    """Query parameters of the call list; each bad value is named in the 400."""

    json_types = False  # query strings: every value is text

    persona = serializers.SlugField(max_length=80, required=False)
    transport = serializers.ChoiceField(choices=Transport.choices, required=False)
    status = serializers.ChoiceField(choices=CallStatus.choices, required=False)
    endReason = serializers.ChoiceField(choices=EndReason.choices, required=False)
    startedAfter = serializers.DateTimeField(required=False)
    startedBefore = serializers.DateTimeField(required=False)
    page = QueryIntegerField(min_value=1, required=False)
    pageSize = QueryIntegerField(min_value=1, max_value=200, required=False)

    def validate(self, attrs: dict) -> dict:
        after, before = attrs.get("startedAfter"), attrs.get("startedBefore")
        if after and before and after > before:
            raise serializers.ValidationError({"startedBefore": ["must not be earlier than startedAfter"]})
        return attrs


@extend_schema_field({"type": "integer", "minimum": 0, "maximum": MAX_CURSOR})
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
    json_types = False  # query strings: every value is text

    after = CursorField(required=False, default=0, help_text="Events with a cursor above this one.")
    limit = QueryIntegerField(
        min_value=1, max_value=1000, required=False, default=500, help_text="At most this many events."
    )


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
