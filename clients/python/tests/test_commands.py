"""The Call API: command frames, their answers, streamed replies and what an abort does to them."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from conftest import event_data, running, wait_until

from parley_agent import AgentError, Call


def without_request_id(frame: dict[str, Any]) -> dict[str, Any]:
    assert re.fullmatch(r"rq_[0-9a-f]+", frame["requestId"])
    return {key: value for key, value in frame.items() if key != "requestId"}


async def call_from(fake, agent) -> Call:
    """The Call object handlers get, from a published call.started."""
    calls: list[Call] = []
    agent.on("call.started", lambda event, call: calls.append(call))
    await fake.publish("call.started", event_data("CA1"))
    await wait_until(lambda: calls)
    return calls[0]


async def test_every_verb_sends_its_frame_and_returns_the_ack(fake, make_agent):
    agent = make_agent()
    async with running(agent):
        call = await call_from(fake, agent)
        said = await call.say("Welcome back!")
        replied = await call.reply("Bread is at 8.", in_reply_to="msg_u1", message_id="msg_mine")
        await call.reply("Latest.")
        await call.tool_result("tc_msg1", [{"toolCallId": "tc1", "result": {"status": "shipped"}}])
        await call.cancel()
        await call.cancel(message_id="msg_mine")
        await call.context("The caller is a regular.")
        await call.hangup()

    frames = [without_request_id(frame) for frame in fake.frames if frame["action"] != "subscribe"]
    generated = frames[0]["messageId"]
    assert re.fullmatch(r"msg_[0-9a-f]{32}", generated)
    assert said["event"] == "ack" and said["messageId"] == generated
    assert replied["messageId"] == "msg_mine"
    assert frames[2]["messageId"] != generated and "inReplyTo" not in frames[2]
    frames[2]["messageId"] = "generated"
    assert frames == [
        {"action": "say", "callId": "CA1", "text": "Welcome back!", "messageId": generated},
        {
            "action": "reply",
            "callId": "CA1",
            "text": "Bread is at 8.",
            "messageId": "msg_mine",
            "inReplyTo": "msg_u1",
        },
        {"action": "reply", "callId": "CA1", "text": "Latest.", "messageId": "generated"},
        {
            "action": "toolResult",
            "callId": "CA1",
            "msgId": "tc_msg1",
            "results": [{"toolCallId": "tc1", "result": {"status": "shipped"}}],
        },
        {"action": "cancel", "callId": "CA1"},
        {"action": "cancel", "callId": "CA1", "messageId": "msg_mine"},
        {"action": "context", "callId": "CA1", "text": "The caller is a regular."},
        {"action": "hangup", "callId": "CA1"},
    ]


async def test_an_error_answer_raises_agent_error_with_its_code_and_message(fake, make_agent):
    fake.errors["reply"] = ("call_ended", "call CA1 has ended")
    agent = make_agent()
    async with running(agent) as task:
        call = await call_from(fake, agent)
        with pytest.raises(AgentError) as raised:
            await call.reply("too late")
        assert (raised.value.code, raised.value.message) == ("call_ended", "call CA1 has ended")
        assert await call.say("still connected")
        assert not task.done()


async def test_a_command_without_answer_times_out(fake, make_agent):
    fake.silent.add("hangup")
    agent = make_agent(command_timeout=0.3)
    async with running(agent):
        call = await call_from(fake, agent)
        with pytest.raises(AgentError) as raised:
            await call.hangup()
        assert raised.value.code == "timeout"
        assert not agent._pending


async def test_a_command_issued_while_disconnected_waits_for_the_reconnection(fake, make_agent):
    agent = make_agent()
    async with running(agent):
        call = await call_from(fake, agent)
        fake.refuse_status = [503, 503]  # the server restarts: two refused attempts
        await fake.drop()
        await wait_until(lambda: not agent.connected)
        ack = await call.say("after the restart")
        assert ack["event"] == "ack"
    assert len(fake.actions("subscribe")) == 2
    assert fake.frames.index(fake.actions("say")[0]) > fake.frames.index(fake.actions("subscribe")[1])


async def test_a_command_fails_when_the_connection_does_not_come_back_in_time(fake, make_agent):
    agent = make_agent(reconnect_wait=0.3)
    async with running(agent):
        call = await call_from(fake, agent)
        fake.refuse_status = [503] * 1000
        await fake.drop()
        await wait_until(lambda: not agent.connected)
        with pytest.raises(AgentError) as raised:
            await call.say("nobody listens")
        assert raised.value.code == "disconnected"


async def test_a_command_in_flight_when_the_connection_drops_fails_as_disconnected(fake, make_agent):
    fake.silent.add("say")
    agent = make_agent(command_timeout=30)
    async with running(agent):
        call = await call_from(fake, agent)
        saying = asyncio.create_task(call.say("lost"))
        await wait_until(lambda: fake.actions("say"))
        await fake.drop()
        with pytest.raises(AgentError) as raised:
            await asyncio.wait_for(saying, 5)
        assert raised.value.code == "disconnected"


async def test_a_reply_stream_sends_start_one_chunk_per_write_and_end(fake, make_agent):
    agent = make_agent()
    async with running(agent):
        call = await call_from(fake, agent)
        async with call.reply_stream(in_reply_to="msg_u1") as stream:
            await stream.write("Hello ")
            await stream.write("")  # empty LLM deltas are not sent
            await stream.write("there.")
        async with call.reply_stream(message_id="msg_given") as second:
            await second.write("Again.")
        await wait_until(lambda: len(fake.actions("replyStream")) == 7)

    assert re.fullmatch(r"msg_[0-9a-f]{32}", stream.message_id)
    assert stream.text == "Hello there." and stream.ended and not stream.aborted
    frames = [without_request_id(frame) for frame in fake.actions("replyStream")]
    base = {"action": "replyStream", "callId": "CA1"}
    first = {**base, "messageId": stream.message_id}
    given = {**base, "messageId": "msg_given"}
    assert frames == [
        {**first, "op": "start", "inReplyTo": "msg_u1"},
        {**first, "op": "chunk", "text": "Hello "},
        {**first, "op": "chunk", "text": "there."},
        {**first, "op": "end"},
        {**given, "op": "start"},
        {**given, "op": "chunk", "text": "Again."},
        {**given, "op": "end"},
    ]


async def test_after_reply_aborted_writes_are_dropped_and_no_end_is_sent(fake, make_agent):
    async def abort_on_first_chunk(frame: dict[str, Any], server) -> None:
        if frame.get("op") == "chunk" and frame["text"] == "one ":
            await server.publish(
                "reply.aborted", event_data(messageId=frame["messageId"], reason="turn.continued")
            )

    fake.on_command = abort_on_first_chunk
    agent = make_agent()
    aborted_seen: list[bool] = []
    async with running(agent):
        call = await call_from(fake, agent)

        @agent.on("reply.aborted")
        async def on_abort(event: dict[str, Any], call: Call) -> None:
            aborted_seen.append(stream.aborted)  # the stream knows before handlers run

        async with call.reply_stream() as stream:
            await stream.write("one ")
            await wait_until(lambda: stream.aborted)
            await stream.write("two ")
            await stream.write("three")
        await wait_until(lambda: aborted_seen)
        await asyncio.sleep(0.1)

    assert stream.abort_reason == "turn.continued"
    assert aborted_seen == [True]
    ops = [(frame["op"], frame.get("text")) for frame in fake.actions("replyStream")]
    assert ops == [("start", None), ("chunk", "one ")]


async def test_call_ended_aborts_the_calls_open_streams(fake, make_agent):
    agent = make_agent()
    async with running(agent):
        call = await call_from(fake, agent)
        async with call.reply_stream() as stream:
            await stream.write("Let me check")
            await fake.publish("call.ended", event_data(reason="hangup"))
            await wait_until(lambda: stream.aborted)
            await stream.write(" that for you.")
    assert stream.abort_reason == "call_ended"
    assert [frame["op"] for frame in fake.actions("replyStream")] == ["start", "chunk"]


async def test_a_refused_start_raises_and_a_failing_body_still_ends_the_stream(fake, make_agent):
    agent = make_agent()
    async with running(agent):
        call = await call_from(fake, agent)
        with pytest.raises(ZeroDivisionError):
            async with call.reply_stream() as stream:
                await stream.write("Half a ")
                1 / 0  # noqa: B018 - the body's own bug
        assert [frame["op"] for frame in fake.actions("replyStream")] == ["start", "chunk", "end"]
        assert not agent._streams

        fake.errors["replyStream"] = ("unknown_call", "no call CA1")
        with pytest.raises(AgentError) as raised:
            async with call.reply_stream():
                pytest.fail("the body must not run when start is refused")
        assert raised.value.code == "unknown_call"
        assert not agent._streams


async def test_a_refused_chunk_is_kept_on_the_stream_and_end_reports_the_refusal(fake, make_agent):
    agent = make_agent()
    async with running(agent):
        call = await call_from(fake, agent)
        stream = call.reply_stream()
        await stream.start()
        fake.errors["replyStream"] = ("bad_request", "text too long")
        await stream.write("x" * 10)
        await wait_until(lambda: stream.error is not None)
        assert stream.error.code == "bad_request"
        with pytest.raises(AgentError):
            await stream.end()


async def test_the_whatsapp_thread_verbs_send_their_frames_and_a_refusal_raises(fake, make_agent):
    agent = make_agent()
    async with running(agent):
        await agent.whatsapp_pause(session_id=12)
        await agent.whatsapp_send("Ana here.", contact="+16505551234")
        await agent.whatsapp_resume(contact="16505551234")
        fake.errors["whatsappSend"] = ("invalid_field", "text: must not be empty")
        with pytest.raises(AgentError) as refused:
            await agent.whatsapp_send("", session_id="12")

    frames = [without_request_id(frame) for frame in fake.frames if frame["action"] != "subscribe"]
    assert frames == [
        {"action": "whatsappPause", "sessionId": "12"},
        {"action": "whatsappSend", "contact": "+16505551234", "text": "Ana here."},
        {"action": "whatsappResume", "contact": "16505551234"},
        {"action": "whatsappSend", "sessionId": "12", "text": ""},
    ]
    assert (refused.value.code, refused.value.message) == ("invalid_field", "text: must not be empty")
