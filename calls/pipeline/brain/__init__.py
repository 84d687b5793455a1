"""The persona's brain behind one interface: `build_llm_service(config)` and `build_context(config)`.

"builtin" answers offline from the persona's knowledge (`builtin.py`, `knowledge.py`); "openai"
is pipecat's `OpenAILLMService` against any OpenAI-compatible server (`openai.py`).
"""

from calls.pipeline.brain.config import BrainConfig, BrainProvider, BrainTool, brain_tools_from_definitions
from calls.pipeline.brain.knowledge import KnowledgeEntry
from calls.pipeline.brain.openai import build_context, build_llm_service

__all__ = [
    "BrainConfig",
    "BrainProvider",
    "BrainTool",
    "KnowledgeEntry",
    "brain_tools_from_definitions",
    "build_context",
    "build_llm_service",
]
