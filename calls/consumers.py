"""Thin Channels consumers for the event stream: server-sent events and a websocket, one feed each."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from calls.streams import (
    EventFeed,
    StreamEvent,
    StreamRefused,
    StreamRequest,
    astream_request_authorise,
    scope_headers,
    scope_query,
)
from webapp.errors import OUTAGE_RETRY_AFTER_SECONDS, outage_detail
from webapp.inputs import InputRefused, json_parse, query_texts_check
from webapp.origins import origin_allowed

logger = logging.getLogger(__name__)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    # nginx buffers proxied responses unless told not to; a buffered stream is a stalled one.
    (b"x-accel-buffering", b"no"),
]
# The event socket understands one small message, {"type": "ping"}; a bigger frame is a mistake.
MAX_EVENT_SOCKET_FRAME_BYTES = 4 * 1024
# A stream that cannot start because the channel layer is down (4000 + HTTP 503).
OUTAGE_CLOSE_CODE = 4503
# Sent at once, because a server sends the status and headers only with the first body chunk.
SSE_OPENING = b":ok\n\n"
SSE_PING = b":ping\n\n"
# How long a browser may cache a CORS preflight answer, in seconds.
CORS_PREFLIGHT_MAX_AGE_SECONDS = 86400
# Event streams hear events through their process's hub (calls.streams.hub), not through a
# channel of their own: an alias naming no layer keeps Channels from opening one (and, with
# Redis, a subscription) per connection.
NO_CHANNEL_LAYER = "parley-event-streams-need-no-channel"


def sse_frame(event: StreamEvent) -> str:
    """One event in the text/event-stream format; ephemeral events carry no `id:`."""
    if event.cursor is None:
        return f"event: {event.event}\ndata: {event.data_json}\n\n"
    return f"event: {event.event}\nid: {event.cursor}\ndata: {event.data_json}\n\n"


def _cors_headers(scope: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    # This consumer sits in front of Django, so corsheaders' middleware never sees it.
    headers = scope_headers(scope)
    origin = headers.get("origin")
    if not origin or not origin_allowed(origin, host=headers.get("host")):
        return [(b"vary", b"Origin")]
    return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]


def _outage_headers(scope: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    retry_after = str(OUTAGE_RETRY_AFTER_SECONDS).encode()
    return [(b"content-type", b"application/json"), (b"retry-after", retry_after), *_cors_headers(scope)]


def _outage_error(error: BaseException) -> dict[str, Any]:
    return {"type": "error", "status": 503, "detail": outage_detail(error)}


async def stream_request_read(scope: dict[str, Any]) -> StreamRequest:
    """Authorise a stream, once its query holds only text the database can take (400 otherwise)."""
    query = scope_query(scope)
    try:
        query_texts_check((name, value) for name, values in query.items() for value in values)
    except InputRefused as refusal:
        raise StreamRefused(400, refusal.detail) from None
    return await astream_request_authorise(scope=scope)


class EventStreamSSEConsumer(AsyncHttpConsumer):
    """`GET /v1/events/stream`: the organization's events as server-sent events."""

    channel_layer_alias = NO_CHANNEL_LAYER
    feed: EventFeed | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except Exception as error:  # the channel layer is down before the stream could start
            if outage_detail(error) is None:
                raise
            body = json.dumps({"detail": outage_detail(error)}).encode()
            await send({"type": "http.response.start", "status": 503, "headers": _outage_headers(scope)})
            await send({"type": "http.response.body", "body": body})
        finally:  # also when cancelled (server shutdown): no task outlives the response
            await self._close_feed()

    async def http_request(self, message: dict[str, Any]) -> None:
        # AsyncHttpConsumer ends the consumer as soon as handle() returns; a stream must go on
        # (relaying its feed) until the client disconnects.
        if "body" in message:
            self.body.append(message["body"])
        if message.get("more_body"):
            return
        try:
            await self.handle(b"".join(self.body))
        except BaseException:
            await self._close_feed()
            raise
        if self.feed is None:  # an error or preflight answer, already complete
            raise StopConsumer()

    async def handle(self, body: bytes) -> None:
        method = self.scope.get("method", "GET")
        if method == "OPTIONS":
            await self._send_preflight()
            return
        if method != "GET":
            await self._send_error(
                405, f"method {method} is not allowed; use GET", [(b"allow", b"GET, OPTIONS")]
            )
            return
        try:
            request = await stream_request_read(self.scope)
        except StreamRefused as refusal:
            extra = [(b"www-authenticate", b'Bearer realm="parley"')] if refusal.status == 401 else []
            await self._send_error(refusal.status, refusal.detail, extra)
            return
        self.feed = EventFeed(request=request, emit=self._send_events, keepalive=self._send_ping)
        try:
            await self.feed.open()
        except Exception as error:
            await self._close_feed()
            if outage_detail(error) is None:
                raise
            await self.send_response(
                503,
                json.dumps({"detail": outage_detail(error)}).encode(),
                headers=_outage_headers(self.scope),
            )
            return
        await self.send_headers(status=200, headers=[*SSE_HEADERS, *_cors_headers(self.scope)])
        await self.send_body(SSE_OPENING, more_body=True)
        self.feed.start()

    async def disconnect(self) -> None:
        await self._close_feed()

    async def _close_feed(self) -> None:
        feed, self.feed = self.feed, None
        if feed is not None:
            await feed.close()

    async def _send_events(self, events: list[StreamEvent]) -> None:
        # One write for all the events that came together.
        await self.send_body("".join(sse_frame(event) for event in events).encode(), more_body=True)

    async def _send_ping(self) -> None:
        await self.send_body(SSE_PING, more_body=True)

    async def _send_error(self, status: int, detail: str, extra: list[tuple[bytes, bytes]]) -> None:
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), *extra, *_cors_headers(self.scope)]
        await self.send_response(status, body, headers=headers)

    async def _send_preflight(self) -> None:
        headers = [
            *_cors_headers(self.scope),
            (b"access-control-allow-methods", b"GET, OPTIONS"),
            (b"access-control-allow-headers", b"authorization, last-event-id, cache-control"),
            (b"access-control-max-age", str(CORS_PREFLIGHT_MAX_AGE_SECONDS).encode()),
        ]
        await self.send_response(204, b"", headers=headers)


class EventStreamWebsocketConsumer(AsyncJsonWebsocketConsumer):
    """`/ws/events/`: the same events as JSON messages `{"event", "cursor", "data"}`."""

    channel_layer_alias = NO_CHANNEL_LAYER
    feed: EventFeed | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except Exception as error:  # the channel layer is down before the socket could open
            if outage_detail(error) is None:
                raise
            if (await receive())["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.send", "text": json.dumps(_outage_error(error))})
                await send({"type": "websocket.close", "code": OUTAGE_CLOSE_CODE})
        finally:  # also when cancelled (server shutdown): no task outlives the connection
            await self._close_feed()

    async def connect(self) -> None:
        try:
            request = await stream_request_read(self.scope)
        except StreamRefused as refusal:
            # Accept first: a refused handshake reaches a browser as a bare 403 with no reason.
            await self.accept()
            await self.send_json({"type": "error", "status": refusal.status, "detail": refusal.detail})
            await self.close(code=refusal.close_code)
            return
        self.feed = EventFeed(request=request, emit=self._send_events)
        try:
            await self.feed.open()
        except Exception as error:
            await self._close_feed()
            if outage_detail(error) is None:
                raise
            await self.accept()
            await self.send_json(_outage_error(error))
            await self.close(code=OUTAGE_CLOSE_CODE)
            return
        await self.accept()
        self.feed.start()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            if text_data is None:
                raise InputRefused("frame", "must be JSON text, not binary")
            content = json_parse(text_data, field="frame", max_bytes=MAX_EVENT_SOCKET_FRAME_BYTES)
        except InputRefused as refusal:  # said on the socket, which stays open
            await self.send_json({"type": "error", "detail": refusal.detail})
            return
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})
            return
        await self.send_json(
            {"type": "error", "detail": 'unknown message; the only one understood is {"type": "ping"}'}
        )

    async def disconnect(self, code: int) -> None:
        await self._close_feed()

    async def _close_feed(self) -> None:
        feed, self.feed = self.feed, None
        if feed is not None:
            await feed.close()

    async def _send_events(self, events: list[StreamEvent]) -> None:
        for event in events:
            cursor = "null" if event.cursor is None else event.cursor
            await self.send(
                text_data=f'{{"event":{json.dumps(event.event)},"cursor":{cursor},"data":{event.data_json}}}'
            )


# --- Signalling (Anam protocol §1.3) -----------------------------------------------------

# An SDP offer is a few kB; anything near this is not a signalling frame.
MAX_SIGNAL_FRAME_BYTES = 64 * 1024
SIGNAL_ACTIONS = ("offer", "icecandidate", "heartbeat", "talkstream", "agentaudioinput", "agentaudioinputend")
# A call id as `calls.models.new_call_id` makes them, with room to spare.
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# The typed fields of each payload: name → (test of a value, what the warning says it must be).
_STRING = (lambda value: isinstance(value, str), "a string")
_FLAG = (lambda value: isinstance(value, bool), "true or false")
# A JavaScript app may pass a number as a stream's id; it is used as text.
_ID = (lambda value: isinstance(value, str | int | float) and not isinstance(value, bool), "a string")
_INDEX = (
    lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= 0,
    "a whole number",
)
SIGNAL_PAYLOAD_FIELDS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "offer": {"userUid": _STRING},
    "icecandidate": {
        "candidate": _STRING,
        "sdpMid": _STRING,
        "sdpMLineIndex": _INDEX,
        "usernameFragment": _STRING,
    },
    "talkstream": {
        "content": _STRING,
        "startOfSpeech": _FLAG,
        "endOfSpeech": _FLAG,
        "correlationId": _ID,
    },
}


@dataclass(frozen=True)
class SignalFrame:
    """A client's signalling frame, parsed and checked."""

    action_type: str
    payload: Any


def signal_payload_problem(action_type: str, payload: Any) -> str | None:
    """Why a client frame's payload is unusable (each known field's type), or None if it is fine."""
    if action_type == "offer":
        description = payload.get("connectionDescription") if isinstance(payload, dict) else None
        if not isinstance(description, dict) or description.get("type") != "offer":
            return "offer: payload.connectionDescription must be {type: 'offer', sdp}"
        if not isinstance(description.get("sdp"), str) or not description["sdp"].startswith("v=0"):
            return "offer: payload.connectionDescription.sdp must be an SDP document"
    elif action_type == "icecandidate" and not isinstance(payload, dict):
        return "icecandidate: payload must be an RTCIceCandidateInit object"
    elif action_type == "talkstream" and not isinstance(payload, dict):
        return "talkstream: payload must be {content, startOfSpeech, endOfSpeech, correlationId}"
    for name, (valid, wanted) in SIGNAL_PAYLOAD_FIELDS.get(action_type, {}).items():
        value = payload.get(name)
        if value is not None and not valid(value):
            return f"{action_type}: payload.{name} must be {wanted} (or left out)"
    return None


def signal_frame_parse(text_data: str | None) -> SignalFrame:
    """A client frame as {actionType, sessionId, payload}, or InputRefused saying what is wrong."""
    if text_data is None:
        raise InputRefused("frame", "must be JSON text, not binary")
    frame = json_parse(text_data, field="frame", max_bytes=MAX_SIGNAL_FRAME_BYTES)
    if not isinstance(frame, dict):
        raise InputRefused("frame", "must be a JSON object {actionType, sessionId, payload}")
    action_type = frame.get("actionType")
    if not isinstance(action_type, str) or action_type not in SIGNAL_ACTIONS:
        shown = action_type if isinstance(action_type, str) else type(action_type).__name__
        raise InputRefused("actionType", f"unknown {shown!r}; one of {', '.join(SIGNAL_ACTIONS)}")
    if not isinstance(frame.get("sessionId", ""), str | None):
        raise InputRefused("sessionId", "must be a string")
    payload = frame.get("payload")
    problem = signal_payload_problem(action_type, payload)
    if problem is not None:
        raise InputRefused("", problem)
    return SignalFrame(action_type=action_type, payload=payload)


def session_id_from_scope(scope: dict[str, Any]) -> str:
    """The `?session_id=` of a signalling socket; InputRefused if it is missing or not a call id."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_id") or [""]
    if not SESSION_ID.fullmatch(values[0]):
        raise InputRefused("session_id", "must be the sessionId that POST /v1/engine/session answered")
    return values[0]


class SignallingConsumer(AsyncJsonWebsocketConsumer):
    """`/ws/engine/?session_id=…`: offer/answer, ICE, heartbeats and talk streams for one session."""

    live: Any = None

    async def connect(self) -> None:
        from calls.live import LiveSessionRefused, live_session_open

        try:
            session_id = session_id_from_scope(self.scope)
        except InputRefused as refusal:
            # Accepted first, so the client hears why (a refused handshake is a bare 403).
            await self.accept()
            await self.send_json({"actionType": "warning", "sessionId": "", "payload": refusal.detail})
            await self.close(code=4400)
            return
        try:
            self.live = await live_session_open(session_id=session_id)
        except LiveSessionRefused as refusal:  # told why, as a call's end is
            await self.accept()
            await self.send_json(
                {"actionType": "endsession", "sessionId": session_id, "payload": str(refusal)}
            )
            await self.close(code=4503)
            return
        if self.live is None:
            await self.close(code=4404)
            return
        self.session_id = session_id
        await self.accept()
        self.live.attach(self.send_signal)

    async def send_signal(self, action_type: str, payload: Any) -> None:
        await self.send_json({"actionType": action_type, "sessionId": self.session_id, "payload": payload})

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.live is None:
            return
        try:
            frame = signal_frame_parse(text_data)
        except InputRefused as refusal:  # a warning; the socket and the session go on
            await self.send_signal("warning", refusal.detail)
            return
        try:
            await self.live.on_signal(frame.action_type, frame.payload)
        except Exception:
            logger.exception("session %s: handling %s failed", self.session_id, frame.action_type)
            await self.send_signal("warning", f"{frame.action_type}: the server could not handle it")

    async def disconnect(self, code: int) -> None:
        if self.live is not None:
            self.live.detach(self.send_signal)
