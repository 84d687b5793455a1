"""The event stream over SSE and websocket: authorisation, replay then live with no gap, filters."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from calls import events
from calls.models import Call, CallEvent
from calls.publishing import call_event_publish
from personas.services import stream_token_issue
from personas.tokens import SESSION_AUDIENCE, STREAM_AUDIENCE, token_encode
from webapp.asgi import application

# Generous: only a broken stream takes this long (the test poll interval is 1 s).
RECEIVE_TIMEOUT_SECONDS = 10.0
# Waiting for a consumer to wind down after the client went away.
CLOSE_TIMEOUT_SECONDS = 5.0

pytestmark = pytest.mark.django_db(transaction=True)


# --- Helpers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    event: str | None
    id: str | None
    data: dict[str, Any] | None
    comment: str | None = None


def parse_block(block: str) -> Frame:
    fields: dict[str, str] = {}
    comments = []
    for line in block.split("\n"):
        if line.startswith(":"):
            comments.append(line[1:])
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value
    data = json.loads(fields["data"]) if "data" in fields else None
    return Frame(
        event=fields.get("event"), id=fields.get("id"), data=data, comment="\n".join(comments) or None
    )


class SSEClient:
    """Reads a server-sent event response from the real ASGI application, chunk by chunk."""

    def __init__(
        self,
        *,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        method: str = "GET",
    ) -> None:
        raw_headers = [(b"host", b"testserver")]
        raw_headers += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": "/v1/events/stream",
            "raw_path": b"/v1/events/stream",
            "query_string": urlencode(query or {}).encode(),
            "root_path": "",
            "headers": raw_headers,
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        self.communicator = ApplicationCommunicator(application, scope)
        self.buffer = ""
        self.status: int | None = None
        self.headers: dict[str, str] = {}

    async def start(self) -> int:
        await self.communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await self.communicator.receive_output(RECEIVE_TIMEOUT_SECONDS)
        assert start["type"] == "http.response.start"
        self.status = start["status"]
        self.headers = {name.decode(): value.decode() for name, value in start["headers"]}
        return self.status

    async def error(self) -> dict[str, Any]:
        """The whole body of a response that is not a stream, as JSON."""
        body = await self.communicator.receive_output(RECEIVE_TIMEOUT_SECONDS)
        assert body["type"] == "http.response.body" and not body.get("more_body")
        await self.communicator.wait(CLOSE_TIMEOUT_SECONDS)
        return json.loads(body["body"])

    async def next_frame(self) -> Frame:
        while "\n\n" not in self.buffer:
            message = await self.communicator.receive_output(RECEIVE_TIMEOUT_SECONDS)
            assert message["type"] == "http.response.body" and message.get("more_body"), message
            self.buffer += message["body"].decode()
        block, self.buffer = self.buffer.split("\n\n", 1)
        return parse_block(block)

    async def next_event(self) -> Frame:
        """The next event frame, skipping comments (pings, which would otherwise keep it waiting)."""
        async with asyncio.timeout(RECEIVE_TIMEOUT_SECONDS):
            while True:
                frame = await self.next_frame()
                if frame.event is not None:
                    return frame

    async def events(self, count: int) -> list[Frame]:
        return [await self.next_event() for _ in range(count)]

    async def close(self) -> None:
        await self.communicator.send_input({"type": "http.disconnect"})
        await self.communicator.wait(CLOSE_TIMEOUT_SECONDS)


async def open_stream(**kwargs: Any) -> SSEClient:
    client = SSEClient(**kwargs)
    status = await client.start()
    assert status == 200, await client.error()
    return client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def publish(call: Call, event: events.Event) -> CallEvent | None:
    return await database_sync_to_async(call_event_publish)(call=call, event=event)


def said(text: str) -> events.UserMessage:
    return events.UserMessage(text=text, message_id=f"msg_{text}")


def texts(frames: list[Frame]) -> list[str]:
    return [frame.data["text"] for frame in frames if frame.data]


async def websocket(
    path: str = "/ws/events/", headers: dict[str, str] | None = None
) -> WebsocketCommunicator:
    raw = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    communicator = WebsocketCommunicator(application, path, headers=raw)
    connected, _ = await communicator.connect(RECEIVE_TIMEOUT_SECONDS)
    assert connected
    return communicator


@pytest.fixture
def call_a(make_call, persona_a) -> Call:
    return make_call(persona_a)


@pytest.fixture
def call_b(make_call, persona_b) -> Call:
    return make_call(persona_b)


@pytest.fixture
def call_lena(make_call, make_persona, org_a) -> Call:
    return make_call(make_persona(org_a, "lena"))


# --- Replay then live -------------------------------------------------------------------


async def test_sse_replays_the_kept_events_after_the_cursor_then_goes_live_with_no_gap_or_duplicate(
    key_a, call_a, monkeypatch
):
    # Small pages, so the replay takes several reads and live events land in the middle of it.
    monkeypatch.setattr("calls.streams.hub.EVENT_PAGE_SIZE", 2)
    first = await publish(call_a, said("before-0"))
    for index in range(1, 5):
        await publish(call_a, said(f"before-{index}"))
    await publish(call_a, events.BotWord(message_id="m", word="gone"))  # ephemeral: never replayed

    stream = await open_stream(query={"after": str(first.cursor)}, headers=bearer(key_a))

    async def publish_while_replaying() -> None:
        for index in range(5):
            await publish(call_a, said(f"during-{index}"))

    publisher = asyncio.create_task(publish_while_replaying())
    frames = await stream.events(9)
    await publisher
    await publish(call_a, said("after"))
    frames.append(await stream.next_event())

    expected = [f"before-{i}" for i in range(1, 5)] + [f"during-{i}" for i in range(5)] + ["after"]
    assert texts(frames) == expected
    stored = await database_sync_to_async(
        lambda: [
            str(row.cursor) for row in CallEvent.objects.filter(cursor__gt=first.cursor).order_by("cursor")
        ]
    )()
    assert [frame.id for frame in frames] == stored
    assert all(frame.event == "user.message" and frame.data["agent"] == "mara" for frame in frames)
    await stream.close()


async def test_sse_resumes_after_last_event_id_which_wins_over_the_after_parameter(key_a, call_a):
    rows = [await publish(call_a, said(f"old-{index}")) for index in range(4)]
    # An EventSource reconnects to its original URL (?after=) and adds the id it saw last.
    stream = await open_stream(
        query={"after": str(rows[0].cursor)},
        headers={**bearer(key_a), "Last-Event-ID": str(rows[2].cursor)},
    )
    assert texts([await stream.next_event()]) == ["old-3"]
    await publish(call_a, said("new"))
    assert texts([await stream.next_event()]) == ["new"]
    await stream.close()


async def test_a_stream_without_a_cursor_starts_live_from_now(key_a, call_a):
    await publish(call_a, said("history"))
    stream = await open_stream(headers=bearer(key_a))
    await publish(call_a, said("live"))
    frame = await stream.next_event()
    assert texts([frame]) == ["live"]
    assert frame.id is not None
    await stream.close()


async def test_ephemeral_events_are_delivered_live_in_order_without_an_id(key_a, call_a):
    stream = await open_stream(headers=bearer(key_a))
    speaking = await publish(call_a, events.BotSpeaking(message_id="m1", text="Hello there"))
    await publish(call_a, events.BotWord(message_id="m1", word="Hello"))
    finished = await publish(call_a, events.BotFinished(message_id="m1"))
    frames = await stream.events(3)
    assert [frame.event for frame in frames] == ["bot.speaking", "bot.word", "bot.finished"]
    assert [frame.id for frame in frames] == [str(speaking.cursor), None, str(finished.cursor)]
    assert frames[1].data == {"callId": call_a.id, "messageId": "m1", "word": "Hello", "agent": "mara"}
    await stream.close()


async def test_a_kept_event_whose_broadcast_was_lost_still_arrives_through_the_poll(key_a, call_a):
    stream = await open_stream(headers=bearer(key_a))
    # Once one event has come through, the stream's first read of the log is behind it: the
    # silent row below can only be found by a later read, and nothing rings for it.
    await publish(call_a, said("rung"))
    assert texts([await stream.next_event()]) == ["rung"]

    def insert_without_broadcast() -> CallEvent:
        # What a dropped doorbell looks like: the row is in the log, nobody rang.
        return CallEvent.objects.create(
            organization_id=call_a.organization_id,
            persona_id=call_a.persona_id,
            call_id=call_a.id,
            type="user.message",
            data={"callId": call_a.id, "text": "silent", "messageId": "msg_s", "agent": "mara"},
        )

    row = await database_sync_to_async(insert_without_broadcast)()
    frame = await stream.next_event()
    assert (frame.event, frame.id, frame.data["text"]) == ("user.message", str(row.cursor), "silent")
    await stream.close()


async def test_ping_comments_arrive_while_nothing_happens(key_a, persona_a):
    stream = await open_stream(headers=bearer(key_a))
    comments = []
    while "ping" not in comments:
        frame = await stream.next_frame()
        assert frame.event is None, "no event was published"
        comments.append(frame.comment)
    await stream.close()


async def test_the_sse_response_is_an_uncached_unbuffered_event_stream_with_cors_for_allowed_origins(
    key_a, persona_a
):
    stream = await open_stream(headers={**bearer(key_a), "Origin": "http://localhost:3000"})
    assert stream.headers["content-type"] == "text/event-stream"
    assert stream.headers["cache-control"] == "no-cache"
    assert stream.headers["x-accel-buffering"] == "no"
    assert stream.headers["access-control-allow-origin"] == "http://localhost:3000"
    await stream.close()

    stranger = await open_stream(headers={**bearer(key_a), "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in stranger.headers
    await stranger.close()


async def test_a_cors_preflight_from_an_allowed_origin_may_send_authorization_and_last_event_id():
    preflight = SSEClient(method="OPTIONS", headers={"Origin": "http://localhost:3000"})
    assert await preflight.start() == 204
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    assert "last-event-id" in preflight.headers["access-control-allow-headers"]
    await preflight.communicator.wait(CLOSE_TIMEOUT_SECONDS)


# --- Filters and tenancy ----------------------------------------------------------------


async def test_agents_parameter_narrows_the_stream_to_those_personas(key_a, call_a, call_lena):
    stream = await open_stream(query={"agents": "lena"}, headers=bearer(key_a))
    await publish(call_a, said("from-mara"))
    await publish(call_a, events.BotWord(message_id="m", word="mara-word"))
    await publish(call_lena, events.BotWord(message_id="m", word="lena-word"))
    await publish(call_lena, said("from-lena"))
    frames = await stream.events(2)
    assert [(frame.event, frame.data["agent"]) for frame in frames] == [
        ("bot.word", "lena"),
        ("user.message", "lena"),
    ]
    await stream.close()


async def test_an_organization_never_sees_another_organizations_events(key_a, call_a, call_b):
    stream = await open_stream(query={"after": "0"}, headers=bearer(key_a))
    await publish(call_b, said("beta-secret"))
    await publish(call_b, events.BotWord(message_id="m", word="beta-word"))
    await publish(call_a, said("alpha"))
    frame = await stream.next_event()
    assert texts([frame]) == ["alpha"] and frame.data["agent"] == "mara"
    await stream.close()


async def test_another_organizations_persona_in_agents_is_refused(key_a, persona_a, persona_b):
    client = SSEClient(query={"agents": "mara,otto"}, headers=bearer(key_a))
    assert await client.start() == 403
    assert (await client.error())["detail"] == (
        "agents: 'otto' is not a persona of this organization or not in the token's scope"
    )


async def test_a_stream_token_limited_to_one_persona_cannot_widen_itself(org_a, call_a, call_lena):
    token, _ = stream_token_issue(organization=org_a, agents=["mara"])
    refused = SSEClient(query={"token": token, "agents": "mara,lena"})
    assert await refused.start() == 403
    assert "'lena'" in (await refused.error())["detail"]

    stream = await open_stream(query={"token": token})
    await publish(call_lena, said("lena-only"))
    await publish(call_a, said("mara-only"))
    assert texts([await stream.next_event()]) == ["mara-only"]
    await stream.close()


# --- Refusals ---------------------------------------------------------------------------


def expired_token(org) -> str:
    now = int(time.time())
    claims = {"type": "stream", "accountId": str(org.public_id), "jti": "x", "aud": STREAM_AUDIENCE}
    return token_encode({**claims, "iat": now - 3600, "exp": now - 600})


def forged_token(org) -> str:
    now = int(time.time())
    claims = {"type": "stream", "accountId": str(org.public_id), "jti": "x", "aud": STREAM_AUDIENCE}
    claims |= {"iss": "parley", "iat": now, "exp": now + 600}
    return jwt.encode(claims, "not-the-server-key-but-long-enough-for-hs256", algorithm="HS256")


def session_audience_token(org) -> str:
    now = int(time.time())
    claims = {"type": "stream", "accountId": str(org.public_id), "jti": "x", "aud": SESSION_AUDIENCE}
    return token_encode({**claims, "iat": now, "exp": now + 600})


@pytest.mark.parametrize(
    ("credentials", "detail"),
    [
        (lambda org: {"query": {"token": expired_token(org)}}, "token: token has expired"),
        (lambda org: {"query": {"token": forged_token(org)}}, "token: token signature is invalid"),
        (
            lambda org: {"query": {"token": session_audience_token(org)}},
            "token: token is not meant for this endpoint",
        ),
        (lambda org: {"query": {"token": "not-a-jwt"}}, "token: token is malformed"),
        (lambda org: {"headers": bearer("prl_nope_" + "x" * 40)}, "API key is invalid or revoked"),
        (lambda org: {"headers": {"Authorization": "Basic abc"}}, "Authorization header must be"),
        (lambda org: {}, "credentials required"),
    ],
    ids=["expired", "forged", "wrong-audience", "malformed", "bad-key", "wrong-scheme", "none"],
)
async def test_bad_credentials_are_401_with_a_message(org_a, persona_a, credentials, detail):
    client = SSEClient(**credentials(org_a))
    assert await client.start() == 401
    assert client.headers["www-authenticate"].startswith("Bearer")
    assert (await client.error())["detail"].startswith(detail)


@pytest.mark.parametrize(
    ("query", "headers", "detail"),
    [
        ({"after": "abc"}, {}, "after: must be a non-negative integer"),
        ({"after": "-1"}, {}, "after: must be a non-negative integer"),
        ({"after": "1.5"}, {}, "after: must be a non-negative integer"),
        ({"after": "9" * 25}, {}, "after: must be a non-negative integer"),
        ({}, {"Last-Event-ID": "abc"}, "Last-Event-ID: must be a non-negative integer"),
        ({"agents": ","}, {}, "agents: give one or more persona slugs separated by commas"),
    ],
    ids=["letters", "negative", "fraction", "too-big", "last-event-id", "empty-agents"],
)
async def test_bad_parameters_are_400_naming_the_parameter(key_a, persona_a, query, headers, detail):
    client = SSEClient(query=query, headers={**bearer(key_a), **headers})
    assert await client.start() == 400
    assert (await client.error())["detail"] == detail


async def test_methods_other_than_get_are_405(key_a):
    client = SSEClient(method="POST", headers=bearer(key_a))
    assert await client.start() == 405
    assert client.headers["allow"] == "GET, OPTIONS"
    assert "use GET" in (await client.error())["detail"]


# --- Websocket --------------------------------------------------------------------------


async def test_websocket_replays_after_the_cursor_then_goes_live(key_a, call_a):
    first = await publish(call_a, said("one"))
    second = await publish(call_a, said("two"))
    socket = await websocket(f"/ws/events/?after={first.cursor}", headers=bearer(key_a))
    replayed = await socket.receive_json_from(RECEIVE_TIMEOUT_SECONDS)
    assert replayed == {"event": "user.message", "cursor": second.cursor, "data": second.data}

    third = await publish(call_a, said("three"))
    await publish(call_a, events.BotWord(message_id="m", word="hi"))
    live = await socket.receive_json_from(RECEIVE_TIMEOUT_SECONDS)
    word = await socket.receive_json_from(RECEIVE_TIMEOUT_SECONDS)
    assert live["cursor"] == third.cursor and live["data"]["text"] == "three"
    assert word["event"] == "bot.word" and word["cursor"] is None
    await socket.disconnect()


async def test_websocket_with_a_stream_token_sees_only_its_personas_and_answers_ping(
    org_a, call_a, call_lena
):
    token, _ = stream_token_issue(organization=org_a, agents=["lena"])
    socket = await websocket(f"/ws/events/?token={token}")
    await socket.send_json_to({"type": "ping"})
    assert await socket.receive_json_from(RECEIVE_TIMEOUT_SECONDS) == {"type": "pong"}
    await publish(call_a, said("mara"))
    await publish(call_lena, said("lena"))
    message = await socket.receive_json_from(RECEIVE_TIMEOUT_SECONDS)
    assert message["data"]["agent"] == "lena"
    await socket.disconnect()


@pytest.mark.parametrize(
    ("path", "headers", "code", "detail"),
    [
        ("/ws/events/", {}, 4401, "credentials required"),
        ("/ws/events/?token=forged.token.value", {}, 4401, "token:"),
        ("/ws/events/", {"Authorization": "Bearer prl_nope_" + "x" * 40}, 4401, "API key is invalid"),
        ("/ws/events/?after=-1", "key", 4400, "after: must be a non-negative integer"),
        ("/ws/events/?agents=otto", "key", 4403, "agents: 'otto' is not a persona"),
    ],
    ids=["no-credentials", "bad-token", "bad-key", "bad-cursor", "foreign-agent"],
)
async def test_websocket_refusals_send_the_reason_then_close_with_a_4xxx_code(
    key_a, persona_a, persona_b, path, headers, code, detail
):
    socket = await websocket(path, headers=bearer(key_a) if headers == "key" else headers)
    error = await socket.receive_json_from(RECEIVE_TIMEOUT_SECONDS)
    assert error["type"] == "error" and error["detail"].startswith(detail)
    closed = await socket.receive_output(RECEIVE_TIMEOUT_SECONDS)
    assert closed == {"type": "websocket.close", "code": code}
    # The server closed; the client's side of the handshake ends the consumer.
    await socket.send_input({"type": "websocket.disconnect", "code": code})
    await socket.wait(CLOSE_TIMEOUT_SECONDS)


# --- Housekeeping -----------------------------------------------------------------------


def feed_tasks(prefix: str = "event-feed-") -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith(prefix)]


async def test_closing_either_stream_leaves_no_task_behind(key_a, persona_a):
    stream = await open_stream(headers=bearer(key_a))
    socket = await websocket(headers=bearer(key_a))
    assert len(feed_tasks()) == 3  # SSE pump and keepalive, websocket pump
    assert len(feed_tasks("event-hub-")) == 3  # their organization's hub: receive, process, poll
    await stream.close()
    await socket.disconnect()
    assert feed_tasks() == []
    assert feed_tasks("event-hub-") == []
