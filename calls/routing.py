"""Channels routes of the calls app: the event stream (SSE and websocket), signalling, the agent
socket, the WhatsApp webhook, and the admin's live calls page (admin session auth)."""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from django.urls import path

from calls.agents.consumers import AgentConsumer
from calls.consumers import EventStreamSSEConsumer, EventStreamWebsocketConsumer, SignallingConsumer
from calls.review.consumers import LiveCallsConsumer
from calls.whatsapp.consumers import WhatsAppWebhookConsumer

http_urlpatterns: list[Any] = [
    path("v1/events/stream", EventStreamSSEConsumer.as_asgi()),
    path("v1/whatsapp/webhook", WhatsAppWebhookConsumer.as_asgi()),
]
websocket_urlpatterns: list[Any] = [
    path("ws/events/", EventStreamWebsocketConsumer.as_asgi()),
    path("ws/engine/", SignallingConsumer.as_asgi()),
    path("ws/agent/", AgentConsumer.as_asgi()),
    # The admin's session cookie says who is watching (origin validation is in webapp.asgi).
    path("ws/admin/calls/live/", AuthMiddlewareStack(LiveCallsConsumer.as_asgi())),
]
