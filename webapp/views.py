"""Small site-wide views: the landing page, a health check, JSON errors for the API."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from personas.models import Persona
from webapp.health import dependency_checks


def home(request: HttpRequest) -> HttpResponse:
    personas = Persona.objects.filter(is_active=True).order_by("name")
    return render(request, "home.html", {"personas": personas})


def healthz(request: HttpRequest) -> JsonResponse:
    """Healthy when the database, the channel layer and the cache answer (503 naming which does
    not) and the process is not draining (503 "draining"), and how far the warm-up is: a
    balancer can wait for "done"."""
    from calls import warmup
    from calls.lifecycle.services import process_draining

    checks = dependency_checks()
    healthy = all(state == "ok" for state in checks.values())
    # A process that is draining (SIGTERM) takes no new sessions: a balancer sends them elsewhere.
    status = "draining" if process_draining() else "ok" if healthy else "unavailable"
    return JsonResponse(
        {"status": status, "checks": checks, "warmUp": warmup.state()},
        status=200 if status == "ok" else 503,
    )


def api_not_found(request: HttpRequest, rest: str) -> JsonResponse:
    return JsonResponse({"detail": f"no such endpoint: {request.path}"}, status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/v1/"):
        return JsonResponse({"detail": "internal error; it has been logged"}, status=500)
    from django.views.defaults import server_error as django_server_error

    return django_server_error(request)
