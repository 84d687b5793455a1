"""OpenAPI description of Parley's API-key authentication and error bodies (for drf-spectacular)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "personas.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A server-side API key (prl_…)."}


class StrictSerializerSchema(OpenApiSerializerExtension):
    """A `StrictSerializer` refuses fields it does not know: its schema says so."""

    target_class = "personas.serializers.StrictSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema = auto_schema._map_basic_serializer(self.target, direction)
        return {**schema, "additionalProperties": False}


class ErrorSerializer(serializers.Serializer):
    """The API's error body (`webapp.errors`)."""

    detail = serializers.CharField(help_text="A sentence naming the problem, and the field at fault.")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="For an invalid body or query: the messages by field (dotted for nested fields).",
    )


class EngineErrorSerializer(serializers.Serializer):
    """The engine endpoints' error body: what the Anam SDK reads, plus Parley's `detail`."""

    error = serializers.CharField(
        required=False, help_text="A short code, such as `invalid_token` or `not_ready`."
    )
    message = serializers.CharField(required=False, help_text="What the SDK shows.")
    detail = serializers.CharField(help_text="The same sentence (a body that is not JSON has only this).")


ERROR_DESCRIPTIONS = {
    400: "Invalid input; `detail` names the field.",
    401: "Missing, invalid or revoked credentials.",
    403: "The resource belongs to another organization, or is outside the credentials' scope.",
    404: "No such resource in this organization.",
    409: "The resource is not in a state that allows this.",
    413: "The request body is too large.",
    429: "Rate limit reached; `Retry-After` says when to try again.",
    503: "A backing service (database or channel layer) is unavailable; try again.",
}


def error_responses(*statuses: int, engine: bool = False, **descriptions: str) -> dict[int, OpenApiResponse]:
    """Documented error answers: `error_responses(400, 401, s403="...")` overrides a description."""
    body = EngineErrorSerializer if engine else ErrorSerializer
    # Every endpoint answers 503 while a backing service is down (Redis: the rate limits).
    return {
        status: OpenApiResponse(
            response=body, description=descriptions.get(f"s{status}", ERROR_DESCRIPTIONS[status])
        )
        for status in sorted({*statuses, 503})
    }
