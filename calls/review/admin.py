"""The call pages of the admin: a call read as a conversation; the list searched, filtered and exported.

Also the review audit log, read-only.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib import admin
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.safestring import SafeString

from calls.admin import HistoryAdmin, format_duration, pretty_json
from calls.models import Call, Transport
from calls.review import export, recordings, selectors
from calls.review.live import TAKE_OVER_PERMISSION
from calls.review.models import ReviewAction, ReviewAuditEntry
from calls.review.ranges import RangeNotSatisfiable, byte_range_parse
from calls.review.services import review_audit_record

EXPORT_PERMISSION = "calls.export_call"
LISTEN_PERMISSION = "calls.listen_call"
# The most of a recording one answer carries (bytes): an open range ("bytes=0-") is answered
# with this much at most, and the player asks for the rest (~17 minutes of a call).
RECORDING_RESPONSE_MAX_BYTES = 4 * 1024 * 1024
# Page views whose listening is already in the audit log, kept in the staff member's session.
LISTENED_SESSION_KEY = "parley_listened"
LISTENED_REMEMBERED = 50

# Chunks of an export handed from the database thread to the event loop at a time (ASGI).
EXPORT_CHUNKS_PER_HOP = 50
EXPORT_FORMATS = {
    "csv": (export.calls_csv, "text/csv; charset=utf-8"),
    "json": (export.calls_json, "application/json"),
}


class InterruptedFilter(admin.SimpleListFilter):
    title = "interrupted"
    parameter_name = "interrupted"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "the persona was cut off"), ("no", "never cut off")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Call]) -> QuerySet[Call]:
        if self.value() in ("yes", "no"):
            return selectors.calls_interrupted(queryset, interrupted=self.value() == "yes")
        return queryset


class SlowFilter(admin.SimpleListFilter):
    """Calls by their answers' recorded latency (`TurnLatency`), against `PARLEY_SLOW_TURN_MS`."""

    title = "slow"
    parameter_name = "slow"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        threshold = selectors.slow_turn_ms()
        return [
            ("yes", f"an answer slower than {threshold} ms"),
            ("no", f"no answer slower than {threshold} ms"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Call]) -> QuerySet[Call]:
        if self.value() in ("yes", "no"):
            return selectors.calls_slow(queryset, slow=self.value() == "yes")
        return queryset


class DurationFilter(admin.SimpleListFilter):
    title = "duration"
    parameter_name = "duration"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, label) for name, label, _, _ in selectors.DURATION_RANGES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Call]) -> QuerySet[Call]:
        value = self.value()
        return selectors.calls_by_duration(queryset, range_name=value) if value else queryset


def _chunks_async(chunks: Iterator[str]) -> AsyncIterator[str]:
    """Stream a generator that reads the database from Daphne's event loop, a batch at a time, on
    the request's database thread (a sync iterator would be read whole into memory first)."""

    def take() -> list[str]:
        batch = []
        for chunk in chunks:
            batch.append(chunk)
            if len(batch) >= EXPORT_CHUNKS_PER_HOP:
                break
        return batch

    async def stream() -> AsyncIterator[str]:
        while batch := await sync_to_async(take)():
            for chunk in batch:
                yield chunk

    return stream()


def _recording_note(call: Call, recording: Any, request: HttpRequest) -> str:
    """Why the call page has no player, when it has none (empty when it has one)."""
    if recording is not None:
        if request.user.has_perm(LISTEN_PERMISSION):
            return ""
        return (
            "This call has a recording: listening to it needs the “Can listen to call recordings” permission."
        )
    if call.transport != Transport.WEBRTC:
        return ""
    if not call.persona.recording_enabled:
        return f"Not recorded: {call.persona.name} does not record calls (Personas → Call recording)."
    return "No recording was stored for this call."


@admin.register(Call)
class CallAdmin(HistoryAdmin):
    list_display = ("id", "persona", "transport", "status", "started_at", "duration", "end_reason")
    list_filter = (
        "persona",
        "transport",
        "started_at",
        "end_reason",
        InterruptedFilter,
        DurationFilter,
        SlowFilter,
        "status",
        "direction",
        "organization",
    )
    # The search itself is `get_search_results`; a field here turns the search box on.
    search_fields = ("id",)
    search_help_text = "Words said in the call (full-text on PostgreSQL), a call id, or an address."
    list_select_related = ("persona",)
    date_hierarchy = "created_at"
    fieldsets = (
        (None, {"fields": ("id", "persona", "transport", "status", "started_at", "duration", "end_reason")}),
        (
            "Details",
            {
                "classes": ("collapse",),
                "fields": (
                    "organization",
                    "direction",
                    "from_address",
                    "to_address",
                    "session_token",
                    "engine_host",
                    "created_at",
                    "ended_at",
                    "metadata_json",
                ),
            },
        ),
    )
    readonly_fields = (
        "id",
        "organization",
        "persona",
        "transport",
        "direction",
        "status",
        "from_address",
        "to_address",
        "session_token",
        "engine_host",
        "created_at",
        "started_at",
        "ended_at",
        "duration",
        "end_reason",
        "metadata_json",
    )

    @admin.display(description="duration", ordering="duration_seconds")
    def duration(self, call: Call) -> str:
        return format_duration(call.duration_seconds)

    @admin.display(description="metadata")
    def metadata_json(self, call: Call) -> SafeString:
        return pretty_json(call.metadata)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Call], search_term: str
    ) -> tuple[QuerySet[Call], bool]:
        return selectors.call_search(queryset, search_term), False

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        call = self.get_object(request, unquote(object_id))
        extra_context = dict(extra_context or {})
        if call is not None and self.has_view_permission(request, call):
            raw_events, event_count = selectors.call_events_raw(call)
            latency = selectors.call_latency(call)
            conversation = selectors.call_conversation(call, latency=latency)
            extra_context.update(
                latency=latency,
                latency_stages=selectors.LATENCY_STAGES,
                conversation=conversation,
                flagged_count=sum(1 for item in conversation if item.flags),
                raw_events=raw_events,
                raw_event_count=event_count,
                raw_events_url=reverse("admin:calls_callevent_changelist")
                + f"?call__id__exact={quote(call.pk)}",
            )
            recording = recordings.call_recording_get(call=call)
            extra_context["recording_note"] = _recording_note(call, recording, request)
            if recording is not None and request.user.has_perm(LISTEN_PERMISSION):
                # Each page view listens under its own token: the audit log says "listened" once
                # per view, however many range requests its player makes.
                audio_url = reverse("admin:calls_call_recording", args=[quote(call.pk)])
                extra_context.update(
                    recording=recording,
                    recording_url=f"{audio_url}?view={secrets.token_hex(8)}",
                    recording_offset=recordings.recording_offset_seconds(call=call, recording=recording),
                )
        return super().change_view(request, object_id, form_url, extra_context)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        extra_context = {**(extra_context or {}), "can_export": request.user.has_perm(EXPORT_PERMISSION)}
        return super().changelist_view(request, extra_context)

    def get_urls(self) -> list[Any]:
        export_view = self.admin_site.admin_view(self.export_view)
        recording_view = self.admin_site.admin_view(self.recording_view)
        live_view = self.admin_site.admin_view(self.live_view)
        return [
            path("export.<str:file_format>", export_view, name="calls_call_export"),
            path("live/", live_view, name="calls_call_live"),
            path("<path:object_id>/recording.ogg", recording_view, name="calls_call_recording"),
            *super().get_urls(),
        ]

    def live_view(self, request: HttpRequest) -> HttpResponse:
        """The calls going on now, updated live over the page's websocket (`calls.review.consumers`)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Live calls",
            "may_take_over": request.user.has_perm(TAKE_OVER_PERMISSION),
            "socket_path": "/ws/admin/calls/live/",
        }
        return TemplateResponse(request, "admin/calls/call/live.html", context)

    def export_view(self, request: HttpRequest, file_format: str) -> StreamingHttpResponse:
        """The list as filtered and searched on the changelist (same query string), with transcripts."""
        if not (self.has_view_permission(request) and request.user.has_perm(EXPORT_PERMISSION)):
            raise PermissionDenied
        if file_format not in EXPORT_FORMATS:
            raise PermissionDenied  # only the formats linked from the list
        encode, content_type = EXPORT_FORMATS[file_format]
        calls = self.get_changelist_instance(request).get_queryset(request)
        review_audit_record(
            user=request.user,
            action=ReviewAction.EXPORTED,
            detail={"format": file_format, "filters": request.GET.dict(), "calls": calls.count()},
        )
        chunks = encode(selectors.call_export_rows(calls))
        streamed = _chunks_async(chunks) if isinstance(request, ASGIRequest) else chunks
        response = StreamingHttpResponse(streamed, content_type=content_type)
        stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="parley-calls-{stamp}.{file_format}"'
        return response

    def recording_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The call's recording, for staff who may listen; byte ranges answered (206) so that the
        player can seek."""
        if not request.user.has_perm(LISTEN_PERMISSION):
            raise PermissionDenied
        call = self.get_object(request, unquote(object_id))
        if call is None:
            raise Http404("no such call")
        if not self.has_view_permission(request, call):
            raise PermissionDenied
        recording = recordings.call_recording_get(call=call)
        if recording is None:
            raise Http404("this call has no recording")
        size = recordings.recording_size(recording=recording)
        try:
            wanted = byte_range_parse(request.headers.get("Range"), size)
        except RangeNotSatisfiable:
            response = HttpResponse(status=416)
            response["Content-Range"] = f"bytes */{size}"
            return response
        first, last = wanted if wanted is not None else (0, size - 1)
        if wanted is not None:
            last = min(last, first + RECORDING_RESPONSE_MAX_BYTES - 1)
        self._listened_record(request, call, view=request.GET.get("view", ""))
        part = recordings.recording_read(recording=recording, start=first, length=last - first + 1)
        response = HttpResponse(
            part.content,
            status=206 if wanted is not None else 200,
            content_type=recordings.RECORDING_CONTENT_TYPE,
        )
        response["Accept-Ranges"] = "bytes"
        if wanted is not None:
            response["Content-Range"] = f"bytes {first}-{first + len(part.content) - 1}/{part.size}"
        response["Content-Disposition"] = f'inline; filename="{call.pk}.ogg"'
        return response

    @staticmethod
    def _listened_record(request: HttpRequest, call: Call, *, view: str) -> None:
        """A `listened` entry in the audit log, once per page view (its player's `view` token)."""
        key = f"{call.pk}:{view[:32]}"
        listened = list(request.session.get(LISTENED_SESSION_KEY, []))
        if key in listened:
            return
        review_audit_record(
            user=request.user,
            action=ReviewAction.LISTENED,
            call=call,
            detail={"range": request.headers.get("Range", "")},
        )
        request.session[LISTENED_SESSION_KEY] = [*listened, key][-LISTENED_REMEMBERED:]


@admin.register(ReviewAuditEntry)
class ReviewAuditEntryAdmin(HistoryAdmin):
    list_display = ("created_at", "username", "action", "call_ref", "detail")
    list_filter = ("action", "created_at")
    search_fields = ("username", "call_ref")
    date_hierarchy = "created_at"
    readonly_fields = ("created_at", "user", "username", "action", "call", "call_ref", "detail")
    fields = readonly_fields

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # An audit log that can be trimmed is not one.
        return False
