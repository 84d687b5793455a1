"""In-process hooks: apps that live in the same Django project drive calls without a socket.

    from calls.agents import parley_agent

    agent = parley_agent("mara", answer=True)

    @agent.on("turn.end")
    async def answer(event, call):
        async with call.reply_stream(in_reply_to=event.get("messageId")) as stream:
            await stream.write("Let me see. ")

The modules that define hooks are imported at start-up from `PARLEY_AGENT_MODULES`. Hooks
run in the process that holds the call, once per event, each as a task of its own: a handler
that raises is logged, one that runs past `PARLEY_AGENT_HOOK_TIMEOUT_SECONDS` is cancelled,
and neither touches the call or delays its voice. `call` has the verbs of the Python client
(`say`, `reply`, `reply_stream`, `tool_result`, `cancel`, `context`, `hangup`), carried out
by the same code as the agent websocket's commands; a refused one raises `AgentError`.
The agent itself has the WhatsApp thread verbs (`whatsapp_pause`, `whatsapp_resume`,
`whatsapp_send`), for the persona's own threads.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

from calls.agents.commands import CommandRefused, command_check, new_message_id

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], "HookCall"], Awaitable[Any]]

_AGENTS: dict[str, list[HookAgent]] = {}
_RUNNING: set[asyncio.Task[Any]] = set()


class AgentError(Exception):
    """A command Parley refused: `code` for programs, `message` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class HookAgent:
    """The hooks of one persona (`parley_agent(slug)`)."""

    def __init__(self, slug: str, *, answer: bool) -> None:
        self.slug = slug
        self.answer = answer
        self.handlers: dict[str, list[Handler]] = {}

    def on(self, event: str) -> Callable[[Handler], Handler]:
        """Decorator: call this coroutine for every `event` of the persona's calls ("*": all)."""

        def register(handler: Handler) -> Handler:
            if not asyncio.iscoroutinefunction(handler):
                raise TypeError(f"{handler!r}: a hook must be an async function (event, call)")
            self.handlers.setdefault(event, []).append(handler)
            return handler

        return register

    # --- WhatsApp threads of this persona (PROTOCOL §4: whatsappPause/Resume/Send) ---------

    async def whatsapp_pause(self, *, session_id: str | int | None = None, contact: str | None = None) -> str:
        """Stop the persona's automatic answers on a thread (a human takes over); its session id."""
        return await self._whatsapp("whatsappPause", sessionId=session_id, contact=contact)

    async def whatsapp_resume(
        self, *, session_id: str | int | None = None, contact: str | None = None
    ) -> str:
        """Let the persona answer the thread again; its session id."""
        return await self._whatsapp("whatsappResume", sessionId=session_id, contact=contact)

    async def whatsapp_send(
        self, text: str, *, session_id: str | int | None = None, contact: str | None = None
    ) -> str:
        """Write on the thread as a human (`whatsapp.response` author human); its session id."""
        return await self._whatsapp("whatsappSend", sessionId=session_id, contact=contact, text=text)

    async def _whatsapp(self, action: str, **fields: Any) -> str:
        from calls.whatsapp.commands import whatsapp_command_run

        content = {"action": action, **{name: value for name, value in fields.items() if value is not None}}
        if "sessionId" in content:
            content["sessionId"] = str(content["sessionId"])
        try:
            command = command_check(content)
            frame = await whatsapp_command_run(organization_id=None, command=command, persona_slug=self.slug)
        except CommandRefused as refusal:
            raise AgentError(refusal.code, refusal.message) from None
        return frame["sessionId"]


def parley_agent(slug: str, *, answer: bool = False) -> HookAgent:
    """Hooks for this persona's calls. `answer=True`: they answer its turns (the brain waits)."""
    agent = HookAgent(slug, answer=answer)
    _AGENTS.setdefault(slug, []).append(agent)
    return agent


def hooks_clear() -> None:
    """Forget every hook (tests)."""
    _AGENTS.clear()


def hooks_answer(slug: str) -> bool:
    """Whether in-process hooks answer this persona's turns."""
    return any(agent.answer for agent in _AGENTS.get(slug, ()))


def hooks_present(slug: str) -> bool:
    return slug in _AGENTS


def hooks_load() -> None:
    """Import the modules named by `PARLEY_AGENT_MODULES` (their `parley_agent` calls register)."""
    for name in getattr(settings, "PARLEY_AGENT_MODULES", ()):
        importlib.import_module(name)
        logger.info("agent hooks loaded from %s", name)


def hooks_dispatch(*, call_id: str, slug: str, name: str, data: dict[str, Any]) -> None:
    """Hand one event to the persona's hooks, each as a task; returns at once."""
    agents = _AGENTS.get(slug)
    if not agents:
        return
    call = HookCall(call_id=call_id, agent=slug)
    event = {**data, "event": name}
    for agent in agents:
        for handler in agent.handlers.get(name, []) + agent.handlers.get("*", []):
            task = asyncio.get_running_loop().create_task(_run(handler, event, call, name))
            _RUNNING.add(task)
            task.add_done_callback(_RUNNING.discard)


async def _run(handler: Handler, event: dict[str, Any], call: HookCall, name: str) -> None:
    timeout = settings.PARLEY_AGENT_HOOK_TIMEOUT_SECONDS
    try:
        await asyncio.wait_for(handler(event, call), timeout)
    except TimeoutError:
        logger.error("agent hook %s for %s ran past %s s and was cancelled", _name(handler), name, timeout)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("agent hook %s for %s (call %s) failed", _name(handler), name, call.id)


def _name(handler: Handler) -> str:
    return getattr(handler, "__qualname__", repr(handler))


class HookCall:
    """One call, as hooks drive it: the agent API's verbs."""

    def __init__(self, *, call_id: str, agent: str) -> None:
        self.id = call_id
        self.agent = agent

    async def _run(self, action: str, **fields: Any) -> dict[str, Any]:
        """Check the command as the socket's are (its wire fields), then carry it out."""
        from calls.agents.routing import command_deliver

        content = {"action": action, "callId": self.id}
        content.update({name: value for name, value in fields.items() if value is not None})
        try:
            command = command_check(content)
        except CommandRefused as refusal:
            raise AgentError(refusal.code, refusal.message) from None
        frame = await command_deliver(organization_id=None, command=command)
        if frame.get("event") == "error":
            raise AgentError(frame.get("code", "error"), frame.get("message", ""))
        return frame

    async def say(self, text: str, *, message_id: str | None = None) -> str:
        message_id = message_id or new_message_id()
        await self._run("say", text=text, messageId=message_id)
        return message_id

    async def reply(self, text: str, *, in_reply_to: str | None = None, message_id: str | None = None) -> str:
        message_id = message_id or new_message_id()
        await self._run("reply", text=text, inReplyTo=in_reply_to, messageId=message_id)
        return message_id

    def reply_stream(
        self, *, in_reply_to: str | None = None, message_id: str | None = None
    ) -> HookReplyStream:
        return HookReplyStream(self, in_reply_to=in_reply_to, message_id=message_id or new_message_id())

    async def tool_result(self, msg_id: str, results: list[dict[str, Any]]) -> None:
        """`results`: `[{"toolCallId", "result"}]` (or `"error"`), as on the socket."""
        await self._run("toolResult", msgId=msg_id, results=results)

    async def cancel(self, message_id: str | None = None) -> None:
        await self._run("cancel", messageId=message_id)

    async def context(self, text: str) -> None:
        await self._run("context", text=text)

    async def hangup(self) -> None:
        await self._run("hangup")


class HookReplyStream:
    """`async with call.reply_stream() as stream: await stream.write(...)`: a streamed reply.

    Once Parley aborts it (`turn.continued`, an interruption, `cancel`), `aborted` is set and
    later writes are dropped; the end is sent when the block exits.
    """

    def __init__(self, call: HookCall, *, in_reply_to: str | None, message_id: str) -> None:
        self.call = call
        self.in_reply_to = in_reply_to
        self.message_id = message_id
        self.aborted = False

    async def __aenter__(self) -> HookReplyStream:
        await self.call._run("replyStream", op="start", messageId=self.message_id, inReplyTo=self.in_reply_to)
        return self

    async def write(self, text: str) -> None:
        if self.aborted or not text:
            return
        await self._send("chunk", text)

    async def _send(self, op: str, text: str) -> None:
        try:
            await self.call._run("replyStream", op=op, messageId=self.message_id, text=text)
        except AgentError as error:
            if error.code in {"stream_aborted", "call_ended"}:
                self.aborted = True
                return
            raise

    async def __aexit__(self, *exc: object) -> None:
        if not self.aborted:
            await self._send("end", "")


__all__ = ["AgentError", "CommandRefused", "HookAgent", "HookCall", "hooks_dispatch", "parley_agent"]
