"""One error shape for the whole API: a sentence naming the problem, plus the fields at fault."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


def _flatten(detail: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Turn DRF's nested error detail into (dotted.field, message) pairs."""
    if isinstance(detail, dict):
        pairs: list[tuple[str, str]] = []
        for key, value in detail.items():
            name = str(key) if key != "non_field_errors" else ""
            pairs.extend(_flatten(value, f"{prefix}.{name}" if prefix and name else prefix or name))
        return pairs
    if isinstance(detail, list):
        pairs = []
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)):
                pairs.extend(_flatten(value, f"{prefix}[{index}]" if prefix else str(index)))
            else:
                pairs.extend(_flatten(value, prefix))
        return pairs
    return [(prefix, str(detail))]


def _summary(pairs: list[tuple[str, str]]) -> str:
    return "; ".join(f"{field}: {message}" if field else message for field, message in pairs)


# What a client is told to wait before retrying while Redis is down, in seconds.
OUTAGE_RETRY_AFTER_SECONDS = 5
REDIS_DOWN = "the channel layer and cache (Redis) are unavailable; try again in a few seconds"


def outage_detail(error: BaseException) -> str | None:
    """The sentence for a client if `error` says a service Parley needs is unreachable, else None."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(error, RedisConnectionError | RedisTimeoutError):
        return REDIS_DOWN
    return None


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "the service is unavailable; try again shortly"


def outage_response(detail: str) -> JsonResponse:
    """503 for a view outside DRF, with the same body and Retry-After as the API's."""
    response = JsonResponse({"detail": detail}, status=503)
    response["Retry-After"] = str(OUTAGE_RETRY_AFTER_SECONDS)
    return response


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exception handler: `{"detail": "<sentence>", "errors": {field: [messages]}}`."""
    outage = outage_detail(exc)
    if outage is not None:
        logger.warning("%s: answered 503: %s", context.get("view").__class__.__name__, exc)
        response = exception_handler(ServiceUnavailable(outage), context)
        assert response is not None
        response["Retry-After"] = str(OUTAGE_RETRY_AFTER_SECONDS)
        return response
    if isinstance(exc, RequestDataTooBig):
        exc = exceptions.APIException("request body too large")
        exc.status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    elif isinstance(exc, exceptions.NotAuthenticated):
        exc = exceptions.NotAuthenticated("an API key is required: send 'Authorization: Bearer <API key>'")
    elif isinstance(exc, SuspiciousOperation):
        exc = exceptions.ParseError(str(exc) or "malformed request")
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        pairs = _flatten(exc.detail)
        errors: dict[str, list[str]] = {}
        for field, message in pairs:
            errors.setdefault(field or "body", []).append(message)
        response.data = {"detail": _summary(pairs) or "invalid request", "errors": errors}
    elif isinstance(response.data, dict) and "detail" in response.data:
        response.data = {"detail": str(response.data["detail"])}
    return response


def json_not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """404 for API paths in JSON; Django's page elsewhere."""
    return JsonResponse({"detail": f"no such endpoint: {request.path}"}, status=404)


def json_server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"detail": "internal error; it has been logged"}, status=500)


def json_bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """400 (or 413 for an oversized body) in JSON for the API; Django's page elsewhere."""
    if not request.path.startswith("/v1/"):
        from django.views.defaults import bad_request

        return bad_request(request, exception)
    message = str(exception) if exception else "bad request"
    if isinstance(exception, RequestDataTooBig):
        return JsonResponse({"detail": "request body too large"}, status=413)
    return JsonResponse({"detail": message or "bad request"}, status=400)


__all__ = [
    "Http404",
    "api_exception_handler",
    "json_bad_request",
    "json_not_found",
    "json_server_error",
    "outage_detail",
    "outage_response",
]
