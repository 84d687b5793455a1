"""Which web origins may use Parley from a browser: CORS for the API, Origin checks for websockets."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings


def origin_allowed(origin: str, *, host: str | None = None) -> bool:
    """An origin listed in PARLEY_ALLOWED_ORIGINS, localhost in the demo, or the server's own."""
    origin = origin.rstrip("/")
    if origin in settings.PARLEY_ALLOWED_ORIGINS or "*" in settings.PARLEY_ALLOWED_ORIGINS:
        return True
    if origin.lower() in (engine.lower() for engine in settings.PARLEY_ENGINE_ORIGINS):
        return True  # a page served by another Parley process of this installation
    if settings.PARLEY_ALLOW_LOCALHOST_ORIGINS and re.match(settings.LOCALHOST_ORIGIN_REGEX, origin):
        return True
    parts = urlsplit(origin)
    if not parts.scheme or not parts.netloc:
        return False
    # Same origin as the request (the persona page served by Parley itself).
    return host is not None and parts.netloc.lower() == host.lower()


class WebsocketOriginValidator:
    """ASGI middleware: browsers (which send Origin) must come from an allowed origin.

    Server-side clients send no Origin header and are authorised by their credentials instead.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket":
            headers = dict(scope.get("headers") or [])
            origin = headers.get(b"origin")
            host = headers.get(b"host")
            if origin is not None and not origin_allowed(
                origin.decode("latin1"), host=host.decode("latin1") if host else None
            ):
                denier = WebsocketDenier()
                return await denier(scope, receive, send)
        return await self.application(scope, receive, send)
