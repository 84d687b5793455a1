"""The browser-facing engine endpoints of the Anam protocol: session start, talk, client metrics.

Errors here are shaped for the Anam SDK, which reads `message` (and `error` for 429s) and
must get JSON with CORS headers even on failure; `detail` is kept for Parley's own clients.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from calls import services
from calls.live import live_session_get
from personas.schema import error_responses
from personas.serializers import StrictSerializer

logger = logging.getLogger(__name__)

# What `/talk` accepts in one request: a few paragraphs, not a book.
MAX_TALK_CHARACTERS = 5000


def engine_error(status_code: int, error: str, message: str) -> Response:
    return Response({"error": error, "message": message, "detail": message}, status=status_code)


# The `error` code of answers DRF itself makes (a body it cannot parse, a throttle, an outage).
ENGINE_ERROR_CODES = {400: "invalid_body", 413: "body_too_large", 429: "rate_limited", 503: "unavailable"}


class EngineAPIView(APIView):
    """An engine endpoint: DRF's own error answers get the SDK's `error` and `message` too."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        data = response.data if isinstance(response.data, dict) else {}
        if "detail" in data and "message" not in data:
            code = ENGINE_ERROR_CODES.get(response.status_code, "error")
            response.data = {"error": code, "message": data["detail"], **data}
        return response


@extend_schema_field(
    {
        "type": "object",
        "maxProperties": 0,
        "description": "Refused unless empty: the session token already fixes the persona.",
    }
)
class _NoPersonaConfigField(serializers.DictField):
    """The SDK may send `personaConfig`; only an empty one is accepted (see `EngineSessionView`)."""


class SessionStartSerializer(StrictSerializer):
    personaConfig = _NoPersonaConfigField(required=False)
    sessionOptions = serializers.DictField(required=False)
    clientMetadata = serializers.DictField(required=False)


class EngineClientConfigSerializer(serializers.Serializer):
    heartbeatIntervalSeconds = serializers.FloatField()
    maxWsReconnectionAttempts = serializers.IntegerField()
    iceServers = serializers.ListField(child=serializers.DictField())


class SessionStartResponseSerializer(serializers.Serializer):
    sessionId = serializers.CharField()
    engineHost = serializers.CharField()
    engineProtocol = serializers.ChoiceField(choices=["http", "https"])
    signallingEndpoint = serializers.CharField()
    clientConfig = EngineClientConfigSerializer()


def _engine_hosts(request: Request) -> list[str]:
    """The Parley processes a browser may be sent to: the configured ones, else this one."""
    return list(settings.PARLEY_ENGINE_HOSTS) or [request.get_host()]


def _engine_protocol(request: Request) -> str:
    return settings.PARLEY_ENGINE_PROTOCOL or ("https" if request.is_secure() else "http")


class EngineSessionView(EngineAPIView):
    """`POST /v1/engine/session`: consume a session token, create the call, say where to connect."""

    @extend_schema(
        request=SessionStartSerializer,
        responses={
            200: SessionStartResponseSerializer,
            **error_responses(
                400,
                401,
                413,
                429,
                503,
                engine=True,
                s401="Missing, invalid, expired or already used session token.",
                s503="The server is restarting (draining), or a backing service is down; try again.",
            ),
        },
        auth=[{"sessionToken": []}],
        summary="Start a session with a session token",
    )
    def post(self, request: Request) -> Response:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return engine_error(401, "missing_token", "send 'Authorization: Bearer <session token>'")
        body = SessionStartSerializer(data=request.data)
        if not body.is_valid():
            field, messages = next(iter(body.errors.items()))
            return engine_error(400, "invalid_body", f"{field}: {messages[0]}")
        if body.validated_data.get("personaConfig"):
            return engine_error(
                400,
                "invalid_body",
                "personaConfig: the session token already fixes the persona; mint a new token to change it",
            )
        try:
            call = services.engine_session_start(
                token=token.strip(),
                engine_hosts=_engine_hosts(request),
                client_metadata=body.validated_data.get("clientMetadata"),
            )
        except services.SessionStartRefused as refusal:
            return engine_error(refusal.status, refusal.error, refusal.message)
        return Response(
            {
                "sessionId": call.id,
                "engineHost": call.engine_host or request.get_host(),
                "engineProtocol": _engine_protocol(request),
                "signallingEndpoint": "/ws/engine/",
                "clientConfig": {
                    "heartbeatIntervalSeconds": settings.PARLEY_HEARTBEAT_SECONDS,
                    "maxWsReconnectionAttempts": settings.PARLEY_WS_RECONNECT_ATTEMPTS,
                    "iceServers": settings.PARLEY_ICE_SERVERS,
                },
            },
            status=status.HTTP_200_OK,
        )


class TalkSerializer(StrictSerializer):
    content = serializers.CharField(
        max_length=MAX_TALK_CHARACTERS,
        allow_blank=False,
        trim_whitespace=True,
        # Also in the schema (`pattern`): only spaces is blank, and refused as such.
        validators=[RegexValidator(r"\S", message="This field may not be blank.")],
    )


class TalkQuerySerializer(serializers.Serializer):
    session_id = serializers.CharField(min_length=1, help_text="The live session (`sessionId`).")


class TalkResponseSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["queued"])


class TalkView(EngineAPIView):
    """`POST /talk?session_id=…`: the persona says this text verbatim (the session id authorises)."""

    async def _say(self, session_id: str, content: str) -> Response | None:
        """None once the text is queued, else the error answer."""
        live = live_session_get(session_id)
        if live is None:
            return engine_error(404, "no_session", f"no live session {session_id!r} on this server")
        if not await live.say(content):
            return engine_error(409, "not_ready", "the session is not connected; nothing was said")
        return None

    @extend_schema(
        parameters=[TalkQuerySerializer],
        request=TalkSerializer,
        responses={
            200: TalkResponseSerializer,
            **error_responses(
                400,
                404,
                409,
                429,
                engine=True,
                s404="No live session with this id on this server.",
                s409="The session is not connected yet; nothing was said.",
            ),
        },
        auth=[],
        summary="Make the persona say a text",
    )
    def post(self, request: Request) -> Response:
        from asgiref.sync import async_to_sync

        session_id = request.query_params.get("session_id", "")
        if not session_id:
            return engine_error(400, "invalid_request", "session_id: required in the query string")
        body = TalkSerializer(data=request.data)
        if not body.is_valid():
            field, messages = next(iter(body.errors.items()))
            return engine_error(400, "invalid_body", f"{field}: {messages[0]}")
        refusal = async_to_sync(self._say)(session_id, body.validated_data["content"])
        if refusal is not None:
            return refusal
        return Response({"status": "queued"}, status=status.HTTP_200_OK)


class ClientMetricsView(EngineAPIView):
    """`POST /v1/metrics/client`: the Anam SDK's telemetry. Accepted and dropped (nothing leaves)."""

    throttle_classes: list[Any] = []

    @extend_schema(
        request={"application/json": OpenApiTypes.ANY},  # dropped unread, whatever it is
        responses={204: OpenApiResponse(description="Accepted (and dropped).")},
        auth=[],
        summary="Client telemetry",
    )
    def post(self, request: Request) -> Response:
        return Response(status=status.HTTP_204_NO_CONTENT)
