"""The agent wire's commands (PROTOCOL §4): parsed and checked into typed values, or refused.

An app sends `{"action": "<name>", "requestId"?: str, ...}`. Each action has its fields; a
command that does not fit gets an `error` frame with a code and a message naming the field,
and changes nothing. Nothing here touches a call: `calls.agents.control` carries them out.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from webapp.inputs import InputRefused, json_parse, text_check, text_problem, texts_check

# One command is a few sentences or a tool's result, not a book.
MAX_FRAME_BYTES = 256 * 1024
MAX_TEXT_CHARS = 4000
MAX_REQUEST_ID_CHARS = 100
# An app's own message id: short, printable, no spaces.
MESSAGE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
# The user message a reply answers: an id of ours (`msg_…`) or a WhatsApp wamid (base64).
IN_REPLY_TO = re.compile(r"[A-Za-z0-9_.:=+/-]{1,128}")
CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_AGENTS = 100
MAX_TOOL_RESULTS = 32

ACTIONS = (
    "subscribe",
    "say",
    "reply",
    "replyStream",
    "toolResult",
    "cancel",
    "context",
    "hangup",
    "whatsappPause",
    "whatsappResume",
    "whatsappSend",
)
# Actions on a WhatsApp thread, named by its session or contact (`calls.whatsapp.commands`).
THREAD_ACTIONS = ("whatsappPause", "whatsappResume", "whatsappSend")
CALL_ACTIONS = tuple(action for action in ACTIONS[1:] if action not in THREAD_ACTIONS)
STREAM_OPS = ("start", "chunk", "end")


class CommandRefused(Exception):
    """A command that cannot be carried out: `code` for programs, `message` for people."""

    def __init__(self, code: str, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def frame(self) -> dict[str, Any]:
        return {"event": "error", "requestId": self.request_id, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class Command:
    """One checked command. `fields` holds the action's own fields, in snake_case."""

    action: str
    request_id: str | None
    call_id: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def command_parse(raw: str | bytes | None) -> Command:
    """Parse one frame of the agent socket; raise CommandRefused saying what is wrong."""
    if raw is None or isinstance(raw, bytes):
        raise CommandRefused("invalid_frame", "frame: must be JSON text, not binary")
    content = _frame_load(raw)
    if not isinstance(content, dict):
        raise CommandRefused("invalid_frame", 'frame: must be a JSON object {"action": ...}')
    return command_check(content)


def command_check(content: dict[str, Any]) -> Command:
    """Check a command given as its parsed JSON object (the socket's, or an in-process hook's:
    the same rules for both); raise CommandRefused saying what is wrong."""
    request_id = _request_id(content)
    try:
        texts_check(content, field="")
    except InputRefused as refusal:
        raise CommandRefused("invalid_field", refusal.detail, request_id=request_id) from None
    action = content.get("action")
    if not isinstance(action, str):
        raise CommandRefused("invalid_field", "action: required, a string", request_id=request_id)
    if action not in ACTIONS:
        raise CommandRefused(
            "unknown_action",
            f"action: {action[:40]!r} is not one of {', '.join(ACTIONS)}",
            request_id=request_id,
        )
    if action in THREAD_ACTIONS:
        from calls.whatsapp.commands import whatsapp_command_check

        try:
            return whatsapp_command_check(content, request_id)
        except CommandRefused as refusal:
            refusal.request_id = request_id
            raise
    try:
        return _PARSERS[action](content, request_id)
    except InputRefused as refusal:
        raise CommandRefused("invalid_field", refusal.detail, request_id=request_id) from None


def _frame_load(raw: str) -> Any:
    """The frame's JSON; CommandRefused if it is too big, too deep, not JSON, or holds text that
    cannot be stored (a NUL): that one is valid JSON, so it is refused as its field, with the
    command's requestId, like any other bad field."""
    try:
        return json_parse(raw, field="frame", max_bytes=MAX_FRAME_BYTES)
    except InputRefused as refusal:
        if refusal.field == "frame" and not refusal.problem.startswith("a key"):
            code = "frame_too_large" if refusal.problem.startswith("must be at most") else "invalid_json"
            raise CommandRefused(code, refusal.detail) from None
        content = json.loads(raw)  # its size and depth passed: only its text was refused
        field_name = refusal.field.removeprefix("frame.")
        request_id = None
        if isinstance(content, dict):
            try:
                request_id = _request_id(content)
            except CommandRefused:
                pass  # the requestId itself is at fault
        raise CommandRefused(
            "invalid_field", f"{field_name}: {refusal.problem}", request_id=request_id
        ) from None


def _request_id(content: dict[str, Any]) -> str | None:
    request_id = content.get("requestId")
    if request_id is None:
        return None
    if (
        not isinstance(request_id, str | int)
        or isinstance(request_id, bool)
        or len(str(request_id)) > MAX_REQUEST_ID_CHARS
    ):
        raise CommandRefused(
            "invalid_field", f"requestId: must be a string of at most {MAX_REQUEST_ID_CHARS} characters"
        )
    request_id = str(request_id)
    if text_problem(request_id) is not None:
        raise CommandRefused("invalid_field", f"requestId: {text_problem(request_id)}")
    return request_id


# --- Field readers (each raises InputRefused naming its field) ----------------------------


def _text(content: dict[str, Any], name: str, *, required: bool = True, empty: bool = False) -> str:
    value = content.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InputRefused(name, "required, a string" if value is None else "must be a string")
    text_check(value, field=name)
    if not empty and not value.strip():
        raise InputRefused(name, "must not be empty")
    if len(value) > MAX_TEXT_CHARS:
        raise InputRefused(name, f"at most {MAX_TEXT_CHARS} characters")
    return value


def _identifier(
    content: dict[str, Any], name: str, pattern: re.Pattern[str], *, required: bool
) -> str | None:
    value = content.get(name)
    if value is None:
        if required:
            raise InputRefused(name, "required")
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InputRefused(name, f"must be a string matching {pattern.pattern}")
    return value


def _call_id(content: dict[str, Any]) -> str:
    value = _identifier(content, "callId", CALL_ID, required=True)
    assert value is not None
    return value


def _message_id(content: dict[str, Any], *, required: bool = False) -> str | None:
    return _identifier(content, "messageId", MESSAGE_ID, required=required)


def _in_reply_to(content: dict[str, Any]) -> str | None:
    return _identifier(content, "inReplyTo", IN_REPLY_TO, required=False)


# --- One parser per action ----------------------------------------------------------------


def _subscribe(content: dict[str, Any], request_id: str | None) -> Command:
    agents = content.get("agents")
    if agents is not None:
        if not isinstance(agents, list) or not all(isinstance(slug, str) and slug for slug in agents):
            raise InputRefused("agents", "must be a list of persona slugs")
        if len(agents) > MAX_AGENTS:
            raise InputRefused("agents", f"at most {MAX_AGENTS} personas")
        agents = sorted(set(agents))
        if not agents:
            raise InputRefused("agents", "give one or more persona slugs (or leave it out for all)")
    after = content.get("after")
    if after is not None and (not isinstance(after, int) or isinstance(after, bool) or after < 0):
        raise InputRefused("after", "must be a cursor: a whole number ≥ 0")
    answer = content.get("answer", False)
    if not isinstance(answer, bool):
        raise InputRefused("answer", "must be true or false")
    return Command("subscribe", request_id, fields={"agents": agents, "after": after, "answer": answer})


def _say(content: dict[str, Any], request_id: str | None) -> Command:
    return Command(
        "say",
        request_id,
        _call_id(content),
        {"text": _text(content, "text"), "message_id": _message_id(content) or new_message_id()},
    )


def _reply(content: dict[str, Any], request_id: str | None) -> Command:
    return Command(
        "reply",
        request_id,
        _call_id(content),
        {
            "text": _text(content, "text"),
            "in_reply_to": _in_reply_to(content),
            "message_id": _message_id(content) or new_message_id(),
        },
    )


def _reply_stream(content: dict[str, Any], request_id: str | None) -> Command:
    op = content.get("op")
    if op not in STREAM_OPS:
        raise InputRefused("op", f"must be one of {', '.join(STREAM_OPS)}")
    fields: dict[str, Any] = {"op": op, "message_id": _message_id(content, required=True)}
    if op == "start":
        fields["in_reply_to"] = _in_reply_to(content)
        fields["text"] = _text(content, "text", required=False, empty=True)
    elif op == "chunk":
        fields["text"] = _text(content, "text", empty=True)
    else:
        fields["text"] = _text(content, "text", required=False, empty=True)
    return Command("replyStream", request_id, _call_id(content), fields)


def _tool_result(content: dict[str, Any], request_id: str | None) -> Command:
    msg_id = _identifier(content, "msgId", MESSAGE_ID, required=True)
    results = content.get("results")
    if not isinstance(results, list) or not results:
        raise InputRefused("results", "must be a non-empty list of {toolCallId, result}")
    if len(results) > MAX_TOOL_RESULTS:
        raise InputRefused("results", f"at most {MAX_TOOL_RESULTS} results")
    checked = []
    for index, item in enumerate(results):
        if not isinstance(item, dict):
            raise InputRefused(f"results[{index}]", "must be an object {toolCallId, result}")
        tool_call_id = item.get("toolCallId")
        if not isinstance(tool_call_id, str) or not tool_call_id or len(tool_call_id) > 200:
            raise InputRefused(f"results[{index}].toolCallId", "required, a string")
        if "result" not in item and "error" not in item:
            raise InputRefused(f"results[{index}].result", "required (or error)")
        error = item.get("error")
        if error is not None and not isinstance(error, str):
            raise InputRefused(f"results[{index}].error", "must be a string")
        checked.append({"tool_call_id": tool_call_id, "result": item.get("result"), "error": error})
    return Command("toolResult", request_id, _call_id(content), {"msg_id": msg_id, "results": checked})


def _cancel(content: dict[str, Any], request_id: str | None) -> Command:
    return Command("cancel", request_id, _call_id(content), {"message_id": _message_id(content)})


def _context(content: dict[str, Any], request_id: str | None) -> Command:
    return Command("context", request_id, _call_id(content), {"text": _text(content, "text")})


def _hangup(content: dict[str, Any], request_id: str | None) -> Command:
    return Command("hangup", request_id, _call_id(content))


_PARSERS = {
    "subscribe": _subscribe,
    "say": _say,
    "reply": _reply,
    "replyStream": _reply_stream,
    "toolResult": _tool_result,
    "cancel": _cancel,
    "context": _context,
    "hangup": _hangup,
}
