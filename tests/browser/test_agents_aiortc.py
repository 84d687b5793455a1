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

import httpx
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
    make_persona(organization, "mara", greeting="", skip_greeting=True)  # answer timeout 3 s
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


ORDER_TOOL = {
    "type": "server",
    "name": "check_order",
    "description": "The status of a customer's order, from the shop's system.",
    "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
}


@pytest.fixture
def order_persona(make_organization, make_persona, fake_openai):
    organization = make_organization("Bakery", slug="bakery")
    make_persona(
        organization,
        "mara",
        greeting="",
        skip_greeting=True,
        brain_provider="openai",
        llm_base_url=fake_openai.base_url,
        llm_model="fake-model",
        llm_api_key="sk-test-agents",
        tools=[ORDER_TOOL],
    )
    return api_key_create(organization=organization, name="agent e2e").raw_key


async def server_tool(base_url: str, key: str) -> tuple[ParleyWebRTCClient, list[dict[str, Any]]]:
    agent = Agent(ws_url(base_url), api_key=key, agents=["mara"])  # watches and answers tools only
    calls: list[dict[str, Any]] = []

    @agent.on("llm.tool_call")
    async def tool(event: dict[str, Any], call: Any) -> None:
        calls.append(event)
        results = [{"toolCallId": item["id"], "result": "ready for pickup"} for item in event["toolCalls"]]
        await call.tool_result(event["msgId"], results)

    async with running(agent):
        async with ParleyWebRTCClient(base_url=base_url, session_token=mint(base_url, key)) as client:
            await ready(client)
            client.ask("Where is my order? Use check_order order=A17")
            await client.wait_for(lambda: client.record.persona_finished_count() >= 1, "the persona's answer")
    return client, calls


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_an_app_answers_the_personas_server_tool_and_the_result_is_spoken(live_server_url, order_persona):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    client, calls = asyncio.run(server_tool(live_server_url, order_persona))
    (call,) = calls
    assert [item["name"] for item in call["toolCalls"]] == ["check_order"]
    assert client.record.persona_messages() == ["The check order result is ready for pickup."]
    assert not client.record.data_of("toolCallFailed")
    # What the tool came to is stored for review, beside the llm.tool_call that names it.
    from calls.review.models import ToolResult

    (stored,) = ToolResult.objects.filter(call_id=client.record.session_id)
    assert (stored.tool_call_id, stored.name, stored.kind) == (
        call["toolCalls"][0]["id"],
        "check_order",
        "server",
    )
    assert stored.result == "ready for pickup" and stored.error == "" and stored.message_id == call["msgId"]


LONG_STREAM = (
    "Let me tell you the whole story of our bakery. ",
    "It began sixty years ago in a tiny kitchen behind the church. ",
    "My grandmother baked rye bread for the neighbours every Saturday. ",
    "Soon the whole town was queuing at her window, and she bought a second oven. ",
    "Then my father took over, and he added cakes, pies and the famous cinnamon rolls. ",
)
LATE_CHUNK = "This sentence comes after the abort and must never be heard. "


async def spoken_and_barged_in(
    base_url: str, key: str
) -> tuple[ParleyWebRTCClient, list[dict[str, Any]], list]:
    from tests.fakes.spoken import ScriptedMicrophone, spoken_pcm

    agent = Agent(ws_url(base_url), api_key=key, agents=["mara"], answer=True)
    seen: list[dict[str, Any]] = []
    late: list[Any] = []

    @agent.on("*")
    async def everything(event: dict[str, Any], call: Any) -> None:
        seen.append(event)

    @agent.on("turn.end")
    async def answer(event: dict[str, Any], call: Any) -> None:
        if late or any(e["event"] == "reply.aborted" for e in seen):  # the question asked over the story
            await call.reply("We open at seven.")
            return
        async with call.reply_stream() as stream:
            for chunk in LONG_STREAM:
                await stream.write(chunk)
            # The user speaks over the story: later text is ignored.
            for _ in range(100):
                if stream.aborted:
                    break
                await asyncio.sleep(0.1)
            await stream.write(LATE_CHUNK)
            late.append((stream.aborted, getattr(stream, "abort_reason", None)))

    microphone = ScriptedMicrophone()
    async with running(agent):
        async with ParleyWebRTCClient(
            base_url=base_url,
            session_token=mint(base_url, key),
            microphone=microphone,
            step_timeout_seconds=60,
        ) as client:
            await ready(client)
            await asyncio.sleep(1.0)
            microphone.say(await spoken_pcm("Can you tell me the story of your bakery?"))
            record = client.record
            await client.wait_for(lambda: record.speech_texts("persona"), "the story to start")
            await asyncio.sleep(2.5)
            microphone.say(await spoken_pcm("Sorry, what time do you open tomorrow morning?"))
            await client.wait_for(lambda: late, "the app to see the abort")
            await asyncio.sleep(3.0)
    return client, seen, late


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_spoken_question_gets_the_apps_streamed_answer_and_a_barge_in_aborts_it(live_server_url, bakery):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    client, seen, late = asyncio.run(spoken_and_barged_in(live_server_url, bakery))
    record = client.record
    names = [event["event"] for event in seen]
    assert "user.message" in names and "turn.end" in names
    story_id = next(event["messageId"] for event in seen if event["event"] == "bot.speaking")
    aborted = [event for event in seen if event["event"] == "reply.aborted"]
    assert aborted and aborted[0]["messageId"] == story_id
    assert aborted[0]["reason"] in {"interrupted", "turn.continued"}
    assert late == [(True, aborted[0]["reason"])]
    heard = " ".join(
        chunk["content"] for chunk in record.speech_texts("persona") if chunk["message_id"] == story_id
    )
    assert heard.split()[:4] == "Let me tell you".split()
    assert "abort" not in heard and "Then my father" not in heard, (
        "words of the stream played after the abort"
    )


async def dropped_and_resumed(base_url: str, key: str) -> tuple[str, list[dict[str, Any]], int]:
    agent = Agent(ws_url(base_url), api_key=key, agents=["mara"])
    seen: list[dict[str, Any]] = []
    subscriptions = 0

    @agent.on("*")
    async def everything(event: dict[str, Any], call: Any) -> None:
        seen.append(event)

    async with running(agent):
        async with ParleyWebRTCClient(base_url=base_url, session_token=mint(base_url, key)) as client:
            await ready(client)
            record = client.record
            for number, line in enumerate(("One loaf, please.", "Two rolls as well.", "And a cake.")):
                async with httpx.AsyncClient() as http:
                    response = await http.post(
                        f"{base_url}/talk?session_id={record.session_id}", json={"content": line}
                    )
                assert response.status_code == 200
                if number == 1:
                    # The connection drops while the persona speaks: what happens meanwhile is
                    # missed live and replayed after the reconnection.
                    assert agent._socket is not None
                    agent._socket.transport.abort()
                    subscriptions += 1
                await client.wait_for(lambda n=number: record.persona_finished_count() >= n + 1, "the line")
            await asyncio.sleep(1.0)
    return record.session_id, seen, subscriptions


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_an_app_that_reconnects_resumes_from_its_cursor_losing_and_repeating_nothing(live_server_url, bakery):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    session_id, seen, drops = asyncio.run(dropped_and_resumed(live_server_url, bakery))
    assert drops == 1
    stored = list(
        CallEvent.objects.filter(call_id=session_id)
        .exclude(type="call.ended")
        .order_by("cursor")
        .values_list("cursor", "type")
    )
    received = [
        (event["id"], event["event"])
        for event in seen
        if event.get("id") is not None and event.get("callId") == session_id
    ]
    assert received == stored[: len(received)] and len(received) >= len(stored) - 1, (received, stored)
    assert len({cursor for cursor, _ in received}) == len(received), "an event came twice"
