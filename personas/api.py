"""REST API of the personas app: session tokens, stream tokens, personas (read only)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import exceptions, generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from personas import selectors, services
from personas.authentication import OrganizationPrincipal
from personas.models import Persona, SessionToken
from personas.schema import error_responses
from personas.serializers import (
    PersonaDetailSerializer,
    PersonaSerializer,
    SessionTokenRequestSerializer,
    SessionTokenResponseSerializer,
    StreamTokenRequestSerializer,
    StreamTokenResponseSerializer,
)


class TooManySessions(exceptions.Throttled):
    default_detail = "too many live sessions"


def _principal(request: Request) -> OrganizationPrincipal:
    principal = request.user
    assert isinstance(principal, OrganizationPrincipal)  # HasOrganization ran first
    return principal


def _plain(value: Any) -> Any:
    """Validated data as plain JSON types (nested OrderedDicts become dicts)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _field_error(field: str, message: str) -> exceptions.ValidationError:
    return exceptions.ValidationError({field: [message]})


class SessionTokenView(APIView):
    """Mint a single-use session token for one persona (PROTOCOL §1.1)."""

    throttle_scope = "session_token"

    @extend_schema(
        request=SessionTokenRequestSerializer,
        responses={
            200: SessionTokenResponseSerializer,
            **error_responses(
                400,
                401,
                403,
                429,
                s403="The persona belongs to another organization.",
                s429="Rate limit or live-session limit reached.",
            ),
        },
        summary="Create a session token",
    )
    def post(self, request: Request) -> Response:
        principal = _principal(request)
        body = SessionTokenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        persona_config: dict[str, Any] = _plain(body.validated_data["personaConfig"])
        persona = self._base_persona(principal, persona_config.get("personaId"))
        ephemeral = set(persona_config) != {"personaId"}
        try:
            token = services.session_token_issue(
                organization=principal.organization,
                persona=persona,
                kind=SessionToken.Kind.EPHEMERAL if ephemeral else SessionToken.Kind.STATEFUL,
                persona_config=persona_config if ephemeral else {},
                session_options=body.validated_data.get("sessionOptions") or {},
                client_label=body.validated_data.get("clientLabel", ""),
                api_key=principal.api_key,
            )
        except services.SessionLimitReached as error:
            raise TooManySessions(detail=str(error)) from None
        return Response({"sessionToken": token}, status=status.HTTP_200_OK)

    @staticmethod
    def _base_persona(principal: OrganizationPrincipal, reference: str | None) -> Persona:
        organization_id = principal.organization_id
        if reference is None:
            persona = (
                Persona.objects.filter(organization_id=organization_id, is_active=True).order_by("id").first()
            )
            if persona is None:
                raise _field_error(
                    "personaConfig", "this organization has no active persona to base an inline config on"
                )
            return persona
        persona = selectors.persona_find(organization_id=organization_id, reference=reference)
        if persona is None:
            if selectors.persona_exists_elsewhere(organization_id=organization_id, reference=reference):
                raise exceptions.PermissionDenied(
                    f"personaConfig.personaId: persona {reference!r} belongs to another organization"
                )
            raise _field_error("personaConfig.personaId", f"no persona {reference!r} in this organization")
        if not persona.is_active:
            raise _field_error("personaConfig.personaId", f"persona {reference!r} is deactivated")
        return persona


class StreamTokenView(APIView):
    """Mint a short-lived token for reading the event stream from a browser (EventSource)."""

    throttle_scope = "stream_token"

    @extend_schema(
        request=StreamTokenRequestSerializer,
        responses={200: StreamTokenResponseSerializer, **error_responses(400, 401, 429)},
        summary="Create a stream token",
    )
    def post(self, request: Request) -> Response:
        principal = _principal(request)
        body = StreamTokenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        agents: list[str] | None = body.validated_data.get("agents")
        if agents:
            known = set(
                selectors.persona_list(organization_id=principal.organization_id)
                .filter(slug__in=agents)
                .values_list("slug", flat=True)
            )
            unknown = sorted(set(agents) - known)
            if unknown:
                raise _field_error("agents", f"not personas of this organization: {', '.join(unknown)}")
        token, expires = services.stream_token_issue(
            organization=principal.organization,
            agents=agents,
            ttl_seconds=body.validated_data.get("ttlSeconds"),
        )
        return Response(
            {
                "streamToken": token,
                "expiresAt": datetime.fromtimestamp(expires, tz=UTC).isoformat().replace("+00:00", "Z"),
                "agents": sorted(set(agents)) if agents else None,
            }
        )


@extend_schema_view(get=extend_schema(responses={200: PersonaSerializer, **error_responses(401, 429)}))
class PersonaListView(generics.ListAPIView):
    """The organization's personas."""

    serializer_class = PersonaSerializer
    pagination_class = None

    def get_queryset(self) -> Any:
        return selectors.persona_list(organization_id=_principal(self.request).organization_id)


@extend_schema_view(
    get=extend_schema(responses={200: PersonaDetailSerializer, **error_responses(401, 404, 429)})
)
class PersonaDetailView(generics.RetrieveAPIView):
    """One persona, by slug or id, with its knowledge entries."""

    serializer_class = PersonaDetailSerializer
    lookup_url_kwarg = "reference"

    def get_object(self) -> Persona:
        reference = self.kwargs["reference"]
        persona = selectors.persona_find(
            organization_id=_principal(self.request).organization_id, reference=reference
        )
        if persona is None:
            raise exceptions.NotFound(f"no persona {reference!r} in this organization")
        return persona
