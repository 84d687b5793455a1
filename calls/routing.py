"""Channels routes of the calls app: the event stream (SSE and websocket), the agent socket,
signalling, and the WhatsApp webhook."""

from __future__ import annotations

from typing import Any

from django.urls import path

from calls.agents.consumers import AgentConsumer
from calls.consumers import EventStreamSSEConsumer, EventStreamWebsocketConsumer, SignallingConsumer
from calls.whatsapp.consumers import WhatsAppWebhookConsumer

http_urlpatterns: list[Any] = [
    path("v1/events/stream", EventStreamSSEConsumer.as_asgi()),
    path("v1/whatsapp/webhook", WhatsAppWebhookConsumer.as_asgi()),
]
websocket_urlpatterns: list[Any] = [
    path("ws/events/", EventStreamWebsocketConsumer.as_asgi()),
    path("ws/engine/", SignallingConsumer.as_asgi()),
    path("ws/agent/", AgentConsumer.as_asgi()),
]
