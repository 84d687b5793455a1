"""An ASGI access log without query strings or credentials (Daphne's own prints full URLs)."""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger("parley.access")


class AccessLogMiddleware:
    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] not in {"http", "websocket"}:
            return await self.application(scope, receive, send)
        started = time.monotonic()
        state: dict[str, Any] = {"status": None}

        async def send_and_note(message: dict[str, Any]) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                state["status"] = message.get("status")
            elif kind == "websocket.accept":
                state["status"] = 101
            elif kind == "websocket.close" and state["status"] is None:
                state["status"] = 403
            await send(message)

        try:
            return await self.application(scope, receive, send_and_note)
        finally:
            client = scope.get("client") or ("-", 0)
            method = scope.get("method", "WS")
            logger.info(
                "%s %s %s %s %.0fms",
                client[0],
                method,
                scope.get("path", ""),
                state["status"] if state["status"] is not None else "-",
                (time.monotonic() - started) * 1000,
            )
