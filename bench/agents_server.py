"""The agents benchmark's server with stage stamps: Parley's ASGI application, and where the time goes.

Served only by `bench/agents.py --stages` (Daphne with `bench.agents_server:application`). It
wraps a few of Parley's own functions to write, to the file named by `PARLEY_BENCH_STAGES`, the
moment (`time.time()`) each kept event passes each stage on its way to an app:

- `stored_from` / `stored`: the database thread starts / ends the trip that stores it,
- `loop`: its doorbell is on the event loop (after the commit),
- `offered`: the organisation's stream hub hands it to the app's subscription,
- `sent`: the agent consumer writes it to the app's socket;

and, for streamed replies, `chunk` (a replyStream chunk reached its call, with its text) and
`speech` (espeak was asked for a sentence, and gave its first audio). A line is
`<stage> <key> <time> [<text>]`. It patches private functions, so it follows their names: when
one is renamed, this fails at start rather than measure nothing.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from webapp.asgi import application  # noqa: F401 (what Daphne serves; builds Django first)

# isort: split
from calls import publishing
from calls.agents import consumers, control
from calls.pipeline.speech import espeak
from calls.streams import hub

_lock = threading.Lock()
# Open for the life of the process; a line at a time, so nothing waits in a buffer at exit.
_file = open(os.environ["PARLEY_BENCH_STAGES"], "a", buffering=1)


def _write(lines: list[str]) -> None:
    with _lock:
        _file.write("".join(lines))


def _stamp(stage: str, keys: list[Any], at: float, text: str = "") -> None:
    suffix = f" {text}" if text else ""
    _write([f"{stage} {key} {at:.6f}{suffix}\n" for key in keys])


_publish_each = publishing._publish_each


def _publish_each_stamped(pending: list[Any], rung: Any) -> list[Any]:
    started = time.time()
    outcomes = _publish_each(pending, rung)
    ended = time.time()
    cursors = [outcome.cursor for outcome in outcomes if getattr(outcome, "cursor", None) is not None]
    _stamp("stored_from", cursors, started)
    _stamp("stored", cursors, ended)
    return outcomes


_broadcast_enqueue = publishing._broadcast_enqueue


def _broadcast_enqueue_stamped(broadcast: Any) -> None:
    if broadcast.cursor is not None:
        _stamp("loop", [broadcast.cursor], time.time())
    _broadcast_enqueue(broadcast)


_offer = hub.Subscription.offer


def _offer_stamped(self: Any, events: list[Any]) -> None:
    _stamp("offered", [event.cursor for event in events if event.cursor is not None], time.time())
    _offer(self, events)


_send_events = consumers.AgentConsumer._send_events


async def _send_events_stamped(self: Any, events: list[Any]) -> None:
    _stamp("sent", [event.cursor for event in events if event.cursor is not None], time.time())
    await _send_events(self, events)


_stream_text = control.CallControl._stream_text


async def _stream_text_stamped(self: Any, stream: Any, text: str) -> None:
    _stamp("chunk", [stream.message_id], time.time(), repr(text))
    await _stream_text(self, stream, text)


_synthesize = espeak.EspeakSynthesizer.synthesize


async def _synthesize_stamped(self: Any, text: str, **options: Any) -> AsyncIterator[Any]:
    asked = time.time()
    first = True
    async for chunk in _synthesize(self, text, **options):
        if first and chunk.pcm:
            first = False
            _stamp("speech", [f"{asked:.6f}"], time.time(), text)
        yield chunk


publishing._publish_each = _publish_each_stamped
publishing._broadcast_enqueue = _broadcast_enqueue_stamped
hub.Subscription.offer = _offer_stamped  # type: ignore[method-assign]
consumers.AgentConsumer._send_events = _send_events_stamped  # type: ignore[method-assign]
control.CallControl._stream_text = _stream_text_stamped  # type: ignore[method-assign]
espeak.EspeakSynthesizer.synthesize = _synthesize_stamped  # type: ignore[method-assign]
