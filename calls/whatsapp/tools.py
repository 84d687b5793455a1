"""The persona's tools on WhatsApp: the LLM's tool calls answered by an app, across processes.

On a call, a server tool waits in the live session for the app's `toolResult`. A WhatsApp thread
is answered by whichever process claimed it, and the app's `toolResult` may reach another
process, so the calls waiting and their results meet in the cache (Redis in production; local
memory embedded, where one process does everything):

- `tool_calls_wait` announces the batch (`llm.tool_call` on the session's call, as on a
  call), enters each server call as waiting, and waits for the results until the tool's
  timeout; a client tool (it runs in a browser) gets an error at once: there is no browser;
- `whatsapp_tool_result` (the agent API's `toolResult` on a WhatsApp call) checks each result
  names a server call waiting with that `msgId`, then stores it for the waiter.

Whatever comes — a result, an error, or nothing in time — the LLM gets a result and goes on.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache

from calls.pipeline.brain.config import BrainTool
from calls.pipeline.tools import tool_timeout_error

# How often a waiting call looks for its result (seconds).
RESULT_POLL_SECONDS = 0.1
# A waiting entry outlives its timeout by this much, so a late result is told it is late.
ENTRY_GRACE_SECONDS = 30
CLIENT_TOOL_ERROR = "tool {name} runs in the visitor's browser, and a WhatsApp thread has none"


class ToolResultRefused(ValueError):
    """A `toolResult` that answers no waiting call; `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class AskedCall:
    """A tool call as the LLM made it."""

    tool_call_id: str
    name: str
    arguments: str  # JSON, as the LLM wrote it


def _waiting_key(call_id: str, tool_call_id: str) -> str:
    return f"parley:whatsapp:tool:{call_id}:{tool_call_id}"


def _result_key(call_id: str, tool_call_id: str) -> str:
    return _waiting_key(call_id, tool_call_id) + ":result"


async def tool_calls_wait(
    *,
    call_id: str,
    tools: tuple[BrainTool, ...],
    asked: list[AskedCall],
    default_timeout_seconds: float,
    announce: Callable[[str, list[AskedCall]], Awaitable[None]],
) -> dict[str, Any]:
    """Announce the batch, wait for its results; every asked call gets a result (by its id)."""
    by_name = {tool.name: tool for tool in tools}
    msg_id = "msg_" + secrets.token_hex(12)
    outcomes: dict[str, Any] = {}
    waiting: dict[str, float] = {}  # tool call id -> its deadline (monotonic)
    now = time.monotonic()
    for call in asked:
        tool = by_name.get(call.name)
        if tool is None:
            outcomes[call.tool_call_id] = {"error": f"no tool named {call.name}"}
        elif tool.kind == "client":
            outcomes[call.tool_call_id] = {"error": CLIENT_TOOL_ERROR.format(name=call.name)}
        else:
            timeout = tool.timeout_seconds or default_timeout_seconds
            waiting[call.tool_call_id] = now + timeout
            await cache.aset(
                _waiting_key(call_id, call.tool_call_id),
                {"msgId": msg_id},
                timeout=int(timeout) + ENTRY_GRACE_SECONDS,
            )
    await announce(msg_id, asked)
    names = {call.tool_call_id: call.name for call in asked}
    while waiting:
        results = await cache.aget_many([_result_key(call_id, tool_call_id) for tool_call_id in waiting])
        for tool_call_id in list(waiting):
            found = results.get(_result_key(call_id, tool_call_id))
            if found is not None:
                outcomes[tool_call_id] = (
                    {"error": found["error"]} if found.get("error") else found.get("result")
                )
                del waiting[tool_call_id]
            elif time.monotonic() > waiting[tool_call_id]:
                tool = by_name[names[tool_call_id]]
                timeout = tool.timeout_seconds or default_timeout_seconds
                outcomes[tool_call_id] = {
                    "error": tool_timeout_error(name=tool.name, kind="server", timeout_seconds=timeout)
                }
                del waiting[tool_call_id]
                await cache.adelete(_waiting_key(call_id, tool_call_id))  # a late result is refused
        if waiting:
            await asyncio.sleep(RESULT_POLL_SECONDS)
    return outcomes


async def whatsapp_tool_result(*, call_id: str, msg_id: str, results: list[dict[str, Any]]) -> None:
    """An app's results for a WhatsApp thread's waiting tool calls (all checked, then stored)."""
    for item in results:
        entry = await cache.aget(_waiting_key(call_id, item["tool_call_id"]))
        if entry is None:
            raise ToolResultRefused(
                "results.toolCallId",
                f"results.toolCallId: {item['tool_call_id']!r} is not a server tool call waiting on this "
                "call (unknown, answered already, timed out, or a client tool)",
            )
        if entry["msgId"] != msg_id:
            raise ToolResultRefused("msgId", f"msgId: {item['tool_call_id']!r} belongs to {entry['msgId']!r}")
    for item in results:
        error = item.get("error")
        await cache.aset(
            _result_key(call_id, item["tool_call_id"]),
            {"result": item.get("result"), "error": str(error) if error not in (None, "", False) else None},
            timeout=ENTRY_GRACE_SECONDS,
        )
        await cache.adelete(_waiting_key(call_id, item["tool_call_id"]))


def whatsapp_tool_calls_announce(*, call_id: str, msg_id: str, asked: list[AskedCall]) -> None:
    """`llm.tool_call` on the thread's call, as a call's LLM announces its batch."""
    from calls import events
    from calls.models import Call
    from calls.publishing import call_event_publish

    call = Call.objects.select_related("persona").get(pk=call_id)
    call_event_publish(
        call=call,
        event=events.LlmToolCall(
            msg_id=msg_id,
            tool_calls=[
                events.ToolCall(id=c.tool_call_id, name=c.name, arguments=c.arguments) for c in asked
            ],
        ),
    )


def tool_result_text(result: Any) -> str:
    """A result as the tool message's content."""
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
