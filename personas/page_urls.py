"""Routes of the persona chat pages (outside /v1/: these are HTML and same-origin JSON)."""

from __future__ import annotations

from django.urls import path

from personas import views

urlpatterns = [
    path("p/<slug:slug>/", views.persona_page, name="persona-page"),
    path("p/<slug:slug>/token", views.persona_page_token, name="persona-page-token"),
]
