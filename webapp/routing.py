"""All Channels routes in one list, gathered from the apps that own them."""

from __future__ import annotations

import json
from typing import Any

from django.urls import re_path

# The close code of a websocket opened on a path nothing serves (4000 + HTTP 404).
NO_ROUTE_CLOSE_CODE = 4404


async def websocket_no_route(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A websocket to a path nothing serves: accepted, told why, closed with 4404 (not a 500)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    # Accepted first: a refused handshake reaches a browser as a bare 403 with no reason.
    await send({"type": "websocket.accept"})
    detail = f"no websocket endpoint at {scope.get('path', '')}; there are /ws/events/, /ws/engine/, /ws/agent/ and /ws/admin/calls/live/"
    await send(
        {"type": "websocket.send", "text": json.dumps({"type": "error", "status": 404, "detail": detail})}
    )
    await send({"type": "websocket.close", "code": NO_ROUTE_CLOSE_CODE})


def http_consumer_routes() -> list[Any]:
    from calls.routing import http_urlpatterns

    return list(http_urlpatterns)


def websocket_routes() -> list[Any]:
    from calls.routing import websocket_urlpatterns

    return [*websocket_urlpatterns, re_path(r"", websocket_no_route)]
