"""The agent API end to end: Parley's Python client, over a real websocket to a real server process,
drives calls an aiortc client (behaving as the Anam SDK) holds.

The app subscribes with `answer: true`, so the persona's own brain stays silent: it answers the
visitor's question with a streamed reply, and the browser hears exactly that. It can hang up.
An app that does not answer in time is replaced by the persona's brain.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bench.webrtc_client import ParleyWebRTCClient
from calls.models import Call, CallEvent
from parley_agent import Agent
from personas.services import api_key_create
from tests.browser.test_session_aiortc import mint, wait_for_call_end

STREAMED = ("Our rye bread ", "comes out of the oven at six. ", "Come early, it goes fast!")
ANSWER = "".join(STREAMED)
# How long the test waits for the app to be connected (a safety net, not a speed check).
CONNECT_SECONDS = 20.0


@pytest.fixture
def bakery(make_organization, make_persona):
    organization = make_organization("Bakery", slug="bakery")
    make_persona(organization, "mara", greeting="", skip_greeting=True, app_answer_timeout_seconds=1.0)
    return api_key_create(organization=organization, name="agent e2e").raw_key


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    task = asyncio.create_task(agent.run())
    try:
        for _ in range(int(CONNECT_SECONDS * 10)):
            if agent.connected:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.1)
        assert agent.connected, "the agent never connected"
        await asyncio.sleep(1.5)  # the call's process sees the answering app within a second
        yield agent
    finally:
        agent.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def ready(client: ParleyWebRTCClient) -> None:
    record = client.record
    await client.wait_for(lambda: any(s["actionType"] == "sessionready" for s in record.signals), "ready")


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://")


async def answer_typed_question(base_url: str, key: str) -> tuple[ParleyWebRTCClient, list[dict[str, Any]]]:
    agent = Agent(ws_url(base_url), api_key=key, agents=["mara"], answer=True)
    seen: list[dict[str, Any]] = []

    @agent.on("*")
    async def everything(event: dict[str, Any], call: Any) -> None:
        seen.append(event)

    @agent.on("user.message")
    async def answer(event: dict[str, Any], call: Any) -> None:
        async with call.reply_stream(in_reply_to=event["messageId"]) as stream:
            for chunk in STREAMED:
                await stream.write(chunk)
                await asyncio.sleep(0.05)  # as an LLM's tokens come

    async with running(agent):
        async with ParleyWebRTCClient(base_url=base_url, session_token=mint(base_url, key)) as client:
            await ready(client)
            client.ask("When is the rye bread ready?")
            await client.wait_for(
                lambda: client.record.persona_finished_count() >= 1, "the reply to be spoken"
            )
            await asyncio.sleep(2.0)  # anything else the persona would say (its brain) comes now
    return client, seen


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_an_app_answers_a_typed_question_with_a_streamed_reply_the_browser_hears(live_server_url, bakery):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    client, seen = asyncio.run(answer_typed_question(live_server_url, bakery))
    record = client.record

    assert record.persona_messages() == [ANSWER.strip()], "the brain spoke too, or the stream was not heard"
    assert len(record.loud_audio_frames) > 25, "the voice was (almost) silent"
    names = [event["event"] for event in seen]
    assert "user.message" in names and "message.confirmed" in names and "bot.finished" in names
    confirmed = next(event for event in seen if event["event"] == "message.confirmed")
    speaking = next(event for event in seen if event["event"] == "bot.speaking")
    assert confirmed["messageId"] == speaking["messageId"], "the spoken message is not the app's"
    assert confirmed["text"] == ANSWER.strip()


async def hang_up(base_url: str, key: str) -> str:
    agent = Agent(ws_url(base_url), api_key=key, agents=["mara"], answer=True)

    @agent.on("user.message")
    async def goodbye(event: dict[str, Any], call: Any) -> None:
        await call.reply("Goodbye!", in_reply_to=event["messageId"])
        await asyncio.sleep(1.5)
        await call.hangup()

    async with running(agent):
        async with ParleyWebRTCClient(base_url=base_url, session_token=mint(base_url, key)) as client:
            await ready(client)
            client.ask("That's all, goodbye.")
            await client.wait_for(
                lambda: any(s["actionType"] == "endsession" for s in client.record.signals), "endsession"
            )
    return client.record.session_id


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_an_app_hangs_up_and_the_call_ends_as_hangup(live_server_url, bakery):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    session_id = asyncio.run(hang_up(live_server_url, bakery))
    types = wait_for_call_end(session_id)
    assert Call.objects.get(pk=session_id).end_reason == "hangup"
    assert types.index("message.confirmed") < types.index("call.ended")


async def silent_app(base_url: str, key: str) -> ParleyWebRTCClient:
    agent = Agent(ws_url(base_url), api_key=key, agents=["mara"], answer=True)
    async with running(agent):
        async with ParleyWebRTCClient(base_url=base_url, session_token=mint(base_url, key)) as client:
            await ready(client)
            client.ask("When do you open?")
            await client.wait_for(lambda: client.record.persona_finished_count() >= 1, "the brain's reply")
    return client


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_brain_answers_when_the_answering_app_is_silent(live_server_url, bakery):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    client = asyncio.run(silent_app(live_server_url, bakery))
    assert client.record.persona_messages(), "the visitor was left in silence"
    session_id = client.record.session_id
    types = list(CallEvent.objects.filter(call_id=session_id).values_list("type", flat=True))
    assert "bot.speaking" in types
