"""Call recordings in the admin: the audio view (permission, byte ranges, audit), the player,
storing a finished recording, and the purge command."""

from __future__ import annotations

import os
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from calls.models import Call
from calls.review.models import CallRecording, ReviewAction, ReviewAuditEntry
from calls.review.recordings import recordings_expired
from tests.calls.review.conftest import reviewed_call_create
from tests.fakes.recordings import recording_generate

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def recordings_dir(settings, tmp_path: Path) -> Path:
    """Recordings stored under the test's own directory (local files, as by default)."""
    location = tmp_path / "recordings"
    settings.STORAGES = {
        **settings.STORAGES,
        "recordings": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": location, "base_url": None},
        },
    }
    return location


@pytest.fixture
def recorded_call(persona_a) -> Call:
    call = reviewed_call_create(persona_a)
    recording_generate(call, seconds=3)
    return call


def staff(*codenames: str):
    user = get_user_model().objects.create_user(
        "_".join(codenames) or "staff", "staff@example.com", "pw", is_staff=True
    )
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="calls"))
    return user


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def audio_url(call: Call, view: str = "v1") -> str:
    return reverse("admin:calls_call_recording", args=[quote(call.pk)]) + f"?view={view}"


def test_a_finished_recording_is_stored_with_its_call(recorded_call: Call, recordings_dir: Path) -> None:
    recording = recorded_call.recording
    assert recording.file.name.endswith(f"{recorded_call.pk}.ogg")
    assert (recordings_dir / recording.file.name).stat().st_size == recording.size_bytes > 0
    assert recording.duration_seconds == pytest.approx(3.0, abs=0.05)
    assert recording.started_at == recorded_call.started_at


def test_staff_without_listen_permission_see_no_player_and_get_403(recorded_call: Call) -> None:
    client = client_for(staff("view_call"))
    page = client.get(reverse("admin:calls_call_change", args=[quote(recorded_call.pk)]))
    assert page.status_code == 200
    assert b"recording-player" not in page.content
    assert "listening to it needs the “Can listen to call recordings” permission" in page.content.decode()
    assert client.get(audio_url(recorded_call), HTTP_RANGE="bytes=0-").status_code == 403
    assert not ReviewAuditEntry.objects.filter(action=ReviewAction.LISTENED).exists()


def test_staff_who_may_listen_get_a_player_whose_lines_know_their_time(recorded_call: Call) -> None:
    client = client_for(staff("view_call", "listen_call"))
    page = client.get(reverse("admin:calls_call_change", args=[quote(recorded_call.pk)]))
    html = page.content.decode()
    assert 'id="recording-player" data-offset="0.0"' in html
    # A spoken line plays from where its speech began (6 s), not from its transcript (8.4 s).
    assert 'data-message-id="msg_q" data-channel="spoken" data-offset="6.0"' in html
    assert 'data-message-id="msg_typed" data-channel="typed" data-offset="20.0"' in html
    assert page.context["recording_url"].startswith(audio_url(recorded_call, view=""))


def test_a_byte_range_is_answered_206_with_its_content_range(
    recorded_call: Call, recordings_dir: Path
) -> None:
    client = client_for(staff("view_call", "listen_call"))
    whole = (recordings_dir / recorded_call.recording.file.name).read_bytes()
    size = len(whole)

    first = client.get(audio_url(recorded_call), HTTP_RANGE="bytes=0-99")
    assert first.status_code == 206
    assert first["Content-Range"] == f"bytes 0-99/{size}"
    assert first["Content-Type"] == "audio/ogg"
    assert first["Accept-Ranges"] == "bytes"
    assert first.content == whole[:100]

    rest = client.get(audio_url(recorded_call), HTTP_RANGE="bytes=100-")
    assert rest.status_code == 206
    assert rest["Content-Range"] == f"bytes 100-{size - 1}/{size}"
    assert rest.content == whole[100:]

    tail = client.get(audio_url(recorded_call), HTTP_RANGE="bytes=-10")
    assert (tail.status_code, tail.content) == (206, whole[-10:])

    past = client.get(audio_url(recorded_call), HTTP_RANGE=f"bytes={size}-")
    assert past.status_code == 416
    assert past["Content-Range"] == f"bytes */{size}"

    plain = client.get(audio_url(recorded_call))
    assert (plain.status_code, plain.content, plain["Accept-Ranges"]) == (200, whole, "bytes")


def test_listening_is_audited_once_per_page_view_not_per_range(recorded_call: Call) -> None:
    user = staff("view_call", "listen_call")
    client = client_for(user)
    for byte_range in ("bytes=0-", "bytes=500-", "bytes=0-99"):
        assert client.get(audio_url(recorded_call, "first"), HTTP_RANGE=byte_range).status_code == 206
    entries = ReviewAuditEntry.objects.filter(action=ReviewAction.LISTENED)
    assert [(e.username, e.call_id) for e in entries] == [(user.get_username(), recorded_call.pk)]
    client.get(audio_url(recorded_call, "second"), HTTP_RANGE="bytes=0-")
    assert ReviewAuditEntry.objects.filter(action=ReviewAction.LISTENED).count() == 2


def test_listening_needs_the_view_permission_too(recorded_call: Call) -> None:
    client = client_for(staff("listen_call"))
    assert client.get(audio_url(recorded_call), HTTP_RANGE="bytes=0-").status_code == 403


def test_a_call_without_a_recording_has_no_audio(persona_a) -> None:
    call = reviewed_call_create(persona_a)
    response = client_for(staff("view_call", "listen_call")).get(audio_url(call))
    assert response.status_code == 404


def test_purge_deletes_recordings_past_their_persona_retention(
    persona_a, persona_b, recordings_dir: Path
) -> None:
    persona_a.recording_retention_days = 7
    persona_a.save()
    persona_b.recording_retention_days = None  # kept forever
    persona_b.save()
    now = timezone.now()
    old = reviewed_call_create(persona_a)
    recording_generate(old, seconds=1, started_at=now - timedelta(days=8))
    recent = reviewed_call_create(persona_a)
    recording_generate(recent, seconds=1, started_at=now - timedelta(days=6))
    kept_forever = reviewed_call_create(persona_b)
    recording_generate(kept_forever, seconds=1, started_at=now - timedelta(days=400))
    old_file = recordings_dir / old.recording.file.name

    assert list(recordings_expired(now=now)) == [old.recording]
    out = StringIO()
    call_command("purge_recordings", "--dry-run", stdout=out)
    assert "would delete" in out.getvalue() and old.pk in out.getvalue()
    assert CallRecording.objects.count() == 3 and old_file.exists()

    out = StringIO()
    call_command("purge_recordings", stdout=out)
    assert "1 recording(s) deleted" in out.getvalue()
    assert not old_file.exists()
    assert set(CallRecording.objects.values_list("call_id", flat=True)) == {recent.pk, kept_forever.pk}
    assert Call.objects.filter(pk=old.pk).exists()  # the call and its transcript stay


def test_deleting_a_call_deletes_its_recording_file(
    recorded_call: Call, recordings_dir: Path, django_capture_on_commit_callbacks
) -> None:
    stored = recordings_dir / recorded_call.recording.file.name
    assert stored.exists()
    with django_capture_on_commit_callbacks(execute=True):
        recorded_call.delete()
    assert not stored.exists()


def test_purge_removes_scratch_files_a_dead_process_left(settings, tmp_path: Path) -> None:
    settings.PARLEY_RECORDINGS_SCRATCH_DIR = tmp_path / "partial"
    settings.PARLEY_RECORDINGS_SCRATCH_DIR.mkdir()
    left = settings.PARLEY_RECORDINGS_SCRATCH_DIR / "CAdead-1234.ogg"
    live = settings.PARLEY_RECORDINGS_SCRATCH_DIR / "CAlive-5678.ogg"
    for path in (left, live):
        path.write_bytes(b"OggS")
    two_days_ago = timezone.now().timestamp() - 2 * 86_400
    os.utime(left, (two_days_ago, two_days_ago))

    call_command("purge_recordings", "--dry-run", stdout=StringIO())
    assert left.exists()
    out = StringIO()
    call_command("purge_recordings", stdout=out)
    assert str(left) in out.getvalue()
    assert not left.exists() and live.exists()


def test_a_call_page_says_why_it_has_no_recording(recorded_call: Call) -> None:
    client = client_for(staff("view_call", "listen_call"))
    recorded_call.recording.delete()
    persona = recorded_call.persona
    persona.recording_enabled = True
    persona.save(update_fields=["recording_enabled"])
    page = client.get(reverse("admin:calls_call_change", args=[quote(recorded_call.pk)])).content.decode()
    assert "No recording was stored for this call." in page
    persona.recording_enabled = False
    persona.save(update_fields=["recording_enabled"])
    page = client.get(reverse("admin:calls_call_change", args=[quote(recorded_call.pk)])).content.decode()
    assert f"Not recorded: {persona.name} does not record calls" in page
    assert "recording-player" not in page
