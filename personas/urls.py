"""REST routes of the personas app: session tokens, stream tokens, personas."""

from __future__ import annotations

from django.urls import path

from personas import api

urlpatterns = [
    path("auth/session-token", api.SessionTokenView.as_view(), name="session-token"),
    path("auth/stream-token", api.StreamTokenView.as_view(), name="stream-token"),
    path("personas", api.PersonaListView.as_view(), name="persona-list"),
    path("personas/<str:reference>", api.PersonaDetailView.as_view(), name="persona-detail"),
]
