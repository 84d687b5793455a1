"""The persona's answer to a WhatsApp thread: its brain, given the thread as history.

The same brains as a call's (`calls.pipeline.brain`): the built-in one (offline), or the
persona's OpenAI-compatible LLM with its system prompt, knowledge and the thread so far. Written
replies, so the LLM is told it answers in writing. An LLM that fails or times out falls back to
the built-in brain: a contact is never left without an answer.

The LLM is offered the persona's tools; their calls are answered by an app over the agent API
(`calls.whatsapp.tools`), as on a call.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from calls.pipeline.brain.builtin import BuiltinBrain
from calls.pipeline.brain.config import BrainConfig
from calls.pipeline.brain.openai import DEFAULT_OPENAI_MODEL, system_prompt_compose
from calls.whatsapp.tools import AskedCall, tool_result_text

logger = logging.getLogger(__name__)

# Runs a batch of the LLM's tool calls: a result (or {"error": ...}) for every call, by its id.
ToolRunner = Callable[[list[AskedCall]], Awaitable[dict[str, Any]]]
# Rounds of tool calls in one answer; the last completion is asked for words only.
MAX_TOOL_ROUNDS = 3

# How much of the thread the LLM sees (messages) and how long it may take (seconds).
HISTORY_MESSAGES = 30
LLM_TIMEOUT_SECONDS = 30.0
# A written answer may be longer than a spoken one, well within WhatsApp's 4096 characters.
MAX_COMPLETION_TOKENS = 700
WRITTEN_CHANNEL_NOTE = (
    "This conversation is on WhatsApp, in writing: answer as a short text message, plain text, "
    "no markdown headings."
)

# One built-in brain per persona and configuration in this process (its knowledge index is
# built once); the turn count that varies its phrasing is set per answer from the thread.
_builtin_brains: dict[tuple[str, int], BuiltinBrain] = {}


@dataclass(frozen=True)
class ThreadLine:
    """One message of the thread as the brain sees it."""

    role: str  # "user" (the contact) or "assistant" (the persona, staff or an app)
    text: str


def _builtin_brain(config: BrainConfig) -> BuiltinBrain:
    key = (config.persona_id, hash(config))
    brain = _builtin_brains.get(key)
    if brain is None:
        for stale in [k for k in _builtin_brains if k[0] == config.persona_id]:
            _builtin_brains.pop(stale).close()
        brain = _builtin_brains[key] = BuiltinBrain(config=config)
    return brain


async def builtin_answer(config: BrainConfig, *, text: str, persona_turns: int) -> str:
    brain = _builtin_brain(config)
    return await brain.reply(user_text=text, turn=persona_turns)


def _tools_for_openai(config: BrainConfig) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": {
                    "type": "object",
                    "properties": dict(tool.properties),
                    "required": list(tool.required),
                },
            },
        }
        for tool in config.tools
    ]


async def llm_answer(
    config: BrainConfig,
    *,
    history: Sequence[ThreadLine],
    text: str,
    on_tool_calls: ToolRunner | None = None,
) -> str:
    """The persona's OpenAI-compatible LLM, given the thread; raises on any failure.

    With `on_tool_calls`, the LLM is offered the persona's tools: each batch it asks for is
    run there (every call gets a result), and the LLM goes on, for at most MAX_TOOL_ROUNDS.
    """
    from openai import AsyncOpenAI

    messages: list[dict[str, Any]] = [
        {
            "role": "system",
            "content": system_prompt_compose(config=config, include_knowledge=True)
            + "\n\n"
            + WRITTEN_CHANNEL_NOTE,
        }
    ]
    messages += [
        {"role": line.role, "content": line.text} for line in history[-HISTORY_MESSAGES:] if line.text
    ]
    messages.append({"role": "user", "content": text})
    client = AsyncOpenAI(
        base_url=config.llm_base_url or None,
        # Never None: the client would fall back to the server's OPENAI_API_KEY and send it to
        # whatever base URL the persona configured.
        api_key=config.llm_api_key or "unset",
        timeout=LLM_TIMEOUT_SECONDS,
        max_retries=1,
    )
    tools = _tools_for_openai(config) if on_tool_calls is not None and config.tools else []
    try:
        for round_ in range(MAX_TOOL_ROUNDS + 1):
            offer: dict[str, Any] = {}
            if tools:
                offer = {"tools": tools, "tool_choice": "auto" if round_ < MAX_TOOL_ROUNDS else "none"}
            completion = await client.chat.completions.create(
                model=config.llm_model or DEFAULT_OPENAI_MODEL,
                messages=messages,  # type: ignore[arg-type]
                temperature=config.llm_temperature,
                max_completion_tokens=MAX_COMPLETION_TOKENS,
                **offer,
            )
            if not completion.choices:
                break
            message = completion.choices[0].message
            calls = [call for call in (message.tool_calls or []) if getattr(call, "function", None)]
            if not calls or on_tool_calls is None:
                answer = (message.content or "").strip()
                if answer:
                    return answer
                break
            messages.append(
                {
                    "role": "assistant",
                    "content": message.content,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.function.name, "arguments": call.function.arguments},
                        }
                        for call in calls
                    ],
                }
            )
            asked = [
                AskedCall(call.id, call.function.name, call.function.arguments or "{}") for call in calls
            ]
            outcomes = await on_tool_calls(asked)
            messages += [
                {
                    "role": "tool",
                    "tool_call_id": call.tool_call_id,
                    "content": tool_result_text(outcomes[call.tool_call_id]),
                }
                for call in asked
            ]
    finally:
        await client.close()
    raise ValueError("the LLM answered with no text")


async def thread_answer(
    config: BrainConfig,
    *,
    history: Sequence[ThreadLine],
    text: str,
    persona_turns: int,
    on_tool_calls: ToolRunner | None = None,
) -> str:
    """The persona's answer to `text` (the contact's newest messages, joined)."""
    if config.provider == "openai":
        try:
            return await llm_answer(config, history=history, text=text, on_tool_calls=on_tool_calls)
        except Exception as error:  # any failure of a remote service: the built-in brain answers
            logger.warning(
                "whatsapp: the LLM of %s failed (%s: %s); the built-in brain answers",
                config.persona_id,
                type(error).__name__,
                error,
            )
    return await builtin_answer(config, text=text, persona_turns=persona_turns)
