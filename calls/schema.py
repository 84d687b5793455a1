"""OpenAPI description of what is not a DRF view: the event stream (`/v1/events/stream`, a Channels consumer)."""

from __future__ import annotations

from typing import Any

from calls.streams import MAX_AGENTS
from webapp.inputs import MAX_CURSOR

EVENT_STREAM_PATH = "/v1/events/stream"


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


EVENT_STREAM_OPERATION: dict[str, Any] = {
    "operationId": "events_stream",
    "summary": "Stream the organization's events",
    "description": (
        "Server-sent events: each kept event as `id: <cursor>`, `event: <name>`, `data: <JSON>`; "
        "ephemeral events have no `id`. Authorise with an API key (`Authorization: Bearer`) or a "
        "stream token (`?token=`, from `POST /v1/auth/stream-token`), not both. Resume with "
        "`?after=<cursor>` or `Last-Event-ID` (which wins). The stream stays open until the client "
        "closes it; a comment line is sent as a keepalive."
    ),
    "tags": ["events"],
    "parameters": [
        {
            "in": "query",
            "name": "after",
            "description": "Replay the kept events with a cursor above this one, then go live.",
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_CURSOR},
        },
        {
            "in": "query",
            "name": "agents",
            "description": f"Only these personas' events: up to {MAX_AGENTS} slugs, comma-separated.",
            # At least one slug character: blank entries are dropped, and none left is a 400.
            "schema": {"type": "string", "pattern": "[-a-zA-Z0-9_]"},
        },
        {
            "in": "header",
            "name": "Last-Event-ID",
            "description": "The cursor of the last event received (an EventSource sends it when it reconnects).",
            "schema": {"type": "string", "pattern": "^[ \\t]*([0-9]{1,19})?[ \\t]*$"},
        },
    ],
    "security": [{"apiKey": []}, {"streamToken": []}],
    "responses": {
        "200": {
            "description": "The event stream (it does not end by itself).",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        "400": _error("A parameter is invalid, or both credentials were sent; `detail` names it."),
        "401": _error("Missing, invalid or expired credentials."),
        "403": _error("A persona in `agents` is not this organization's, or not in the token's scope."),
    },
}

SECURITY_SCHEMES: dict[str, Any] = {
    "streamToken": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "A short-lived stream token (`POST /v1/auth/stream-token`), for a browser's EventSource.",
    },
    "sessionToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "A single-use session token (`POST /v1/auth/session-token`).",
    },
}


def schema_postprocess(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular hook: add the event stream and the token schemes the views refer to."""
    result.setdefault("paths", {})[EVENT_STREAM_PATH] = {"get": EVENT_STREAM_OPERATION}
    result.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    return result
