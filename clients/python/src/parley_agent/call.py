"""A call as an app drives it: the Call API verbs of PROTOCOL §4 and the streamed reply."""

from __future__ import annotations

import asyncio
import logging
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any

from parley_agent.errors import AgentError

if TYPE_CHECKING:
    from parley_agent.agent import Agent

__all__ = ["Call", "ReplyStream", "message_id_new"]

logger = logging.getLogger("parley_agent")


def message_id_new() -> str:
    """A fresh message id, in the `msg_<hex>` shape Parley's own messages have."""
    return f"msg_{uuid.uuid4().hex}"


class Call:
    """One conversation of a persona. Every verb sends one command and waits for its answer:
    it returns the server's `ack` frame, or raises AgentError(code, message)."""

    def __init__(self, agent: Agent, call_id: str, persona: str) -> None:
        self._agent = agent
        self.id = call_id
        self.agent = persona  # the persona's slug, as events carry it

    def __repr__(self) -> str:
        return f"<Call {self.id} agent={self.agent}>"

    async def say(self, text: str, *, message_id: str | None = None) -> dict[str, Any]:
        """The persona says this text verbatim."""
        message_id = message_id or message_id_new()
        ack = await self._agent._command(
            {"action": "say", "callId": self.id, "text": text, "messageId": message_id}
        )
        return {**ack, "messageId": ack.get("messageId", message_id)}

    async def reply(
        self, text: str, *, in_reply_to: str | None = None, message_id: str | None = None
    ) -> dict[str, Any]:
        """Answer the user's message `in_reply_to` (the latest when None). A newer user
        message makes Parley refuse it with the event `reply.rejected`."""
        message_id = message_id or message_id_new()
        frame: dict[str, Any] = {"action": "reply", "callId": self.id, "text": text, "messageId": message_id}
        if in_reply_to is not None:
            frame["inReplyTo"] = in_reply_to
        ack = await self._agent._command(frame)
        return {**ack, "messageId": ack.get("messageId", message_id)}

    def reply_stream(self, *, in_reply_to: str | None = None, message_id: str | None = None) -> ReplyStream:
        """A streamed answer: `async with call.reply_stream(...) as stream: await stream.write(...)`.
        Speech starts at the first sentence; Parley cuts it when the user goes on or interrupts."""
        return ReplyStream(self, message_id=message_id or message_id_new(), in_reply_to=in_reply_to)

    async def tool_result(self, msg_id: str, results: list[dict[str, Any]]) -> dict[str, Any]:
        """Answer the event `llm.tool_call` `msg_id`: `[{"toolCallId": ..., "result": ...}]`."""
        return await self._agent._command(
            {"action": "toolResult", "callId": self.id, "msgId": msg_id, "results": results}
        )

    async def cancel(self, message_id: str | None = None) -> dict[str, Any]:
        """Stop that message, or whatever the persona is saying when None."""
        frame: dict[str, Any] = {"action": "cancel", "callId": self.id}
        if message_id is not None:
            frame["messageId"] = message_id
        return await self._agent._command(frame)

    async def context(self, text: str) -> dict[str, Any]:
        """Add context for the persona's LLM."""
        return await self._agent._command({"action": "context", "callId": self.id, "text": text})

    async def hangup(self) -> dict[str, Any]:
        """End the call (reason `hangup`)."""
        return await self._agent._command({"action": "hangup", "callId": self.id})


class ReplyStream:
    """A reply sent in pieces: `replyStream` op `start`, one `chunk` per write, `end`.

    Chunks are sent without waiting for each answer (a token stream would otherwise go at
    the pace of round trips); `start` and `end` wait. Once Parley aborts the stream (event
    `reply.aborted`, or the call ended), `aborted` is True and writes are dropped without
    being sent; `end` sends nothing then either.
    """

    def __init__(self, call: Call, *, message_id: str, in_reply_to: str | None) -> None:
        self.call = call
        self.message_id = message_id
        self.in_reply_to = in_reply_to
        self.text = ""  # everything written so far
        self.aborted = False
        self.abort_reason: str | None = None
        self.error: AgentError | None = None  # the first refused chunk, if any
        self.started = False
        self.ended = False

    def __repr__(self) -> str:
        state = "aborted" if self.aborted else "ended" if self.ended else "open" if self.started else "new"
        return f"<ReplyStream {self.message_id} {state}>"

    async def __aenter__(self) -> ReplyStream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.end()
            return
        # The body failed: still close the stream so Parley does not wait for more, but the
        # body's exception is the one the caller must see.
        try:
            await self.end()
        except AgentError as error:
            logger.debug("end of stream %s after an error was refused: %s", self.message_id, error)

    async def start(self) -> None:
        if self.started:
            return
        self.started = True
        self.call._agent._stream_register(self)
        frame: dict[str, Any] = {
            "action": "replyStream",
            "callId": self.call.id,
            "messageId": self.message_id,
            "op": "start",
        }
        if self.in_reply_to is not None:
            frame["inReplyTo"] = self.in_reply_to
        try:
            await self.call._agent._command(frame)
        except BaseException:
            self.ended = True
            self.call._agent._stream_forget(self)
            raise

    async def write(self, text: str) -> None:
        """Send one piece. Empty text is skipped; after an abort or the end, nothing is sent."""
        if not self.started:
            raise RuntimeError("write before start: use `async with call.reply_stream(...)`")
        if self.aborted or self.ended or not text:
            return
        self.text += text
        answer = await self.call._agent._command_nowait(
            {
                "action": "replyStream",
                "callId": self.call.id,
                "messageId": self.message_id,
                "op": "chunk",
                "text": text,
            }
        )
        answer.add_done_callback(self._chunk_answered)

    async def end(self) -> None:
        """Close the stream (done by the `async with` on exit); a no-op once ended or aborted."""
        if not self.started or self.ended:
            return
        self.ended = True
        try:
            if self.aborted:
                return
            try:
                await self.call._agent._command(
                    {
                        "action": "replyStream",
                        "callId": self.call.id,
                        "messageId": self.message_id,
                        "op": "end",
                    }
                )
            except AgentError:
                # Parley may have cut the stream while `end` was on its way: the abort event
                # comes before the refusal on the socket, so it has been seen by now.
                if not self.aborted:
                    raise
        finally:
            self.call._agent._stream_forget(self)

    def _abort(self, reason: str) -> None:
        if not self.aborted:
            self.aborted = True
            self.abort_reason = reason
            logger.debug("stream %s aborted: %s", self.message_id, reason)

    def _chunk_answered(self, answer: asyncio.Future[dict[str, Any]]) -> None:
        if answer.cancelled():
            return
        error = answer.exception()
        if error is None or self.aborted:
            return
        if self.error is None and isinstance(error, AgentError):
            self.error = error
        logger.warning("chunk of stream %s refused: %s", self.message_id, error)
