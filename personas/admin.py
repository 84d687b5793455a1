"""Admin for tenants, API keys (issued once, stored hashed), personas and their knowledge."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.files.uploadedfile import UploadedFile
from django.db import models
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from calls.pipeline.listening.cloud import recogniser_problem
from personas.models import ApiKey, KnowledgeEntry, Organization, Persona, SessionToken
from personas.services import api_key_create, api_key_revoke
from personas.tools import tools_normalize, tools_problems
from personas.validators import MAX_PORTRAIT_BYTES, MIN_PORTRAIT_SIDE_PX, validate_avatar_portrait

admin.site.site_header = "Parley admin"
admin.site.site_title = "Parley admin"
admin.site.index_title = "Personas, keys and conversations"


class ReadOnlyInline(admin.TabularInline):
    """A list of related rows with links to their own pages; rows are made elsewhere."""

    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- Organization -----------------------------------------------------------------------


class PersonaListInline(ReadOnlyInline):
    model = Persona
    fields = ("name", "slug", "language_code", "brain_provider", "is_active")
    readonly_fields = fields
    verbose_name_plural = "personas (add them under Personas)"


class ApiKeyListInline(ReadOnlyInline):
    model = ApiKey
    fields = ("name", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    verbose_name_plural = "API keys (issue them under API keys)"


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "persona_count", "active_key_count", "session_limit", "created_at")
    search_fields = ("name", "slug", "public_id")
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("public_id", "created_at")
    fields = ("name", "slug", "max_concurrent_sessions", "public_id", "created_at")
    inlines = (PersonaListInline, ApiKeyListInline)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Organization]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                persona_total=Count("personas", distinct=True),
                active_key_total=Count(
                    "api_keys", filter=Q(api_keys__revoked_at__isnull=True), distinct=True
                ),
            )
        )

    @admin.display(description="personas", ordering="persona_total")
    def persona_count(self, organization: Organization) -> int:
        return organization.persona_total  # type: ignore[attr-defined]

    @admin.display(description="active API keys", ordering="active_key_total")
    def active_key_count(self, organization: Organization) -> int:
        return organization.active_key_total  # type: ignore[attr-defined]

    @admin.display(description="live session limit")
    def session_limit(self, organization: Organization) -> int:
        return organization.session_limit


# --- API keys ---------------------------------------------------------------------------


class ApiKeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "organization", "prefix", "created_at", "last_used_at", "revoked_at", "active")
    list_filter = (ApiKeyStatusFilter, "organization", "created_at")
    search_fields = ("name", "prefix", "organization__name", "organization__slug")
    list_select_related = ("organization",)
    actions = ("revoke_keys",)
    add_fields = ("organization", "name")
    change_fields = ("organization", "name", "prefix", "created_at", "last_used_at", "revoked_at")

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        # The key itself is generated on save, so adding asks only whose it is and what for.
        return self.add_fields if obj is None else self.change_fields

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        # Revoking goes through the action, so it is recorded the same way every time.
        return ("organization", "prefix", "created_at", "last_used_at", "revoked_at")

    @admin.display(boolean=True, description="active", ordering="revoked_at")
    def active(self, api_key: ApiKey) -> bool:
        return api_key.is_active

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = api_key_create(organization=obj.organization, name=obj.name)
        # The admin goes on with `obj` (history entry, redirect): make it the stored row.
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(issued.api_key, field.attname))
        obj._state.adding = False
        obj._state.db = issued.api_key._state.db
        messages.success(
            request,
            format_html(
                "New API key for {}: <code class='parley-raw-key'>{}</code> Copy it now: "
                "only its hash is stored, so it cannot be shown again.",
                obj.organization,
                issued.raw_key,
            ),
        )

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(api_key=api_key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)


# --- Personas ---------------------------------------------------------------------------


def persona_hearing_problem(persona: Persona) -> str | None:
    """Why callers' speech to this persona will not be understood (`cloud.recogniser_problem`)."""
    return recogniser_problem(
        provider=persona.stt_provider,
        language=persona.language_code,
        api_key=persona.stt_api_key,
        base_url=persona.stt_base_url,
    )


class KnowledgeEntryInline(admin.TabularInline):
    model = KnowledgeEntry
    fields = ("position", "kind", "question", "answer")
    extra = 1
    formfield_overrides = {
        # Answers are a sentence or two; the default textarea would make each row huge.
        models.TextField: {"widget": forms.Textarea(attrs={"rows": 2, "cols": 70})},
        models.CharField: {"widget": forms.TextInput(attrs={"size": 40})},
        models.PositiveIntegerField: {"widget": forms.NumberInput(attrs={"style": "width: 4em"})},
    }


class PersonaAdminForm(forms.ModelForm):
    # API keys are secrets: never sent back to the browser; left empty, a key stays as it was.
    llm_api_key = forms.CharField(
        label="LLM API key",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Leave empty to keep the current key.",
    )
    clear_llm_api_key = forms.BooleanField(label="Remove the stored LLM API key", required=False)
    tts_api_key = forms.CharField(
        label="Speech synthesis API key",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="For a cloud voice. Leave empty to keep the current key.",
    )
    clear_tts_api_key = forms.BooleanField(label="Remove the stored speech synthesis API key", required=False)
    stt_api_key = forms.CharField(
        label="Speech recognition API key",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="For a cloud recogniser. Leave empty to keep the current key.",
    )
    clear_stt_api_key = forms.BooleanField(
        label="Remove the stored speech recognition API key", required=False
    )

    class Meta:
        model = Persona
        fields = ("llm_api_key", "tts_api_key", "stt_api_key")  # the admin adds the rest from its fieldsets
        widgets = {
            "tools": forms.Textarea(attrs={"rows": 10, "cols": 90, "style": "font-family: monospace"}),
        }
        help_texts = {
            "avatar_look": (
                "The drawn face: colours as #rrggbb (skin, hair, eyes, lips, background, clothes) and "
                "hairStyle (bob, long, short, bun). With a portrait: where its mouth is, "
                '"portraitMouth": {"x": 0.5, "y": 0.6, "width": 0.13} (the default, for a centred '
                "head-and-shoulders picture), and its eyes, to make it blink, "
                '"portraitEyes": [{"x": 0.43, "y": 0.42, "width": 0.07}, {"x": 0.57, "y": 0.42, '
                '"width": 0.07}]. x and width are fractions of the picture\'s width, y of its height: '
                "the centre of the lips' parting line, and the corner-to-corner width of the mouth or eye."
            ),
            "avatar_portrait": (
                "A photo or picture of the persona, facing the camera: it replaces the drawn face and "
                "is animated (breathing, lip-synced mouth, blinks if portraitEyes is set in the look). "
                f"JPEG, PNG or WebP, at most {MAX_PORTRAIT_BYTES // 1024 // 1024} MB, at least "
                f"{MIN_PORTRAIT_SIDE_PX}x{MIN_PORTRAIT_SIDE_PX} pixels; the video is 320x240, so about "
                "640x480 or more looks sharp."
            ),
        }

    def clean_avatar_portrait(self) -> Any:
        portrait = self.cleaned_data.get("avatar_portrait")
        if isinstance(portrait, UploadedFile):  # a new upload (not the stored file, not a clearing)
            validate_avatar_portrait(portrait)
        return portrait

    def _kept_secret(self, name: str) -> str:
        value = self.cleaned_data.get(name, "")
        if not value and self.instance.pk:
            return getattr(self.instance, name)
        return value

    def clean_llm_api_key(self) -> str:
        return self._kept_secret("llm_api_key")

    def clean_tts_api_key(self) -> str:
        return self._kept_secret("tts_api_key")

    def clean_stt_api_key(self) -> str:
        return self._kept_secret("stt_api_key")

    def clean_tools(self) -> list[dict[str, Any]]:
        value = self.cleaned_data.get("tools")
        if value is None:  # the field was emptied: no tools
            return []
        problems = tools_problems(value)
        if problems:
            raise forms.ValidationError(problems)
        return tools_normalize(value)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        for name in ("llm_api_key", "tts_api_key", "stt_api_key"):
            if cleaned.get(f"clear_{name}"):
                cleaned[name] = ""
        return cleaned


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    form = PersonaAdminForm
    list_display = (
        "name",
        "slug",
        "organization",
        "language_code",
        "brain_provider",
        "tts_provider",
        "stt_provider",
        "knowledge_count",
        "is_active",
        "updated_at",
    )
    list_filter = (
        "is_active",
        "organization",
        "brain_provider",
        "tts_provider",
        "stt_provider",
        "language_code",
    )
    search_fields = ("name", "slug", "description", "organization__name")
    list_select_related = ("organization",)
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("has_llm_api_key", "hearing_status", "created_at", "updated_at")
    inlines = (KnowledgeEntryInline,)
    formfield_overrides = {
        # Local LLM servers (Ollama, llama.cpp) usually speak plain http on 127.0.0.1.
        models.URLField: {"assume_scheme": "http"},
    }
    fieldsets = (
        (
            "Identity",
            {
                "fields": (
                    "organization",
                    ("name", "slug"),
                    "description",
                    "language_code",
                    "greeting",
                    "skip_greeting",
                    "system_prompt",
                    "is_active",
                )
            },
        ),
        (
            "Voice",
            {
                "fields": (
                    "tts_provider",
                    "voice",
                    ("tts_model", "tts_base_url"),
                    "tts_api_key",
                    "clear_tts_api_key",
                )
            },
        ),
        (
            "Hearing",
            {
                "fields": (
                    "hearing_status",
                    "stt_provider",
                    ("stt_model", "stt_base_url"),
                    "stt_api_key",
                    "clear_stt_api_key",
                    "stt_phrases",
                )
            },
        ),
        ("Face", {"fields": ("avatar_look", "avatar_portrait")}),
        (
            "Brain",
            {
                "fields": (
                    "brain_provider",
                    "llm_base_url",
                    "llm_model",
                    "has_llm_api_key",
                    "llm_api_key",
                    "clear_llm_api_key",
                    "llm_temperature",
                    "tools",
                )
            },
        ),
        (
            "Voice detection",
            {"fields": ("end_of_speech_sensitivity", "silence_before_auto_end_turn_seconds")},
        ),
        (
            "Session limits",
            {
                "fields": (
                    "max_duration_seconds",
                    "idle_timeout_seconds",
                    "idle_warning_seconds",
                    "idle_check_in",
                    "send_audio_metrics",
                    "app_answer_timeout_seconds",
                )
            },
        ),
        ("Call recording", {"fields": ("recording_enabled", "recording_retention_days")}),
        ("Record", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Persona]:
        return super().get_queryset(request).annotate(knowledge_total=Count("knowledge"))

    @admin.display(description="knowledge", ordering="knowledge_total")
    def knowledge_count(self, persona: Persona) -> int:
        return persona.knowledge_total  # type: ignore[attr-defined]

    @admin.display(boolean=True, description="LLM API key stored")
    def has_llm_api_key(self, persona: Persona) -> bool:
        return bool(persona.llm_api_key)

    @admin.display(description="Hearing status")
    def hearing_status(self, persona: Persona) -> SafeString | str:
        problem = persona_hearing_problem(persona)
        if problem is None:
            return "Callers' speech in this persona's language can be recognised."
        # Styled as the admin's own warning messages, so it stands out among the fields.
        return format_html('<ul class="messagelist"><li class="warning">{}</li></ul>', problem)

    def _warn_about_hearing(self, request: HttpRequest, persona: Persona) -> None:
        problem = persona_hearing_problem(persona)
        if problem is not None:
            self.message_user(request, problem, messages.WARNING)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if request.method == "GET":
            persona = self.get_object(request, unquote(object_id))
            if persona is not None:
                self._warn_about_hearing(request, persona)
        return super().change_view(request, object_id, form_url, extra_context)

    def response_add(
        self, request: HttpRequest, obj: Persona, post_url_continue: str | None = None
    ) -> HttpResponse:
        if not _shows_the_persona_next(request):
            self._warn_about_hearing(request, obj)
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request: HttpRequest, obj: Persona) -> HttpResponse:
        if not _shows_the_persona_next(request):
            self._warn_about_hearing(request, obj)
        return super().response_change(request, obj)


def _shows_the_persona_next(request: HttpRequest) -> bool:
    """A save that goes on to the persona's own page, whose view warns anyway (once is enough)."""
    return "_continue" in request.POST or "_saveasnew" in request.POST


@admin.register(KnowledgeEntry)
class KnowledgeEntryAdmin(admin.ModelAdmin):
    list_display = ("__str__", "persona", "kind", "position")
    list_filter = ("kind", "persona")
    search_fields = ("question", "answer", "persona__name", "persona__slug")
    list_select_related = ("persona",)
    list_editable = ("position",)
    autocomplete_fields = ("persona",)


# --- Session tokens ---------------------------------------------------------------------


@admin.register(SessionToken)
class SessionTokenAdmin(admin.ModelAdmin):
    """Read-only: tokens are issued by the API and consumed by a session starting."""

    list_display = (
        "short_jti",
        "kind",
        "organization",
        "persona",
        "client_label",
        "issued_at",
        "expires_at",
        "used_at",
    )
    list_filter = ("kind", "organization", "persona", "issued_at")
    search_fields = ("jti", "client_label", "persona__slug")
    list_select_related = ("organization", "persona")
    date_hierarchy = "issued_at"

    @admin.display(description="token id", ordering="jti")
    def short_jti(self, token: SessionToken) -> str:
        return f"{token.jti[:12]}…"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: SessionToken | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: SessionToken | None = None) -> bool:
        return False
