"""HTTP byte ranges (RFC 9110 §14) for the recording player: Chromium seeks in audio with them."""

from __future__ import annotations


class RangeNotSatisfiable(Exception):
    """The range starts past the end of the file: answer 416."""


def byte_range_parse(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) bytes, inclusive, of a single `bytes=` range of a `size`-byte file.

    None means "send the whole file": no header, another unit, several ranges (which a server
    may answer in full), or a header that does not parse (which it must ignore).
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash or not (first_text + last_text).isdigit():
        return None
    if not first_text:  # "-N": the last N bytes
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(size - suffix, 0), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last < first and last_text:
        return None
    if first >= size:
        raise RangeNotSatisfiable
    return first, min(last, size - 1)
