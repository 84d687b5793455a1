"""The admin: every page renders, API keys are shown once and stored hashed, calls read as transcripts."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta

import pytest
from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.contrib.auth.models import AnonymousUser
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.forms.models import model_to_dict
from django.urls import reverse
from django.utils import timezone
from rest_framework import status

from calls.models import (
    CallEvent,
    CallStatus,
    EndReason,
    Message,
    WhatsAppChannel,
    WhatsAppDelivery,
    WhatsAppMessage,
    WhatsAppSession,
)
from calls.review.models import ReviewAction
from calls.review.services import review_audit_record
from personas.models import ApiKey, SessionToken
from personas.services import api_key_authenticate, api_key_create, api_key_hash, session_token_issue

pytestmark = pytest.mark.django_db

PARLEY_MODELS = sorted(
    (model for model in admin.site._registry if model._meta.app_label in {"personas", "calls"}),
    key=lambda model: model._meta.label,
)


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def call_with_history(persona_a, make_call):
    """A finished call whose transcript lines were stored out of time order, with a few events."""
    started = timezone.now() - timedelta(minutes=5)
    call = make_call(
        persona_a,
        status=CallStatus.ENDED,
        started_at=started,
        ended_at=started + timedelta(seconds=83),
        duration_seconds=83.0,
        end_reason=EndReason.HANGUP,
        from_address="+15550001111",
    )
    lines = [
        (Message.Role.USER, "When do you open on Saturday?", 2),
        (Message.Role.PERSONA, "Hello, I'm Mara. How can I help?", 1),
        (Message.Role.PERSONA, "On Saturday we open at eight.", 3),
    ]
    for role, text, order in lines:
        message = Message.objects.create(call=call, role=role, text=text, spoken_text=text)
        Message.objects.filter(pk=message.pk).update(created_at=started + timedelta(seconds=10 * order))
    for event_type in ("call.started", "user.message", "bot.word", "call.ended"):
        CallEvent.objects.create(
            organization=call.organization,
            persona=call.persona,
            call=call,
            type=event_type,
            data={"callId": call.id, "marker": f"data-of-{event_type}"},
        )
    return call


@pytest.fixture
def one_of_everything(org_a, persona_a, call_with_history):
    """At least one row behind every admin page, so list columns and change pages really render."""
    api_key_create(organization=org_a, name="backend")
    session_token_issue(organization=org_a, persona=persona_a, kind=SessionToken.Kind.STATEFUL)
    session = WhatsAppSession.objects.create(
        organization=org_a,
        persona=persona_a,
        call=call_with_history,
        phone_number_id="1234567890",
        contact_phone="15550002222",
        contact_name="Sam",
    )
    WhatsAppMessage.objects.create(
        session=session,
        meta_message_id="wamid.TEST1",
        direction="inbound",
        text="Do you deliver?",
        status=WhatsAppMessage.Status.RECEIVED,
    )
    WhatsAppChannel.objects.create(
        persona=persona_a,
        phone_number_id="1234567890",
        access_token="token",
        app_secret="secret",
        verify_token="verify",
    )
    WhatsAppDelivery.objects.create(body=b'{"object": "whatsapp_business_account"}', signature="sha256=00")
    review_audit_record(
        user=AnonymousUser(), action=ReviewAction.EXPORTED, call=call_with_history, detail={"format": "csv"}
    )


@pytest.mark.parametrize("model", PARLEY_MODELS, ids=lambda model: model._meta.label)
def test_every_changelist_renders(admin_client, one_of_everything, model):
    response = admin_client.get(admin_url(model, "changelist"))

    assert response.status_code == status.HTTP_200_OK
    assert response.context["cl"].result_count >= 1


@pytest.mark.parametrize("model", PARLEY_MODELS, ids=lambda model: model._meta.label)
def test_every_add_page_renders_or_is_refused_for_records(admin_client, rf, admin_user, model):
    request = rf.get("/")
    request.user = admin_user
    can_add = admin.site._registry[model].has_add_permission(request)

    response = admin_client.get(admin_url(model, "add"))

    expected = status.HTTP_200_OK if can_add else status.HTTP_403_FORBIDDEN
    assert response.status_code == expected


@pytest.mark.parametrize("model", PARLEY_MODELS, ids=lambda model: model._meta.label)
def test_every_change_page_renders(admin_client, one_of_everything, model):
    obj = model._default_manager.first()

    response = admin_client.get(admin_url(model, "change", quote(obj.pk)))

    assert response.status_code == status.HTTP_200_OK


def test_every_parley_model_is_registered():
    assert {model._meta.label for model in PARLEY_MODELS} == {
        "personas.Organization",
        "personas.ApiKey",
        "personas.Persona",
        "personas.KnowledgeEntry",
        "personas.SessionToken",
        "calls.Call",
        "calls.Message",
        "calls.CallEvent",
        "calls.WhatsAppSession",
        "calls.WhatsAppMessage",
        "calls.WhatsAppChannel",
        "calls.WhatsAppDelivery",
        "calls.ReviewAuditEntry",
    }


def test_the_admin_is_branded(admin_client):
    response = admin_client.get(reverse("admin:index"))

    assert b"Parley admin" in response.content


def test_adding_an_api_key_asks_only_for_organization_and_name(admin_client):
    response = admin_client.get(admin_url(ApiKey, "add"))

    assert list(response.context["adminform"].form.fields) == ["organization", "name"]


def test_a_new_api_key_is_shown_once_and_only_its_hash_is_stored(admin_client, org_a):
    response = admin_client.post(
        admin_url(ApiKey, "add"), {"organization": org_a.pk, "name": "production backend"}, follow=True
    )

    assert response.status_code == status.HTTP_200_OK
    shown = [str(message) for message in response.context["messages"]]
    raw_keys = [match for text in shown for match in re.findall(r"<code[^>]*>(prl_[^<]+)</code>", text)]
    assert len(raw_keys) == 1, shown
    raw_key = raw_keys[0]
    assert raw_key.encode() in response.content

    api_key = ApiKey.objects.get(name="production backend")
    assert api_key.organization == org_a
    assert api_key.key_hash == api_key_hash(raw_key)
    assert api_key.prefix == raw_key[:12]
    stored_values = [str(value) for value in ApiKey.objects.filter(pk=api_key.pk).values().get().values()]
    assert all(raw_key not in value for value in stored_values)
    assert api_key_authenticate(raw_key=raw_key) == api_key

    # Once: neither the list nor the key's own page shows it again.
    for url in (admin_url(ApiKey, "changelist"), admin_url(ApiKey, "change", api_key.pk)):
        again = admin_client.get(url)
        assert raw_key.encode() not in again.content
        assert not list(get_messages(again.wsgi_request))


def test_revoke_selected_keys_revokes_only_active_ones(admin_client, org_a):
    active = api_key_create(organization=org_a, name="active").api_key
    other = api_key_create(organization=org_a, name="untouched").api_key
    already = api_key_create(organization=org_a, name="already revoked").api_key
    revoked_at = timezone.now() - timedelta(days=3)
    ApiKey.objects.filter(pk=already.pk).update(revoked_at=revoked_at)

    response = admin_client.post(
        admin_url(ApiKey, "changelist"),
        {"action": "revoke_keys", "_selected_action": [active.pk, already.pk]},
        follow=True,
    )

    assert response.status_code == status.HTTP_200_OK
    assert "Revoked 1 API key(s)." in [str(message) for message in response.context["messages"]]
    active.refresh_from_db()
    other.refresh_from_db()
    already.refresh_from_db()
    assert active.revoked_at is not None
    assert other.revoked_at is None
    assert already.revoked_at == revoked_at


def test_a_call_page_shows_its_transcript_in_order_and_its_events(admin_client, call_with_history):
    response = admin_client.get(admin_url(type(call_with_history), "change", quote(call_with_history.pk)))

    assert response.status_code == status.HTTP_200_OK
    page = response.content.decode()
    positions = [
        page.index("Hello, I&#x27;m Mara. How can I help?"),
        page.index("When do you open on Saturday?"),
        page.index("On Saturday we open at eight."),
    ]
    assert positions == sorted(positions)
    event_positions = [
        page.index(f"data-of-{name}") for name in ("call.started", "user.message", "bot.word", "call.ended")
    ]
    assert event_positions == sorted(event_positions)
    assert "1:23" in page  # the duration


def test_a_call_page_offers_no_way_to_add_or_delete_events(admin_client, call_with_history):
    response = admin_client.get(admin_url(type(call_with_history), "change", quote(call_with_history.pk)))

    for formset in response.context["inline_admin_formsets"]:
        assert not formset.has_add_permission
        assert not formset.has_delete_permission
        assert not formset.has_change_permission


def test_calls_are_found_by_what_was_said(admin_client, call_with_history, persona_a, make_call):
    make_call(persona_a)

    response = admin_client.get(admin_url(type(call_with_history), "changelist"), {"q": "Saturday"})

    assert [call.pk for call in response.context["cl"].result_list] == [call_with_history.pk]


def test_whatsapp_messages_filter_by_status(admin_client, one_of_everything):
    response = admin_client.get(admin_url(WhatsAppMessage, "changelist"), {"status__exact": "failed"})
    assert response.context["cl"].result_count == 0

    response = admin_client.get(admin_url(WhatsAppMessage, "changelist"), {"status__exact": "received"})
    assert response.context["cl"].result_count == 1


def persona_form_data(persona) -> dict:
    data = {key: value for key, value in model_to_dict(persona).items() if value is not None}
    data.pop("avatar_portrait", None)
    data["llm_api_key"] = data["tts_api_key"] = data["stt_api_key"] = ""
    return data


@pytest.mark.parametrize("key", ["llm_api_key", "tts_api_key", "stt_api_key"])
def test_an_api_key_is_never_sent_back_and_kept_when_left_empty(admin_client, rf, admin_user, persona_a, key):
    setattr(persona_a, key, "sk-secret-value-123")
    persona_a.save()
    page = admin_client.get(admin_url(type(persona_a), "change", persona_a.pk))
    assert page.status_code == 200
    assert b"sk-secret-value-123" not in page.content

    request = rf.post("/")
    request.user = admin_user
    form_class = admin.site._registry[type(persona_a)].get_form(request, persona_a, change=True)
    form = form_class(data=persona_form_data(persona_a), instance=persona_a)
    assert form.is_valid(), form.errors
    assert getattr(form.save(), key) == "sk-secret-value-123"

    form = form_class(data={**persona_form_data(persona_a), f"clear_{key}": "on"}, instance=persona_a)
    assert form.is_valid(), form.errors
    assert getattr(form.save(), key) == ""


def test_the_phrases_a_persona_should_hear_reach_its_recogniser(persona_a):
    from types import SimpleNamespace

    from calls.live import _build_config

    persona_a.stt_phrases = "Linden Street\n\n  sourdough loaf \n"
    persona_a.save()
    config = _build_config(SimpleNamespace(persona=persona_a, session_token=None))
    assert config.stt_phrases == ("Linden Street", "sourdough loaf")


def image_upload(name: str, size: tuple[int, int] = (640, 480), image_format: str = "PNG", pad_to: int = 0):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 160, 140)).save(buffer, format=image_format)
    data = buffer.getvalue()
    if pad_to:
        data += b"\0" * (pad_to - len(data))  # PNG readers ignore what follows the end chunk
    return SimpleUploadedFile(name, data, content_type=f"image/{image_format.lower()}")


def persona_form(rf, admin_user, persona, *, data=None, files=None):
    request = rf.post("/")
    request.user = admin_user
    form_class = admin.site._registry[type(persona)].get_form(request, persona, change=True)
    return form_class(
        data={**persona_form_data(persona), **(data or {})}, files=files or {}, instance=persona
    )


def test_a_good_portrait_upload_is_stored(rf, admin_user, persona_a, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    form = persona_form(rf, admin_user, persona_a, files={"avatar_portrait": image_upload("mara.png")})
    assert form.is_valid(), form.errors
    persona = form.save()
    assert persona.avatar_portrait.name.startswith("portraits/mara")
    assert (tmp_path / persona.avatar_portrait.name).exists()


@pytest.mark.parametrize(
    ("upload", "problem"),
    [
        (lambda: SimpleUploadedFile("notes.png", b"not a picture at all"), "valid image"),
        (lambda: image_upload("anim.gif", image_format="GIF"), "GIF image; it must be JPEG, PNG, WebP"),
        (lambda: image_upload("icon.png", size=(64, 200)), "64x200 pixels; it must be at least 128x128"),
        (lambda: image_upload("huge.png", pad_to=5 * 1024 * 1024 + 1), "may be at most 5 MB"),
    ],
    ids=["not-an-image", "gif", "too-small", "too-large"],
)
def test_a_bad_portrait_upload_is_refused_naming_the_field(rf, admin_user, persona_a, upload, problem):
    form = persona_form(rf, admin_user, persona_a, files={"avatar_portrait": upload()})
    assert not form.is_valid()
    assert list(form.errors) == ["avatar_portrait"]
    assert problem in " ".join(form.errors["avatar_portrait"])


def test_portrait_positions_in_the_avatar_look_are_checked(rf, admin_user, persona_a):
    look = {
        "skin": "#e8b99a",
        "portraitMouth": {"x": 0.5, "y": 0.62, "width": 0.14},
        "portraitEyes": [{"x": 0.42, "y": 0.4, "width": 0.07}, {"x": 0.58, "y": 0.4, "width": 0.07}],
    }
    form = persona_form(rf, admin_user, persona_a, data={"avatar_look": json.dumps(look)})
    assert form.is_valid(), form.errors

    bad = {**look, "portraitMouth": {"x": 0.5, "y": 1.4, "width": 0.14}, "portraitEye": []}
    form = persona_form(rf, admin_user, persona_a, data={"avatar_look": json.dumps(bad)})
    assert not form.is_valid()
    assert list(form.errors) == ["avatar_look"]
    messages_text = " ".join(form.errors["avatar_look"])
    assert "portraitMouth: must be" in messages_text and "portraitEye: unknown key" in messages_text


def test_the_face_fields_explain_themselves_in_the_admin(admin_client, persona_a):
    page = admin_client.get(admin_url(type(persona_a), "change", persona_a.pk)).content.decode()
    assert "portraitMouth" in page and "portraitEyes" in page
    assert "JPEG, PNG or WebP, at most 5 MB" in page


OFFLINE_GERMAN_PROBLEM = (
    "The offline recogniser (Whisper tiny.en) only understands English; choose Deepgram or an "
    "OpenAI-compatible recogniser for de-DE, or callers' speech will not be understood."
)


def warnings_shown(response) -> list[str]:
    return [str(message) for message in response.context["messages"] if message.level == messages.WARNING]


def test_a_german_persona_on_the_offline_recogniser_is_flagged_on_its_admin_page(
    admin_client, make_persona, org_a
):
    german = make_persona(org_a, "greta", language_code="de-DE", stt_provider="whisper")

    response = admin_client.get(admin_url(type(german), "change", german.pk))

    assert response.status_code == status.HTTP_200_OK
    assert warnings_shown(response) == [OFFLINE_GERMAN_PROBLEM]
    page = response.content.decode()
    assert page.count("only understands English; choose Deepgram") == 2  # the message and the status


def test_an_english_persona_or_a_german_one_on_a_cloud_recogniser_is_not_flagged(
    admin_client, make_persona, org_a
):
    english = make_persona(org_a, "mara", language_code="en-GB", stt_provider="whisper")
    german = make_persona(
        org_a, "greta", language_code="de-DE", stt_provider="deepgram", stt_api_key="dg-key"
    )

    for persona in (english, german):
        response = admin_client.get(admin_url(type(persona), "change", persona.pk))

        assert response.status_code == status.HTTP_200_OK
        assert warnings_shown(response) == []
        assert "can be recognised" in response.content.decode()


def test_saving_a_german_persona_on_the_offline_recogniser_warns_once(admin_client, make_persona, org_a):
    german = make_persona(org_a, "greta", language_code="de-DE", stt_provider="whisper")
    data = {
        **persona_form_data(german),
        "knowledge-TOTAL_FORMS": "0",
        "knowledge-INITIAL_FORMS": "0",
        "knowledge-MIN_NUM_FORMS": "0",
        "knowledge-MAX_NUM_FORMS": "1000",
    }
    data["avatar_look"] = json.dumps(data["avatar_look"])
    data["tools"] = json.dumps(data["tools"])

    saved = admin_client.post(admin_url(type(german), "change", german.pk), data, follow=True)
    again = admin_client.post(
        admin_url(type(german), "change", german.pk), {**data, "_continue": "Save"}, follow=True
    )

    assert saved.status_code == again.status_code == status.HTTP_200_OK
    assert warnings_shown(saved) == [OFFLINE_GERMAN_PROBLEM]  # on the list it lands on
    assert warnings_shown(again) == [OFFLINE_GERMAN_PROBLEM]  # on its own page, not twice
