"""`manage.py purge_recordings`: delete call recordings, and WhatsApp voice notes' kept audio,
older than their persona's retention."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from calls.review.recordings import recording_describe, recordings_purge
from calls.whatsapp.services import whatsapp_media_purge


class Command(BaseCommand):
    help = (
        "Delete call recordings (files and rows), and the kept audio of WhatsApp voice notes (their "
        "transcripts stay), older than their persona's retention days. "
        "Run it daily (README: Call recordings)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="List what would be deleted; delete nothing."
        )

    def handle(self, *args: Any, dry_run: bool = False, **options: Any) -> None:
        result = recordings_purge(dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        for recording in result.deleted:
            described = recording_describe(recording)
            self.stdout.write(
                f"{verb} {described['file']} (call {described['call']}, {described['started_at']})"
            )
        for orphan in result.orphans:
            self.stdout.write(f"{verb} {orphan} (left by a call whose process died)")
        for recording, error in result.failed:
            self.stderr.write(f"could not delete {recording.file.name}: {error}")
        self.stdout.write(f"{len(result.deleted)} recording(s) {verb}, {len(result.failed)} failed")
        media, media_failed = whatsapp_media_purge(dry_run=dry_run)
        for message, name in media:
            self.stdout.write(f"{verb} {name} (WhatsApp message {message.meta_message_id})")
        for message, error in media_failed:
            self.stderr.write(f"could not delete {message.media_file.name}: {error}")
        self.stdout.write(f"{len(media)} WhatsApp voice note(s) {verb}, {len(media_failed)} failed")
        if result.failed or media_failed:
            raise SystemExit(1)
