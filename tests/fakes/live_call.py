"""A real live session without media, for the agent API's tests: its conversation is a stand-in.

`live_call_start` starts a session through the API and its signalling socket, as a browser
would, then puts an `AppDrivenConversation` on it and connects it as ICE and DTLS would. The
stand-in records what the agent API asks of the conversation (`calls.agents.control`): what
is said, streamed, aborted, interrupted, added as context, and the results of tool calls.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.test import APIClient

from calls.live import LiveSession, live_session_get
from calls.models import Call, CallEvent, EndReason
from calls.pipeline.tools import PendingToolCall
from webapp.asgi import application

# Safety nets, so a test that waits for something that never comes fails instead of hanging.
WAIT_SECONDS = 20.0


class StandInToolCalls:
    """The conversation's tool calls: only those a test puts in `pending` are waiting."""

    def __init__(self) -> None:
        self.waiting: list[PendingToolCall] = []

    @property
    def pending(self) -> list[PendingToolCall]:
        return list(self.waiting)


@dataclass
class AppDrivenConversation:
    """Stands in for `Conversation`: records each request of the agent API, speaks nothing."""

    said: list[tuple[str, str | None]] = field(default_factory=list)  # (text, message id)
    chunks: list[tuple[str, str, bool]] = field(default_factory=list)  # (message id, text, end)
    aborted: list[str] = field(default_factory=list)
    answered: int = 0  # app_answered() calls: the brain's request dropped
    interrupts: int = 0
    context: list[str] = field(default_factory=list)
    tool_results: list[dict[str, Any]] = field(default_factory=list)
    typed: list[str] = field(default_factory=list)
    tool_calls: StandInToolCalls = field(default_factory=StandInToolCalls)
    speaking: bool = False
    reply_active: bool = False
    current_message_id: str | None = None
    stopped: bool = False

    def peer_ready(self) -> None:
        pass

    async def say(self, text: str, *, message_id: str | None = None) -> None:
        self.said.append((text, message_id))

    async def talk_stream_chunk(
        self, *, content: str, end_of_speech: bool, correlation_id: str, message_id: str | None = None
    ) -> None:
        self.chunks.append((message_id or correlation_id, content, end_of_speech))

    async def talk_stream_abort(self, correlation_id: str) -> None:
        self.aborted.append(correlation_id)

    def app_answered(self) -> None:
        self.answered += 1

    async def interrupt(self) -> None:
        self.interrupts += 1

    async def add_context(self, text: str) -> None:
        self.context.append(text)

    async def tool_result(
        self, *, tool_call_id: str, result: Any, error: Any, kind: str | None = None
    ) -> bool:
        self.tool_results.append(
            {"tool_call_id": tool_call_id, "result": result, "error": error, "kind": kind}
        )
        self.tool_calls.waiting = [
            call for call in self.tool_calls.waiting if call.tool_call_id != tool_call_id
        ]
        return True

    async def user_text(self, text: str) -> None:
        self.typed.append(text)

    async def stop(self) -> None:
        self.stopped = True

    def app_text(self, message_id: str) -> str:
        """All a stream spoke, in order."""
        return "".join(text for stream, text, _ in self.chunks if stream == message_id)

    def snapshot(self) -> dict[str, Any]:
        """What the conversation was asked so far, to compare before and after a command."""
        return {
            "said": list(self.said),
            "chunks": list(self.chunks),
            "aborted": list(self.aborted),
            "answered": self.answered,
            "interrupts": self.interrupts,
            "context": list(self.context),
            "tool_results": list(self.tool_results),
        }


@dataclass
class LiveCall:
    live: LiveSession
    conversation: AppDrivenConversation
    signalling: WebsocketCommunicator

    @property
    def id(self) -> str:
        return self.live.session_id

    async def close(self) -> None:
        await self.live.end(reason=EndReason.HANGUP)
        await self.signalling.disconnect()


def _session_start(client: APIClient, persona_slug: str) -> str:
    token = client.post(
        "/v1/auth/session-token", {"personaConfig": {"personaId": persona_slug}}, format="json"
    ).json()["sessionToken"]
    response = APIClient().post("/v1/engine/session", {}, format="json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    return response.json()["sessionId"]


async def live_call_start(client: APIClient, persona_slug: str) -> LiveCall:
    """A session as it is once ICE and DTLS are up (call.started, sessionready, the greeting)."""
    session_id = await database_sync_to_async(_session_start)(client, persona_slug)
    signalling = WebsocketCommunicator(application, f"/ws/engine/?session_id={session_id}")
    assert (await signalling.connect(WAIT_SECONDS))[0]
    live = live_session_get(session_id)
    assert live is not None
    conversation = AppDrivenConversation()
    live.conversation = conversation  # type: ignore[assignment]
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    started.set_result(None)
    live._conversation_started = started
    live._connected = True
    await live._on_connected()
    return LiveCall(live=live, conversation=conversation, signalling=signalling)


@database_sync_to_async
def call_events(call_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The call's stored log, oldest first: (type, data)."""
    return list(CallEvent.objects.filter(call_id=call_id).order_by("cursor").values_list("type", "data"))


@database_sync_to_async
def call_state(call_id: str) -> tuple[str, str]:
    call = Call.objects.get(pk=call_id)
    return call.status, call.end_reason


async def call_ended(call_id: str) -> Call:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        call = await database_sync_to_async(Call.objects.get)(pk=call_id)
        if call.end_reason:
            return call
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {call_id} never ended")


async def eventually(condition: Any, what: str) -> None:
    """Wait until `condition()` is true (a safety net, not a speed check)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)
