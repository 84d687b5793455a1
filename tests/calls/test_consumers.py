"""Bad input on both websockets and the data channel: an error or warning back, the socket kept open."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.testing import WebsocketCommunicator

from calls.live import live_session_get
from calls.live.session import LiveSession
from calls.models import Call, CallStatus, EndReason
from personas.services import stream_token_issue
from personas.tokens import STREAM_AUDIENCE, token_encode
from webapp.asgi import application

# Generous: only a broken consumer takes this long.
RECEIVE_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 5.0
DEEP_JSON = "[" * 990 + "]" * 990

pytestmark = pytest.mark.django_db(transaction=True)


async def open_socket(path: str, headers: dict[str, str] | None = None) -> WebsocketCommunicator:
    raw = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    communicator = WebsocketCommunicator(application, path, headers=raw)
    connected, _ = await communicator.connect(RECEIVE_TIMEOUT_SECONDS)
    assert connected
    return communicator


async def closed_with(socket: WebsocketCommunicator) -> int:
    message = await socket.receive_output(RECEIVE_TIMEOUT_SECONDS)
    assert message["type"] == "websocket.close", message
    return message["code"]


# --- The event websocket --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "detail"),
    [
        (DEEP_JSON, "frame: JSON nested deeper than 32 levels"),
        ('{"type": "ping", "pad": "' + "x" * 5000 + '"}', "frame: must be at most 4096 bytes of JSON"),
        ("{nope", "frame: not valid JSON"),
        ('{"type": "\\u0000"}', "frame.type: must not contain NUL characters"),
        ('{"type": ["ping"]}', "unknown message"),
    ],
    ids=["deep", "oversized", "not-json", "nul", "typed-list"],
)
async def test_a_bad_frame_on_the_event_socket_gets_an_error_and_the_socket_stays_open(
    key_a, persona_a, frame, detail
):
    socket = await open_socket("/ws/events/", headers={"Authorization": f"Bearer {key_a}"})
    await socket.send_to(text_data=frame)
    error = await socket.receive_json_from(RECEIVE_TIMEOUT_SECONDS)
    assert error["type"] == "error" and error["detail"].startswith(detail), error
    await socket.send_json_to({"type": "ping"})
    assert await socket.receive_json_from(RECEIVE_TIMEOUT_SECONDS) == {"type": "pong"}
    await socket.disconnect()


async def test_nul_in_the_agents_parameter_is_refused_naming_it(key_a, persona_a):
    socket = await open_socket("/ws/events/?agents=mara%00", headers={"Authorization": f"Bearer {key_a}"})
    error = await socket.receive_json_from(RECEIVE_TIMEOUT_SECONDS)
    assert error["type"] == "error" and error["detail"].startswith("agents: must not contain NUL")
    assert await closed_with(socket) == 4400


async def sse_refusal(query: str) -> tuple[int, str]:
    """The status and `detail` of an event-stream request that is refused."""
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": "/v1/events/stream",
        "query_string": query.encode(),
        "headers": [(b"host", b"testserver")],
    }
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(RECEIVE_TIMEOUT_SECONDS)
    body = await communicator.receive_output(RECEIVE_TIMEOUT_SECONDS)
    await communicator.wait(CLOSE_TIMEOUT_SECONDS)
    return start["status"], json.loads(body["body"])["detail"]


async def test_nul_in_the_agents_parameter_of_the_sse_stream_is_400_naming_it(org_a, persona_a):
    token, _ = stream_token_issue(organization=org_a)
    status, detail = await sse_refusal(f"token={token}&agents=ma%00ra")
    assert (status, detail) == (400, "agents: must not contain NUL characters (\\u0000)")


@pytest.mark.parametrize("account_id", ["not-a-uuid", 7, None, ["x"], "\u0000"])
async def test_a_signed_stream_token_with_a_malformed_account_id_is_401(org_a, account_id):
    now = int(time.time())
    claims = {"type": "stream", "accountId": account_id, "jti": "j1", "iat": now, "exp": now + 60}
    token = token_encode({**claims, "aud": STREAM_AUDIENCE})
    status, detail = await sse_refusal(f"token={token}")
    assert (status, detail) == (401, "token: token is not known to this server")


# --- Unknown routes -------------------------------------------------------------------------


async def test_a_websocket_to_an_unknown_path_is_told_so_and_closed_with_4404():
    socket = await open_socket("/ws/nowhere/")
    error = await socket.receive_json_from(RECEIVE_TIMEOUT_SECONDS)
    assert error["status"] == 404 and "/ws/nowhere/" in error["detail"]
    assert await closed_with(socket) == 4404


# --- The signalling websocket ---------------------------------------------------------------


@pytest.fixture
async def signalling(make_call, persona_a):
    """A signalling socket on a fresh (connecting) session, and its live session ended after."""
    from channels.db import database_sync_to_async

    call = await database_sync_to_async(make_call)(persona_a, status=CallStatus.CONNECTING)
    socket = await open_socket(f"/ws/engine/?session_id={call.id}")
    yield socket
    await socket.disconnect()
    live: LiveSession | None = live_session_get(call.id)
    if live is not None:
        await live.end(reason=EndReason.HANGUP)


async def warning_from(socket: WebsocketCommunicator) -> str:
    frame = await socket.receive_json_from(RECEIVE_TIMEOUT_SECONDS)
    assert frame["actionType"] == "warning", frame
    return frame["payload"]


async def send_frame(socket: WebsocketCommunicator, action_type: Any, payload: Any = "") -> None:
    await socket.send_json_to({"actionType": action_type, "sessionId": "x", "payload": payload})


async def still_open(socket: WebsocketCommunicator) -> None:
    """The socket still answers: an unknown action gets its warning."""
    await send_frame(socket, "nonsense")
    assert (await warning_from(socket)).startswith("actionType: unknown 'nonsense'")


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (DEEP_JSON, "frame: JSON nested deeper than 32 levels"),
        ('{"actionType": ["offer"], "payload": ""}', "actionType: unknown 'list'"),
        ('{"actionType": {"offer": 1}, "payload": ""}', "actionType: unknown 'dict'"),
        ('{"actionType": 7, "payload": ""}', "actionType: unknown 'int'"),
        ('{"actionType": "heartbeat", "sessionId": [1], "payload": ""}', "sessionId: must be a string"),
        ("[1, 2]", "frame: must be a JSON object"),
        (
            '{"actionType": "offer", "payload": {"connectionDescription": []}}',
            "offer: payload.connectionDescription",
        ),
        (
            '{"actionType": "talkstream", "payload": {"content": 5}}',
            "talkstream: payload.content must be a string",
        ),
        (
            '{"actionType": "talkstream", "payload": {"content": "hi", "endOfSpeech": "yes"}}',
            "talkstream: payload.endOfSpeech must be true or false",
        ),
        (
            '{"actionType": "icecandidate", "payload": {"candidate": "", "sdpMLineIndex": "0"}}',
            "icecandidate: payload.sdpMLineIndex must be a whole number",
        ),
        (
            '{"actionType": "talkstream", "payload": {"content": "a\\u0000"}}',
            "frame.payload.content: must not",
        ),
        (
            '{"actionType": "talkstream", "payload": {"content": "hi", "correlationId": {"id": 1}}}',
            "talkstream: payload.correlationId must be a string",
        ),
    ],
    ids=[
        "deep",
        "action-list",
        "action-object",
        "action-number",
        "session-id-list",
        "not-an-object",
        "offer-shape",
        "talk-content",
        "talk-flag",
        "ice-index",
        "nul",
        "talk-correlation-id",
    ],
)
async def test_a_malformed_signalling_frame_gets_a_warning_and_the_socket_stays_open(
    signalling, frame, words
):
    await signalling.send_to(text_data=frame)
    assert (await warning_from(signalling)).startswith(words)
    await still_open(signalling)


async def test_ice_candidates_before_the_offer_are_refused_with_a_warning(signalling):
    candidate = "candidate:1 1 udp 2113937151 127.0.0.1 5000 typ host"
    await send_frame(signalling, "icecandidate", {"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0})
    assert (await warning_from(signalling)).startswith("icecandidate: no offer yet")


async def test_a_talk_stream_before_the_call_connects_is_refused_with_a_warning(signalling):
    await send_frame(
        signalling, "talkstream", {"content": "Hello", "endOfSpeech": True, "correlationId": "c1"}
    )
    assert (await warning_from(signalling)).startswith("talkstream: the call is not connected")


@pytest.mark.parametrize(
    "query", ["session_id=CA%00x", "session_id=" + "x" * 100, ""], ids=["nul", "long", "none"]
)
async def test_a_malformed_session_id_is_refused_naming_it_before_the_database(query):
    socket = await open_socket(f"/ws/engine/?{query}")
    frame = await socket.receive_json_from(RECEIVE_TIMEOUT_SECONDS)
    assert frame["actionType"] == "warning" and frame["payload"].startswith("session_id: must be")
    assert await closed_with(socket) == 4400


# --- The data channel -----------------------------------------------------------------------


class SignalRecorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def __call__(self, action_type: str, payload: Any) -> None:
        self.sent.append((action_type, payload))


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (DEEP_JSON, "data channel: message: JSON nested deeper than 32 levels"),
        (b"\x00\x01", "data channel: message: must be JSON text"),
        ("x" * (64 * 1024 + 1), "data channel: message: must be at most 65536 bytes"),
        ('{"message_type": ["speech"]}', "data channel: message: must be a JSON object {message_type"),
        ('{"message_type": "speech", "content": {"a": 1}}', "data channel: speech.content: must be a string"),
        (
            '{"message_type": "speech", "content": "hi\\u0000"}',
            "data channel: message.content: must not contain NUL",
        ),
    ],
    ids=["deep", "binary", "oversized", "typed-kind", "typed-content", "nul"],
)
async def test_a_bad_data_channel_message_is_answered_with_a_warning(make_call, persona_a, message, words):
    from channels.db import database_sync_to_async

    from calls.live import live_session_open

    call: Call = await database_sync_to_async(make_call)(persona_a, status=CallStatus.CONNECTING)
    live = await live_session_open(session_id=call.id)
    recorder = SignalRecorder()
    live.attach(recorder)
    try:
        await live._on_data_message(message)
        assert recorder.sent and recorder.sent[0][0] == "warning"
        assert recorder.sent[0][1].startswith(words), recorder.sent
    finally:
        await live.end(reason=EndReason.HANGUP)
    assert json.dumps(recorder.sent)  # every warning is plain JSON for the socket
