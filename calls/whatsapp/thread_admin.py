"""Admin for WhatsApp threads: the conversation with its delivery ticks, and human takeover.

On a thread's page staff with the right to change threads take it over (the persona stops
answering it on its own), write to the contact as themselves (sent through the Graph API,
recorded as a human's `whatsapp.response`), and hand it back; the changelist pauses or resumes
several threads at once. Everything else on the page is what Meta told us, read-only.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from calls.admin import HistoryAdmin, HistoryInline
from calls.models import WhatsAppMessage, WhatsAppSession
from calls.whatsapp.graph import TEXT_MAX_CHARACTERS
from calls.whatsapp.outbox import OutboxRefused, whatsapp_human_send, whatsapp_takeover_set

# Ticks as WhatsApp shows them, by status.
TICKS = {
    WhatsAppMessage.Status.PENDING: "🕓",
    WhatsAppMessage.Status.SENT: "✓",
    WhatsAppMessage.Status.DELIVERED: "✓✓",
    WhatsAppMessage.Status.READ: "✓✓ read",
    WhatsAppMessage.Status.PLAYED: "✓✓ played",
    WhatsAppMessage.Status.FAILED: "✗ failed",
}


class HumanMessageForm(forms.Form):
    text = forms.CharField(
        label="Write to the contact",
        max_length=TEXT_MAX_CHARACTERS,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80, "maxlength": TEXT_MAX_CHARACTERS}),
    )


class WhatsAppMessageInline(HistoryInline):
    model = WhatsAppMessage
    fields = (
        "created_at",
        "direction",
        "author",
        "type",
        "text",
        "status",
        "sent_at",
        "delivered_at",
        "read_at",
        "error",
    )
    readonly_fields = fields
    ordering = ("created_at", "id")
    show_change_link = True


@admin.register(WhatsAppSession)
class WhatsAppSessionAdmin(admin.ModelAdmin):
    change_form_template = "admin/calls/whatsappsession/change_form.html"
    list_display = (
        "contact_phone",
        "contact_name",
        "persona",
        "phone_number_id",
        "human_takeover",
        "started_at",
        "last_inbound_at",
        "ended_at",
    )
    list_filter = ("human_takeover", "persona", "phone_number_id", "started_at")
    search_fields = ("contact_phone", "contact_name", "phone_number_id", "messages__text")
    list_select_related = ("persona",)
    actions = ("take_over", "hand_back")
    # What Meta told us; the takeover changes only through its buttons.
    fields = (
        "organization",
        "persona",
        "call",
        "phone_number_id",
        "contact_phone",
        "contact_name",
        "human_takeover",
        "started_at",
        "last_inbound_at",
        "ended_at",
    )
    readonly_fields = fields
    inlines = (WhatsAppMessageInline,)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        own = [
            path(
                "<int:session_id>/takeover/",
                self.admin_site.admin_view(require_POST(self.takeover_view)),
                name="calls_whatsappsession_takeover",
            ),
            path(
                "<int:session_id>/send/",
                self.admin_site.admin_view(require_POST(self.send_view)),
                name="calls_whatsappsession_send",
            ),
        ]
        return own + super().get_urls()

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        session = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if session is not None:
            context.update(
                thread=[
                    {
                        "message": message,
                        "ticks": TICKS.get(message.status, "") if message.direction == "outbound" else "",
                    }
                    for message in session.messages.order_by("created_at", "id")
                ],
                may_take_over=self.has_change_permission(request, session),
                human_form=HumanMessageForm(),
                staff_name=request.user.get_full_name() or request.user.get_username(),
            )
        return super().change_view(request, object_id, form_url, extra_context=context)

    # --- takeover ----------------------------------------------------------------------

    def _thread_for_change(self, request: HttpRequest, session_id: int) -> WhatsAppSession:
        session = get_object_or_404(WhatsAppSession.objects.select_related("persona"), pk=session_id)
        if not self.has_change_permission(request, session):
            raise PermissionDenied("You may not take WhatsApp threads over.")
        return session

    def _back(self, session: WhatsAppSession) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:calls_whatsappsession_change", args=[session.pk]))

    def takeover_view(self, request: HttpRequest, session_id: int) -> HttpResponseRedirect:
        session = self._thread_for_change(request, session_id)
        paused = request.POST.get("paused") == "1"
        if whatsapp_takeover_set(session=session, paused=paused):
            self.log_change(request, session, "Took the thread over" if paused else "Handed the thread back")
        messages.success(
            request,
            "You have the thread: the persona will not answer it until you hand it back."
            if paused
            else "The persona answers this thread again.",
        )
        return self._back(session)

    def send_view(self, request: HttpRequest, session_id: int) -> HttpResponseRedirect:
        session = self._thread_for_change(request, session_id)
        form = HumanMessageForm(request.POST)
        if not form.is_valid():
            for problem in form.errors.get("text", ["the message is not valid"]):
                messages.error(request, f"Not sent: {problem}")
            return self._back(session)
        try:
            whatsapp_human_send(
                session=session,
                text=form.cleaned_data["text"],
                sent_by=request.user.get_username(),
            )
        except OutboxRefused as refusal:
            messages.error(request, f"Not sent: {refusal.message}")
            return self._back(session)
        self.log_change(request, session, "Wrote to the contact as a human")
        messages.success(request, "Your message is on its way; its ticks appear below as Meta reports them.")
        return self._back(session)

    @admin.action(description="Take the selected threads over (the persona stops answering)")
    def take_over(self, request: HttpRequest, queryset: Any) -> None:
        self._set_paused(request, queryset, paused=True)

    @admin.action(description="Hand the selected threads back to the persona")
    def hand_back(self, request: HttpRequest, queryset: Any) -> None:
        self._set_paused(request, queryset, paused=False)

    def _set_paused(self, request: HttpRequest, queryset: Any, *, paused: bool) -> None:
        changed = 0
        for session in queryset:
            if whatsapp_takeover_set(session=session, paused=paused):
                changed += 1
                self.log_change(
                    request, session, "Took the thread over" if paused else "Handed the thread back"
                )
        messages.success(request, f"{changed} thread(s) {'taken over' if paused else 'handed back'}.")


@admin.register(WhatsAppMessage)
class WhatsAppMessageAdmin(HistoryAdmin):
    list_display = (
        "short_text",
        "direction",
        "author",
        "type",
        "status",
        "session",
        "created_at",
        "failed_at",
    )
    list_filter = ("status", "direction", "author", "type", "created_at")
    search_fields = ("text", "meta_message_id", "session__contact_phone", "session__contact_name")
    list_select_related = ("session", "session__persona")
    readonly_fields = (
        "session",
        "meta_message_id",
        "direction",
        "author",
        "type",
        "text",
        "media_id",
        "mime_type",
        "metadata",
        "sent_by_contact_at",
        "status",
        "error",
        "error_code",
        "error_title",
        "delivery",
        "created_at",
        "sent_at",
        "delivered_at",
        "read_at",
        "played_at",
        "failed_at",
    )
    fields = readonly_fields

    @admin.display(description="text")
    def short_text(self, message: WhatsAppMessage) -> str:
        return message.text if len(message.text) <= 80 else f"{message.text[:79]}…"

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
