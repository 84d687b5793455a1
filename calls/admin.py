"""Admin for calls (transcript and event log on one page); history is read-only.

WhatsApp channels and webhook deliveries: `calls.whatsapp.admin`; threads and takeover:
`calls.whatsapp.thread_admin`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from calls.models import Call, CallEvent, Message


class HistoryAdmin(admin.ModelAdmin):
    """What happened is a record: it can be read (and a whole call deleted), never rewritten."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class HistoryInline(admin.TabularInline):
    extra = 0
    max_num = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def pretty_json(value: Any) -> SafeString:
    return format_html(
        '<pre class="parley-json" style="margin:0;white-space:pre-wrap">{}</pre>',
        json.dumps(value, indent=1, ensure_ascii=False, sort_keys=True),
    )


def clock_time(moment: datetime | None, *, milliseconds: bool = False) -> str:
    """A time of day in the site's zone: the call page already says which day."""
    if moment is None:
        return "-"
    local = timezone.localtime(moment)
    return local.strftime("%H:%M:%S.%f")[:-3] if milliseconds else local.strftime("%H:%M:%S")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}"


# --- Calls ------------------------------------------------------------------------------


class MessageInline(HistoryInline):
    model = Message
    fields = ("role", "text", "spoken_text", "interrupted", "started", "ended")
    readonly_fields = fields
    ordering = ("created_at", "id")
    verbose_name = "transcript line"
    verbose_name_plural = "transcript"

    @admin.display(description="started")
    def started(self, message: Message) -> str:
        return clock_time(message.started_at)

    @admin.display(description="ended")
    def ended(self, message: Message) -> str:
        return clock_time(message.ended_at)


class CallEventInline(HistoryInline):
    model = CallEvent
    # `cursor` is the primary key, which a formset renders as a hidden input: show it via a method.
    fields = ("event_cursor", "type", "data_json", "time")
    readonly_fields = fields
    ordering = ("cursor",)
    verbose_name = "event"
    verbose_name_plural = "events"

    @admin.display(description="cursor")
    def event_cursor(self, event: CallEvent) -> int:
        return event.cursor

    @admin.display(description="time")
    def time(self, event: CallEvent) -> str:
        return clock_time(event.created_at, milliseconds=True)

    @admin.display(description="data")
    def data_json(self, event: CallEvent) -> SafeString:
        return pretty_json(event.data)


@admin.register(Call)
class CallAdmin(HistoryAdmin):
    list_display = ("id", "persona", "transport", "status", "started_at", "duration", "end_reason")
    list_filter = ("persona", "transport", "status", "end_reason", "direction", "started_at", "organization")
    search_fields = ("id", "from_address", "to_address", "messages__text")
    list_select_related = ("persona",)
    date_hierarchy = "created_at"
    fieldsets = (
        (None, {"fields": ("id", "organization", "persona", "transport", "direction", "status")}),
        ("Parties", {"fields": ("from_address", "to_address", "session_token", "engine_host")}),
        ("Time", {"fields": ("created_at", "started_at", "ended_at", "duration", "end_reason")}),
        ("Metadata", {"fields": ("metadata_json",)}),
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
    inlines = (MessageInline, CallEventInline)

    @admin.display(description="duration", ordering="duration_seconds")
    def duration(self, call: Call) -> str:
        return format_duration(call.duration_seconds)

    @admin.display(description="metadata")
    def metadata_json(self, call: Call) -> SafeString:
        return pretty_json(call.metadata)


@admin.register(Message)
class MessageAdmin(HistoryAdmin):
    list_display = ("short_text", "role", "call", "interrupted", "created_at")
    list_filter = ("role", "interrupted", "created_at")
    search_fields = ("text", "spoken_text", "call__id", "message_id")
    list_select_related = ("call",)
    readonly_fields = (
        "call",
        "message_id",
        "role",
        "text",
        "spoken_text",
        "interrupted",
        "started_at",
        "ended_at",
        "created_at",
    )
    fields = readonly_fields

    @admin.display(description="text")
    def short_text(self, message: Message) -> str:
        return message.text if len(message.text) <= 80 else f"{message.text[:79]}…"

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A transcript with holes is worse than none: delete the whole call instead.
        return False


@admin.register(CallEvent)
class CallEventAdmin(HistoryAdmin):
    list_display = ("cursor", "type", "call", "persona", "created_at")
    list_filter = ("type", "persona", "created_at")
    search_fields = ("call__id", "type")
    list_select_related = ("call", "persona")
    readonly_fields = ("cursor", "organization", "persona", "call", "type", "data_json", "created_at")
    fields = readonly_fields

    @admin.display(description="data")
    def data_json(self, event: CallEvent) -> SafeString:
        return pretty_json(event.data)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The log's cursors are what stream readers resume from: it is append-only.
        return False


# The WhatsApp channel, webhook deliveries and threads live with the rest of WhatsApp.
import calls.whatsapp.admin  # noqa: E402
import calls.whatsapp.thread_admin  # noqa: E402, F401
