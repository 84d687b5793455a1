"""LLM tools in the pipeline: definitions to schemas, calls announced, results (or none) handed to the LLM."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest
from pipecat.frames.frames import EndFrame, InterruptionFrame, LLMContextFrame, LLMFullResponseEndFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_response_universal import LLMAssistantAggregator
from pipecat.workers.runner import WorkerRunner

from calls.pipeline.brain.config import BrainTool, brain_tools_from_definitions
from calls.pipeline.brain.openai import build_context, build_llm_service, tools_schema_build
from calls.pipeline.conversation import ConversationListener
from calls.pipeline.tools import INTERRUPTED_ERROR, PendingToolCall, ToolCalls
from tests.calls.pipeline.test_brain import (
    PIPELINE_TIMEOUT_SECONDS,
    FrameSink,
    count_of,
    openai_config,
    response_text,
)
from tests.fakes.openai_server import FakeOpenAIServer, reply_for_request

WEATHER_DEFINITION = {
    "type": "client",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
    "timeoutSeconds": 5,
}
ORDER_DEFINITION = {
    "type": "server",
    "name": "lookup_order",
    "description": "Look up a cake order.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
}


# --- definitions to the LLM's function schemas --------------------------------------------------


def test_tool_definitions_become_brain_tools_with_kind_timeout_and_schema():
    weather, order = brain_tools_from_definitions([WEATHER_DEFINITION, ORDER_DEFINITION])
    assert weather == BrainTool(
        name="get_weather",
        description="The weather in a city.",
        properties={"city": {"type": "string"}, "days": {"type": "integer"}},
        required=("city",),
        kind="client",
        timeout_seconds=5.0,
    )
    assert order.kind == "server" and order.timeout_seconds is None and order.required == ()


def test_brain_tools_become_openai_function_schemas_for_the_openai_brain_only():
    tools = brain_tools_from_definitions([WEATHER_DEFINITION, ORDER_DEFINITION])
    schema = tools_schema_build(config=openai_config("http://127.0.0.1:1/v1", tools=tools))
    assert schema is not None
    first = schema.standard_tools[0].to_default_dict()
    assert first == {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    }
    with_openai = openai_config("http://127.0.0.1:1/v1", tools=tools)
    assert build_context(with_openai).tools is not None
    assert not build_context(replace(with_openai, provider="builtin")).tools


# --- the fake model decides from the request ------------------------------------------------------


def request_with(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    tools = [
        {"type": "function", "function": {"name": d["name"], "parameters": d["parameters"]}}
        for d in (WEATHER_DEFINITION, ORDER_DEFINITION)
    ]
    return {"messages": messages, "tools": tools, **extra}


def test_the_fake_model_calls_the_tool_the_user_names_with_the_arguments_the_user_gave():
    reply = reply_for_request(
        request_with([{"role": "user", "content": 'Use get weather city="New York" days=3 please'}]), serial=4
    )
    (call,) = reply.calls
    assert call.name == "get_weather" and call.call_id == "call_4_0"
    assert json.loads("".join(call.argument_pieces)) == {"city": "New York", "days": 3}

    plain = reply_for_request(request_with([{"role": "user", "content": "Hello there"}]), serial=1)
    assert plain.pieces == ("OK.",)
    refused = reply_for_request(
        request_with([{"role": "user", "content": "get_weather city=Oslo"}], tool_choice="none"), serial=1
    )
    assert refused.pieces == ("OK.",)


def test_the_fake_model_answers_from_the_tool_results():
    messages = [
        {"role": "user", "content": "get_weather city=Oslo and lookup_order order_id=A1"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "lookup_order", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": json.dumps("rainy in Oslo")},
        {"role": "tool", "tool_call_id": "c2", "content": json.dumps({"error": "no such order"})},
    ]
    reply = reply_for_request(request_with(messages), serial=2)
    assert "".join(reply.pieces) == (
        "The get weather result is rainy in Oslo. Sorry, lookup order failed: no such order."
    )


# --- tool calls through the OpenAI service ---------------------------------------------------------


class RecordingListener(ConversationListener):
    """Keeps what the tool calls report; can answer a started call like a browser would."""

    def __init__(self, answer: dict[str, Any] | None = None) -> None:
        self.reports: list[tuple[str, Any]] = []
        self.answer = answer  # {"result": ...} or {"error": ...}; None: never answer
        self.tool_calls: ToolCalls | None = None
        self.changed = asyncio.Event()

    def _note(self, report: tuple[str, Any]) -> None:
        self.reports.append(report)
        self.changed.set()

    async def on_tool_call(self, *, message_id: str, calls: list[dict[str, str]]) -> None:
        self._note(("llm.tool_call", {"msgId": message_id, "toolCalls": calls}))

    async def on_tool_call_started(self, *, call: PendingToolCall) -> None:
        self._note(("started", call))
        if self.answer is not None and self.tool_calls is not None:
            assert self.tool_calls.resolve(
                tool_call_id=call.tool_call_id,
                result=self.answer.get("result"),
                error=self.answer.get("error"),
                kind=call.kind,
            )

    async def on_tool_call_completed(self, *, call: PendingToolCall, result: Any) -> None:
        self._note(("completed", result))

    async def on_tool_call_failed(self, *, call: PendingToolCall, error: str) -> None:
        self._note(("failed", error))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.reports]

    async def wait_for(self, kind: str) -> None:
        async def loop() -> None:
            while kind not in self.kinds():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), PIPELINE_TIMEOUT_SECONDS)


class ToolPipeline:
    """The OpenAI service with the persona's tools, its sink and the assistant aggregator, running."""

    def __init__(self, server: FakeOpenAIServer, listener: RecordingListener, *definitions: dict) -> None:
        self.config = openai_config(server.base_url, tools=brain_tools_from_definitions(definitions))
        self.tool_calls = listener.tool_calls = ToolCalls(
            tools=self.config.tools, listener=listener, default_timeout_seconds=0.3
        )
        service = build_llm_service(self.config)
        self.tool_calls.register(service)
        self.context = build_context(self.config)
        self.sink = FrameSink()
        self.worker = PipelineWorker(
            Pipeline([service, self.sink, LLMAssistantAggregator(self.context)]),
            enable_rtvi=False,
            idle_timeout_secs=None,
            enable_turn_tracking=False,
        )
        self._running: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ToolPipeline:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        self._running = asyncio.create_task(runner.run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._running is not None
        if not self._running.done():
            await self.worker.queue_frame(EndFrame())
            try:
                await asyncio.wait_for(asyncio.shield(self._running), PIPELINE_TIMEOUT_SECONDS)
            except TimeoutError:
                await self.worker.cancel()
                await self._running

    async def ask(self, text: str) -> None:
        self.context.add_message({"role": "user", "content": text})
        await self.worker.queue_frame(LLMContextFrame(self.context))

    async def wait_for_responses(self, count: int) -> None:
        await asyncio.wait_for(
            self.sink.wait_for(lambda frames: count_of(LLMFullResponseEndFrame)(frames) >= count),
            PIPELINE_TIMEOUT_SECONDS,
        )


async def test_a_client_tool_call_is_announced_answered_and_its_result_spoken_by_the_llm():
    listener = RecordingListener(answer={"result": "sunny and 21 degrees"})
    async with FakeOpenAIServer() as server:
        async with ToolPipeline(server, listener, WEATHER_DEFINITION, ORDER_DEFINITION) as pipeline:
            await pipeline.ask("What is the weather? Use get_weather city=Paris")
            await pipeline.wait_for_responses(2)
    assert listener.kinds() == ["llm.tool_call", "started", "completed"]
    announced = listener.reports[0][1]
    assert announced["msgId"].startswith("msg_")
    assert announced["toolCalls"] == [
        {"id": "call_1_0", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    ]
    started: PendingToolCall = listener.reports[1][1]
    assert (started.tool_call_id, started.kind, started.arguments) == (
        "call_1_0",
        "client",
        {"city": "Paris"},
    )
    assert started.message_id == announced["msgId"]
    assert listener.reports[2][1] == "sunny and 21 degrees"
    assert response_text(pipeline.sink.frames) == "The get weather result is sunny and 21 degrees."
    tool_message = next(m for m in server.requests[1].messages if m["role"] == "tool")
    assert tool_message == {"role": "tool", "tool_call_id": "call_1_0", "content": '"sunny and 21 degrees"'}
    assert not pipeline.tool_calls.pending


async def test_an_error_from_the_client_fails_the_call_and_the_llm_hears_the_error():
    listener = RecordingListener(answer={"error": "Error in handler: no location access"})
    async with FakeOpenAIServer() as server:
        async with ToolPipeline(server, listener, WEATHER_DEFINITION) as pipeline:
            await pipeline.ask("get_weather city=Rome")
            await pipeline.wait_for_responses(2)
    assert listener.kinds() == ["llm.tool_call", "started", "failed"]
    assert listener.reports[2][1] == "Error in handler: no location access"
    assert (
        response_text(pipeline.sink.frames)
        == "Sorry, get weather failed: Error in handler: no location access."
    )


async def test_a_server_tool_nobody_answers_times_out_with_no_handler_and_the_llm_goes_on():
    listener = RecordingListener(answer=None)
    async with FakeOpenAIServer() as server:
        async with ToolPipeline(server, listener, ORDER_DEFINITION) as pipeline:
            await pipeline.ask("Please lookup_order order_id=A-17")
            await pipeline.wait_for_responses(2)
    assert listener.kinds() == ["llm.tool_call", "started", "failed"]
    assert listener.reports[2][1].startswith("tool lookup_order has no handler")
    assert response_text(pipeline.sink.frames).startswith(
        "Sorry, lookup order failed: tool lookup_order has no"
    )


async def test_a_server_tool_is_answered_by_the_app_and_not_by_the_browser():
    listener = RecordingListener(answer=None)
    async with FakeOpenAIServer() as server:
        async with ToolPipeline(server, listener, ORDER_DEFINITION) as pipeline:
            pipeline.tool_calls._default_timeout_seconds = PIPELINE_TIMEOUT_SECONDS
            await pipeline.ask("lookup_order order_id=B-2")
            await listener.wait_for("started")
            call_id = listener.reports[1][1].tool_call_id
            assert not pipeline.tool_calls.resolve(
                tool_call_id=call_id, result="fake", error=None, kind="client"
            )
            assert not pipeline.tool_calls.resolve(tool_call_id="call_unknown", result="x", error=None)
            assert pipeline.tool_calls.resolve(
                tool_call_id=call_id, result={"status": "baked"}, error=None, kind="server"
            )
            await pipeline.wait_for_responses(2)
    assert listener.kinds() == ["llm.tool_call", "started", "completed"]
    assert response_text(pipeline.sink.frames) == "The lookup order result is status baked."


async def test_an_interruption_cancels_a_waiting_tool_call_and_reports_it_failed():
    listener = RecordingListener(answer=None)
    async with FakeOpenAIServer() as server:
        async with ToolPipeline(server, listener, WEATHER_DEFINITION) as pipeline:
            pipeline.tool_calls._default_timeout_seconds = PIPELINE_TIMEOUT_SECONDS
            await pipeline.ask("get_weather city=Lima")
            await listener.wait_for("started")
            await pipeline.worker.queue_frame(InterruptionFrame())
            await listener.wait_for("failed")
            await asyncio.sleep(0.3)  # nothing else may follow: no result, no new request
    assert listener.kinds() == ["llm.tool_call", "started", "failed"]
    assert listener.reports[2][1] == INTERRUPTED_ERROR
    assert not pipeline.tool_calls.pending
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", ["client", "server"])
async def test_ending_the_conversation_leaves_no_waiting_call(kind):
    listener = RecordingListener(answer=None)
    async with FakeOpenAIServer() as server:
        definition = {**WEATHER_DEFINITION, "type": kind}
        async with ToolPipeline(server, listener, definition) as pipeline:
            pipeline.tool_calls._default_timeout_seconds = PIPELINE_TIMEOUT_SECONDS
            await pipeline.ask("get_weather city=Oslo")
            await listener.wait_for("started")
            pipeline.tool_calls.cancel_all()
            await listener.wait_for("failed")
    assert not pipeline.tool_calls.pending
