"""Server start: load what calls need before the first visitor arrives.

On a cold process the first calls waited for it all: pipecat's modules (~0.6 s), the turn
model, the speech synthesizer, the recogniser (Whisper, ~0.3 s) and each persona's prompt, the
sentence encoder and the persona's knowledge index. Eight
visitors arriving together at a fresh server on this 2-core machine waited ~10 s for their
greeting, and its voice then came out choppy while the machine was still loading
(`bench/voice_loop.py --sessions 8 --workers 2`).

`warm_up_in_background()` (webapp.asgi calls it when `PARLEY_WARM_UP` is on) does that loading
on one thread, for the personas most recently called first. A call that starts meanwhile waits
only for what it needs, as without it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.db.models import F, Max

logger = logging.getLogger(__name__)

_started = threading.Lock()
_thread: threading.Thread | None = None
_state = "off"  # then "running", and "done" or "failed"


def state() -> str:
    """The warm-up's progress, for the health check: off, running, done or failed."""
    return _state


def warm_up(*, personas: int) -> dict[str, Any]:
    """Load the shared parts, then up to `personas` personas' own; returns what was done."""
    from calls.pipeline.conversation import Conversation, conversation_warm_up  # pipecat, on import
    from calls.pipeline.listening.providers import warm_up as recogniser_warm_up
    from calls.pipeline.speech.espeak import EspeakSynthesizer
    from calls.pipeline.turns import smart_turn_session, vad_analyzer_build

    started = time.monotonic()
    summary: dict[str, Any] = {"personas": [], "failed": []}
    Conversation.modules_load()
    EspeakSynthesizer.shared().start_blocking()
    if settings.PARLEY_LISTENING:
        vad_analyzer_build()  # onnxruntime and Silero
        smart_turn_session()
        recogniser_warm_up()  # Whisper: every English persona's default recogniser
    for persona in _personas_to_warm(personas):
        try:
            loaded = conversation_warm_up(_persona_config(persona))
        except Exception:  # a persona that cannot load now will say why when it is called
            logger.warning("warm-up: persona %s could not be prepared", persona.slug, exc_info=True)
            summary["failed"].append(persona.slug)
            continue
        summary["personas"].append((persona.slug, loaded))
    summary["seconds"] = round(time.monotonic() - started, 2)
    return summary


def _personas_to_warm(limit: int) -> list[Any]:
    from personas.models import Persona

    if limit <= 0:
        return []
    try:
        ranked = (
            Persona.objects.filter(is_active=True)
            .annotate(last_call=Max("calls__created_at"))
            .order_by(F("last_call").desc(nulls_last=True), "-updated_at")  # PostgreSQL: NULL sorts first
        )
        return list(ranked.select_related("organization").prefetch_related("knowledge")[:limit])
    finally:
        close_old_connections()


def _persona_config(persona: Any) -> Any:
    from calls.live import persona_conversation_config

    return persona_conversation_config(persona)


def warm_up_in_background() -> threading.Thread | None:
    """Start the warm-up thread once per process (later calls return the same thread)."""
    global _thread, _state
    with _started:
        if _thread is None:
            _state = "running"
            _thread = threading.Thread(target=_run, name="parley-warm-up", daemon=True)
            _thread.start()
        return _thread


def _run() -> None:
    global _state
    try:
        summary = warm_up(personas=settings.PARLEY_WARM_UP_PERSONAS)
    except Exception:
        _state = "failed"
        logger.exception("warm-up failed; calls will load what they need when they start")
        return
    finally:
        close_old_connections()
    _state = "done"
    # The models stay for the process's life: keep them out of the collector's full collections.
    gc.freeze()
    names = ", ".join(
        f"{slug} ({' + '.join(loaded) or 'voice only'})" for slug, loaded in summary["personas"]
    )
    logger.info(
        "warm-up done in %.1f s: %d persona(s) ready%s%s",
        summary["seconds"],
        len(summary["personas"]),
        f": {names}" if names else "",
        f"; not ready: {', '.join(summary['failed'])}" if summary["failed"] else "",
    )
