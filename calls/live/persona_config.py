"""The persona's conversation config: a call's persona (and a token's overrides) as plain values."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings

from calls.models import Call
from calls.pipeline.brain.config import BrainTool, brain_tools_from_definitions
from calls.pipeline.conversation import ConversationConfig
from personas.models import Persona
from personas.tools import tools_problems

logger = logging.getLogger(__name__)


def _build_config(call: Call) -> ConversationConfig:
    """The call's persona as plain values, with an ephemeral token's inline overrides applied."""
    token = call.session_token
    overrides: dict[str, Any] = {}
    if token is not None and token.kind == "ephemeral":
        overrides = token.persona_config or {}
    return persona_conversation_config(call.persona, overrides)


def persona_conversation_config(
    persona: Persona, overrides: dict[str, Any] | None = None
) -> ConversationConfig:
    """The persona as plain values (an ephemeral token's `persona_config` as `overrides`)."""
    overrides = overrides or {}
    detection = overrides.get("voiceDetectionOptions") or {}
    llm_id = overrides.get("llmId")
    return ConversationConfig(
        agent=persona.slug,
        name=overrides.get("name") or persona.name,
        greeting=persona.greeting,
        system_prompt=overrides.get("systemPrompt", persona.system_prompt),
        language=overrides.get("languageCode") or persona.language_code,
        voice=overrides.get("voiceId") or persona.voice,
        tts_provider=persona.tts_provider,
        tts_model=persona.tts_model,
        tts_base_url=persona.tts_base_url,
        tts_api_key=persona.tts_api_key,
        listening=settings.PARLEY_LISTENING,
        stt_provider=persona.stt_provider,
        stt_model=persona.stt_model,
        stt_base_url=persona.stt_base_url,
        stt_api_key=persona.stt_api_key,
        stt_phrases=tuple(line.strip() for line in persona.stt_phrases.splitlines() if line.strip()),
        end_of_speech_sensitivity=float(
            detection.get("endOfSpeechSensitivity", persona.end_of_speech_sensitivity)
        ),
        silence_before_auto_end_turn_seconds=float(
            detection.get("silenceBeforeAutoEndTurnSeconds") or persona.silence_before_auto_end_turn_seconds
        ),
        brain_provider="builtin" if llm_id == "builtin" else persona.brain_provider,
        llm_base_url=persona.llm_base_url,
        llm_model=llm_id if llm_id and llm_id != "builtin" else persona.llm_model,
        llm_api_key=persona.llm_api_key,
        llm_temperature=persona.llm_temperature,
        knowledge=tuple((entry.question, entry.answer) for entry in persona.knowledge.all()),
        avatar_look=dict(persona.avatar_look or {}),
        avatar_portrait=persona.avatar_portrait.path if persona.avatar_portrait else "",
        skip_greeting=bool(overrides.get("skipGreeting", persona.skip_greeting)),
        max_duration_seconds=float(overrides.get("maxSessionLengthSeconds") or persona.max_duration_seconds),
        idle_timeout_seconds=float(
            detection.get("silenceBeforeSessionEndSeconds") or persona.idle_timeout_seconds
        ),
        idle_warning_seconds=float(persona.idle_warning_seconds),
        idle_check_in=persona.idle_check_in,
        send_audio_metrics=persona.send_audio_metrics,
        app_answer_timeout_seconds=float(persona.app_answer_timeout_seconds),
        tools=_persona_tools(persona.slug, persona.tools),
        tool_timeout_seconds=settings.PARLEY_TOOL_TIMEOUT_SECONDS,
        record=persona.recording_enabled,
    )


def _persona_tools(slug: str, definitions: Any) -> tuple[BrainTool, ...]:
    """The persona's tools for the LLM; none if they were stored without validation and are bad."""
    if not definitions:
        return ()
    problems = tools_problems(definitions)
    if problems:
        logger.warning("persona %s: its tools are invalid and left out (%s)", slug, "; ".join(problems))
        return ()
    return brain_tools_from_definitions(definitions)
