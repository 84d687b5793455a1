"""A local fake of Meta's Graph API for WhatsApp (Cloud API), on 127.0.0.1: sends, reads, media.

It answers as Meta does (`../shared/research/whatsapp.md` §3, §4), under `/{version}/`:

- `POST /{version}/{phone_number_id}/messages`: a send (`type: "text"`, body at most 4096
  characters) answers `{"messaging_product": "whatsapp", "contacts": [{"input", "wa_id"}],
  "messages": [{"id": "wamid.<unique>"}]}`; a mark-as-read (`status: "read"`, with or without
  `typing_indicator`) answers `{"success": true}`. Sends are kept in `sent` and logged.
- `GET /{version}/{media_id}`: the metadata of media registered with `media_add(...)`:
  `url` (pointing back at this fake, `/media/{media_id}`), `mime_type`, `sha256` (base64),
  `file_size` (a string, as in Meta's spec), `id`. `GET /media/{media_id}` serves the bytes.
- Every request must carry `Authorization: Bearer <access_token>`, or gets Meta's 401 with
  code 190. `fail_next(n, code=..., http_status=...)` makes the next `n` requests fail with
  Meta's error shape (131047 outside the window, 130429 throughput, 131000, 190, ...).

Every request is kept in `requests` (method, path, query, headers, JSON body) for assertions.
`send_answer_delay_seconds` makes Meta slow: a send is kept at once, its answer comes that much
later (a process killed meanwhile never learns it was sent). `graph_api_in_thread()` runs the
fake on a loop of its own, for a server in another process to call.
By hand: `python tests/fakes/graph_api.py --port 8091` prints its base URL and logs each send
and read; `--media ID=PATH` serves a file (a voice note) as media `ID`, `--token` sets the token.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import logging
import mimetypes
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

logger = logging.getLogger("fake-graph-api")

DEFAULT_ACCESS_TOKEN = "test-graph-token"
DEFAULT_VERSION = "v25.0"
TEXT_MAX_CHARACTERS = 4096
# Media bytes go out in pieces of this size, so a client that stops reading stops the fake.
MEDIA_CHUNK_BYTES = 64 * 1024
# Meta's titles for the codes tests ask for (research/whatsapp.md §3); others get a generic one.
ERROR_TITLES = {
    4: "Application request limit reached",
    100: "Invalid parameter",
    190: "Error validating access token: Session has expired.",
    80007: "Rate limit issues",
    130429: "Rate limit hit",
    131000: "Something went wrong",
    131016: "Service unavailable",
    131026: "Message Undeliverable",
    131047: "Re-engagement message",
    131048: "Spam rate limit hit",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
}
ERROR_DETAILS = {
    131047: "Message failed to send because more than 24 hours have passed since the customer "
    "last replied to this number.",
    131056: "Too many messages sent from this phone number to the same phone number in a short "
    "period of time.",
}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any] | None  # the JSON body, None without one


@dataclass
class SentMessage:
    """A send the fake accepted: its wamid and the request's JSON body."""

    wamid: str
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)  # when the fake accepted it

    @property
    def to(self) -> str:
        return str(self.body.get("to", ""))

    @property
    def text(self) -> str:
        return str((self.body.get("text") or {}).get("body", ""))


@dataclass
class _Failure:
    code: int
    http_status: int
    message: str
    details: str
    subcode: int | None
    retry_after: str | None
    only: str | None = None  # "send", "read" or "media": fails the next request of that kind


@dataclass
class _MediaFile:
    data: bytes
    mime_type: str
    sha256: str
    file_size: str | None
    content_length: bool


@dataclass
class FakeGraphAPI:
    """Run with `async with FakeGraphAPI() as graph:`; point the client at `graph.base_url`."""

    access_token: str = DEFAULT_ACCESS_TOKEN
    version: str = DEFAULT_VERSION
    host: str = "127.0.0.1"
    port: int = 0
    send_answer_delay_seconds: float = 0.0
    requests: list[RecordedRequest] = field(default_factory=list)
    sent: list[SentMessage] = field(default_factory=list)
    reads: list[dict[str, Any]] = field(default_factory=list)  # mark-as-read bodies
    media_bytes_sent: dict[str, int] = field(default_factory=dict)  # by media id
    _media: dict[str, _MediaFile] = field(default_factory=dict)
    _failures: deque[_Failure] = field(default_factory=deque)
    _expired_urls: int = 0
    _serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _run: str = field(default_factory=lambda: secrets.token_hex(3))
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/{self.version}"

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def media_add(
        self,
        media_id: str,
        data: bytes,
        mime_type: str,
        *,
        sha256: str | None = None,
        file_size: int | str | None = "actual",
        content_length: bool = True,
    ) -> None:
        """Register media to serve. `sha256` (base64) and `file_size` default to the truth; a
        test may make them lie, leave `file_size` out (None), or serve the bytes chunked,
        without a Content-Length (`content_length=False`)."""
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        size = str(len(data)) if file_size == "actual" else None if file_size is None else str(file_size)
        self._media[media_id] = _MediaFile(
            data=data,
            mime_type=mime_type,
            sha256=digest if sha256 is None else sha256,
            file_size=size,
            content_length=content_length,
        )

    def fail_next(
        self,
        count: int = 1,
        *,
        code: int = 130429,
        http_status: int | None = None,
        message: str | None = None,
        details: str | None = None,
        subcode: int | None = None,
        retry_after: str | float | None = None,
        only: str | None = None,
    ) -> None:
        """The next `count` requests (of any kind, or only sends, reads or media requests with
        `only="send"`, `"read"`, `"media"`) fail with Meta's error shape for `code`.

        `http_status` defaults as Meta answers: 401 for 190, 429 for 130429, 500 for 131000 and
        131016, 400 otherwise. `retry_after` adds a Retry-After header.
        """
        if only not in (None, "send", "read", "media"):
            raise ValueError("only: 'send', 'read', 'media' or None")
        status = http_status or {190: 401, 130429: 429, 131000: 500, 131016: 503}.get(code, 400)
        title = ERROR_TITLES.get(code, "The request was refused")
        failure = _Failure(
            code=code,
            http_status=status,
            message=message or f"(#{code}) {title}",
            details=details if details is not None else ERROR_DETAILS.get(code, title),
            subcode=subcode,
            retry_after=None if retry_after is None else str(retry_after),
            only=only,
        )
        self._failures.extend([failure] * count)

    def media_urls_expire(self, count: int = 1) -> None:
        """The next `count` media downloads answer 404, as an expired media URL does."""
        self._expired_urls += count

    def sends_to(self, to: str) -> list[SentMessage]:
        return [message for message in self.sent if message.to == to]

    async def __aenter__(self) -> FakeGraphAPI:
        app = web.Application()
        app.router.add_post("/{version}/{phone_number_id}/messages", self._messages)
        app.router.add_get("/media/{media_id}", self._media_bytes)
        app.router.add_get("/{version}/{media_id}", self._media_metadata)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- requests ----------------------------------------------------------------------------

    async def _recorded(self, request: web.Request) -> tuple[RecordedRequest, web.Response | None]:
        """Record the request; an answer when it is refused (token, scripted failure, bad JSON).."""
        body: dict[str, Any] | None = None
        if request.can_read_body:
            try:
                parsed = await request.json()
            except json.JSONDecodeError:
                parsed = None
            body = parsed if isinstance(parsed, dict) else None
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
        )
        self.requests.append(recorded)
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return recorded, _error(
                code=190,
                http_status=401,
                message="Invalid OAuth access token - Cannot parse access token",
                details="",
                subcode=None,
            )
        kind = (
            "media" if request.method == "GET" else "read" if (body or {}).get("status") == "read" else "send"
        )
        failure = next((f for f in self._failures if f.only in (None, kind)), None)
        if failure is not None:
            self._failures.remove(failure)
            headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else None
            return recorded, _error(
                code=failure.code,
                http_status=failure.http_status,
                message=failure.message,
                details=failure.details,
                subcode=failure.subcode,
                headers=headers,
            )
        if request.method == "POST" and body is None:
            return recorded, _error(
                code=100, http_status=400, message="(#100) The request body is not JSON", details=""
            )
        return recorded, None

    async def _messages(self, request: web.Request) -> web.Response:
        recorded, refusal = await self._recorded(request)
        if refusal is not None:
            return refusal
        body = recorded.body or {}
        if body.get("messaging_product") != "whatsapp":
            return _invalid("(#100) The parameter messaging_product is required.")
        if body.get("status") == "read":
            if not body.get("message_id"):
                return _invalid("(#100) The parameter message_id is required.")
            self.reads.append(body)
            typing = " (typing...)" if body.get("typing_indicator") else ""
            logger.info("read %s%s", body["message_id"], typing)
            return web.json_response({"success": True})
        to = str(body.get("to") or "")
        if not to:
            return _invalid("(#100) The parameter to is required.")
        text = (body.get("text") or {}).get("body")
        if body.get("type", "text") == "text":
            if not isinstance(text, str) or not text:
                return _invalid("(#100) The parameter text['body'] is required.")
            if len(text) > TEXT_MAX_CHARACTERS:
                return _invalid(
                    f"(#100) Param text['body'] must be at most {TEXT_MAX_CHARACTERS} characters long."
                )
        # Unique across runs too, as Meta's are: a fake restarted beside the same database must
        # not hand out a wamid it gave before.
        serial = f"fake-{self._run}-{next(self._serial):06d}"
        wamid = "wamid." + base64.b64encode(serial.encode()).decode()
        self.sent.append(SentMessage(wamid=wamid, body=body))
        kind = str(body.get("type", "text"))
        shown = text if kind == "text" else json.dumps(body.get(kind), ensure_ascii=False)
        context = body.get("context")
        reply = f" (replying to {context.get('message_id')})" if isinstance(context, dict) else ""
        logger.info("send %s to %s%s: %s", wamid, to, reply, shown)
        if self.send_answer_delay_seconds > 0:
            await asyncio.sleep(self.send_answer_delay_seconds)
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
                "messages": [{"id": wamid}],
            }
        )

    async def _media_metadata(self, request: web.Request) -> web.Response:
        _recorded, refusal = await self._recorded(request)
        if refusal is not None:
            return refusal
        media_id = request.match_info["media_id"]
        media = self._media.get(media_id)
        if media is None:
            return _error(
                code=100,
                http_status=400,
                message=f"Unsupported get request. Object with ID '{media_id}' does not exist",
                details="",
                subcode=33,
            )
        answer: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "url": f"{self.origin}/media/{media_id}?ext=1&hash=fake",
            "mime_type": media.mime_type,
            "sha256": media.sha256,
            "id": media_id,
        }
        if media.file_size is not None:
            answer["file_size"] = media.file_size
        return web.json_response(answer)

    async def _media_bytes(self, request: web.Request) -> web.StreamResponse:
        _recorded, refusal = await self._recorded(request)
        if refusal is not None:
            return refusal
        media_id = request.match_info["media_id"]
        media = self._media.get(media_id)
        if media is None or self._expired_urls:
            self._expired_urls = max(0, self._expired_urls - 1)
            return web.Response(status=404, text="Not Found")
        response = web.StreamResponse(headers={"Content-Type": media.mime_type})
        if media.content_length:
            response.content_length = len(media.data)
        await response.prepare(request)
        self.media_bytes_sent[media_id] = 0
        try:
            for start in range(0, len(media.data), MEDIA_CHUNK_BYTES):
                chunk = media.data[start : start + MEDIA_CHUNK_BYTES]
                await response.write(chunk)
                self.media_bytes_sent[media_id] += len(chunk)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client stopped reading (an oversize file): as a real server, stop
        return response


def _error(
    *,
    code: int,
    http_status: int,
    message: str,
    details: str,
    subcode: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details},
        "fbtrace_id": f"AFakeTrace{code}",
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    return web.json_response({"error": error}, status=http_status, headers=headers)


def _invalid(message: str) -> web.Response:
    return _error(code=100, http_status=400, message=message, details=message)


# How long starting or stopping the fake on its thread may take.
THREAD_START_TIMEOUT_SECONDS = 30.0


@contextmanager
def graph_api_in_thread(**options: Any) -> Iterator[FakeGraphAPI]:
    """The fake on its own event loop in a thread (`options` as `FakeGraphAPI`'s), for a
    server in another process to call. Its lists may be read from any thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-graph-api", daemon=True)
    thread.start()
    graph = FakeGraphAPI(**options)
    try:
        asyncio.run_coroutine_threadsafe(graph.__aenter__(), loop).result(THREAD_START_TIMEOUT_SECONDS)
        yield graph
    finally:
        asyncio.run_coroutine_threadsafe(graph.__aexit__(None, None, None), loop).result(
            THREAD_START_TIMEOUT_SECONDS
        )
        loop.call_soon_threadsafe(loop.stop)
        thread.join(THREAD_START_TIMEOUT_SECONDS)
        loop.close()


async def _serve(port: int, access_token: str, media: dict[str, tuple[bytes, str]]) -> None:
    async with FakeGraphAPI(port=port, access_token=access_token) as graph:
        for media_id, (data, mime_type) in media.items():
            graph.media_add(media_id, data, mime_type)
            print(f"media {media_id}: {len(data)} bytes of {mime_type}", flush=True)
        print(f"fake Graph API at {graph.base_url} (access token {access_token!r})", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="A fake WhatsApp Graph API on 127.0.0.1 for trying Parley by hand."
    )
    parser.add_argument("--port", type=int, default=8091, help="the port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--token", default=DEFAULT_ACCESS_TOKEN, help="the access token it accepts")
    parser.add_argument(
        "--media",
        action="append",
        default=[],
        metavar="ID=PATH",
        help="serve the file at PATH as media ID (a voice note to send in a webhook); repeatable",
    )
    arguments = parser.parse_args(argv)
    media = {}
    for item in arguments.media:
        media_id, _, path = item.partition("=")
        with open(path, "rb") as file:
            media[media_id] = (file.read(), mimetypes.guess_type(path)[0] or "audio/ogg")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    try:
        asyncio.run(_serve(arguments.port, arguments.token, media))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
