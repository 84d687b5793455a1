"""All Channels routes in one list, gathered from the apps that own them."""

from __future__ import annotations

from typing import Any


def http_consumer_routes() -> list[Any]:
    from calls.routing import http_urlpatterns

    return list(http_urlpatterns)


def websocket_routes() -> list[Any]:
    from calls.routing import websocket_urlpatterns

    return list(websocket_urlpatterns)
