"""A live session and its signalling socket: a socket that closes for good ends the call as `hangup`."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.test import APIClient

from calls.live import live_session_get
from calls.models import Call
from webapp.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

# Short enough to keep the test quick, far enough apart to tell which of the two ended the call.
GRACE_SECONDS = 1.0
STALE_SECONDS = 8.0
# A safety net so a call that never ends fails the test instead of hanging it (not a speed check).
CALL_END_TIMEOUT_SECONDS = 30.0


def session_start(client_a: APIClient) -> str:
    token = client_a.post(
        "/v1/auth/session-token", {"personaConfig": {"personaId": "mara"}}, format="json"
    ).json()["sessionToken"]
    response = APIClient().post("/v1/engine/session", {}, format="json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    return response.json()["sessionId"]


async def call_ended(session_id: str) -> Call:
    deadline = time.monotonic() + CALL_END_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        call = await database_sync_to_async(Call.objects.get)(pk=session_id)
        if call.end_reason:
            return call
        await asyncio.sleep(0.1)
    raise AssertionError("the call never ended")


async def test_a_signalling_socket_that_does_not_come_back_ends_the_call_as_hangup_after_the_grace(
    client_a, persona_a, settings
):
    settings.PARLEY_SIGNALLING_GRACE_SECONDS = GRACE_SECONDS
    settings.PARLEY_SESSION_STALE_SECONDS = STALE_SECONDS
    session_id = await database_sync_to_async(session_start)(client_a)
    socket = WebsocketCommunicator(application, f"/ws/engine/?session_id={session_id}")
    connected, _ = await socket.connect()
    assert connected
    assert live_session_get(session_id) is not None

    await socket.disconnect()
    closed_at = time.monotonic()
    call = await call_ended(session_id)
    waited = time.monotonic() - closed_at

    assert call.end_reason == "hangup"
    # Ended by the grace period, not by the staleness timeout that ends a silent session.
    assert GRACE_SECONDS <= waited < STALE_SECONDS
    assert live_session_get(session_id) is None


async def test_a_socket_that_reconnects_within_the_grace_keeps_the_call(client_a, persona_a, settings):
    settings.PARLEY_SIGNALLING_GRACE_SECONDS = GRACE_SECONDS
    settings.PARLEY_SESSION_STALE_SECONDS = STALE_SECONDS
    session_id = await database_sync_to_async(session_start)(client_a)
    first = WebsocketCommunicator(application, f"/ws/engine/?session_id={session_id}")
    assert (await first.connect())[0]
    second = WebsocketCommunicator(application, f"/ws/engine/?session_id={session_id}")
    assert (await second.connect())[0]

    await first.disconnect()  # the old socket's close comes after the new one spoke up
    await asyncio.sleep(GRACE_SECONDS * 2.5)
    call = await database_sync_to_async(Call.objects.get)(pk=session_id)
    assert not call.end_reason

    await second.disconnect()
    assert (await call_ended(session_id)).end_reason == "hangup"


async def connected_session(client_a: APIClient) -> tuple[str, WebsocketCommunicator]:
    """A session whose media is flowing, as if ICE and DTLS were up (no real peer here)."""
    session_id = await database_sync_to_async(session_start)(client_a)
    socket = WebsocketCommunicator(application, f"/ws/engine/?session_id={session_id}")
    assert (await socket.connect())[0]
    live = live_session_get(session_id)
    assert live is not None
    live._connected = True
    live.microphone.last_frame_at = time.monotonic()
    return session_id, socket


async def test_a_connected_call_whose_socket_and_media_both_stop_ends_as_hangup_after_the_grace(
    client_a, persona_a, settings
):
    settings.PARLEY_SIGNALLING_GRACE_SECONDS = GRACE_SECONDS
    settings.PARLEY_SESSION_STALE_SECONDS = STALE_SECONDS
    session_id, socket = await connected_session(client_a)

    await socket.disconnect()  # the tab closed: no socket, no more microphone packets
    closed_at = time.monotonic()
    call = await call_ended(session_id)

    assert call.end_reason == "hangup"
    assert GRACE_SECONDS <= time.monotonic() - closed_at < STALE_SECONDS


async def test_a_connected_call_whose_media_still_flows_outlives_the_grace_without_its_socket(
    client_a, persona_a, settings
):
    settings.PARLEY_SIGNALLING_GRACE_SECONDS = GRACE_SECONDS
    settings.PARLEY_SESSION_STALE_SECONDS = STALE_SECONDS
    session_id, socket = await connected_session(client_a)
    live = live_session_get(session_id)
    assert live is not None

    await socket.disconnect()  # the socket dropped, the microphone still sends (a reconnect is coming)
    for _ in range(int(GRACE_SECONDS * 3 / 0.1)):
        live.microphone.last_frame_at = time.monotonic()
        await asyncio.sleep(0.1)
    assert not (await database_sync_to_async(Call.objects.get)(pk=session_id)).end_reason

    # The media stops too: the client has gone.
    assert (await call_ended(session_id)).end_reason == "hangup"


class OpeningChannel:
    """A data channel as the session sees it: not open at first, then open; keeps what is sent."""

    label = "session"

    def __init__(self) -> None:
        self.readyState = "connecting"
        self.sent: list[dict] = []

    def send(self, payload: str) -> None:
        assert self.readyState == "open", "sent on a channel that is not open"
        self.sent.append(json.loads(payload))


async def test_data_messages_due_before_the_data_channel_opens_reach_the_client_once_it_does(
    client_a, persona_a
):
    session_id = await database_sync_to_async(session_start)(client_a)
    socket = WebsocketCommunicator(application, f"/ws/engine/?session_id={session_id}")
    connected, _ = await socket.connect()
    assert connected
    session = live_session_get(session_id)

    # The greeting's first words, due before the browser's channel has opened.
    session.send_data("speechText", {"text": "Hi,", "index": 0})
    session.send_data("speechText", {"text": " I'm", "index": 1})
    channel = OpeningChannel()
    session.channel = channel
    session.send_data("speechText", {"text": " Mara", "index": 2})  # still connecting
    channel.readyState = "open"
    session._early_data_flush()  # what the session does when the channel arrives open
    session.send_data("speechText", {"text": " here.", "index": 3})

    assert [message["data"]["text"] for message in channel.sent] == ["Hi,", " I'm", " Mara", " here."]
    assert {message["messageType"] for message in channel.sent} == {"speechText"}
    await socket.disconnect()
