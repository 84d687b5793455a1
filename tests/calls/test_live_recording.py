"""A live session records its call when its persona records, and stores it however the call ends."""

from __future__ import annotations

import numpy as np
import pytest
from channels.db import database_sync_to_async

from calls.live import live_sessions_end
from calls.models import EndReason
from calls.pipeline.transport import PIECE_SAMPLES
from calls.review import recordings
from calls.review.models import CallRecording
from tests.fakes.live_call import call_ended, live_call_start

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def local_recordings(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "recordings": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": tmp_path / "recordings", "base_url": None},
        },
    }
    settings.PARLEY_RECORDINGS_SCRATCH_DIR = tmp_path / "partial"
    settings.PARLEY_SESSION_STALE_SECONDS = 120.0  # nothing but the test ends the call


def records(persona, on: bool = True):
    persona.recording_enabled = on
    persona.save()


def persona_speaks(live, seconds: float) -> None:
    """The persona's track hands its pieces to its listeners (the recorder among them)."""
    tone = (np.sin(np.arange(PIECE_SAMPLES) / 7) * 5_000).astype(np.int16).tobytes()
    start = live.recorder.zero
    for index in range(int(seconds / 0.02)):
        for listener in live.audio_track.listeners:
            listener.on_piece(pcm=tone, started_at=start + index * 0.02, speaking=True)


@database_sync_to_async
def recording_of(call_id: str) -> CallRecording | None:
    return CallRecording.objects.filter(call_id=call_id).first()


async def test_a_call_ended_by_server_shutdown_keeps_its_recording(client_a, persona_a, tmp_path) -> None:
    await database_sync_to_async(records)(persona_a)
    call = await live_call_start(client_a, "mara")
    assert call.live.recorder is not None
    persona_speaks(call.live, 1.5)

    await live_sessions_end(reason=EndReason.FAILED, message="the server is shutting down", within=10)

    recording = await recording_of(call.id)
    assert recording is not None
    assert recording.duration_seconds == pytest.approx(1.5, abs=0.1)
    assert (tmp_path / "recordings" / recording.file.name).stat().st_size == recording.size_bytes
    assert list((tmp_path / "partial").iterdir()) == []  # the scratch file is gone
    await call.signalling.disconnect()


async def test_a_call_ended_by_its_idle_timeout_keeps_its_recording(client_a, persona_a) -> None:
    await database_sync_to_async(records)(persona_a)
    call = await live_call_start(client_a, "mara")
    persona_speaks(call.live, 1.0)

    await call.live._on_limit("idle_timeout")

    assert (await call_ended(call.id)).end_reason == EndReason.IDLE_TIMEOUT
    assert await recording_of(call.id) is not None
    await call.signalling.disconnect()


async def test_a_persona_that_does_not_record_leaves_no_recording(client_a, persona_a) -> None:
    await database_sync_to_async(records)(persona_a, on=False)
    call = await live_call_start(client_a, "mara")
    assert call.live.recorder is None
    await call.close()
    assert await recording_of(call.id) is None


async def test_a_recording_that_fails_never_fails_the_end_of_the_call(
    client_a, persona_a, caplog, monkeypatch
) -> None:
    await database_sync_to_async(records)(persona_a)
    call = await live_call_start(client_a, "mara")
    persona_speaks(call.live, 1.0)

    def broken(**_: object) -> str:
        raise OSError("the disk is full")

    monkeypatch.setattr(recordings, "recording_file_save", broken)
    await call.close()
    assert (await call_ended(call.id)).end_reason == EndReason.HANGUP
    assert await recording_of(call.id) is None
    assert "its recording could not be stored" in caplog.text
