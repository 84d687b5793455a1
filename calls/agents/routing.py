"""Getting an app's command to the process that holds its call, and the answer back.

A call lives in one Daphne process (its WebRTC peer, its pipeline); an app's socket may be
on another. A command for a call held here is carried out directly. Otherwise it goes
through the channel layer: every process that holds calls has one mailbox channel, added to
a group per call (`parley-call-<id>`) while it holds it, and the answer comes back to the
sender's mailbox. A call nobody holds (its process died, it ended a moment ago) answers
`call_unreachable` after `REPLY_TIMEOUT_SECONDS`. Embedded (one process, in-memory layer)
every call is local and the mailbox is never started.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer

from calls.agents.commands import Command, CommandRefused
from webapp.database import closing_connections

logger = logging.getLogger(__name__)

# How long a command sent to another process waits for its answer (seconds).
REPLY_TIMEOUT_SECONDS = 5.0


def call_group(call_id: str) -> str:
    return f"parley-call-{call_id}"


def _call_state(*, organization_id: int | None, call_id: str) -> str | None:
    """'live' (held by some process), 'whatsapp' (a WhatsApp thread's open call), 'ended', or
    None (no such call in this organization)."""
    from calls.models import Call, CallStatus, Transport

    calls = Call.objects.filter(pk=call_id)
    if organization_id is not None:
        calls = calls.filter(organization_id=organization_id)
    found = calls.values_list("status", "transport").first()
    if found is None:
        return None
    status, transport = found
    if status not in (CallStatus.CONNECTING, CallStatus.IN_PROGRESS):
        return "ended"
    return "whatsapp" if transport == Transport.WHATSAPP else "live"


async def command_deliver(*, organization_id: int | None, command: Command) -> dict[str, Any]:
    """Carry out a call command wherever its call is held; the answer frame (ack or error).

    `organization_id` None: a trusted in-process caller (hooks) that may drive any call.
    Another organization's call is answered as an unknown one: its existence is not told.
    """
    from calls.live.registry import live_session_get  # not at the top: live sessions import this

    live = live_session_get(command.call_id)
    if live is not None and (organization_id is None or live.call.organization_id == organization_id):
        return await live.control.run(command)
    state = await database_sync_to_async(closing_connections(_call_state))(
        organization_id=organization_id, call_id=command.call_id
    )
    if state is None:
        return CommandRefused(
            "unknown_call",
            f"callId: no call {command.call_id!r} in this organization",
            request_id=command.request_id,
        ).frame()
    if state == "ended":
        return CommandRefused(
            "call_ended", f"callId: the call {command.call_id} has ended", request_id=command.request_id
        ).frame()
    if state == "whatsapp":
        from calls.whatsapp.commands import whatsapp_call_command

        try:
            return await whatsapp_call_command(command=command)
        except CommandRefused as refusal:
            refusal.request_id = command.request_id
            return refusal.frame()
    return await mailbox().request(command)


class Mailbox:
    """This process's channel on the channel layer: commands for its calls, answers to its own."""

    def __init__(self) -> None:
        self.channel: str | None = None
        self._layer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._carrying_out: set[asyncio.Task[None]] = set()
        self._opening: asyncio.Lock | None = None
        self.held: set[str] = set()  # the calls whose command group this mailbox has joined

    @property
    def shared(self) -> bool:
        """Whether other processes can reach this one (a Redis layer, not the in-memory one)."""
        layer = get_channel_layer()
        return layer is not None and not isinstance(layer, InMemoryChannelLayer)

    async def _open(self) -> None:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._task is not None and not self._task.done():
                return
            self._layer = get_channel_layer()
            self.channel = await self._layer.new_channel("parley-agents.")
            self._task = asyncio.get_running_loop().create_task(self._receive(), name="agent-mailbox")

    async def call_join(self, call_id: str) -> None:
        """This process holds the call: commands sent to it reach us."""
        if not self.shared:
            return
        try:
            await self._open()
            await self._layer.group_add(call_group(call_id), self.channel)
        except Exception:  # the layer is down: apps elsewhere cannot drive it; the call goes on
            logger.warning("call %s: could not join its command group", call_id, exc_info=True)
        else:
            self.held.add(call_id)

    async def call_leave(self, call_id: str) -> None:
        self.held.discard(call_id)
        if not self.shared or self.channel is None:
            return
        try:
            await self._layer.group_discard(call_group(call_id), self.channel)
        except Exception:
            logger.warning("call %s: could not leave its command group", call_id, exc_info=True)

    async def request(self, command: Command) -> dict[str, Any]:
        """Send a command to the call's process and wait for its answer."""
        refused = CommandRefused(
            "call_unreachable",
            f"callId: the process holding call {command.call_id} did not answer; try again",
            request_id=command.request_id,
        )
        if not self.shared:
            return refused.frame()
        token = secrets.token_hex(8)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[token] = answer
        try:
            await self._open()
            await self._layer.group_send(
                call_group(command.call_id),
                {
                    "type": "agent.command",
                    "token": token,
                    "reply_to": self.channel,
                    "command": dataclasses.asdict(command),
                },
            )
            return await asyncio.wait_for(answer, REPLY_TIMEOUT_SECONDS)
        except TimeoutError:
            return refused.frame()
        except Exception:
            logger.warning("could not send a command to call %s", command.call_id, exc_info=True)
            return refused.frame()
        finally:
            self._waiting.pop(token, None)

    async def _receive(self) -> None:
        while True:
            try:
                message = await self._layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("agent mailbox: receive failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            try:
                if message.get("type") == "agent.command":
                    task = asyncio.get_running_loop().create_task(self._carry_out(message))
                    self._carrying_out.add(task)  # referenced until done (a bare task may be collected)
                    task.add_done_callback(self._carrying_out.discard)
                elif message.get("type") == "agent.reply":
                    waiting = self._waiting.get(message.get("token", ""))
                    if waiting is not None and not waiting.done():
                        waiting.set_result(message["frame"])
            except Exception:
                logger.exception("agent mailbox: a message could not be handled")

    async def _carry_out(self, message: dict[str, Any]) -> None:
        from calls.live.registry import live_session_get

        command = Command(**message["command"])
        live = live_session_get(command.call_id)
        if live is None:
            return  # not (or no longer) ours: the sender times out if nobody holds it
        try:
            frame = await live.control.run(command)
        except Exception:  # answered as a local command's failure is, not left to time out
            logger.exception("agent command %s failed", command.action)
            frame = CommandRefused(
                "unavailable",
                "the command failed on the server; nothing was done",
                request_id=command.request_id,
            ).frame()
        try:
            await self._layer.send(
                message["reply_to"], {"type": "agent.reply", "token": message["token"], "frame": frame}
            )
        except Exception:
            logger.warning("agent mailbox: could not answer a command for %s", command.call_id, exc_info=True)


_MAILBOX: Mailbox | None = None


def mailbox() -> Mailbox:
    global _MAILBOX
    if _MAILBOX is None:
        _MAILBOX = Mailbox()
    return _MAILBOX
