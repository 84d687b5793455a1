"""Export formats of a list of calls: CSV (one row a call, the transcript in a cell) and JSON.

Both are generators of text chunks, for a streamed response: a long list is never held whole.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

CSV_COLUMNS = (
    "id",
    "persona",
    "transport",
    "direction",
    "status",
    "from",
    "to",
    "createdAt",
    "startedAt",
    "endedAt",
    "durationSeconds",
    "endReason",
    "interrupted",
    "transcript",
)


def transcript_as_text(transcript: list[dict[str, Any]]) -> str:
    """One line a turn: `visitor: …` / `persona: …`, a cut-off line with what was heard."""
    lines = []
    for line in transcript:
        speaker = "visitor" if line["role"] == "user" else "persona"
        if line["interrupted"]:
            lines.append(f"{speaker} (interrupted, heard: {line['spokenText']!r}): {line['text']}")
        else:
            lines.append(f"{speaker}: {line['text']}")
    return "\n".join(lines)


def calls_csv(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")

    def flush() -> str:
        chunk = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate(0)
        return chunk

    writer.writeheader()
    yield flush()
    for row in rows:
        transcript = row["transcript"]
        writer.writerow(
            {
                **row,
                "interrupted": any(line["interrupted"] for line in transcript),
                "transcript": transcript_as_text(transcript),
            }
        )
        yield flush()


def calls_json(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """A JSON array of calls, each with its transcript, written one call at a time."""
    yield "["
    for index, row in enumerate(rows):
        yield ("," if index else "") + "\n" + json.dumps(row, ensure_ascii=False)
    yield "\n]\n"
