"""Call recordings: started with a live call, stored through Django's storage API when it ends,
read by the admin's player, purged after the persona's retention.

The audio itself (both sides on one timeline, Opus encoding off the event loop) is
`calls.pipeline.recording`; this module is its Django side.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.db.models import Q, QuerySet
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.utils import timezone

from calls.models import Call
from calls.review.models import CallRecording, recordings_storage
from personas.models import Persona

if TYPE_CHECKING:  # the pipeline (pipecat) loads with the first call, not with the admin
    from calls.pipeline.recording import CallRecorder, RecordingResult
    from calls.pipeline.transport import MicrophoneDrain, PacedAudioTrack

logger = logging.getLogger(__name__)

RECORDING_CONTENT_TYPE = "audio/ogg"


# --- recording a live call ----------------------------------------------------------------------


def recorder_attach(*, call_id: str, track: PacedAudioTrack, microphone: MicrophoneDrain) -> CallRecorder:
    """Start recording a call: the persona's voice as its track sends it, the visitor's
    microphone as it is decoded. Written to local scratch space until the call ends."""
    from calls.pipeline.recording import CallRecorder

    scratch = Path(settings.PARLEY_RECORDINGS_SCRATCH_DIR) / f"{call_id}-{secrets.token_hex(4)}.ogg"
    recorder = CallRecorder(path=scratch)
    track.listeners.append(recorder)
    microphone.taps.append(recorder.visitor_frame)
    return recorder


async def recorder_keep(*, call: Call, recorder: CallRecorder) -> CallRecording | None:
    """Finish a call's recording and store it with the call. Never raises: a recording that
    could not be made or stored is logged, and the call's end goes on."""
    try:
        result = await recorder.finish()
        if result is None:
            return None
        # Off the database thread: an upload to a bucket may take seconds.
        name = await sync_to_async(recording_file_save, thread_sensitive=False)(
            call_id=call.pk, path=result.path
        )
        return await database_sync_to_async(call_recording_store)(call=call, name=name, result=result)
    except Exception:
        logger.exception("call %s: its recording could not be stored", call.pk)
        return None
    finally:
        await sync_to_async(recorder.discard, thread_sensitive=False)()  # the scratch file


def recording_file_save(*, call_id: str, path: Path) -> str:
    """Copy a finished recording into the recordings storage; the name it was stored under."""
    with path.open("rb") as audio:
        return recordings_storage().save(
            CallRecording.file.field.generate_filename(None, f"{call_id}.ogg"), File(audio)
        )


def call_recording_store(*, call: Call, name: str, result: RecordingResult) -> CallRecording:
    """Attach a stored recording file to its call."""
    return CallRecording.objects.create(
        call=call,
        file=name,
        started_at=datetime.fromtimestamp(result.started_at, tz=UTC),
        duration_seconds=round(result.duration_seconds, 3),
        size_bytes=result.size_bytes,
    )


# --- reading ------------------------------------------------------------------------------------


def call_recording_get(*, call: Call) -> CallRecording | None:
    return CallRecording.objects.filter(call=call).first()


def recording_offset_seconds(*, call: Call, recording: CallRecording) -> float:
    """Where the call's start (the review page's 0:00) falls in the recording, in seconds."""
    start = call.started_at or call.created_at
    return (start - recording.started_at).total_seconds()


@dataclass(frozen=True)
class RecordingBytes:
    content: bytes
    start: int
    size: int  # the whole file's


def recording_size(*, recording: CallRecording) -> int:
    """The stored file's size in bytes."""
    return recordings_storage().size(recording.file.name)


def recording_read(*, recording: CallRecording, start: int, length: int) -> RecordingBytes:
    """`length` bytes of a recording from `start` (fewer at its end)."""
    storage = recordings_storage()
    with storage.open(recording.file.name, "rb") as audio:
        size = storage.size(recording.file.name)
        audio.seek(start)
        return RecordingBytes(content=audio.read(length), start=start, size=size)


# --- retention ----------------------------------------------------------------------------------


def recordings_expired(*, now: datetime | None = None) -> QuerySet[CallRecording]:
    """Recordings older than their persona's retention (a persona without one keeps them)."""
    now = now or timezone.now()
    retentions = (
        Persona.objects.filter(recording_retention_days__isnull=False)
        .values_list("recording_retention_days", flat=True)
        .distinct()
    )
    expired = Q(pk__in=[])
    for days in retentions:
        expired |= Q(call__persona__recording_retention_days=days, started_at__lt=now - timedelta(days=days))
    return CallRecording.objects.filter(expired).select_related("call", "call__persona")


# Scratch files older than this (hours) belong to no live call: a process that died mid-call left them.
SCRATCH_ORPHAN_HOURS = 24


@receiver(post_delete, sender=CallRecording)
def _recording_file_delete(sender: type[CallRecording], instance: CallRecording, **_: Any) -> None:
    """A recording deleted with its call (or alone, in the admin) takes its file along, once the
    deletion is committed."""
    name = instance.file.name

    def delete() -> None:
        try:
            recordings_storage().delete(name)
        except Exception:
            logger.exception("recording %s: its file could not be deleted", name)

    if name:
        transaction.on_commit(delete)


def recordings_scratch_orphans(*, now: float | None = None) -> list[Path]:
    """Scratch files of calls a dead process was recording (older than `SCRATCH_ORPHAN_HOURS`)."""
    scratch = Path(settings.PARLEY_RECORDINGS_SCRATCH_DIR)
    if not scratch.is_dir():
        return []
    cutoff = (now if now is not None else datetime.now(UTC).timestamp()) - SCRATCH_ORPHAN_HOURS * 3600
    return [path for path in scratch.glob("*.ogg") if path.stat().st_mtime < cutoff]


@dataclass
class PurgeResult:
    deleted: list[CallRecording]
    failed: list[tuple[CallRecording, str]]
    orphans: list[Path]


def recordings_purge(*, now: datetime | None = None, dry_run: bool = False) -> PurgeResult:
    """Delete expired recordings, file then row, and scratch files no live call will finish;
    with `dry_run`, only say which.

    A file the storage could not delete keeps its row, so that the next purge tries again.
    """
    result = PurgeResult(deleted=[], failed=[], orphans=recordings_scratch_orphans())
    if not dry_run:
        for orphan in result.orphans:
            orphan.unlink(missing_ok=True)
    for recording in recordings_expired(now=now):
        if dry_run:
            result.deleted.append(recording)
            continue
        try:
            recordings_storage().delete(recording.file.name)
        except Exception as error:
            logger.exception("recording %s: its file could not be deleted", recording.file.name)
            result.failed.append((recording, str(error)))
            continue
        recording.delete()
        result.deleted.append(recording)
    return result


def recording_describe(recording: CallRecording) -> dict[str, Any]:
    return {
        "call": recording.call_id,
        "file": recording.file.name,
        "started_at": recording.started_at.isoformat(),
        "duration_seconds": recording.duration_seconds,
        "size_bytes": recording.size_bytes,
    }
