"""Django middleware of the whole site: unstorable text refused by name, outages answered with 503."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from webapp.errors import outage_detail, outage_response
from webapp.inputs import InputRefused, query_texts_check, text_check

# Paths whose answers the Anam SDK reads: errors there also carry `error` and `message`.
ENGINE_PATH_PREFIXES = ("/talk", "/v1/engine/", "/v1/metrics/")


def input_refused_response(request: HttpRequest, refusal: InputRefused) -> JsonResponse:
    """400 in the API's error shape (plus the SDK's fields on engine paths)."""
    body: dict[str, Any] = {"detail": refusal.detail, "errors": {refusal.field: [refusal.problem]}}
    if request.path.startswith(ENGINE_PATH_PREFIXES):
        body = {"error": "invalid_request", "message": refusal.detail, **body}
    return JsonResponse(body, status=400)


class InputTextMiddleware:
    """Query parameters and path parameters (ids, slugs) with a NUL or invalid Unicode are a 400.

    PostgreSQL refuses NULs in text, so such a value reaching a query was a 500; here it is
    refused before any view runs, naming the parameter. JSON bodies are checked by the parser.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            query_texts_check((name, value) for name, values in request.GET.lists() for value in values)
        except InputRefused as refusal:
            return input_refused_response(request, refusal)
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> HttpResponse | None:
        try:
            for name, value in kwargs.items():
                if isinstance(value, str):
                    text_check(value, field=name)
        except InputRefused as refusal:
            return input_refused_response(request, refusal)
        return None


class OutageMiddleware:
    """A view that fails because Redis is unreachable answers 503 with a clear message, not 500.

    The API's views get the same from DRF's exception handler; this covers the others (the chat
    page's token endpoint counts requests in the cache).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        detail = outage_detail(exception)
        return outage_response(detail) if detail is not None else None
