"""The agent websocket (`/ws/agent/`, PROTOCOL §4): bad input refused, subscribe, and the Call API.

Commands drive a real live session whose conversation is a stand-in (`tests.fakes.live_call`),
so no media is needed: what a command asked of the conversation, what went over the socket,
and what is now in the call's stored log are all checked. Waits are safety nets, never speed
checks.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from calls import events
from calls.agents import presence, routing
from calls.agents.commands import MAX_FRAME_BYTES, MAX_TEXT_CHARS, Command
from calls.models import Call, CallEvent, CallStatus, EndReason
from calls.pipeline.tools import PendingToolCall
from calls.publishing import call_event_publish
from tests.fakes.live_call import (
    LiveCall,
    call_ended,
    call_events,
    call_state,
    eventually,
    live_call_start,
)
from webapp.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

# Generous: only a broken consumer takes this long.
RECEIVE_TIMEOUT_SECONDS = 10.0
DEEP_JSON = "[" * 990 + "]" * 990


class AgentSocket:
    """An app's socket: commands answered by requestId, events kept aside as they come."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.events: list[dict[str, Any]] = []  # event frames read but not yet taken
        self._count = 0

    async def frame(self) -> dict[str, Any]:
        return await self.communicator.receive_json_from(RECEIVE_TIMEOUT_SECONDS)

    async def send_raw(self, text: str | None = None, data: bytes | None = None) -> None:
        await self.communicator.send_to(text_data=text, bytes_data=data)

    async def command(self, action: str, **fields: Any) -> dict[str, Any]:
        """Send one command; its answer (ack or error). Events meanwhile are kept in `events`."""
        self._count += 1
        request_id = f"rq{self._count}"
        await self.communicator.send_json_to({"action": action, "requestId": request_id, **fields})
        return await self.answer(request_id)

    async def answer(self, request_id: str | None) -> dict[str, Any]:
        async with asyncio.timeout(RECEIVE_TIMEOUT_SECONDS):
            while True:
                frame = await self.frame()
                if frame["event"] in {"ack", "error"} and frame.get("requestId") == request_id:
                    return frame
                self.events.append(frame)

    async def event(self, name: str) -> dict[str, Any]:
        """The next event of this name (those of other names before it are skipped)."""
        async with asyncio.timeout(RECEIVE_TIMEOUT_SECONDS):
            while True:
                while self.events:
                    frame = self.events.pop(0)
                    if frame["event"] == name:
                        return frame
                self.events.append(await self.frame())

    async def close(self) -> None:
        await self.communicator.disconnect()


async def agent_socket(headers: dict[str, str]) -> AgentSocket:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    communicator = WebsocketCommunicator(application, "/ws/agent/", headers=raw)
    connected, _ = await communicator.connect(RECEIVE_TIMEOUT_SECONDS)
    assert connected
    return AgentSocket(communicator)


@pytest.fixture
async def app(key_a):
    socket = await agent_socket({"Authorization": f"Bearer {key_a}"})
    yield socket
    await socket.close()


@pytest.fixture
def quiet_limits(settings):
    # No heartbeats here: nothing but the test may end a call.
    settings.PARLEY_SESSION_STALE_SECONDS = 120.0


@pytest.fixture
async def mara_call(client_a, persona_a, quiet_limits):
    call = await live_call_start(client_a, "mara")
    yield call
    await call.close()


@pytest.fixture
async def otto_call(client_b, persona_b, quiet_limits):
    call = await live_call_start(client_b, "otto")
    yield call
    await call.close()


async def unchanged_state(call: LiveCall) -> tuple[Any, ...]:
    """All a refused command must leave as it was: the stored log, the call row, the conversation."""
    return (await call_events(call.id), await call_state(call.id), call.conversation.snapshot())


async def still_usable(app: AgentSocket, call: LiveCall) -> None:
    """The socket still carries commands: a say goes through to the conversation."""
    answer = await app.command("say", callId=call.id, text="Still here.")
    assert answer["event"] == "ack", answer
    assert call.conversation.said[-1][0] == "Still here."


def error_frame(frame: dict[str, Any]) -> dict[str, Any]:
    assert set(frame) == {"event", "requestId", "code", "message"}, frame
    assert frame["event"] == "error", frame
    return frame


# --- Bad input: an error naming the field; the socket, the call and its log unchanged -----------


def _bad_frames(call_id: str) -> dict[str, tuple[str | bytes, str, str, str | None]]:
    """id: (frame, code, start of the message, requestId echoed)."""

    def frame(**fields: Any) -> str:
        return json.dumps(fields)

    return {
        "not-json": ("{nope", "invalid_json", "frame: not valid JSON", None),
        "binary": (b'{"action": "say"}', "invalid_frame", "frame: must be JSON text, not binary", None),
        "not-an-object": ('["say", "hello"]', "invalid_frame", "frame: must be a JSON object", None),
        "unknown-action": (
            frame(action="dance", requestId="r1"),
            "unknown_action",
            "action: 'dance' is not one of subscribe, say",
            "r1",
        ),
        "missing-action": (frame(requestId="r2", callId=call_id), "invalid_field", "action: required", "r2"),
        "request-id-list": (
            frame(action="say", requestId=["r"], callId=call_id, text="hi"),
            "invalid_field",
            "requestId: must be a string",
            None,
        ),
        "call-id-number": (
            frame(action="say", requestId="r3", callId=42, text="hi"),
            "invalid_field",
            "callId: must be a string",
            "r3",
        ),
        "text-list": (
            frame(action="say", requestId="r4", callId=call_id, text=["hi"]),
            "invalid_field",
            "text: must be a string",
            "r4",
        ),
        "text-too-long": (
            frame(action="say", requestId="r5", callId=call_id, text="x" * (MAX_TEXT_CHARS + 1)),
            "invalid_field",
            f"text: at most {MAX_TEXT_CHARS} characters",
            "r5",
        ),
        "answer-string": (
            frame(action="subscribe", requestId="r6", answer="yes"),
            "invalid_field",
            "answer: must be true or false",
            "r6",
        ),
        "after-negative": (
            frame(action="subscribe", requestId="r7", after=-1),
            "invalid_field",
            "after: must be a cursor",
            "r7",
        ),
        "agents-not-a-list": (
            frame(action="subscribe", requestId="r8", agents="mara"),
            "invalid_field",
            "agents: must be a list of persona slugs",
            "r8",
        ),
        "huge": (
            frame(action="say", requestId="r9", callId=call_id, text="x" * MAX_FRAME_BYTES),
            "frame_too_large",
            f"frame: must be at most {MAX_FRAME_BYTES} bytes",
            None,
        ),
        "nul-in-text": (
            frame(action="say", requestId="r10", callId=call_id, text="a\u0000b"),
            "invalid_field",
            "text: must not contain NUL characters",
            "r10",
        ),
        "nul-in-request-id": (
            frame(action="say", requestId="r\u0000", callId=call_id, text="hi"),
            "invalid_field",
            "requestId: must not contain NUL characters",
            None,
        ),
        "deep": (DEEP_JSON, "invalid_json", "frame: JSON nested deeper than 32 levels", None),
        "unknown-call": (
            frame(action="say", requestId="r11", callId="CAnowhere", text="hi"),
            "unknown_call",
            "callId: no call 'CAnowhere' in this organization",
            "r11",
        ),
        "stream-never-started": (
            frame(
                action="replyStream",
                requestId="r12",
                callId=call_id,
                messageId="msg_never",
                op="chunk",
                text="hi",
            ),
            "unknown_stream",
            "messageId: no stream 'msg_never' was started",
            "r12",
        ),
        "unknown-tool-call": (
            frame(
                action="toolResult",
                requestId="r13",
                callId=call_id,
                msgId="msg_tools",
                results=[{"toolCallId": "call_unknown", "result": {"ok": True}}],
            ),
            "unknown_tool_call",
            "results.toolCallId: 'call_unknown' is not a server tool call waiting",
            "r13",
        ),
        "reply-to-unknown-message": (
            frame(action="reply", requestId="r14", callId=call_id, text="Yes.", inReplyTo="msg_unknown"),
            "unknown_message",
            "inReplyTo: no user message 'msg_unknown' on this call",
            "r14",
        ),
        "stream-op-unknown": (
            frame(action="replyStream", requestId="r15", callId=call_id, messageId="msg_s", op="pause"),
            "invalid_field",
            "op: must be one of start, chunk, end",
            "r15",
        ),
    }


BAD_FRAME_IDS = list(_bad_frames("x"))


@pytest.mark.parametrize("case", BAD_FRAME_IDS)
async def test_bad_input_gets_an_error_naming_the_field_and_changes_nothing(app, mara_call, case):
    raw, code, message, request_id = _bad_frames(mara_call.id)[case]
    before = await unchanged_state(mara_call)

    if isinstance(raw, bytes):
        await app.send_raw(data=raw)
    else:
        await app.send_raw(text=raw)
    error = error_frame(await app.frame())

    assert error["code"] == code, error
    assert error["message"].startswith(message), error
    assert error["requestId"] == request_id
    assert await unchanged_state(mara_call) == before
    await still_usable(app, mara_call)


async def test_a_chunk_after_its_streams_end_is_refused(app, mara_call):
    start = {"callId": mara_call.id, "messageId": "msg_done"}
    assert (await app.command("replyStream", **start, op="start", text="All done."))["event"] == "ack"
    assert (await app.command("replyStream", **start, op="end"))["event"] == "ack"
    before = await unchanged_state(mara_call)

    error = error_frame(await app.command("replyStream", **start, op="chunk", text=" And more."))

    assert error["code"] == "stream_ended"
    assert error["message"] == "messageId: the stream 'msg_done' has ended"
    assert await unchanged_state(mara_call) == before
    await still_usable(app, mara_call)


async def test_a_command_for_an_ended_call_is_refused_as_call_ended(app, make_call, persona_a):
    call = await database_sync_to_async(make_call)(
        persona_a, status=CallStatus.ENDED, end_reason=EndReason.HANGUP
    )

    error = error_frame(await app.command("say", callId=call.id, text="Hello?"))

    assert (error["code"], error["message"]) == ("call_ended", f"callId: the call {call.id} has ended")
    assert await call_events(call.id) == []


async def test_another_organizations_call_is_answered_as_unknown_and_left_alone(app, mara_call, otto_call):
    before = await unchanged_state(otto_call)

    foreign = error_frame(await app.command("say", callId=otto_call.id, text="Hi from Alpha."))
    hangup = error_frame(await app.command("hangup", callId=otto_call.id))
    unknown = error_frame(await app.command("say", callId="CAnowhere", text="Hi."))

    # Told exactly as a call that does not exist: nothing says it is live, or whose it is.
    assert foreign["code"] == hangup["code"] == unknown["code"] == "unknown_call"
    assert foreign["message"] == f"callId: no call {otto_call.id!r} in this organization"
    assert unknown["message"] == "callId: no call 'CAnowhere' in this organization"
    assert await unchanged_state(otto_call) == before
    assert not otto_call.live.ended
    await still_usable(app, mara_call)


async def test_another_organizations_stored_call_is_answered_as_unknown(app, make_call, persona_b):
    call = await database_sync_to_async(make_call)(persona_b, status=CallStatus.IN_PROGRESS)

    error = error_frame(await app.command("context", callId=call.id, text="Psst."))

    assert (error["code"], error["message"]) == (
        "unknown_call",
        f"callId: no call {call.id!r} in this organization",
    )


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Authorization": "Bearer prl_nope_" + "x" * 40}, "the API key is invalid or revoked"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "Authorization header must be 'Bearer <API key>'"),
        ({}, "Authorization header must be 'Bearer <API key>'"),
    ],
    ids=["bad-key", "not-bearer", "no-header"],
)
async def test_a_socket_without_a_valid_api_key_gets_an_error_then_close_4401(headers, message, mara_call):
    socket = await agent_socket(headers)

    error = error_frame(await socket.frame())
    closed = await socket.communicator.receive_output(RECEIVE_TIMEOUT_SECONDS)

    assert (error["code"], error["message"], error["requestId"]) == ("unauthorized", message, None)
    assert closed == {"type": "websocket.close", "code": 4401}
    await socket.communicator.send_input({"type": "websocket.disconnect", "code": 4401})
    await socket.communicator.wait(RECEIVE_TIMEOUT_SECONDS)
    assert mara_call.conversation.said == [("Hello, I'm Mara.", None)]  # the greeting only


async def test_a_command_that_fails_on_the_server_is_answered_unavailable_and_the_socket_stays(
    app, mara_call, monkeypatch
):
    async def broken(text: str) -> None:
        raise RuntimeError("the pipeline is gone")

    monkeypatch.setattr(mara_call.conversation, "add_context", broken)

    error = error_frame(await app.command("context", callId=mara_call.id, text="Psst."))

    assert (error["code"], error["message"]) == (
        "unavailable",
        "the command failed on the server; nothing was done",
    )
    await still_usable(app, mara_call)


# --- subscribe: replay after the cursor, then live ----------------------------------------------


async def publish(call: Call, event: events.Event) -> CallEvent:
    row = await database_sync_to_async(call_event_publish)(call=call, event=event)
    assert row is not None
    return row


def said(text: str) -> events.UserMessage:
    return events.UserMessage(text=text, message_id=f"msg_{text}")


@pytest.fixture
def call_a(make_call, persona_a) -> Call:
    return make_call(persona_a)


@pytest.fixture
def call_lena(make_call, make_persona, org_a) -> Call:
    return make_call(make_persona(org_a, "lena"))


def event_frames(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for frame in frames:
        assert set(frame) == {"event", "id", "data"}, frame
    return frames


async def test_subscribe_replays_after_the_cursor_then_goes_live_with_no_gap_or_duplicate(
    app, call_a, monkeypatch
):
    # Small pages, so the replay takes several reads and live events land in the middle of it.
    monkeypatch.setattr("calls.streams.hub.EVENT_PAGE_SIZE", 2)
    first = await publish(call_a, said("before-0"))
    for index in range(1, 5):
        await publish(call_a, said(f"before-{index}"))

    await app.communicator.send_json_to({"action": "subscribe", "requestId": "s1", "after": first.cursor})
    ack = await app.frame()
    assert ack == {"event": "ack", "requestId": "s1", "cursor": first.cursor}

    async def publish_while_replaying() -> None:
        for index in range(5):
            await publish(call_a, said(f"during-{index}"))

    publisher = asyncio.create_task(publish_while_replaying())
    frames = [await app.frame() for _ in range(9)]
    await publisher
    await publish(call_a, said("after"))
    frames.append(await app.frame())

    expected = [f"before-{i}" for i in range(1, 5)] + [f"during-{i}" for i in range(5)] + ["after"]
    assert [frame["data"]["text"] for frame in event_frames(frames)] == expected
    stored = await database_sync_to_async(
        lambda: list(
            CallEvent.objects.filter(cursor__gt=first.cursor)
            .order_by("cursor")
            .values_list("cursor", flat=True)
        )
    )()
    assert [frame["id"] for frame in frames] == stored
    for frame in frames:
        assert frame["event"] == "user.message"
        assert frame["data"]["callId"] == call_a.id and frame["data"]["agent"] == "mara"


async def test_the_ack_carries_the_cursor_a_reconnecting_app_resumes_from(app, key_a, call_a):
    await publish(call_a, said("history"))
    latest = await publish(call_a, said("latest"))

    ack = await app.command("subscribe")
    assert ack["cursor"] == latest.cursor  # live from now: nothing before it is replayed
    live = await publish(call_a, said("live"))
    frame = await app.event("user.message")
    assert (frame["id"], frame["data"]["text"]) == (live.cursor, "live")
    ephemeral = events.BotWord(message_id="msg_1", word="Hello")
    await database_sync_to_async(call_event_publish)(call=call_a, event=ephemeral)
    word = await app.event("bot.word")
    assert word["id"] is None and word["data"]["word"] == "Hello"

    missed = await publish(call_a, said("missed"))
    again = await agent_socket({"Authorization": f"Bearer {key_a}"})
    resumed = await again.command("subscribe", after=frame["id"])
    assert resumed["cursor"] == frame["id"]
    replayed = await again.event("user.message")
    assert (replayed["id"], replayed["data"]["text"]) == (missed.cursor, "missed")
    await again.close()


async def test_a_second_subscribe_replaces_the_first(app, call_a, call_lena):
    assert (await app.command("subscribe", agents=["mara"]))["event"] == "ack"
    await publish(call_a, said("mara-1"))
    assert (await app.event("user.message"))["data"]["text"] == "mara-1"

    assert (await app.command("subscribe", agents=["lena"]))["event"] == "ack"
    await publish(call_a, said("mara-2"))
    await publish(call_lena, said("lena-1"))

    frame = await app.event("user.message")
    assert (frame["data"]["agent"], frame["data"]["text"]) == ("lena", "lena-1")
    pumps = [task for task in asyncio.all_tasks() if task.get_name() == "event-feed-pump"]
    assert len(pumps) == 1  # the first feed is gone, not merely filtered
    await asyncio.sleep(0.5)  # anything the first feed would still send
    await publish(call_lena, said("lena-2"))
    following = await app.event("user.message")
    assert following["data"]["text"] == "lena-2"
    assert all(frame["data"].get("agent") != "mara" for frame in app.events)


async def test_subscribing_to_another_organizations_persona_is_refused_and_keeps_the_feed(
    app, call_a, persona_b
):
    assert (await app.command("subscribe", agents=["mara"]))["event"] == "ack"

    error = error_frame(await app.command("subscribe", agents=["mara", "otto"]))

    assert error["code"] == "unknown_agent"
    assert error["message"] == "agents: 'otto' is not a persona of this organization"
    await publish(call_a, said("still-subscribed"))
    assert (await app.event("user.message"))["data"]["text"] == "still-subscribed"


# --- Control semantics on a live call -----------------------------------------------------------


async def user_says(app: AgentSocket, call: LiveCall, text: str) -> str:
    """The user's final words, as the pipeline reports them; the id the app sees."""
    await call.live.on_user_message(text=text)
    frame = await app.event("user.message")
    assert frame["data"]["text"] == text
    return frame["data"]["messageId"]


def stored(log: list[tuple[str, dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    return [data for event, data in log if event == name]


async def test_a_reply_to_an_older_message_is_rejected_with_an_error_and_a_stored_event(app, mara_call):
    await app.command("subscribe", agents=["mara"])
    first = await user_says(app, mara_call, "Do you have rye?")
    latest = await user_says(app, mara_call, "Actually, do you have spelt?")

    error = error_frame(await app.command("reply", callId=mara_call.id, text="Yes, rye.", inReplyTo=first))

    assert error["code"] == "reply_rejected"
    assert error["message"].startswith("inReplyTo: a newer user message came") and latest in error["message"]
    rejected = stored(await call_events(mara_call.id), "reply.rejected")
    assert len(rejected) == 1
    assert rejected[0]["inReplyTo"] == first and rejected[0]["reason"]
    seen = await app.event("reply.rejected")
    assert seen["data"]["messageId"] == rejected[0]["messageId"]
    assert all(text != "Yes, rye." for text, _ in mara_call.conversation.said)

    answer = await app.command("reply", callId=mara_call.id, text="Yes, spelt.", inReplyTo=latest)
    assert answer["event"] == "ack"
    assert mara_call.conversation.said[-1][0] == "Yes, spelt."


async def test_say_and_reply_are_confirmed_at_once(app, mara_call):
    await app.command("subscribe", agents=["mara"])
    await user_says(app, mara_call, "Hello?")

    said_answer = await app.command("say", callId=mara_call.id, text="One moment.", messageId="msg_say")
    stored_after_say = stored(await call_events(mara_call.id), "message.confirmed")
    reply_answer = await app.command(
        "reply", callId=mara_call.id, text="We open at seven.", messageId="msg_reply"
    )

    assert said_answer["event"] == reply_answer["event"] == "ack"
    # Stored before the ack: an app that reads the log after its ack finds it there.
    assert stored_after_say == [
        {"callId": mara_call.id, "messageId": "msg_say", "text": "One moment.", "agent": "mara"}
    ]
    confirmed = stored(await call_events(mara_call.id), "message.confirmed")
    assert [(data["messageId"], data["text"]) for data in confirmed] == [
        ("msg_say", "One moment."),
        ("msg_reply", "We open at seven."),
    ]
    assert mara_call.conversation.said[-2:] == [
        ("One moment.", "msg_say"),
        ("We open at seven.", "msg_reply"),
    ]
    assert mara_call.conversation.answered == 1  # a reply, not a say, answers the turn


async def test_a_stream_is_spoken_as_it_comes_and_confirmed_at_its_end_with_the_whole_text(app, mara_call):
    stream = {"callId": mara_call.id, "messageId": "msg_stream"}

    for op, text in [
        ("start", ""),
        ("chunk", "Our rye "),
        ("chunk", "comes out at six. "),
        ("chunk", "Come early!"),
    ]:
        assert (await app.command("replyStream", **stream, op=op, text=text))["event"] == "ack"
    assert stored(await call_events(mara_call.id), "message.confirmed") == []
    assert mara_call.conversation.app_text("msg_stream") == "Our rye comes out at six. Come early!"
    assert (await app.command("replyStream", **stream, op="end"))["event"] == "ack"

    confirmed = stored(await call_events(mara_call.id), "message.confirmed")
    assert [(data["messageId"], data["text"]) for data in confirmed] == [
        ("msg_stream", "Our rye comes out at six. Come early!")
    ]
    assert mara_call.conversation.chunks[-1] == ("msg_stream", "", True)
    assert mara_call.conversation.answered == 1


async def test_turn_continued_aborts_an_open_stream_and_its_later_chunks_are_refused(app, mara_call):
    stream = {"callId": mara_call.id, "messageId": "msg_cut"}
    await app.command("replyStream", **stream, op="start", text="Well, ")

    await mara_call.live.on_turn_continued()
    error = error_frame(await app.command("replyStream", **stream, op="chunk", text="as I was saying."))

    assert error["code"] == "stream_aborted"
    assert error["message"] == "messageId: the stream was aborted (turn.continued); its text is ignored"
    assert mara_call.conversation.aborted == ["msg_cut"]
    assert mara_call.conversation.app_text("msg_cut") == "Well, "
    log = await call_events(mara_call.id)
    assert stored(log, "reply.aborted") == [
        {"callId": mara_call.id, "messageId": "msg_cut", "reason": "turn.continued", "agent": "mara"}
    ]
    assert stored(log, "message.confirmed") == []
    end = error_frame(await app.command("replyStream", **stream, op="end"))
    assert end["code"] == "stream_aborted"


async def test_during_an_eager_turn_stream_text_waits_for_the_turn_end(app, mara_call):
    stream = {"callId": mara_call.id, "messageId": "msg_eager"}
    await mara_call.live.on_eager_turn(text="When do you open", probability=0.7)

    await app.command("replyStream", **stream, op="start")
    await app.command("replyStream", **stream, op="chunk", text="At seven, ")
    await app.command("replyStream", **stream, op="chunk", text="every day.")
    assert mara_call.conversation.chunks == []  # the turn may not be over: nothing is heard yet

    await mara_call.live.on_turn_end(text="When do you open?", probability=0.95)
    assert mara_call.conversation.app_text("msg_eager") == "At seven, every day."
    await app.command("replyStream", **stream, op="end")
    assert mara_call.conversation.chunks[-1] == ("msg_eager", "", True)


async def test_a_stream_ended_during_an_eager_turn_is_spoken_whole_at_the_turn_end(app, mara_call):
    stream = {"callId": mara_call.id, "messageId": "msg_eager_end"}
    await mara_call.live.on_eager_turn(text="Open on Sunday", probability=0.7)

    await app.command("replyStream", **stream, op="start", text="Yes, ")
    await app.command("replyStream", **stream, op="end", text="until noon.")
    assert mara_call.conversation.chunks == []

    await mara_call.live.on_turn_end(text="Open on Sunday?", probability=0.95)
    assert mara_call.conversation.chunks == [("msg_eager_end", "Yes, until noon.", True)]


async def test_a_stream_ended_during_an_eager_turn_is_dropped_if_the_user_goes_on(app, mara_call):
    stream = {"callId": mara_call.id, "messageId": "msg_withdrawn"}
    await mara_call.live.on_eager_turn(text="And on", probability=0.6)
    await app.command("replyStream", **stream, op="start", text="Sunday? ")
    await app.command("replyStream", **stream, op="end", text="Yes.")

    await mara_call.live.on_turn_continued()
    await mara_call.live.on_eager_turn(text="And on Monday", probability=0.9)
    await mara_call.live.on_turn_end(text="And on Monday?", probability=0.95)

    # Its answer was to words the user went on from: never heard, not at the next turn either.
    assert mara_call.conversation.app_text("msg_withdrawn") == ""
    aborted = stored(await call_events(mara_call.id), "reply.aborted")
    assert [(data["messageId"], data["reason"]) for data in aborted] == [("msg_withdrawn", "turn.continued")]


async def test_cancel_aborts_an_open_stream(app, mara_call):
    stream = {"callId": mara_call.id, "messageId": "msg_cancel"}
    await app.command("replyStream", **stream, op="start", text="Let me think. ")

    assert (await app.command("cancel", callId=mara_call.id, messageId="msg_cancel"))["event"] == "ack"

    assert mara_call.conversation.aborted == ["msg_cancel"]
    aborted = stored(await call_events(mara_call.id), "reply.aborted")
    assert aborted == [
        {"callId": mara_call.id, "messageId": "msg_cancel", "reason": "cancelled", "agent": "mara"}
    ]
    assert (
        error_frame(await app.command("replyStream", **stream, op="chunk", text="Hm."))["code"]
        == "stream_aborted"
    )


async def test_an_interruption_aborts_the_stream_it_cut(app, mara_call):
    stream = {"callId": mara_call.id, "messageId": "msg_interrupted"}
    await app.command("replyStream", **stream, op="start", text="Our opening hours are ")

    await mara_call.live.on_talk_stream_interrupted(correlation_id="msg_interrupted")

    aborted = stored(await call_events(mara_call.id), "reply.aborted")
    assert [(data["messageId"], data["reason"]) for data in aborted] == [("msg_interrupted", "interrupted")]
    assert mara_call.conversation.aborted == []  # the voice was stopped by the interruption itself
    assert (
        error_frame(await app.command("replyStream", **stream, op="chunk", text="x"))["code"]
        == "stream_aborted"
    )


async def test_tool_result_and_context_reach_the_conversation(app, mara_call):
    waiting = PendingToolCall(
        tool_call_id="call_1", name="opening_hours", kind="server", arguments={}, message_id="msg_tools"
    )
    mara_call.conversation.tool_calls.waiting.append(waiting)

    wrong_batch = error_frame(
        await app.command(
            "toolResult",
            callId=mara_call.id,
            msgId="msg_other",
            results=[{"toolCallId": "call_1", "result": 1}],
        )
    )
    answer = await app.command(
        "toolResult",
        callId=mara_call.id,
        msgId="msg_tools",
        results=[{"toolCallId": "call_1", "result": "7-19"}],
    )
    context = await app.command("context", callId=mara_call.id, text="The visitor is a regular.")

    assert wrong_batch["code"] == "unknown_tool_call" and mara_call.conversation.tool_results[:-1] == []
    assert answer["event"] == context["event"] == "ack"
    assert mara_call.conversation.tool_results == [
        {"tool_call_id": "call_1", "result": "7-19", "error": None, "kind": "server"}
    ]
    assert mara_call.conversation.context == ["The visitor is a regular."]


async def test_hangup_ends_the_call_with_reason_hangup(app, mara_call):
    answer = await app.command("hangup", callId=mara_call.id)
    call = await call_ended(mara_call.id)

    assert answer["event"] == "ack"
    assert call.end_reason == "hangup" and call.status == CallStatus.ENDED
    assert stored(await call_events(mara_call.id), "call.ended")[0]["reason"] == "hangup"
    await eventually(lambda: mara_call.conversation.stopped, "the conversation stopped")
    after = error_frame(await app.command("say", callId=mara_call.id, text="Bye?"))
    assert after["code"] == "call_ended"


async def test_streams_open_when_the_call_ends_are_aborted_as_call_ended(app, mara_call):
    await app.command("replyStream", callId=mara_call.id, messageId="msg_open", op="start", text="So ")

    await app.command("hangup", callId=mara_call.id)
    await call_ended(mara_call.id)

    aborted = stored(await call_events(mara_call.id), "reply.aborted")
    assert [(data["messageId"], data["reason"]) for data in aborted] == [("msg_open", "call_ended")]


async def test_an_answering_app_is_seen_by_the_call_and_forgotten_when_it_leaves(key_a, mara_call):
    socket = await agent_socket({"Authorization": f"Bearer {key_a}"})
    assert (await socket.command("subscribe", agents=["mara"], answer=True))["event"] == "ack"
    await eventually(lambda: mara_call.live.control.answering, "the call sees the answering app")

    await socket.close()
    deadline = time.monotonic() + RECEIVE_TIMEOUT_SECONDS
    while mara_call.live.control.answering:
        assert time.monotonic() < deadline, "the call still waits for an app that left"
        await asyncio.sleep(0.05)


# --- Presence: which apps answer ------------------------------------------------------------------


async def test_apps_entering_and_leaving_at_once_are_all_counted():
    organization_id = 10**9 + int(time.time() * 1000) % 10**6  # a register no other test touches
    apps = [f"app_{index}" for index in range(5)]

    await asyncio.gather(
        *(
            presence.answerer_enter(organization_id=organization_id, agents=["mara"], app_id=app)
            for app in apps
        )
    )
    assert await presence.answering_apps(organization_id=organization_id, slug="mara") == 5

    await asyncio.gather(
        *(
            presence.answerer_leave(organization_id=organization_id, agents=["mara"], app_id=app)
            for app in apps[:3]
        )
    )
    assert await presence.answering_apps(organization_id=organization_id, slug="mara") == 2
    assert await presence.answering_apps(organization_id=organization_id, slug="lena") == 0


# --- Routing: a command for a call another process holds ------------------------------------------


@pytest.fixture
async def two_processes(monkeypatch):
    """This process's mailbox holds calls; a second mailbox stands for another process's. Both
    use the configured channel layer (Redis, or the in-memory one taken as shared)."""
    monkeypatch.setattr(routing.Mailbox, "shared", property(lambda self: True))
    holder, sender = routing.Mailbox(), routing.Mailbox()
    monkeypatch.setattr(routing, "_MAILBOX", holder)
    yield holder, sender
    for mailbox in (holder, sender):
        if mailbox._task is not None:
            mailbox._task.cancel()


@pytest.fixture
async def held_call(two_processes, client_a, persona_a, quiet_limits):
    holder, _ = two_processes
    call = await live_call_start(client_a, "mara")
    await eventually(lambda: call.id in holder.held, "the call's process joined its command group")
    yield call
    await call.close()


async def test_a_command_reaches_the_process_holding_the_call_and_its_answer_comes_back(
    two_processes, held_call
):
    _, sender = two_processes
    command = Command("say", "rq_remote", held_call.id, {"text": "From afar.", "message_id": "msg_remote"})

    answer = await sender.request(command)

    assert answer == {"event": "ack", "requestId": "rq_remote"}
    assert held_call.conversation.said[-1] == ("From afar.", "msg_remote")


async def test_a_call_no_process_holds_is_unreachable(two_processes, monkeypatch):
    _, sender = two_processes
    monkeypatch.setattr(routing, "REPLY_TIMEOUT_SECONDS", 0.2)

    answer = await sender.request(Command("hangup", "rq_lost", "CAnobody"))

    assert (answer["code"], answer["requestId"]) == ("call_unreachable", "rq_lost")


async def test_a_command_that_fails_in_the_holding_process_is_answered_unavailable(
    two_processes, held_call, monkeypatch
):
    _, sender = two_processes

    async def broken(text: str) -> None:
        raise RuntimeError("the pipeline is gone")

    monkeypatch.setattr(held_call.conversation, "add_context", broken)
    # Long: the answer must come from the holder, not from the sender giving up.
    monkeypatch.setattr(routing, "REPLY_TIMEOUT_SECONDS", 20.0)

    answer = await sender.request(Command("context", "rq_broken", held_call.id, {"text": "Psst."}))

    assert answer == {
        "event": "error",
        "requestId": "rq_broken",
        "code": "unavailable",
        "message": "the command failed on the server; nothing was done",
    }
