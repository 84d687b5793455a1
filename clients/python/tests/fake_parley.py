"""A stand-in for Parley's agent websocket (PROTOCOL §4) on 127.0.0.1, for the client's tests.

It checks the key, keeps a log of kept events with cursors, replays it after the subscriber's
cursor, answers commands with `ack` (or the `error` a test asks for), and can drop or refuse
connections the way a restarting server does.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

API_KEY = "pk_test_key"

CommandHook = Callable[[dict[str, Any], "FakeParley"], Awaitable[None]]


class FakeParley:
    def __init__(self) -> None:
        self.server: Server | None = None
        self.port = 0
        self.log: list[tuple[int, str, dict[str, Any]]] = []  # (cursor, event, data)
        self.frames: list[dict[str, Any]] = []  # every frame any client sent, in order
        self.handshakes: list[Request] = []
        self.live: set[ServerConnection] = set()  # subscribed: they get events
        self.open: set[ServerConnection] = set()  # every open connection
        # Behaviour a test can set.
        self.errors: dict[str, tuple[str, str]] = {}  # action -> (code, message) answered
        self.silent: set[str] = set()  # actions never answered
        self.refuse_status: list[int] = []  # HTTP statuses for the next handshakes, one each
        self.close_after_accept: list[int] = []  # close codes for the next connections, one each
        self.replay_overlap = 0  # replay this many events at or before the cursor (a buggy server)
        self.ack_cursor = False  # the subscribe ack says where the log stands
        self.cursor_key = "id"  # "cursor" to send the synonym
        self.on_command: CommandHook | None = None

    # --- Running ----------------------------------------------------------------------

    async def start(self) -> None:
        self.server = await serve(self._handle, "127.0.0.1", 0, process_request=self._process_request)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def cursor(self) -> int:
        return self.log[-1][0] if self.log else 0

    def actions(self, action: str) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if frame.get("action") == action]

    # --- Server -> client -------------------------------------------------------------

    async def publish(self, event: str, data: dict[str, Any], *, kept: bool = True) -> int | None:
        """Store (when kept) then broadcast, as Parley does."""
        cursor = None
        if kept:
            cursor = self.cursor + 1
            self.log.append((cursor, event, data))
        for connection in list(self.live):
            await self._send_event(connection, cursor, event, data)
        return cursor

    async def send_all(self, frame: dict[str, Any]) -> None:
        for connection in list(self.live):
            await connection.send(json.dumps(frame))

    async def close_all(self, code: int, reason: str) -> None:
        for connection in list(self.open):
            await connection.close(code, reason)

    async def drop(self) -> None:
        """Cut every connection without a close frame, like a crashed server or network."""
        for connection in list(self.live):
            self.live.discard(connection)
            connection.transport.abort()

    async def _send_event(
        self, connection: ServerConnection, cursor: int | None, event: str, data: dict[str, Any]
    ) -> None:
        try:
            await connection.send(json.dumps({"event": event, self.cursor_key: cursor, "data": data}))
        except ConnectionClosed:
            self.live.discard(connection)

    # --- Client -> server -------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes.append(request)
        if self.refuse_status:
            status = self.refuse_status.pop(0)
            return connection.respond(HTTPStatus(status), "refused by the test\n")
        if request.path != "/ws/agent/":
            return connection.respond(HTTPStatus.NOT_FOUND, "no such socket\n")
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        if self.close_after_accept:
            await connection.close(self.close_after_accept.pop(0), "refused by the test")
            return
        headers: Headers = connection.request.headers if connection.request else Headers()
        if headers.get("Authorization") != f"Bearer {API_KEY}":
            await connection.send(
                json.dumps({"event": "error", "code": "unauthorized", "message": "bad key"})
            )
            await connection.close(4401, "bad API key")
            return
        self.open.add(connection)
        try:
            async for message in connection:
                frame = json.loads(message)
                self.frames.append(frame)
                await self._command(connection, frame)
        except ConnectionClosed:
            pass
        finally:
            self.live.discard(connection)
            self.open.discard(connection)

    async def _command(self, connection: ServerConnection, frame: dict[str, Any]) -> None:
        action = frame.get("action")
        request_id = frame.get("requestId")
        if action in self.errors:
            code, message = self.errors[action]
            await connection.send(
                json.dumps({"event": "error", "requestId": request_id, "code": code, "message": message})
            )
            return
        if action in self.silent:
            return
        ack: dict[str, Any] = {"event": "ack", "requestId": request_id}
        if action == "subscribe" and self.ack_cursor:
            ack["cursor"] = self.cursor
        await connection.send(json.dumps(ack))
        if action == "subscribe":
            after = frame.get("after")
            start = 0 if after is None else max(after - self.replay_overlap, 0)
            index = 0
            # Replay, then go live with no await in between: nothing published meanwhile is lost.
            while index < len(self.log):
                cursor, event, data = self.log[index]
                index += 1
                if after is not None and cursor > start:
                    await self._send_event(connection, cursor, event, data)
            self.live.add(connection)
        if self.on_command is not None:
            await self.on_command(frame, self)
