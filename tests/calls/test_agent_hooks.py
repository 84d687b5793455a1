"""In-process hooks (`parley_agent`): the events they get, the verbs they use, and what a bad one
cannot do to the call (raise, hang).

The call is a real live session with a stand-in conversation (`tests.fakes.live_call`). Waits
are safety nets, never speed checks.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import pytest

from calls.agents import AgentError, parley_agent
from calls.agents import hooks as hooks_module
from calls.agents.commands import MAX_TEXT_CHARS
from calls.agents.hooks import hooks_answer, hooks_clear, hooks_load, hooks_present
from tests.fakes.live_call import call_events, eventually, live_call_start

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_hooks_left():
    """Every test starts and ends without hooks, or hook tasks still running."""
    hooks_clear()
    yield
    hooks_clear()
    for task in list(hooks_module._RUNNING):
        task.cancel()


@pytest.fixture
async def mara_call(client_a, persona_a, settings):
    settings.PARLEY_SESSION_STALE_SECONDS = 120.0  # no heartbeats here: only the test ends the call
    call = await live_call_start(client_a, "mara")
    yield call
    await call.close()


def stored(log: list[tuple[str, dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    return [data for event, data in log if event == name]


def hook_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "calls.agents.hooks"]


async def test_handlers_get_each_event_with_its_name_call_id_and_agent(client_a, persona_a, settings):
    settings.PARLEY_SESSION_STALE_SECONDS = 120.0
    agent = parley_agent("mara")
    messages: list[dict[str, Any]] = []
    everything: list[str] = []

    @agent.on("user.message")
    async def on_message(event: dict[str, Any], call: Any) -> None:
        messages.append({**event, "hook_call": (call.id, call.agent)})

    @agent.on("*")
    async def on_any(event: dict[str, Any], call: Any) -> None:
        everything.append(event["event"])

    call = await live_call_start(client_a, "mara")
    try:
        await call.live.on_user_message(text="Is the rye ready?")
        await eventually(lambda: messages, "the user.message hook ran")
        await eventually(lambda: "user.message" in everything, "the catch-all hook saw it")
    finally:
        await call.close()
    await eventually(lambda: "call.ended" in everything, "the catch-all hook saw the end")

    event = messages[0]
    assert event["event"] == "user.message"
    assert (event["callId"], event["agent"], event["text"]) == (call.id, "mara", "Is the rye ready?")
    assert event["messageId"].startswith("msg_")
    assert event["hook_call"] == (call.id, "mara")
    assert everything[0] == "call.started"  # hooks see the call from its start to its end
    assert everything[-1] == "call.ended"


async def test_a_hook_that_raises_is_logged_and_the_call_goes_on(mara_call, caplog):
    agent = parley_agent("mara")
    runs: list[str] = []

    @agent.on("user.message")
    async def broken(event: dict[str, Any], call: Any) -> None:
        runs.append(event["text"])
        raise RuntimeError("the app's bug")

    @agent.on("user.message")
    async def fine(event: dict[str, Any], call: Any) -> None:
        await call.say(f"You said: {event['text']}")

    await mara_call.live.on_user_message(text="One")
    await eventually(
        lambda: any("failed" in r.getMessage() for r in hook_records(caplog)), "the failure logged"
    )
    await mara_call.live.on_user_message(text="Two")
    await eventually(lambda: len(mara_call.conversation.said) == 3, "both messages answered")

    failure = next(record for record in hook_records(caplog) if "failed" in record.getMessage())
    assert failure.levelno == logging.ERROR and failure.exc_info is not None
    assert "broken" in failure.getMessage() and mara_call.id in failure.getMessage()
    assert runs == ["One", "Two"]
    assert [text for text, _ in mara_call.conversation.said[1:]] == ["You said: One", "You said: Two"]
    assert not mara_call.live.ended


async def test_a_hook_that_runs_past_the_timeout_is_cancelled(mara_call, caplog, settings):
    settings.PARLEY_AGENT_HOOK_TIMEOUT_SECONDS = 0.2
    agent = parley_agent("mara")
    cancelled: list[bool] = []

    @agent.on("user.message")
    async def stuck(event: dict[str, Any], call: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    await mara_call.live.on_user_message(text="Hello?")
    await eventually(lambda: cancelled, "the stuck hook cancelled")
    await eventually(lambda: not hooks_module._RUNNING, "no hook task left")

    message = next(r.getMessage() for r in hook_records(caplog) if "ran past" in r.getMessage())
    assert "stuck" in message and "user.message" in message
    assert not mara_call.live.ended


async def test_call_say_and_reply_from_a_hook_reach_the_conversation_and_are_confirmed(mara_call):
    agent = parley_agent("mara")
    done: list[str] = []

    @agent.on("user.message")
    async def answer(event: dict[str, Any], call: Any) -> None:
        await call.say("One moment.", message_id="msg_hook_say")
        await call.reply("We open at seven.", in_reply_to=event["messageId"], message_id="msg_hook_reply")
        done.append(event["messageId"])

    await mara_call.live.on_user_message(text="When do you open?")
    await eventually(lambda: done, "the hook answered")

    assert mara_call.conversation.said[1:] == [
        ("One moment.", "msg_hook_say"),
        ("We open at seven.", "msg_hook_reply"),
    ]
    assert mara_call.conversation.answered == 1
    confirmed = stored(await call_events(mara_call.id), "message.confirmed")
    assert [(data["messageId"], data["text"]) for data in confirmed] == [
        ("msg_hook_say", "One moment."),
        ("msg_hook_reply", "We open at seven."),
    ]


async def test_a_refused_command_raises_agent_error_in_the_hook(mara_call):
    agent = parley_agent("mara")
    errors: list[AgentError] = []

    @agent.on("user.message")
    async def late(event: dict[str, Any], call: Any) -> None:
        try:
            await call.reply("Yes.", in_reply_to="msg_unknown")
        except AgentError as error:
            errors.append(error)

    await mara_call.live.on_user_message(text="Anyone?")
    await eventually(lambda: errors, "the refusal")

    assert errors[0].code == "unknown_message"
    assert errors[0].message == "inReplyTo: no user message 'msg_unknown' on this call"
    assert mara_call.conversation.said[1:] == []


async def test_a_hook_stream_is_confirmed_whole_at_its_end(mara_call):
    agent = parley_agent("mara")
    streams: list[str] = []

    @agent.on("user.message")
    async def answer(event: dict[str, Any], call: Any) -> None:
        async with call.reply_stream(in_reply_to=event["messageId"]) as stream:
            await stream.write("Our rye ")
            await stream.write("comes out at six.")
        streams.append(stream.message_id)

    await mara_call.live.on_user_message(text="Rye?")
    await eventually(lambda: streams, "the stream ended")

    assert mara_call.conversation.app_text(streams[0]) == "Our rye comes out at six."
    confirmed = stored(await call_events(mara_call.id), "message.confirmed")
    assert [(data["messageId"], data["text"]) for data in confirmed] == [
        (streams[0], "Our rye comes out at six.")
    ]


async def test_a_hook_stream_cut_by_turn_continued_drops_its_later_writes(mara_call):
    agent = parley_agent("mara")
    started, go_on = asyncio.Event(), asyncio.Event()
    outcome: list[tuple[str, bool]] = []

    @agent.on("user.message")
    async def answer(event: dict[str, Any], call: Any) -> None:
        async with call.reply_stream(in_reply_to=event["messageId"]) as stream:
            await stream.write("Well, ")
            started.set()
            await go_on.wait()
            await stream.write("as I was saying.")  # dropped: Parley aborted it
        outcome.append((stream.message_id, stream.aborted))

    await mara_call.live.on_user_message(text="So")
    await asyncio.wait_for(started.wait(), 20)
    await mara_call.live.on_turn_continued()
    go_on.set()
    await eventually(lambda: outcome, "the hook finished")

    message_id, aborted = outcome[0]
    assert aborted
    assert mara_call.conversation.app_text(message_id) == "Well, "
    log = await call_events(mara_call.id)
    assert [(d["messageId"], d["reason"]) for d in stored(log, "reply.aborted")] == [
        (message_id, "turn.continued")
    ]
    assert stored(log, "message.confirmed") == []


async def test_hooks_that_answer_make_the_call_wait_for_them(mara_call):
    assert not mara_call.live.control.answering

    parley_agent("mara", answer=True)

    await eventually(lambda: mara_call.live.control.answering, "the call sees the answering hooks")


async def test_parley_agent_modules_are_imported_by_hooks_load(settings, monkeypatch):
    monkeypatch.delitem(sys.modules, "tests.fakes.bakery_hooks", raising=False)
    settings.PARLEY_AGENT_MODULES = ["tests.fakes.bakery_hooks"]
    assert not hooks_present("mara")

    hooks_load()

    assert hooks_present("mara") and hooks_answer("mara")
    assert not hooks_present("otto")
    (agent,) = hooks_module._AGENTS["mara"]
    assert [handler.__name__ for handler in agent.handlers["user.message"]] == ["answer"]


async def test_a_module_that_cannot_be_imported_stops_the_start(settings):
    settings.PARLEY_AGENT_MODULES = ["tests.fakes.no_such_hooks"]

    with pytest.raises(ModuleNotFoundError):
        hooks_load()


async def test_a_handler_must_be_async():
    agent = parley_agent("mara")

    with pytest.raises(TypeError, match="must be an async function"):

        @agent.on("user.message")
        def blocking(event: dict[str, Any], call: Any) -> None:
            pass


async def test_a_hooks_commands_are_checked_as_the_sockets_are(mara_call):
    agent = parley_agent("mara")
    refusals: list[tuple[str, str]] = []
    done = asyncio.Event()

    @agent.on("user.message")
    async def careless(event: dict[str, Any], call: Any) -> None:
        attempts = [
            lambda: call.say("a\u0000b"),
            lambda: call.say("x" * (MAX_TEXT_CHARS + 1)),
            lambda: call.reply("Hi.", message_id="not an id"),
            lambda: call.context("   "),
            lambda: call.tool_result("msg_1", [{"toolCallId": "call_1", "result": "a\u0000"}]),
        ]
        for attempt in attempts:
            try:
                await attempt()
            except AgentError as error:
                refusals.append((error.code, error.message))
        done.set()

    await mara_call.live.on_user_message(text="Hello?")
    await asyncio.wait_for(done.wait(), 20)

    assert refusals == [
        ("invalid_field", "text: must not contain NUL characters (\\u0000)"),
        ("invalid_field", f"text: at most {MAX_TEXT_CHARS} characters"),
        ("invalid_field", "messageId: must be a string matching [A-Za-z0-9_.:-]{1,100}"),
        ("invalid_field", "text: must not be empty"),
        ("invalid_field", "results[0].result: must not contain NUL characters (\\u0000)"),
    ]
    assert mara_call.conversation.said[1:] == [] and mara_call.conversation.context == []
    assert mara_call.conversation.tool_results == []
