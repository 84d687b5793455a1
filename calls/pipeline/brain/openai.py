"""Choosing the brain: pipecat's OpenAI-compatible LLM service or the builtin one, and its context.

`build_llm_service` and `build_context` are the brain's whole interface to the pipeline: the
conversation builds both from a `BrainConfig` and never looks at the provider again.
"""

from __future__ import annotations

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.services.llm_service import LLMService
from pipecat.services.openai.llm import OpenAILLMService

from calls.pipeline.brain.builtin import BuiltinLLMService
from calls.pipeline.brain.config import BrainConfig

# Used when an OpenAI-provider persona names no model.
DEFAULT_OPENAI_MODEL = "gpt-4.1-mini"
# Caps the reference facts appended to the system prompt (characters, about 2,000 tokens), so
# a huge knowledge base cannot crowd the conversation out of the model's context window.
KNOWLEDGE_PROMPT_MAX_CHARACTERS = 8_000
# A spoken reply should be short; this bounds a runaway answer (tokens).
MAX_COMPLETION_TOKENS = 400
_DEFAULT_SYSTEM_PROMPT = (
    "You are {name}, a friendly voice assistant. Your replies are spoken aloud: keep them short, "
    "plain and conversational, without lists, markdown or emojis."
)


def system_prompt_compose(*, config: BrainConfig, include_knowledge: bool) -> str:
    """The persona's system prompt, with its knowledge appended as reference facts if asked."""
    prompt = config.system_prompt.strip() or _DEFAULT_SYSTEM_PROMPT.format(name=config.name)
    if not include_knowledge or not config.knowledge:
        return prompt
    facts: list[str] = []
    used = 0
    for entry in config.knowledge:
        fact = f"- Q: {entry.question}\n  A: {entry.answer}" if entry.question else f"- {entry.answer}"
        if used + len(fact) > KNOWLEDGE_PROMPT_MAX_CHARACTERS:
            break
        facts.append(fact)
        used += len(fact)
    return (
        f"{prompt}\n\nReference facts (answer from these; if the answer is not here, say you "
        "don't know and offer what you can help with):\n" + "\n".join(facts)
    )


def tools_schema_build(*, config: BrainConfig) -> ToolsSchema | None:
    """The persona's tools as pipecat function schemas (OpenAI function-calling format)."""
    if not config.tools:
        return None
    return ToolsSchema(
        standard_tools=[
            FunctionSchema(
                name=tool.name,
                description=tool.description,
                properties=dict(tool.properties),
                required=list(tool.required),
            )
            for tool in config.tools
        ]
    )


def build_context(config: BrainConfig) -> LLMContext:
    """A fresh conversation context, with the persona's tools for the OpenAI provider.

    The system prompt is not a context message: since pipecat 1.9 an initial "system" message
    is deprecated (removed in 2.0) in favour of the service's `system_instruction`, which
    `build_llm_service` sets and pipecat composes with its own tool guidance.
    """
    tools = tools_schema_build(config=config) if config.provider == "openai" else None
    return LLMContext(tools=tools) if tools is not None else LLMContext()


def build_llm_service(config: BrainConfig, *, use_embeddings: bool = True) -> LLMService:
    """The LLM service for the persona's provider ("openai" or "builtin")."""
    if config.provider == "openai":
        return OpenAILLMService(
            base_url=config.llm_base_url or None,
            # Never None: the OpenAI client would fall back to the server's OPENAI_API_KEY and
            # send it to whatever base URL the persona configured.
            api_key=config.llm_api_key or "unset",
            settings=OpenAILLMService.Settings(
                model=config.llm_model or DEFAULT_OPENAI_MODEL,
                system_instruction=system_prompt_compose(config=config, include_knowledge=True),
                temperature=config.llm_temperature,
                max_completion_tokens=MAX_COMPLETION_TOKENS,
            ),
        )
    if config.provider == "builtin":
        return BuiltinLLMService(config=config, use_embeddings=use_embeddings)
    raise ValueError(f"Unknown brain provider {config.provider!r}")
