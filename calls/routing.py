"""Channels routes of the calls app: the event stream (SSE and websocket)."""

from __future__ import annotations

from typing import Any

http_urlpatterns: list[Any] = []
websocket_urlpatterns: list[Any] = []
