"""Tool calls in a conversation: announce them, wait for their results, hand those to the LLM.

pipecat's LLM service runs a handler per tool call; Parley registers one (`ToolCalls.run`)
for every tool of the persona. When the LLM asks for tools, the batch is announced first
(`llm.tool_call` for the app, through the listener), then each call is shown to the browser
(`toolCallStarted`) and waits for its result: a *client* tool's from the browser's
`tool_result`, a *server* tool's from the app (the agent API). Whatever comes — a result,
an error, or nothing before the timeout — the LLM gets a tool result and goes on speaking;
an interruption cancels the calls still waiting. No ORM here: results leave through
`ConversationListener`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from calls.pipeline.brain.config import BrainTool, ToolKind

if TYPE_CHECKING:
    from pipecat.services.llm_service import FunctionCallFromLLM, FunctionCallParams, LLMService

    from calls.pipeline.conversation import ConversationListener

logger = logging.getLogger(__name__)

# How long a tool waits for its result when neither the tool nor the persona says (seconds):
# long enough for a browser handler or an app's webhook, short enough for a conversation.
DEFAULT_TOOL_TIMEOUT_SECONDS = 15.0
# A call is shown to the browser only after its batch was announced (`llm.tool_call` stored),
# so an app sees the id before any result can arrive; if announcing hangs, this long at most
# (seconds).
ANNOUNCE_TIMEOUT_SECONDS = 5.0
# The error a call cancelled by an interruption (or the end of the call) reports to the browser.
INTERRUPTED_ERROR = "interrupted: the user cut in, or the call ended"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ToolOutcome:
    """What a tool call came to: a result, or an error message."""

    result: Any = None
    error: str | None = None


@dataclass
class PendingToolCall:
    """One call the LLM made, from its announcement until its result is handed over."""

    tool_call_id: str
    name: str
    kind: ToolKind
    arguments: dict[str, Any]
    message_id: str = ""
    started_at: str = field(default_factory=_now_iso)
    outcome: asyncio.Future[ToolOutcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    announced: asyncio.Event = field(default_factory=asyncio.Event)


def tool_timeout_error(*, name: str, kind: ToolKind, timeout_seconds: float) -> str:
    """What the LLM (and the browser) are told when no result came in time."""
    if kind == "server":
        return f"tool {name} has no handler (no result within {timeout_seconds:g} s)"
    return f"tool {name}: the client sent no result within {timeout_seconds:g} s"


class ToolCalls:
    """The persona's tools inside one conversation: handlers, pending calls and their results."""

    def __init__(
        self,
        *,
        tools: Sequence[BrainTool],
        listener: ConversationListener,
        default_timeout_seconds: float = DEFAULT_TOOL_TIMEOUT_SECONDS,
    ) -> None:
        self._tools = {tool.name: tool for tool in tools}
        self._listener = listener
        self._default_timeout_seconds = default_timeout_seconds
        self._pending: dict[str, PendingToolCall] = {}

    def register(self, llm: LLMService) -> None:
        """Give the LLM service a handler per tool and announce each batch of calls."""
        for name in self._tools:
            llm.register_function(name, self.run, cancel_on_interruption=True)
        if self._tools:
            llm.add_event_handler("on_function_calls_started", self._on_function_calls_started)

    @property
    def pending(self) -> list[PendingToolCall]:
        return list(self._pending.values())

    def _pending_for(self, *, tool_call_id: str, name: str, arguments: Any) -> PendingToolCall:
        entry = self._pending.get(tool_call_id)
        if entry is None:
            tool = self._tools.get(name)
            entry = PendingToolCall(
                tool_call_id=tool_call_id,
                name=name,
                kind=tool.kind if tool is not None else "server",
                arguments=dict(arguments or {}),
            )
            self._pending[tool_call_id] = entry
        return entry

    async def _on_function_calls_started(
        self, service: LLMService, function_calls: Sequence[FunctionCallFromLLM]
    ) -> None:
        message_id = "msg_" + secrets.token_hex(12)
        entries = []
        for call in function_calls:
            entry = self._pending_for(
                tool_call_id=call.tool_call_id, name=call.function_name, arguments=call.arguments
            )
            entry.message_id = message_id
            entries.append(entry)
        try:
            await self._listener.on_tool_call(
                message_id=message_id,
                calls=[
                    {
                        "id": entry.tool_call_id,
                        "name": entry.name,
                        "arguments": json.dumps(entry.arguments, ensure_ascii=False),
                    }
                    for entry in entries
                ],
            )
        except Exception:
            logger.exception("announcing tool calls %s failed", [entry.tool_call_id for entry in entries])
        finally:
            for entry in entries:
                entry.announced.set()

    async def run(self, params: FunctionCallParams) -> None:
        """pipecat's handler for every tool: wait for the result, then give it to the LLM."""
        entry = self._pending_for(
            tool_call_id=params.tool_call_id, name=params.function_name, arguments=params.arguments
        )
        tool = self._tools.get(entry.name)
        timeout = (tool.timeout_seconds if tool is not None else None) or self._default_timeout_seconds
        try:
            try:
                await asyncio.wait_for(entry.announced.wait(), ANNOUNCE_TIMEOUT_SECONDS)
            except TimeoutError:
                logger.warning("tool call %s was not announced in time; going on", entry.tool_call_id)
            await self._listener.on_tool_call_started(call=entry)
            try:
                outcome = await asyncio.wait_for(entry.outcome, timeout)
            except TimeoutError:
                outcome = ToolOutcome(
                    error=tool_timeout_error(name=entry.name, kind=entry.kind, timeout_seconds=timeout)
                )
        except asyncio.CancelledError:
            # An interruption (or the end of the call): the browser's pending call is over too.
            self._pending.pop(entry.tool_call_id, None)
            try:
                await self._listener.on_tool_call_failed(call=entry, error=INTERRUPTED_ERROR)
            except Exception:
                logger.exception("reporting the cancelled tool call %s failed", entry.tool_call_id)
            raise
        self._pending.pop(entry.tool_call_id, None)
        if outcome.error is not None:
            await self._listener.on_tool_call_failed(call=entry, error=outcome.error)
            await params.result_callback({"error": outcome.error})
        else:
            await self._listener.on_tool_call_completed(call=entry, result=outcome.result)
            await params.result_callback(outcome.result)

    def resolve(self, *, tool_call_id: str, result: Any, error: Any, kind: ToolKind | None = None) -> bool:
        """A result for a waiting call; False if no such call waits (unknown, late, or of the other kind).

        `kind` says who answers: the browser may only answer client tools, the app only server
        tools (None: either, for in-process callers).
        """
        entry = self._pending.get(tool_call_id)
        if entry is None or entry.outcome.done() or (kind is not None and entry.kind != kind):
            return False
        if error not in (None, "", False):
            entry.outcome.set_result(ToolOutcome(error=str(error)))
        else:
            entry.outcome.set_result(ToolOutcome(result=result))
        return True

    def cancel_all(self) -> None:
        """The conversation is ending: nothing waits any more."""
        for entry in self._pending.values():
            if not entry.outcome.done():
                entry.outcome.cancel()
        self._pending.clear()
