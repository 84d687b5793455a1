"""URL map: the REST API under /v1/, the admin, the persona pages."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from calls import engine_api
from webapp import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("v1/schema", SpectacularAPIView.as_view(), name="schema"),
    path("v1/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("v1/redoc", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    path("v1/", include("personas.urls")),
    path("v1/", include("calls.urls")),
    path("v1/<path:rest>", views.api_not_found),
    path("talk", engine_api.TalkView.as_view(), name="talk"),
    path("", include("personas.page_urls")),
]

handler400 = "webapp.errors.json_bad_request"
handler500 = "webapp.views.server_error"
