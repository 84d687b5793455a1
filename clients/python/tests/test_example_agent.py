"""The example app examples/agent_llm.py against the fake Parley and a scripted OpenAI-compatible LLM."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import WAIT_SECONDS, event_data, running, wait_until
from fake_parley import API_KEY

httpx = pytest.importorskip("httpx")

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "agent_llm.py"
pytestmark = pytest.mark.skipif(not EXAMPLE.exists(), reason="runs in the Parley repository only")


def example_module() -> Any:
    spec = importlib.util.spec_from_file_location("agent_llm", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["agent_llm"] = module
    spec.loader.exec_module(module)
    return module


def sse(*chunks: dict[str, Any]) -> str:
    lines = [f"data: {json.dumps({'choices': [{'index': 0, 'delta': chunk}]})}\n\n" for chunk in chunks]
    return "".join(lines) + "data: [DONE]\n\n"


class ScriptedLlm:
    """Answers /v1/chat/completions with the next scripted stream and records each request."""

    def __init__(self, *streams: str) -> None:
        self.streams = list(streams)
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        assert request.headers["Authorization"] == "Bearer llm-key"
        self.requests.append(json.loads(request.content))
        return httpx.Response(200, text=self.streams.pop(0), headers={"content-type": "text/event-stream"})


async def test_the_example_streams_answers_runs_its_tool_and_hangs_up_on_goodbye(fake, make_agent):
    example = example_module()
    settings = example.Settings(
        parley_url=fake.url,
        parley_api_key=API_KEY,
        persona="mara",
        llm_base_url="http://llm.test/v1",
        llm_model="tiny",
        llm_api_key="llm-key",
        llm_tools=True,
    )
    tool_call = {
        "index": 0,
        "id": "call_1",
        "function": {"name": "check_order_status", "arguments": '{"order_'},
    }
    llm = ScriptedLlm(
        sse(
            {"role": "assistant"},
            {"tool_calls": [tool_call]},
            {"tool_calls": [{"index": 0, "function": {"arguments": 'id": "1002"}'}}]},
        ),
        sse({"content": "Your order is "}, {"content": "in the oven."}),
    )

    async def play_out_what_is_said(frame: dict[str, Any], server: Any) -> None:
        if frame.get("action") in {"say", "reply"}:
            await server.publish("bot.finished", event_data(messageId=frame["messageId"]))

    fake.on_command = play_out_what_is_said
    async with httpx.AsyncClient(transport=httpx.MockTransport(llm)) as http:
        agent = example.agent_build(settings, http, command_timeout=WAIT_SECONDS, backoff_first=0.05)
        async with running(agent):
            await fake.publish("call.started", event_data(transport="chat"))
            await fake.publish("user.message", event_data(text="Where is order 1002?", messageId="msg_u1"))
            await fake.publish("turn.end", event_data(text="Where is order 1002?", probability=0.9))
            await wait_until(lambda: any(frame.get("op") == "end" for frame in fake.actions("replyStream")))

            await fake.publish(
                "llm.tool_call",
                event_data(
                    msgId="tc_1",
                    toolCalls=[
                        {"id": "t1", "name": "check_order_status", "arguments": '{"order_id": "1001"}'}
                    ],
                ),
            )
            await wait_until(lambda: fake.actions("toolResult"))

            await fake.publish("user.message", event_data(text="Great, thanks. Bye!", messageId="msg_u2"))
            await fake.publish("turn.end", event_data(text="Great, thanks. Bye!", probability=0.95))
            await wait_until(lambda: fake.actions("hangup"))

    stream = [
        (frame["op"], frame.get("text"), frame.get("inReplyTo")) for frame in fake.actions("replyStream")
    ]
    assert stream == [
        ("start", None, "msg_u1"),
        ("chunk", "Your order is ", None),
        ("chunk", "in the oven.", None),
        ("end", None, None),
    ]
    # The model's tool call was run locally and its result sent back to the model.
    second = llm.requests[1]["messages"]
    assert second[-2]["tool_calls"][0]["function"] == {
        "name": "check_order_status",
        "arguments": '{"order_id": "1002"}',
    }
    assert json.loads(second[-1]["content"])["status"] == "baking"
    assert llm.requests[0]["tools"][0]["function"]["name"] == "check_order_status"

    (tool_result,) = fake.actions("toolResult")
    assert tool_result["msgId"] == "tc_1"
    assert tool_result["results"] == [
        {"toolCallId": "t1", "result": {"order_id": "1001", **example.ORDERS["1001"]}}
    ]
    (said,) = fake.actions("reply")
    assert said["text"] == example.GOODBYE_LINE
    assert said["inReplyTo"] == "msg_u2", "the goodbye answers the user's turn"
    assert fake.frames.index(said) < fake.frames.index(fake.actions("hangup")[0])
    assert len(llm.requests) == 2, "a goodbye is not sent to the LLM"


async def test_a_failing_llm_gets_an_apology_instead_of_silence(fake):
    example = example_module()
    settings = example.Settings(fake.url, API_KEY, "mara", "http://llm.test/v1", "tiny", "", False)

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="model loading")

    async with httpx.AsyncClient(transport=httpx.MockTransport(broken)) as http:
        agent = example.agent_build(settings, http, command_timeout=WAIT_SECONDS)
        async with running(agent):
            await fake.publish("turn.end", event_data(text="Hello?", probability=0.9))
            await wait_until(lambda: fake.actions("say"))
    assert fake.actions("say")[0]["text"] == example.APOLOGY_LINE


async def test_with_answer_off_the_example_only_answers_the_server_tool(fake):
    example = example_module()
    settings = example.Settings(
        fake.url, API_KEY, "mara", "http://llm.test/v1", "tiny", "", True, answer=False
    )
    llm = ScriptedLlm()  # any request would fail: no stream is scripted
    async with httpx.AsyncClient(transport=httpx.MockTransport(llm)) as http:
        agent = example.agent_build(settings, http, command_timeout=WAIT_SECONDS)
        async with running(agent):
            await fake.publish("turn.end", event_data(text="Where is order 1003?", probability=0.9))
            tool_calls = [{"id": "t1", "name": "check_order_status", "arguments": '{"order_id": "#1003"}'}]
            await fake.publish("llm.tool_call", event_data(msgId="tc_9", toolCalls=tool_calls))
            await wait_until(lambda: fake.actions("toolResult"))
    assert fake.actions("subscribe")[0]["answer"] is False
    assert fake.actions("toolResult")[0]["results"][0]["result"]["status"] == "delivered"
    assert not llm.requests and not fake.actions("replyStream") and not fake.actions("say")
