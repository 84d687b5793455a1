"""What a brain is told about its persona: plain values, no ORM, built by the caller."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from calls.pipeline.brain.knowledge import KnowledgeEntry

BrainProvider = Literal["builtin", "openai"]
ToolKind = Literal["client", "server"]

# Sampling temperature used when a persona does not set one (OpenAI's range is 0..2).
DEFAULT_TEMPERATURE = 0.7


@dataclass(frozen=True)
class BrainTool:
    """A function the LLM may call, described as an OpenAI function schema.

    `properties` is the JSON-schema `properties` object of the arguments, e.g.
    `{"order_id": {"type": "string", "description": "..."}}`. A "client" tool is answered
    by the browser, a "server" tool by the app; `timeout_seconds` (None: the conversation's
    default) bounds the wait for either.
    """

    name: str
    description: str
    properties: dict[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    kind: ToolKind = "server"
    timeout_seconds: float | None = None


def brain_tools_from_definitions(definitions: Sequence[Mapping[str, Any]]) -> tuple[BrainTool, ...]:
    """Validated tool definitions (`personas.tools`: type, name, description, parameters) as BrainTools."""
    tools = []
    for definition in definitions:
        parameters = definition.get("parameters") or {}
        timeout = definition.get("timeoutSeconds")
        tools.append(
            BrainTool(
                name=definition["name"],
                description=definition["description"],
                properties=dict(parameters.get("properties") or {}),
                required=tuple(parameters.get("required") or ()),
                kind="client" if definition.get("type") == "client" else "server",
                timeout_seconds=float(timeout) if timeout is not None else None,
            )
        )
    return tuple(tools)


@dataclass(frozen=True)
class BrainConfig:
    """Everything the brain needs about one persona for one call."""

    persona_id: str
    name: str
    greeting: str = ""
    system_prompt: str = ""
    language: str = "en-US"
    knowledge: tuple[KnowledgeEntry, ...] = ()
    provider: BrainProvider = "builtin"
    llm_base_url: str = ""
    llm_model: str = ""
    llm_api_key: str = ""
    llm_temperature: float = DEFAULT_TEMPERATURE
    tools: tuple[BrainTool, ...] = ()

    @classmethod
    def from_pairs(cls, *, knowledge: tuple[tuple[str, str], ...] = (), **values: Any) -> BrainConfig:
        """Build from `(question, answer)` pairs, the shape the ORM layer hands over."""
        entries = tuple(KnowledgeEntry(question=question, answer=answer) for question, answer in knowledge)
        return cls(knowledge=entries, **values)
