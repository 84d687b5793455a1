"""A live session's limits, as the seed defines them: the idle warning and check-in, the idle timeout,
the maximum duration; the events they publish and the `endsession` the browser gets.

The session is real (started through the API, with its signalling socket); its conversation is
a stand-in that "speaks" each line for a set time, reporting it as the pipeline does, so no
media is needed. Limits are short (idle timeout 2 s, warning 1 s); the assertions are about what
happened and in which order, never about how fast.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.test import APIClient

from calls.live import LiveSession, live_session_get
from calls.models import Call, CallEvent
from calls.pipeline.conversation import ConversationListener
from webapp.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

# A safety net so a call that never ends fails the test instead of hanging it (not a speed check).
CALL_END_TIMEOUT_SECONDS = 30.0
# How long the stand-in persona takes to say a line: longer than the time left after the warning,
# so a clock that the persona's voice did not pause would time out in the middle of the check-in.
LINE_SECONDS = 2.0


class SpeakingConversation:
    """Stands in for `Conversation`: says each line for LINE_SECONDS, reporting it as the pipeline
    does (bot.speaking, then bot.finished), one line after another."""

    def __init__(self, listener: ConversationListener) -> None:
        self.listener = listener
        self.said: list[str] = []
        self.typed: list[str] = []
        self.speaking = False
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        self._voice = asyncio.ensure_future(self._speak())

    async def _speak(self) -> None:
        count = 0
        while True:
            text = await self._lines.get()
            count += 1
            message_id = f"msg_fake{count}"
            self.speaking = True
            await self.listener.on_bot_speaking(message_id=message_id, text=text)
            await asyncio.sleep(LINE_SECONDS)
            self.speaking = False
            await self.listener.on_bot_finished(
                message_id=message_id, text=text, spoken=text, index=len(text.split()), correlation_id=None
            )

    def peer_ready(self) -> None:
        pass

    async def say(self, text: str) -> None:
        self.said.append(text)
        await self._lines.put(text)

    async def user_text(self, text: str) -> None:
        self.typed.append(text)

    async def interrupt(self) -> None:
        pass

    async def stop(self) -> None:
        self._voice.cancel()


def session_start(client_a: APIClient) -> str:
    token = client_a.post(
        "/v1/auth/session-token", {"personaConfig": {"personaId": "mara"}}, format="json"
    ).json()["sessionToken"]
    response = APIClient().post("/v1/engine/session", {}, format="json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    return response.json()["sessionId"]


async def connected_session(
    client_a: APIClient,
) -> tuple[LiveSession, SpeakingConversation, WebsocketCommunicator]:
    """A session as it is once ICE and DTLS are up: call.started, sessionready, the greeting."""
    session_id = await database_sync_to_async(session_start)(client_a)
    socket = WebsocketCommunicator(application, f"/ws/engine/?session_id={session_id}")
    assert (await socket.connect())[0]
    live = live_session_get(session_id)
    assert live is not None
    conversation = SpeakingConversation(live)
    live.conversation = conversation  # type: ignore[assignment]
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    started.set_result(None)
    live._conversation_started = started
    live._connected = True
    await live._on_connected()
    return live, conversation, socket


async def call_ended(session_id: str) -> Call:
    deadline = time.monotonic() + CALL_END_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        call = await database_sync_to_async(Call.objects.get)(pk=session_id)
        if call.end_reason:
            return call
        await asyncio.sleep(0.1)
    raise AssertionError("the call never ended")


@database_sync_to_async
def call_events(session_id: str) -> list[tuple[str, dict[str, Any]]]:
    return list(CallEvent.objects.filter(call_id=session_id).order_by("cursor").values_list("type", "data"))


async def idle_warning_stored(session_id: str) -> None:
    deadline = time.monotonic() + CALL_END_TIMEOUT_SECONDS
    while "session.idle_warning" not in [name for name, _ in await call_events(session_id)]:
        assert time.monotonic() < deadline, "no idle warning"
        await asyncio.sleep(0.05)


async def signals_until_endsession(socket: WebsocketCommunicator) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1]["actionType"] != "endsession":
        frames.append(await socket.receive_json_from(timeout=CALL_END_TIMEOUT_SECONDS))
    return frames


@pytest.fixture
def short_limits(persona_a, settings):
    settings.PARLEY_SESSION_STALE_SECONDS = 120.0  # no heartbeats here: only the limits may end the call
    persona_a.idle_timeout_seconds = 2
    persona_a.idle_warning_seconds = 1
    persona_a.idle_check_in = "Are you still there?"
    persona_a.save()
    return persona_a


async def test_a_silent_user_is_warned_checked_in_on_and_the_call_ends_as_idle_timeout(
    client_a, short_limits
):
    live, conversation, socket = await connected_session(client_a)

    frames = await signals_until_endsession(socket)
    call = await call_ended(live.session_id)

    assert call.end_reason == "idle_timeout"
    assert frames[-1] == {"actionType": "endsession", "sessionId": live.session_id, "payload": "idle_timeout"}
    assert conversation.said == [short_limits.greeting, "Are you still there?"]
    events = await call_events(live.session_id)
    types = [name for name, _ in events]
    assert types == [
        "call.started",
        "bot.speaking",  # the greeting
        "bot.finished",
        "message.confirmed",  # the persona's own message, committed to the conversation
        "session.idle_warning",
        "bot.speaking",  # the check-in
        "bot.finished",
        "message.confirmed",
        "session.timeout",
        "call.ended",
    ], types
    warning = events[4][1]
    assert warning["idleTimeoutSeconds"] == 2
    assert 0 < warning["remainingSeconds"] <= 1
    assert events[5][1]["text"] == "Are you still there?"
    assert events[8][1]["reason"] == "idle_timeout"
    assert events[9][1]["reason"] == "idle_timeout"
    assert live_session_get(live.session_id) is None


async def test_typed_text_resets_the_idle_clock(client_a, short_limits):
    short_limits.idle_check_in = ""  # nothing said at the warning: the persona stays quiet
    await database_sync_to_async(short_limits.save)()
    live, conversation, _socket = await connected_session(client_a)
    await idle_warning_stored(live.session_id)
    await live.user_typed("Sorry, I was reading the menu.")

    assert (await call_ended(live.session_id)).end_reason == "idle_timeout"
    types = [name for name, _ in await call_events(live.session_id)]
    # Warned again after the typed text: the clock started over from it.
    assert types[-6:] == [
        "session.idle_warning",
        "user.message",
        "turn.end",  # a typed message is a whole turn
        "session.idle_warning",
        "session.timeout",
        "call.ended",
    ]
    assert conversation.said == [short_limits.greeting]  # an empty check-in line says nothing
    assert conversation.typed == ["Sorry, I was reading the menu."]


async def test_the_users_speech_resets_the_idle_clock_and_holds_it_while_they_speak(client_a, short_limits):
    short_limits.idle_check_in = ""
    await database_sync_to_async(short_limits.save)()
    live, _conversation, _socket = await connected_session(client_a)
    await idle_warning_stored(live.session_id)

    await live.on_user_speech_started()  # voice activity, as the pipeline reports it
    await asyncio.sleep(short_limits.idle_timeout_seconds * 1.5)  # speaking longer than the idle timeout
    await live.on_user_speech_ended()

    assert (await call_ended(live.session_id)).end_reason == "idle_timeout"
    types = [name for name, _ in await call_events(live.session_id)]
    assert types[-6:] == [
        "session.idle_warning",
        "speech.started",
        "speech.ended",
        "session.idle_warning",
        "session.timeout",
        "call.ended",
    ]


async def test_an_app_that_answers_the_idle_warning_keeps_the_persona_quiet(
    client_a, short_limits, monkeypatch
):
    async def an_app_answers(self: LiveSession) -> bool:
        return True

    monkeypatch.setattr(LiveSession, "_app_answers_idle_warning", an_app_answers)
    live, conversation, _socket = await connected_session(client_a)

    assert (await call_ended(live.session_id)).end_reason == "idle_timeout"
    types = [name for name, _ in await call_events(live.session_id)]
    assert types.count("session.idle_warning") == 1
    assert conversation.said == [short_limits.greeting]


async def test_a_call_that_reaches_its_maximum_duration_ends_as_max_duration(client_a, persona_a, settings):
    settings.PARLEY_SESSION_STALE_SECONDS = 120.0
    persona_a.max_duration_seconds = 3
    await database_sync_to_async(persona_a.save)()
    live, _conversation, socket = await connected_session(client_a)

    frames = await signals_until_endsession(socket)
    call = await call_ended(live.session_id)

    assert call.end_reason == "max_duration"
    assert frames[-1]["payload"] == "max_duration"
    events = await call_events(live.session_id)
    assert [name for name, _ in events][-2:] == ["session.timeout", "call.ended"]
    assert events[-2][1]["reason"] == "max_duration"
    assert events[-1][1]["reason"] == "max_duration"
    assert "session.idle_warning" not in [name for name, _ in events]  # 60 s idle timeout by default
