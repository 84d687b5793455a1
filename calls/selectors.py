"""Reads for calls, transcripts and the event log."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.db.models import Count, Max, Q, QuerySet

from calls.models import LIVE_STATUSES, Call, CallEvent, CallStatus
from personas.models import Organization

# One page of the event log; a reader far behind gets it in several pages.
EVENT_PAGE_SIZE = 500


def live_call_count(*, organization: Organization) -> int:
    return Call.objects.filter(organization=organization, status__in=LIVE_STATUSES).count()


def call_list(*, organization_id: int) -> QuerySet[Call]:
    return Call.objects.filter(organization_id=organization_id).select_related("persona")


def call_get(*, organization_id: int, call_id: str) -> Call | None:
    return call_list(organization_id=organization_id).filter(pk=call_id).first()


def call_events_after(
    *,
    organization_id: int,
    after: int,
    agents: Iterable[str] | None = None,
    call_id: str | None = None,
    limit: int = EVENT_PAGE_SIZE,
) -> list[CallEvent]:
    """Kept events of an organization with a cursor above `after`, oldest first."""
    queryset = CallEvent.objects.filter(organization_id=organization_id, cursor__gt=after)
    if agents is not None:
        queryset = queryset.filter(persona__slug__in=list(agents))
    if call_id is not None:
        queryset = queryset.filter(call_id=call_id)
    return list(queryset.order_by("cursor")[:limit])


def call_event_data(*, call_id: str, name: str) -> dict[str, Any] | None:
    """The wire object of a call's stored event of this name (the first, if several)."""
    return (
        CallEvent.objects.filter(call_id=call_id, type=name)
        .order_by("cursor")
        .values_list("data", flat=True)
        .first()
    )


def organization_latest_event_cursor(*, organization_id: int) -> int:
    """The organization's newest cursor (0 for none): a live-only reader starts after it."""
    latest = CallEvent.objects.filter(organization_id=organization_id).aggregate(latest=Max("cursor"))
    return latest["latest"] or 0


def organization_event_cursor_before(*, organization_id: int, cursor: int) -> int:
    """The cursor of the organization's kept event just before `cursor` (0 for none)."""
    before = (
        CallEvent.objects.filter(organization_id=organization_id, cursor__lt=cursor)
        .order_by("-cursor")
        .values_list("cursor", flat=True)
        .first()
    )
    return before or 0


def engine_host_least_busy(hosts: Sequence[str], *, connecting_since: datetime) -> str:
    """Of several Parley processes, the one holding the fewest live calls (the first on a tie).

    A call counts while it is in progress, or while it is connecting and was created after
    `connecting_since` (a browser that never connected stops weighing on its host).
    """
    if len(hosts) == 1:
        return hosts[0]
    counts = dict(
        Call.objects.filter(engine_host__in=hosts)
        .filter(
            Q(status=CallStatus.IN_PROGRESS)
            | Q(status=CallStatus.CONNECTING, created_at__gte=connecting_since)
        )
        .order_by()
        .values_list("engine_host")
        .annotate(live=Count("id"))
    )
    return min(hosts, key=lambda host: (counts.get(host, 0), hosts.index(host)))
