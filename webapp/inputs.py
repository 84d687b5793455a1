"""What clients send, checked before it is parsed or stored: JSON size and depth, text, cursors.

Every edge (the DRF parser, both websockets, the WebRTC data channel, the event stream's
query) parses JSON with `json_parse` and reads cursors with `cursor_parse`, so a bad input is
refused the same way everywhere, with the field at fault named.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import exceptions
from rest_framework.parsers import JSONParser

# Nesting levels a JSON document may have. The protocols' deepest frames (an offer, a tool
# result) are 3-4 levels; Python's parser recurses once per level and fails near 1,000.
MAX_JSON_DEPTH = 32
# The largest value a BigAutoField cursor (the event log's) can hold.
MAX_CURSOR = 2**63 - 1
# ASCII digits only: str.isdigit() and int() also take '²' or Arabic-Indic digits.
_CURSOR = re.compile(r"[0-9]{1,19}")
# A JSON string, escapes included (unrolled so a long string costs one pass).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")
# Text neither PostgreSQL (text and jsonb) nor UTF-8 can hold: NUL, and unpaired surrogates.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class InputRefused(ValueError):
    """A client's input that cannot be used; `field` names where, `problem` says why."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem

    @property
    def detail(self) -> str:
        return str(self)


# --- Text ---------------------------------------------------------------------------------


def text_problem(value: str) -> str | None:
    """Why this text cannot be stored (a NUL, an unpaired surrogate), or None."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "must not contain NUL characters (\\u0000)"
    return "must be valid Unicode text (it holds an unpaired surrogate)"


def text_check(value: str, *, field: str) -> str:
    """The text itself, or InputRefused naming the field."""
    problem = text_problem(value)
    if problem is not None:
        raise InputRefused(field, problem)
    return value


def texts_check(value: Any, *, field: str) -> Any:
    """Check every key and string inside a parsed JSON value; the path names the first bad one."""
    if isinstance(value, str):
        text_check(value, field=field)
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{field}.{key}" if field else str(key)
            if isinstance(key, str) and text_problem(key) is not None:
                raise InputRefused(field or "body", f"a key {text_problem(key)}")
            texts_check(item, field=path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            texts_check(item, field=f"{field}[{index}]")
    return value


def query_texts_check(pairs: Iterable[tuple[str, str]]) -> None:
    """Query-string parameters (name, value): InputRefused naming the first unstorable one."""
    for name, value in pairs:
        if text_problem(name) is not None:
            raise InputRefused("query", f"a parameter name {text_problem(name)}")
        text_check(value, field=name)


# --- JSON ---------------------------------------------------------------------------------


def json_depth_check(text: str, *, field: str = "body", max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse a document nested deeper than `max_depth`, without parsing it."""
    if text.count("[") + text.count("{") <= max_depth:
        return  # cannot be too deep: the common small frame costs two counts
    depth = 0
    for bracket in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        if bracket.group() in "[{":
            depth += 1
            if depth > max_depth:
                raise InputRefused(field, f"JSON nested deeper than {max_depth} levels")
        else:
            depth -= 1


def json_parse(
    raw: str | bytes, *, field: str = "body", max_bytes: int, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Parse a client's JSON after checking its size, encoding and depth, then its text.

    Raises InputRefused: too big (the problem says the limit), not UTF-8, too deep, not JSON,
    or a string (or key) inside holding text that cannot be stored, named by its path.
    """
    size = len(raw) if isinstance(raw, bytes) or raw.isascii() else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InputRefused(field, f"must be at most {max_bytes} bytes of JSON")
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputRefused(field, "must be UTF-8 text") from None
    else:
        text = raw
    json_depth_check(text, field=field, max_depth=max_depth)
    try:
        value = json.loads(text)
    except RecursionError:  # unreachable after the depth check; kept as a last line
        raise InputRefused(field, f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as error:
        message = getattr(error, "msg", str(error))
        raise InputRefused(field, f"not valid JSON ({message})") from None
    return texts_check(value, field="" if field == "body" else field)


class GuardedJSONParser(JSONParser):
    """DRF's JSON parser behind `json_parse`: size, depth and text checked before DRF sees the body.

    Too big is 413 (as Django's own check); too deep or not JSON is 400 naming the body; text
    that cannot be stored is 400 naming its field, as a validation error.
    """

    def parse(self, stream: IO[bytes] | None, media_type: Any = None, parser_context: Any = None) -> Any:
        limit: int | None = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if stream is None:
            raw = b""
        else:  # DRF reads the request stream itself, past Django's own body-size check
            raw = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(raw) > limit:
            raise RequestDataTooBig("request body too large")
        try:
            return json_parse(raw, max_bytes=len(raw) if limit is None else limit)
        except InputRefused as refusal:
            if refusal.field in {"", "body"}:
                raise exceptions.ParseError(f"body: {refusal.problem}") from None
            raise exceptions.ValidationError({refusal.field: [refusal.problem]}) from None


# --- Cursors ------------------------------------------------------------------------------


def cursor_parse(value: str, *, field: str) -> int:
    """An event-log cursor: ASCII digits of a non-negative integer that fits the cursor column."""
    text = value.strip(" \t")
    if not _CURSOR.fullmatch(text) or int(text) > MAX_CURSOR:
        raise InputRefused(field, "must be a non-negative integer")
    return int(text)
