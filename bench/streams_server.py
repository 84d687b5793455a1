"""The streams benchmark's server: Parley's ASGI application plus an endpoint that publishes events.

`POST /bench/publish?first=N&count=K` publishes K `user.message` events of one call through the
one publish path (`acall_event_publish`), all at once, from inside the server process, as a
live call does. Each text is `bench <sequence> <wall-clock seconds>`, stamped as its publish
starts, so a reader on the same machine can tell the delay from publish to receipt.
Served only by `bench/streams.py` (Daphne with `bench.streams_server:application`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qs

from webapp.asgi import application as parley_application  # builds Django first

# isort: split
from channels.db import database_sync_to_async

from calls import events
from calls.models import Call, Transport
from calls.publishing import acall_event_publish
from personas.models import Persona

PUBLISH_PATH = "/bench/publish"
PERSONA_SLUG = "mara"

_call: Call | None = None


def _call_create() -> Call:
    persona = Persona.objects.select_related("organization").get(slug=PERSONA_SLUG)
    call = Call.objects.create(organization=persona.organization, persona=persona, transport=Transport.CHAT)
    return Call.objects.select_related("persona").get(pk=call.pk)


async def _publish(call: Call, sequence: int) -> float:
    """Publish one event; returns how long the publish took (stored and committed), in seconds."""
    started = time.time()
    text = f"bench {sequence} {started:.6f}"
    await acall_event_publish(call=call, event=events.UserMessage(text=text, message_id=f"bench_{sequence}"))
    return time.time() - started


async def _respond(send: Any, status: int, body: dict[str, Any]) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _call
    if scope["type"] != "http" or scope["path"] != PUBLISH_PATH:
        await parley_application(scope, receive, send)
        return
    while (await receive()).get("more_body"):
        pass
    query = parse_qs(scope.get("query_string", b"").decode())
    first, count = int(query["first"][0]), int(query["count"][0])
    if _call is None:
        _call = await database_sync_to_async(_call_create)()
    seconds = await asyncio.gather(*(_publish(_call, sequence) for sequence in range(first, first + count)))
    await _respond(send, 200, {"publishSeconds": seconds})
