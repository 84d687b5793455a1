"""Small site-wide views: the landing page, a health check, JSON errors for the API."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from personas.models import Persona


def home(request: HttpRequest) -> HttpResponse:
    personas = Persona.objects.filter(is_active=True).order_by("name")
    return render(request, "home.html", {"personas": personas})


def healthz(request: HttpRequest) -> JsonResponse:
    """Alive (the database answers), and how far the warm-up is: a balancer can wait for "done"."""
    from calls import warmup

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok", "warmUp": warmup.state()})


def api_not_found(request: HttpRequest, rest: str) -> JsonResponse:
    return JsonResponse({"detail": f"no such endpoint: {request.path}"}, status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/v1/"):
        return JsonResponse({"detail": "internal error; it has been logged"}, status=500)
    from django.views.defaults import server_error as django_server_error

    return django_server_error(request)
