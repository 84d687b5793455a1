"""LLM tools end to end: an aiortc client answers a client tool the persona's LLM calls.

The persona's brain is the OpenAI-compatible service pointed at the local fake, which calls
a tool when the user's message names it and then answers from the tool's result. The
client (bench/webrtc_client.py, behaving as the Anam SDK) types a question, receives
`toolCallStarted` on the data channel, answers with `tool_result` as the SDK does, gets
`toolCallCompleted`, and hears the persona's reply built on the result. A client that never
answers gets `toolCallFailed` after the tool's timeout, and the persona still answers.
"""

from __future__ import annotations

import asyncio

import pytest

from bench.webrtc_client import ParleyWebRTCClient
from calls.models import CallEvent, Message
from personas.services import api_key_create
from tests.browser.test_session_aiortc import mint, wait_for_call_end

WEATHER_TOOL = {
    "type": "client",
    "name": "get_weather",
    "description": "The weather where the visitor is, from their browser.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
# Nobody answers this one: its short timeout keeps the test quick.
LOCATION_TOOL = {
    "type": "client",
    "name": "get_location",
    "description": "Where the visitor is.",
    "parameters": {"type": "object", "properties": {}},
    "timeoutSeconds": 1,
}
# Exactly the fields the Anam SDK reads from a toolCall* frame (docs/anam-sdk-protocol.md §4.1).
TOOL_FRAME_FIELDS = {
    "event_uid",
    "session_id",
    "tool_call_id",
    "tool_name",
    "tool_type",
    "arguments",
    "timestamp",
    "timestamp_user_action",
    "user_action_correlation_id",
}


@pytest.fixture
def weather_persona(make_organization, make_persona, fake_openai):
    organization = make_organization("Bakery", slug="bakery")
    make_persona(
        organization,
        "mara",
        greeting="",
        skip_greeting=True,
        brain_provider="openai",
        llm_base_url=fake_openai.base_url,
        llm_model="fake-model",
        llm_api_key="sk-test-tools",
        tools=[WEATHER_TOOL, LOCATION_TOOL],
    )
    return api_key_create(organization=organization, name="e2e").raw_key


async def ask_and_answer_the_tool(base_url: str, token: str) -> ParleyWebRTCClient:
    async with ParleyWebRTCClient(base_url=base_url, session_token=token) as client:
        record = client.record
        await client.wait_for(lambda: any(s["actionType"] == "sessionready" for s in record.signals), "ready")
        client.ask("Should I bring an umbrella? Check get_weather city=Paris")
        await client.wait_for(lambda: record.data_of("toolCallStarted"), "toolCallStarted")
        started = record.data_of("toolCallStarted")[0]
        # Exactly what the SDK's ToolCallManager sends back after its handler returned.
        client.send_data(
            {
                "session_id": started["session_id"],
                "message_type": "tool_result",
                "tool_call_id": started["tool_call_id"],
                "user_action_correlation_id": started["user_action_correlation_id"],
                "timestamp_user_action": started["timestamp_user_action"],
                "result": "light rain, 14 degrees",
            }
        )
        await client.wait_for(lambda: record.data_of("toolCallCompleted"), "toolCallCompleted")
        await client.wait_for(lambda: record.persona_finished_count() >= 1, "the persona's answer")
    return client


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_client_tool_is_started_answered_completed_and_its_result_spoken(
    live_server_url, weather_persona, fake_openai
):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    client = asyncio.run(ask_and_answer_the_tool(live_server_url, mint(live_server_url, weather_persona)))
    record = client.record

    (started,) = record.data_of("toolCallStarted")
    assert set(started) == TOOL_FRAME_FIELDS
    assert started["session_id"] == record.session_id
    assert (started["tool_name"], started["tool_type"]) == ("get_weather", "client")
    assert started["arguments"] == {"city": "Paris"}
    (completed,) = record.data_of("toolCallCompleted")
    assert set(completed) == TOOL_FRAME_FIELDS | {"result"}
    assert completed["tool_call_id"] == started["tool_call_id"]
    assert completed["result"] == "light rain, 14 degrees"
    assert completed["timestamp"] >= started["timestamp"]
    assert not record.data_of("toolCallFailed")

    (answer,) = record.persona_messages()
    assert answer == "The get weather result is light rain, 14 degrees."
    # The LLM got the browser's result as the tool message.
    tool_messages = [m for m in fake_openai.requests[-1].messages if m["role"] == "tool"]
    assert tool_messages == [
        {"role": "tool", "tool_call_id": started["tool_call_id"], "content": '"light rain, 14 degrees"'}
    ]

    types = wait_for_call_end(record.session_id)
    assert types.index("user.message") < types.index("llm.tool_call") < types.index("bot.speaking")
    event = CallEvent.objects.get(call_id=record.session_id, type="llm.tool_call")
    assert event.data == {
        "callId": record.session_id,
        "agent": "mara",
        "msgId": started["user_action_correlation_id"],
        "toolCalls": [
            {"id": started["tool_call_id"], "name": "get_weather", "arguments": '{"city": "Paris"}'}
        ],
    }
    persona_text = Message.objects.get(call_id=record.session_id, role="persona").text
    assert persona_text == "The get weather result is light rain, 14 degrees."


async def ask_and_never_answer(base_url: str, token: str) -> ParleyWebRTCClient:
    async with ParleyWebRTCClient(base_url=base_url, session_token=token) as client:
        record = client.record
        await client.wait_for(lambda: any(s["actionType"] == "sessionready" for s in record.signals), "ready")
        client.ask("Where am I? Use get_location")
        await client.wait_for(lambda: record.data_of("toolCallStarted"), "toolCallStarted")
        await client.wait_for(lambda: record.data_of("toolCallFailed"), "toolCallFailed")
        await client.wait_for(lambda: record.persona_finished_count() >= 1, "the persona's answer")
    return client


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_client_tool_that_gets_no_result_fails_after_its_timeout_and_the_persona_still_answers(
    live_server_url, weather_persona
):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    client = asyncio.run(ask_and_never_answer(live_server_url, mint(live_server_url, weather_persona)))
    record = client.record

    (started,) = record.data_of("toolCallStarted")
    (failed,) = record.data_of("toolCallFailed")
    assert set(failed) == TOOL_FRAME_FIELDS | {"error_message"}
    assert failed["tool_call_id"] == started["tool_call_id"] and failed["tool_name"] == "get_location"
    assert failed["error_message"] == "tool get_location: the client sent no result within 1 s"
    assert not record.data_of("toolCallCompleted")
    (answer,) = record.persona_messages()
    assert answer == "Sorry, get location failed: tool get_location: the client sent no result within 1 s."
    assert "llm.tool_call" in wait_for_call_end(record.session_id)


async def interrupt_a_waiting_tool(base_url: str, token: str) -> ParleyWebRTCClient:
    async with ParleyWebRTCClient(base_url=base_url, session_token=token) as client:
        record = client.record
        await client.wait_for(lambda: any(s["actionType"] == "sessionready" for s in record.signals), "ready")
        client.ask("What is the weather? get_weather city=Oslo")
        await client.wait_for(lambda: record.data_of("toolCallStarted"), "toolCallStarted")
        client.interrupt()
        await client.wait_for(lambda: record.data_of("toolCallFailed"), "toolCallFailed")
        # The conversation goes on after the cancelled call.
        client.ask("Never mind. Hello!")
        await client.wait_for(lambda: record.persona_finished_count() >= 1, "the next answer")
    return client


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_interrupting_cancels_a_waiting_client_tool_and_the_conversation_goes_on(
    live_server_url, weather_persona, fake_openai
):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    client = asyncio.run(interrupt_a_waiting_tool(live_server_url, mint(live_server_url, weather_persona)))
    record = client.record

    (started,) = record.data_of("toolCallStarted")
    (failed,) = record.data_of("toolCallFailed")
    assert failed["tool_call_id"] == started["tool_call_id"]
    assert failed["error_message"].startswith("interrupted")
    assert not record.data_of("toolCallCompleted")
    assert record.persona_messages() == ["OK."]
    # The cancelled call was settled in the context the LLM saw next.
    last = fake_openai.requests[-1].messages
    assert last[-1] == {"role": "user", "content": "Never mind. Hello!"}
    assert any(m["role"] == "tool" and m["tool_call_id"] == started["tool_call_id"] for m in last)
