"""Admin for WhatsApp channels (secrets write-only) and the raw webhook deliveries (read-only)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from calls.models import WhatsAppChannel, WhatsAppDelivery

SECRET_FIELDS = ("access_token", "app_secret", "verify_token")


class WhatsAppChannelForm(forms.ModelForm):
    """Secrets are typed in, never shown again: a blank field on a saved channel keeps its value."""

    access_token = forms.CharField(required=False, strip=True, widget=forms.PasswordInput(render_value=False))
    app_secret = forms.CharField(required=False, strip=True, widget=forms.PasswordInput(render_value=False))
    verify_token = forms.CharField(required=False, strip=True, widget=forms.PasswordInput(render_value=False))

    class Meta:
        model = WhatsAppChannel
        fields = ("persona", "phone_number_id", "display_phone_number", *SECRET_FIELDS, "enabled")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        saved = self.instance.pk is not None
        for name in SECRET_FIELDS:
            field = self.fields[name]
            field.initial = ""  # the widget never renders a value; the form holds none either
            field.help_text = (
                "Set. Leave blank to keep it; type a new one to replace it."
                if saved and getattr(self.instance, name)
                else "Required."
            )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        for name in SECRET_FIELDS:
            if cleaned.get(name):
                continue
            if self.instance.pk and getattr(self.instance, name):
                # Blank on a saved channel: keep the stored value (a field missing from the
                # cleaned data is left alone when the form fills the instance).
                cleaned.pop(name, None)
            else:
                self.add_error(name, "Required.")
        return cleaned


@admin.register(WhatsAppChannel)
class WhatsAppChannelAdmin(admin.ModelAdmin):
    form = WhatsAppChannelForm
    list_display = (
        "phone_number_id",
        "display_phone_number",
        "persona",
        "enabled",
        "secrets_set",
        "updated_at",
    )
    list_filter = ("enabled",)
    search_fields = ("phone_number_id", "display_phone_number", "persona__slug", "persona__name")
    list_select_related = ("persona",)

    @admin.display(description="secrets", boolean=True)
    def secrets_set(self, channel: WhatsAppChannel) -> bool:
        return all(getattr(channel, name) for name in SECRET_FIELDS)


@admin.register(WhatsAppDelivery)
class WhatsAppDeliveryAdmin(admin.ModelAdmin):
    """What Meta sent, as received, and what processing made of it."""

    list_display = ("id", "received_at", "state", "attempts", "processed_at", "short_error")
    list_filter = ("state", "received_at")
    date_hierarchy = "received_at"
    readonly_fields = (
        "id",
        "received_at",
        "state",
        "attempts",
        "lease_owner",
        "lease_until",
        "processed_at",
        "error",
        "outcome",
        "body_text",
        "signature",
    )
    fields = readonly_fields

    @admin.display(description="error")
    def short_error(self, delivery: WhatsAppDelivery) -> str:
        first = delivery.error.split("\n", 1)[0]
        return first if len(first) <= 100 else f"{first[:99]}…"

    @admin.display(description="body")
    def body_text(self, delivery: WhatsAppDelivery) -> SafeString:
        return format_html(
            '<pre style="margin:0;white-space:pre-wrap">{}</pre>',
            bytes(delivery.body).decode("utf-8", errors="replace"),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
