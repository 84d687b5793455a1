"""An app that gives a Parley persona its own brain: any OpenAI-compatible LLM, streamed.

It subscribes to one persona with answer=True (the persona's own brain stays silent), answers
every finished turn with a streamed reply, keeps each call's history, answers the tool
`check_order_status` (for its own LLM and for the persona's server-side LLM alike), and says
goodbye and hangs up when the user takes leave. See examples/README.md to run it.

Environment: PARLEY_URL (ws://127.0.0.1:8000), PARLEY_API_KEY, PARLEY_AGENT (mara),
LLM_BASE_URL (http://127.0.0.1:11434/v1), LLM_MODEL (llama3.2), LLM_API_KEY (none),
LLM_TOOLS (1; 0 for a model server without tool calling), PARLEY_ANSWER (1; 0 to leave the
turns to the persona's own brain and only answer its server tool).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from parley_agent import Agent, AgentError, Call

logger = logging.getLogger("agent_llm")

# A streamed answer may take a while to start on a small local model; connecting may not.
LLM_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
# Rounds of tool calls one answer may take before the model must speak.
MAX_TOOL_ROUNDS = 3
# How long the goodbye line may take to play out before the call is ended anyway.
GOODBYE_PLAYOUT_SECONDS = 8.0

SYSTEM_PROMPT = (
    "You are Mara, who answers the phone at a small neighbourhood bakery. Speak in short, "
    "friendly sentences, one to three at a time: your words are spoken aloud, so no lists, "
    "markdown or emoji. To tell a caller where their order is, use check_order_status."
)
GOODBYE_LINE = "Thanks for calling, goodbye!"
APOLOGY_LINE = "Sorry, I can't answer that right now. Could you ask me again in a moment?"
GOODBYE = re.compile(r"\b(good ?bye|bye|see you|that'?s all|talk to you later)\b", re.IGNORECASE)

# The tool: a deterministic stand-in for the bakery's order book.
ORDERS = {
    "1001": {"status": "ready", "detail": "baked this morning, ready for pickup at the counter"},
    "1002": {"status": "baking", "detail": "in the oven, ready after 3 pm"},
    "1003": {"status": "delivered", "detail": "delivered yesterday at 10 am"},
}
CHECK_ORDER_STATUS = {
    "type": "function",
    "function": {
        "name": "check_order_status",
        "description": "Look up a bakery order by its number and say where it is.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string", "description": "The order number, e.g. 1001"}},
            "required": ["order_id"],
        },
    },
}


def check_order_status(arguments: str) -> dict[str, Any]:
    """The tool itself; `arguments` is the JSON string the LLM produced."""
    try:
        order_id = str(json.loads(arguments or "{}").get("order_id", "")).strip().lstrip("#")
    except (ValueError, AttributeError):
        return {"error": "arguments must be a JSON object with order_id"}
    order = ORDERS.get(order_id)
    if order is None:
        return {"order_id": order_id, "status": "unknown", "detail": "no order with that number"}
    return {"order_id": order_id, **order}


def tool_run(name: str, arguments: str) -> dict[str, Any]:
    if name == "check_order_status":
        return check_order_status(arguments)
    return {"error": f"unknown tool {name}"}


@dataclass(frozen=True)
class Settings:
    parley_url: str
    parley_api_key: str
    persona: str
    llm_base_url: str
    llm_model: str
    llm_api_key: str
    llm_tools: bool
    answer: bool = True

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            parley_url=os.environ.get("PARLEY_URL", "ws://127.0.0.1:8000"),
            parley_api_key=os.environ.get("PARLEY_API_KEY", ""),
            persona=os.environ.get("PARLEY_AGENT", "mara"),
            llm_base_url=os.environ.get("LLM_BASE_URL", "http://127.0.0.1:11434/v1").rstrip("/"),
            llm_model=os.environ.get("LLM_MODEL", "llama3.2"),
            llm_api_key=os.environ.get("LLM_API_KEY", ""),
            llm_tools=os.environ.get("LLM_TOOLS", "1") != "0",
            answer=os.environ.get("PARLEY_ANSWER", "1") != "0",
        )


@dataclass
class Conversation:
    """What the app remembers of one call."""

    messages: list[dict[str, Any]] = field(
        default_factory=lambda: [{"role": "system", "content": SYSTEM_PROMPT}]
    )
    last_user_message_id: str | None = None
    replying: asyncio.Task[Any] | None = None
    played: dict[str, asyncio.Event] = field(default_factory=dict)  # messageId -> played out
    ending: bool = False


class LlmBrain:
    """Handlers that answer a persona's calls with an OpenAI-compatible chat completions API."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http
        self.conversations: dict[str, Conversation] = {}

    def attach(self, agent: Agent) -> None:
        agent.on("llm.tool_call", self.on_tool_call)
        if not agent.answer:
            return  # the persona's own brain speaks; this app only runs its tool
        agent.on("call.started", self.on_call_started)
        agent.on("user.message", self.on_user_message)
        agent.on("turn.end", self.on_turn_end)
        agent.on("bot.finished", self.on_played)
        agent.on("bot.interrupted", self.on_played)
        agent.on("session.idle_warning", self.on_idle_warning)
        agent.on("call.ended", self.on_call_ended)

    def conversation(self, call: Call) -> Conversation:
        return self.conversations.setdefault(call.id, Conversation())

    # --- Events -----------------------------------------------------------------------

    async def on_call_started(self, event: dict[str, Any], call: Call) -> None:
        self.conversation(call)
        logger.info("call %s started on %s", call.id, event.get("transport"))

    async def on_user_message(self, event: dict[str, Any], call: Call) -> None:
        self.conversation(call).last_user_message_id = event.get("messageId")

    async def on_turn_end(self, event: dict[str, Any], call: Call) -> None:
        conversation = self.conversation(call)
        text = str(event.get("text") or "").strip()
        if not text or conversation.ending:
            return
        # A newer turn replaces an answer still being written (Parley drops the old one anyway).
        previous, conversation.replying = conversation.replying, asyncio.current_task()
        if previous is not None and not previous.done():
            previous.cancel()
        conversation.messages.append({"role": "user", "content": text})
        if GOODBYE.search(text):
            await self.goodbye(call, conversation)
            return
        await self.answer(call, conversation)

    async def on_tool_call(self, event: dict[str, Any], call: Call) -> None:
        """The persona's own (server-side) LLM asks for a tool: run it here, send the results."""
        results = [
            {
                "toolCallId": tool_call["id"],
                "result": tool_run(tool_call["name"], tool_call.get("arguments", "")),
            }
            for tool_call in event.get("toolCalls", [])
        ]
        await call.tool_result(event["msgId"], results)

    async def on_played(self, event: dict[str, Any], call: Call) -> None:
        played = self.conversation(call).played.get(str(event.get("messageId")))
        if played is not None:
            played.set()

    async def on_idle_warning(self, event: dict[str, Any], call: Call) -> None:
        await call.say("Are you still there?")

    async def on_call_ended(self, event: dict[str, Any], call: Call) -> None:
        conversation = self.conversations.pop(call.id, None)
        if conversation is not None and conversation.replying is not None:
            conversation.replying.cancel()
        logger.info("call %s ended (%s)", call.id, event.get("reason"))

    # --- Answers ----------------------------------------------------------------------

    async def answer(self, call: Call, conversation: Conversation) -> None:
        stream = call.reply_stream(in_reply_to=conversation.last_user_message_id)
        try:
            async with stream:
                async for piece in self.llm_stream(conversation.messages):
                    if stream.aborted:  # the user went on or cut in: stop paying for tokens
                        break
                    await stream.write(piece)
        except (httpx.HTTPError, ValueError) as error:
            logger.warning("LLM failed for call %s: %s", call.id, error)
            if not stream.text:
                await call.say(APOLOGY_LINE)
            return
        if stream.text:
            conversation.messages.append({"role": "assistant", "content": stream.text})

    async def goodbye(self, call: Call, conversation: Conversation) -> None:
        conversation.ending = True
        played = asyncio.Event()
        try:
            # A reply, not a say: it answers the user's turn, so the persona's own brain does not
            # answer it too while the goodbye plays.
            ack = await call.reply(GOODBYE_LINE, in_reply_to=conversation.last_user_message_id)
            conversation.played[ack["messageId"]] = played
            await asyncio.wait_for(played.wait(), GOODBYE_PLAYOUT_SECONDS)
        except (AgentError, TimeoutError) as error:
            logger.info("goodbye on call %s not confirmed as played (%s); hanging up", call.id, repr(error))
        await call.hangup()

    async def llm_stream(self, messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        """The model's answer as text pieces; tool calls are run here and the model asked again
        (the tool messages go into `messages`, so the history has them)."""
        for _ in range(MAX_TOOL_ROUNDS + 1):
            tool_calls: dict[int, dict[str, Any]] = {}
            async for delta in self.completion_deltas(messages):
                if delta.get("content"):
                    yield delta["content"]
                for part in delta.get("tool_calls") or ():
                    slot = tool_calls.setdefault(
                        part.get("index", 0), {"id": "", "name": "", "arguments": ""}
                    )
                    function = part.get("function") or {}
                    slot["id"] = part.get("id") or slot["id"]
                    slot["name"] += function.get("name") or ""
                    slot["arguments"] += function.get("arguments") or ""
            if not tool_calls:
                return
            calls = [tool_calls[index] for index in sorted(tool_calls)]
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": c["id"],
                            "type": "function",
                            "function": {"name": c["name"], "arguments": c["arguments"]},
                        }
                        for c in calls
                    ],
                }
            )
            for c in calls:
                result = tool_run(c["name"], c["arguments"])
                logger.info("tool %s(%s) -> %s", c["name"], c["arguments"], result)
                messages.append({"role": "tool", "tool_call_id": c["id"], "content": json.dumps(result)})

    async def completion_deltas(self, messages: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """`POST {LLM_BASE_URL}/chat/completions` with stream=true: each choice's delta."""
        body: dict[str, Any] = {"model": self.settings.llm_model, "messages": messages, "stream": True}
        if self.settings.llm_tools:
            body["tools"] = [CHECK_ORDER_STATUS]
        headers = (
            {"Authorization": f"Bearer {self.settings.llm_api_key}"} if self.settings.llm_api_key else {}
        )
        url = f"{self.settings.llm_base_url}/chat/completions"
        async with self.http.stream("POST", url, json=body, headers=headers, timeout=LLM_TIMEOUT) as response:
            if response.status_code >= 400:
                detail = (await response.aread()).decode(errors="replace")[:300]
                raise httpx.HTTPStatusError(
                    f"{response.status_code} from {url}: {detail}",
                    request=response.request,
                    response=response,
                )
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    return
                for choice in json.loads(data).get("choices") or ():
                    yield choice.get("delta") or {}


def agent_build(settings: Settings, http: httpx.AsyncClient, **options: Any) -> Agent:
    agent = Agent(
        settings.parley_url,
        api_key=settings.parley_api_key,
        agents=[settings.persona],
        answer=settings.answer,
        **options,
    )
    LlmBrain(settings, http).attach(agent)
    return agent


async def main() -> None:
    settings = Settings.from_env()
    if not settings.parley_api_key:
        raise SystemExit("Set PARLEY_API_KEY (create an API key in the admin at /admin/personas/apikey/).")
    async with httpx.AsyncClient() as http:
        agent = agent_build(settings, http)
        logger.info(
            "answering for %s on %s with %s at %s",
            settings.persona,
            agent.url,
            settings.llm_model,
            settings.llm_base_url,
        )
        await agent.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
