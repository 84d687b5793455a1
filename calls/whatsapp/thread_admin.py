"""Admin for WhatsApp threads: the conversation with its delivery ticks, and human takeover.

A thread reads as a call does (`calls.review.threads`): bubbles with WhatsApp's ticks and a
failed send's reason from Meta, voice notes playable beside their transcripts (with
`calls.listen_call`, each listening in the review audit log). Staff with `calls.take_over_call`
take a thread over (the persona stops answering it on its own), write to the contact as
themselves (sent through the Graph API, recorded as a human's `whatsapp.response`), and hand it
back; the changelist pauses or resumes several threads at once. Each of these is in the audit
log. Pausing and resuming publish no event: the vocabulary (PROTOCOL) has none for them.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from calls.admin import HistoryAdmin, HistoryInline
from calls.models import WhatsAppMessage, WhatsAppSession
from calls.review.live import TAKE_OVER_PERMISSION
from calls.review.models import ReviewAction
from calls.review.services import review_audit_record
from calls.review.threads import whatsapp_thread_bubbles, whatsapp_voice_note
from calls.whatsapp.graph import TEXT_MAX_CHARACTERS
from calls.whatsapp.outbox import OutboxRefused, whatsapp_human_send, whatsapp_takeover_set

# Listening to a voice note is listening to a recording: the same permission, the same audit.
LISTEN_PERMISSION = "calls.listen_call"


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
            path(
                "<int:session_id>/voice-note/<int:message_id>/",
                self.admin_site.admin_view(self.voice_note_view),
                name="calls_whatsappsession_voice_note",
            ),
        ]
        return own + super().get_urls()

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        session = self.get_object(request, object_id)
        # Every field is read-only: the thread changes through its own actions, not a save.
        context = {"show_save": False, "show_save_and_continue": False, **(extra_context or {})}
        if session is not None:
            context.update(
                thread=whatsapp_thread_bubbles(session),
                may_take_over=self.has_take_over_permission(request),
                may_listen=request.user.has_perm(LISTEN_PERMISSION),
                human_form=HumanMessageForm(),
                staff_name=request.user.get_full_name() or request.user.get_username(),
            )
        return super().change_view(request, object_id, form_url, extra_context=context)

    # --- voice notes -------------------------------------------------------------------

    def voice_note_view(self, request: HttpRequest, session_id: int, message_id: int) -> FileResponse:
        """A voice note's stored audio, for the player beside its transcript; recorded as listened."""
        if not (self.has_view_permission(request) and request.user.has_perm(LISTEN_PERMISSION)):
            raise PermissionDenied("You may not listen to recordings.")
        message = whatsapp_voice_note(session_id=session_id, message_id=message_id)
        if message is None:
            raise Http404("No stored voice note here.")
        review_audit_record(
            user=request.user,
            action=ReviewAction.LISTENED,
            call=message.session.call,
            detail={"whatsappThread": session_id, "voiceNote": message.meta_message_id},
        )
        return FileResponse(message.media_file.open("rb"), content_type=message.mime_type or "audio/ogg")

    # --- takeover ----------------------------------------------------------------------

    def has_take_over_permission(self, request: HttpRequest) -> bool:
        """Taking a thread over is taking over a call: `calls.take_over_call`."""
        return request.user.has_perm(TAKE_OVER_PERMISSION)

    def _thread_for_change(self, request: HttpRequest, session_id: int) -> WhatsAppSession:
        session = get_object_or_404(WhatsAppSession.objects.select_related("persona", "call"), pk=session_id)
        if not (self.has_view_permission(request, session) and self.has_take_over_permission(request)):
            raise PermissionDenied("You may not take WhatsApp threads over.")
        return session

    def _audit(self, request: HttpRequest, session: WhatsAppSession, did: str, **detail: str) -> None:
        review_audit_record(
            user=request.user,
            action=ReviewAction.TOOK_OVER,
            call=session.call,
            detail={"whatsappThread": session.pk, "did": did, **detail},
        )

    def _back(self, session: WhatsAppSession) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:calls_whatsappsession_change", args=[session.pk]))

    def takeover_view(self, request: HttpRequest, session_id: int) -> HttpResponseRedirect:
        session = self._thread_for_change(request, session_id)
        paused = request.POST.get("paused") == "1"
        if whatsapp_takeover_set(session=session, paused=paused):
            self.log_change(request, session, "Took the thread over" if paused else "Handed the thread back")
            self._audit(request, session, "paused the persona" if paused else "handed back to the persona")
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
        self._audit(request, session, "wrote to the contact", text=form.cleaned_data["text"])
        messages.success(request, "Your message is on its way; its ticks appear below as Meta reports them.")
        return self._back(session)

    @admin.action(
        description="Take the selected threads over (the persona stops answering)",
        permissions=["take_over"],
    )
    def take_over(self, request: HttpRequest, queryset: Any) -> None:
        self._set_paused(request, queryset, paused=True)

    @admin.action(description="Hand the selected threads back to the persona", permissions=["take_over"])
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
                self._audit(
                    request, session, "paused the persona" if paused else "handed back to the persona"
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
