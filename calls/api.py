"""REST API of the calls app: calls with their transcripts, and the event log by cursor."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, generics
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from calls import selectors
from calls.models import Call
from calls.serializers import (
    CallDetailSerializer,
    CallEventPageSerializer,
    CallEventSerializer,
    CallFilterSerializer,
    CallSerializer,
    EventQuerySerializer,
)
from personas.authentication import OrganizationPrincipal
from personas.schema import error_responses


def _organization_id(request: Request) -> int:
    principal = request.user
    assert isinstance(principal, OrganizationPrincipal)  # HasOrganization ran first
    return principal.organization_id


class CallPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "pageSize"
    max_page_size = 200


class CallListView(generics.ListAPIView):
    """The organization's calls, newest first, filtered and paged."""

    serializer_class = CallSerializer
    pagination_class = CallPagination

    @extend_schema(
        # The query parameters, with their limits, are the filter serializer's fields.
        parameters=[CallFilterSerializer],
        responses={
            200: CallSerializer,
            **error_responses(
                400, 401, 404, 429, s400="A filter is invalid; `detail` names it.", s404="No such page."
            ),
        },
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> Any:
        filters = CallFilterSerializer(data=self.request.query_params.dict())
        filters.is_valid(raise_exception=True)
        values = filters.validated_data
        queryset = selectors.call_list(organization_id=_organization_id(self.request))
        if "persona" in values:
            queryset = queryset.filter(persona__slug=values["persona"])
        if "transport" in values:
            queryset = queryset.filter(transport=values["transport"])
        if "status" in values:
            queryset = queryset.filter(status=values["status"])
        if "endReason" in values:
            queryset = queryset.filter(end_reason=values["endReason"])
        if "startedAfter" in values:
            queryset = queryset.filter(started_at__gte=values["startedAfter"])
        if "startedBefore" in values:
            queryset = queryset.filter(started_at__lte=values["startedBefore"])
        return queryset.order_by("-created_at", "-pk")


def _call_or_404(request: Request, call_id: str) -> Call:
    call = selectors.call_get(organization_id=_organization_id(request), call_id=call_id)
    if call is None:
        raise exceptions.NotFound(f"no call {call_id!r} in this organization")
    return call


class CallDetailView(APIView):
    """One call with its transcript in order."""

    @extend_schema(responses={200: CallDetailSerializer, **error_responses(401, 404, 429)})
    def get(self, request: Request, call_id: str) -> Response:
        call = _call_or_404(request, call_id)
        return Response(CallDetailSerializer(call).data)


class CallEventListView(APIView):
    """A call's kept events after a cursor, oldest first (`nextCursor` resumes)."""

    @extend_schema(
        parameters=[EventQuerySerializer],
        responses={200: CallEventPageSerializer, **error_responses(400, 401, 404, 429)},
    )
    def get(self, request: Request, call_id: str) -> Response:
        query = EventQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        call = _call_or_404(request, call_id)
        after, limit = query.validated_data["after"], query.validated_data["limit"]
        rows = selectors.call_events_after(
            organization_id=call.organization_id, after=after, call_id=call.id, limit=limit + 1
        )
        page = rows[:limit]
        return Response(
            {
                "events": CallEventSerializer(page, many=True).data,
                "nextCursor": page[-1].cursor if page else after,
                "hasMore": len(rows) > limit,
            }
        )
