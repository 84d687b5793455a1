"""A tiny ASGI app (websocket echo, HTTP 200) served by a real Daphne with Parley's limits applied."""

from __future__ import annotations

from typing import Any

from webapp.server import daphne_limits_answer

daphne_limits_answer()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await receive()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})
    elif scope["type"] == "websocket":
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif message["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": message.get("text") or "binary"})
            else:
                return
