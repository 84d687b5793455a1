"""REST routes of the calls app: calls, transcripts, the event log (the WhatsApp webhook is a
Channels consumer: `calls.routing`)."""

from __future__ import annotations

from django.urls import path

from calls import api, engine_api

urlpatterns = [
    path("engine/session", engine_api.EngineSessionView.as_view(), name="engine-session"),
    path("metrics/client", engine_api.ClientMetricsView.as_view(), name="client-metrics"),
    path("calls", api.CallListView.as_view(), name="call-list"),
    path("calls/<str:call_id>", api.CallDetailView.as_view(), name="call-detail"),
    path("calls/<str:call_id>/events", api.CallEventListView.as_view(), name="call-events"),
]
