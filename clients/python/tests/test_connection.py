"""The connection: subscribing, dispatching events to handlers, resuming after a drop, and stopping."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest
from conftest import event_data, running, wait_until
from fake_parley import API_KEY, FakeParley

from parley_agent import Agent, AgentError, Call


async def test_the_client_subscribes_with_its_key_personas_and_answer_flag(fake, make_agent):
    agent = make_agent(agents=["mara", "theo"], answer=True)
    async with running(agent):
        pass
    (handshake,) = fake.handshakes
    assert handshake.path == "/ws/agent/"
    assert handshake.headers["Authorization"] == f"Bearer {API_KEY}"
    (subscribe,) = fake.actions("subscribe")
    assert subscribe["requestId"]
    assert subscribe == {
        "action": "subscribe",
        "requestId": subscribe["requestId"],
        "agents": ["mara", "theo"],
        "answer": True,
    }  # no "after" when the client starts live


async def test_a_given_cursor_is_sent_as_after(fake, make_agent):
    async with running(make_agent(after=41, answer=False)):
        pass
    (subscribe,) = fake.actions("subscribe")
    assert subscribe["after"] == 41
    assert subscribe["answer"] is False


def test_an_empty_persona_list_is_refused_rather_than_read_as_every_persona():
    with pytest.raises(ValueError, match="at least one persona"):
        Agent("ws://127.0.0.1:1", api_key="k", agents=[])


def test_http_urls_and_full_socket_urls_are_accepted():
    assert Agent("http://h:8000/", api_key="k", agents=["m"]).url == "ws://h:8000/ws/agent/"
    assert Agent("https://h", api_key="k", agents=["m"]).url == "wss://h/ws/agent/"
    assert Agent("ws://h/ws/agent", api_key="k", agents=["m"]).url == "ws://h/ws/agent/"


async def test_events_reach_their_handlers_and_the_star_handler_with_the_call(fake, make_agent):
    agent = make_agent()
    seen: list[tuple[str, dict[str, Any], Call]] = []

    @agent.on("user.message")
    async def on_message(event: dict[str, Any], call: Call) -> None:
        seen.append(("user.message", event, call))

    @agent.on("*")
    async def on_any(event: dict[str, Any], call: Call) -> None:
        seen.append(("*", event, call))

    async with running(agent):
        await fake.publish("call.started", event_data(transport="chat"))
        await fake.publish("user.message", event_data(text="Hello", messageId="msg_u1"))
        await wait_until(lambda: len(seen) == 3)

    names = sorted((name, event["event"]) for name, event, _ in seen)
    assert names == [("*", "call.started"), ("*", "user.message"), ("user.message", "user.message")]
    message = next(event for name, event, _ in seen if name == "user.message")
    assert message == {
        "callId": "CA1",
        "agent": "mara",
        "text": "Hello",
        "messageId": "msg_u1",
        "event": "user.message",
        "id": 2,  # its cursor
    }
    calls = {id(call) for _, _, call in seen}
    assert len(calls) == 1, "one Call object per call"
    call = seen[0][2]
    assert (call.id, call.agent) == ("CA1", "mara")


async def test_a_slow_handler_blocks_neither_the_socket_nor_other_handlers(fake, make_agent):
    agent = make_agent()
    released = asyncio.Event()
    order: list[str] = []

    @agent.on("user.message")
    async def slow(event: dict[str, Any], call: Call) -> None:
        order.append(f"start {call.id}")
        await released.wait()  # only the later event's handler sets it
        order.append(f"end {call.id}")

    @agent.on("turn.end")
    async def release(event: dict[str, Any], call: Call) -> None:
        order.append(f"turn {call.id}")
        released.set()

    async with running(agent):
        await fake.publish("user.message", event_data("CA1", text="a", messageId="m1"))
        await fake.publish("turn.end", event_data("CA2", text="b", probability=0.9))
        await wait_until(lambda: "end CA1" in order)
    assert order == ["start CA1", "turn CA2", "end CA1"]


async def test_a_handler_that_raises_is_logged_and_the_client_goes_on(fake, make_agent, caplog):
    agent = make_agent()
    seen: list[str] = []

    @agent.on("user.message")
    async def broken(event: dict[str, Any], call: Call) -> None:
        raise RuntimeError("handler bug")

    @agent.on("turn.end")
    def plain_function(event: dict[str, Any], call: Call) -> None:  # sync handlers work too
        seen.append(event["text"])

    with caplog.at_level(logging.ERROR, logger="parley_agent"):
        async with running(agent) as task:
            await fake.publish("user.message", event_data(text="a", messageId="m1"))
            await fake.publish("turn.end", event_data(text="after the bug", probability=1.0))
            await wait_until(lambda: seen)
            assert not task.done()
    assert seen == ["after the bug"]
    assert any("handler bug" in (record.exc_text or "") for record in caplog.records)


async def test_a_dropped_connection_resumes_after_the_last_cursor_with_no_loss_or_duplicate(fake, make_agent):
    agent = make_agent()
    texts: list[str] = []

    @agent.on("user.message")
    async def on_message(event: dict[str, Any], call: Call) -> None:
        texts.append(event["text"])

    async with running(agent):
        for number in (1, 2, 3):
            await fake.publish("user.message", event_data(text=f"m{number}", messageId=f"u{number}"))
        await fake.publish("user.speaking", event_data(text="ephemeral"), kept=False)
        await wait_until(lambda: len(texts) == 3)
        await fake.drop()  # mid-stream: no close frame
        for number in (4, 5):  # stored while the client is away
            await fake.publish("user.message", event_data(text=f"m{number}", messageId=f"u{number}"))
        await wait_until(lambda: len(fake.actions("subscribe")) == 2 and fake.live)
        await fake.publish("user.message", event_data(text="m6", messageId="u6"))
        await wait_until(lambda: len(texts) == 6)
        assert agent.last_cursor == 6
    assert texts == ["m1", "m2", "m3", "m4", "m5", "m6"]
    assert [frame.get("after") for frame in fake.actions("subscribe")] == [None, 3]


async def test_events_replayed_at_or_before_the_cursor_are_dropped(fake, make_agent):
    fake.replay_overlap = 2  # a server that replays a little too much
    fake.cursor_key = "cursor"  # and spells the cursor with the synonym
    agent = make_agent()
    cursors: list[str] = []

    @agent.on("*")
    async def on_any(event: dict[str, Any], call: Call) -> None:
        cursors.append(event["messageId"])

    async with running(agent):
        for number in (1, 2, 3):
            await fake.publish("bot.finished", event_data(messageId=f"b{number}"))
        await wait_until(lambda: len(cursors) == 3)
        await fake.drop()
        await fake.publish("bot.finished", event_data(messageId="b4"))
        await wait_until(lambda: len(cursors) == 4 and len(fake.actions("subscribe")) == 2)
        await asyncio.sleep(0.1)
    assert cursors == ["b1", "b2", "b3", "b4"]


async def test_the_subscribe_answer_cursor_lets_a_client_that_saw_nothing_resume(fake, make_agent):
    fake.ack_cursor = True
    await fake.publish("call.started", event_data())  # before the client: not for it
    agent = make_agent()
    seen: list[str] = []
    agent.on("*", lambda event, call: seen.append(event["event"]))
    async with running(agent):
        assert agent.last_cursor == 1
        await fake.drop()
        await fake.publish("user.message", event_data(text="while away", messageId="u1"))
        await wait_until(lambda: seen == ["user.message"])
    assert fake.actions("subscribe")[1]["after"] == 1


@pytest.mark.parametrize("close_code, code", [(4401, "unauthorized"), (4403, "forbidden")])
async def test_a_refused_key_stops_the_client_instead_of_retrying(fake, make_agent, close_code, code, caplog):
    fake.close_after_accept = [close_code] * 10
    agent = make_agent()
    with caplog.at_level(logging.ERROR, logger="parley_agent"), pytest.raises(AgentError) as raised:
        await asyncio.wait_for(agent.run(), 5)
    assert raised.value.code == code
    assert len(fake.handshakes) == 1
    assert "not retrying" in caplog.text


async def test_a_refusing_close_while_the_subscription_waits_is_seen_at_once(fake, make_agent):
    fake.silent.add("subscribe")
    task = asyncio.create_task(make_agent(command_timeout=60).run())
    await wait_until(lambda: fake.actions("subscribe"))
    await fake.close_all(4403, "persona of another organization")
    with pytest.raises(AgentError) as raised:
        await asyncio.wait_for(task, 3)  # not the 60 s of the command timeout
    assert raised.value.code == "forbidden"
    assert "another organization" in raised.value.message


async def test_a_wrong_key_is_refused_by_the_fake_and_stops_the_client(fake, make_agent):
    with pytest.raises(AgentError) as raised:
        await asyncio.wait_for(make_agent(api_key="pk_wrong").run(), 5)
    assert raised.value.code == "unauthorized"
    assert "bad key" in raised.value.message  # what Parley said before closing
    assert len(fake.handshakes) == 1


async def test_a_handshake_refused_with_403_stops_the_client(fake, make_agent):
    fake.refuse_status = [403] * 10
    with pytest.raises(AgentError) as raised:
        await asyncio.wait_for(make_agent().run(), 5)
    assert raised.value.code == "forbidden"
    assert len(fake.handshakes) == 1


async def test_other_failures_are_retried_with_backoff(fake, make_agent):
    fake.refuse_status = [503, 502]
    fake.close_after_accept = [4503]  # "Parley's channel layer is down"
    agent = make_agent()
    async with running(agent):
        assert agent.connected
    assert len(fake.handshakes) == 4


async def test_a_refused_subscription_stops_the_client(fake, make_agent):
    fake.errors["subscribe"] = ("unknown_agent", "no persona 'nobody' in your organization")
    with pytest.raises(AgentError) as raised:
        await asyncio.wait_for(make_agent(agents=["nobody"]).run(), 5)
    assert raised.value.code == "unknown_agent"
    assert "nobody" in raised.value.message


async def test_stop_ends_run_and_cancels_running_handlers(fake, make_agent):
    agent = make_agent()
    cancelled = asyncio.Event()

    @agent.on("call.started")
    async def forever(event: dict[str, Any], call: Call) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(agent.run())
    await wait_until(lambda: agent.connected)
    await fake.publish("call.started", event_data())
    await wait_until(lambda: agent._tasks)
    agent.stop()
    await asyncio.wait_for(task, 5)
    assert cancelled.is_set()
    assert not agent.connected
    with pytest.raises(AgentError) as raised:
        await Call(agent, "CA1", "mara").say("too late")
    assert raised.value.code == "disconnected"


def test_run_forever_runs_until_a_handler_stops_it():
    """The sync wrapper, with the fake server on a loop of its own in another thread."""
    server_loop = asyncio.new_event_loop()
    fake = FakeParley()
    thread = threading.Thread(target=server_loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(fake.start(), server_loop).result(5)
        agent = Agent(fake.url, api_key=API_KEY, agents=["mara"])
        seen: list[str] = []

        @agent.on("call.started")
        async def started(event: dict[str, Any], call: Call) -> None:
            seen.append(call.id)
            agent.stop()

        async def publish_when_subscribed() -> None:
            await wait_until(lambda: fake.live)
            await fake.publish("call.started", event_data("CA9"))

        asyncio.run_coroutine_threadsafe(publish_when_subscribed(), server_loop)
        agent.run_forever()
        assert seen == ["CA9"]
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), server_loop).result(5)
        server_loop.call_soon_threadsafe(server_loop.stop)
        thread.join(5)
