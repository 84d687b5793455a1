"""The builtin brain: a pipecat LLM service that answers from the persona's knowledge, offline.

It takes the place of `OpenAILLMService` in the pipeline and honours the same contract: on an
`LLMContextFrame` it pushes `LLMFullResponseStartFrame`, the reply as several `LLMTextFrame`s
(one per sentence, so speech synthesis starts on the first) and `LLMFullResponseEndFrame`.
It answers the last user message of the context; with none (the call is just starting) it
says the persona's greeting.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pipecat.frames.frames import (
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    StartFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings

from calls.pipeline.brain.config import BrainConfig
from calls.pipeline.brain.knowledge import KnowledgeIndex, knowledge_index_build_async, lexical_index_build
from calls.pipeline.brain.replies import (
    Intent,
    PersonaProfile,
    classify,
    knowledge_reply,
    opening_reply,
    sentences_for_streaming,
    small_talk_reply,
    topics_from_knowledge,
)

logger = logging.getLogger(__name__)

# The model name the service reports in metrics and traces.
BUILTIN_MODEL_NAME = "parley-builtin"
# Said when the user turn held no words (a recogniser can finalise an empty transcript).
NOTHING_HEARD_REPLY = "Sorry, I didn't catch that. Could you say it again?"


def last_user_text(context: LLMContext) -> str | None:
    """The text of the context's last user message, or None if the user has not spoken yet."""
    for message in reversed(context.get_messages()):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                part.get("text", "")
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
        return ""
    return None


class BuiltinBrain:
    """Turns a user's words into a reply; no pipecat, so it can be used and tested on its own."""

    def __init__(self, *, config: BrainConfig, use_embeddings: bool = True) -> None:
        self.config = config
        self.profile = PersonaProfile(
            persona_id=config.persona_id,
            name=config.name,
            greeting=config.greeting,
            topics=topics_from_knowledge(entries=config.knowledge),
        )
        self._use_embeddings = use_embeddings
        # Answers questions while the embedding index is still being built, so the first
        # question never waits seconds for a big knowledge base to be encoded.
        self._lexical_index = lexical_index_build(entries=config.knowledge)
        self._index_future: asyncio.Future[KnowledgeIndex] | None = None
        self._turn = 0

    def warm_up(self) -> None:
        """Start building the knowledge index in the background (model load, entry encoding)."""
        if self._index_future is None:
            self._index_future = asyncio.ensure_future(
                knowledge_index_build_async(
                    persona_id=self.config.persona_id,
                    entries=self.config.knowledge,
                    use_embeddings=self._use_embeddings,
                )
            )

    async def index(self) -> KnowledgeIndex:
        """The full index once built; the lexical one until then (or if building failed)."""
        self.warm_up()
        assert self._index_future is not None
        if not self._index_future.done():
            return self._lexical_index
        if self._index_future.cancelled() or self._index_future.exception() is not None:
            return self._lexical_index
        return self._index_future.result()

    async def ready(self) -> None:
        """Wait until the full index is built (tests and warm-up; replies never wait)."""
        self.warm_up()
        assert self._index_future is not None
        # Shielded: a cancelled waiter must not cancel the build every later reply needs.
        await asyncio.shield(self._index_future)

    async def reply(self, *, user_text: str | None, turn: int | None = None) -> str:
        """The reply to `user_text`; None means the conversation is opening. `turn`: how many
        replies came before, when the conversation is kept elsewhere (a WhatsApp thread)."""
        self._turn = self._turn + 1 if turn is None else turn + 1
        if user_text is None:
            return opening_reply(profile=self.profile)
        turn = classify(text=user_text)
        if turn.intent is not Intent.QUESTION:
            return small_talk_reply(intent=turn.intent, profile=self.profile, turn=self._turn)
        if not turn.remainder:
            return NOTHING_HEARD_REPLY
        index = await self.index()
        match = await index.search_async(turn.remainder)
        return knowledge_reply(match=match, profile=self.profile, turn=self._turn, greeted=turn.greeted)

    def close(self) -> None:
        if self._index_future is not None and not self._index_future.done():
            self._index_future.cancel()


class BuiltinLLMService(LLMService):
    """A pipecat LLM service backed by `BuiltinBrain` (tools in the context are ignored)."""

    def __init__(self, *, config: BrainConfig, use_embeddings: bool = True, **kwargs: Any) -> None:
        # Every field set (None = not supported), or pipecat logs an error at start.
        settings = LLMSettings(
            model=BUILTIN_MODEL_NAME,
            system_instruction=None,
            temperature=None,
            max_tokens=None,
            top_p=None,
            top_k=None,
            frequency_penalty=None,
            presence_penalty=None,
            seed=None,
            filter_incomplete_user_turns=None,
            user_turn_completion_config=None,
        )
        super().__init__(settings=settings, **kwargs)
        self.brain = BuiltinBrain(config=config, use_embeddings=use_embeddings)

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        # Loading the model takes ~0.5 s: do it while the greeting plays, not on the first question.
        self.brain.warm_up()

    async def cleanup(self) -> None:
        self.brain.close()
        await super().cleanup()

    async def run_inference(
        self,
        context: LLMContext,
        max_tokens: int | None = None,
        system_instruction: str | None = None,
        response_schema: dict[str, Any] | None = None,
    ) -> str | None:
        """One-shot reply to the context's last user message, outside the pipeline."""
        return await self.brain.reply(user_text=last_user_text(context))

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        # As in BaseOpenAILLMService.process_frame: the end frame goes out in `finally`, so an
        # interruption (which cancels this task mid-await) still closes the response bracket.
        await self.push_frame(LLMFullResponseStartFrame())
        await self.start_processing_metrics()
        try:
            await self.start_ttfb_metrics()
            reply = await self.brain.reply(user_text=last_user_text(frame.context))
            await self.stop_ttfb_metrics()
            for sentence in sentences_for_streaming(reply):
                await self._push_llm_text(sentence)
        except Exception as error:
            logger.exception("Builtin brain failed")
            await self.push_error(error_msg=f"Builtin brain failed: {error}", exception=error)
        finally:
            await self.stop_processing_metrics()
            await self.push_frame(LLMFullResponseEndFrame())
