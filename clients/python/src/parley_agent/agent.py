"""The connection to Parley's agent websocket: subscribe, dispatch events to handlers, send commands,
reconnect and resume from the last cursor."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from parley_agent.call import Call, ReplyStream
from parley_agent.errors import AgentError
from parley_agent.requests import PendingRequests

__all__ = ["Agent", "Handler"]

logger = logging.getLogger("parley_agent")

Handler = Callable[[dict[str, Any], Call], Awaitable[None] | None]
HandlerT = TypeVar("HandlerT", bound=Handler)

AGENT_SOCKET_PATH = "/ws/agent/"
# Parley answers a command in milliseconds; ten seconds without an answer means it is gone.
COMMAND_TIMEOUT_SECONDS = 10.0
# How long a command issued while the connection is down waits for it to come back.
RECONNECT_WAIT_SECONDS = 10.0
# Reconnection delays double from the first to the cap, each drawn in [delay/2, delay] so that
# many clients cut off at once do not come back at once.
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0
# The opening handshake, TCP included.
OPEN_TIMEOUT_SECONDS = 10.0
# A `call.ended` carries the whole transcript: far above websockets' 1 MiB default is allowed.
MAX_FRAME_BYTES = 16 * 1024 * 1024

# Closes that say the client itself is wrong (its key, its subscription): retrying cannot
# help, so the client stops. Parley closes with 4000 + the HTTP status.
FATAL_CLOSE_CODES = {4400: "bad_request", 4401: "unauthorized", 4403: "forbidden"}
FATAL_HTTP_STATUSES = {401: "unauthorized", 403: "forbidden"}
REPLY_FRAMES = ("ack", "error")


def agent_socket_url(base_url: str) -> str:
    """`ws://host:8000` (or `http://...`, or the full socket URL) -> `ws://host:8000/ws/agent/`."""
    url = base_url.strip()
    for web, socket in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(web):
            url = socket + url[len(web) :]
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"Parley URL must start with ws://, wss://, http:// or https://, not {base_url!r}")
    if url.rstrip("/").endswith(AGENT_SOCKET_PATH.rstrip("/")):
        return url.rstrip("/") + "/"
    return url.rstrip("/") + AGENT_SOCKET_PATH


def cursor_parse(value: Any) -> int | None:
    """A kept event's cursor (an integer, maybe sent as a string); None for ephemeral events."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


class Agent:
    """An app answering and watching some of an organisation's personas.

    >>> agent = Agent("ws://127.0.0.1:8000", api_key="pk_...", agents=["mara"], answer=True)
    >>> @agent.on("turn.end")
    ... async def answer(event, call):
    ...     await call.reply("Hello!")
    >>> agent.run_forever()
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        agents: Iterable[str],
        answer: bool = False,
        after: int | None = None,
        command_timeout: float = COMMAND_TIMEOUT_SECONDS,
        reconnect_wait: float = RECONNECT_WAIT_SECONDS,
        backoff_first: float = BACKOFF_FIRST_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
        open_timeout: float = OPEN_TIMEOUT_SECONDS,
    ) -> None:
        self.url = agent_socket_url(url)
        key = api_key if api_key is not None else os.environ.get("PARLEY_API_KEY", "")
        if not key:
            raise ValueError("an API key is needed: api_key=... or the environment variable PARLEY_API_KEY")
        self._api_key = key
        self.agents = [agents] if isinstance(agents, str) else list(agents)
        if not self.agents:
            # Refused rather than sent: an empty list must never read as "every persona".
            raise ValueError("agents must name at least one persona slug")
        self.answer = answer
        # The last kept event seen: a reconnection subscribes after it. Save it to resume a
        # restarted process with Agent(after=...).
        self.last_cursor: int | None = after
        self.command_timeout = command_timeout
        self.reconnect_wait = reconnect_wait
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self.open_timeout = open_timeout

        self._handlers: dict[str, list[Handler]] = {}
        self._calls: dict[str, Call] = {}
        self._streams: dict[str, ReplyStream] = {}
        self._pending = PendingRequests(command_timeout)
        self._tasks: set[asyncio.Task[None]] = set()
        self._socket: ClientConnection | None = None
        self._last_server_error = ""  # said without a requestId, e.g. before a refusing close
        self._running = False
        self._stopping = False
        self._close_task: asyncio.Task[None] | None = None
        # Made in run(): asyncio objects belong to the loop that runs the client.
        self._ready: asyncio.Event | None = None
        self._wakeup: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"<Agent {self.url} agents={self.agents} answer={self.answer}>"

    # --- Handlers ---------------------------------------------------------------------

    def on(self, event: str, handler: Handler | None = None) -> Callable[[HandlerT], HandlerT]:
        """Register `handler(event_data, call)` for an event name of PROTOCOL §2/§4, or "*"
        for every event. Usable as a decorator (`@agent.on("user.message")`) or directly."""

        def register(function: HandlerT) -> HandlerT:
            self._handlers.setdefault(event, []).append(function)
            return function

        if handler is not None:
            register(handler)
        return register

    @property
    def connected(self) -> bool:
        """Connected and subscribed: commands go out at once."""
        return self._ready is not None and self._ready.is_set()

    # --- Running ----------------------------------------------------------------------

    def run_forever(self) -> None:
        """`asyncio.run(agent.run())`; Ctrl-C stops it quietly."""
        try:
            asyncio.run(self.run())
        except KeyboardInterrupt:
            logger.info("stopped by Ctrl-C")

    def stop(self) -> None:
        """End run(): close the connection, cancel running handlers. Call it from the loop
        that runs the client (a handler, a task); run() returns shortly after."""
        self._stopping = True
        if self._wakeup is not None:
            self._wakeup.set()
        socket = self._socket
        if socket is not None and self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(socket.close())

    async def run(self) -> None:
        """Connect, subscribe and dispatch events until stop(). Lost connections come back
        with backoff and resume after the last cursor. Raises AgentError when Parley refuses
        the key or the subscription (retrying cannot help then)."""
        if self._running:
            raise RuntimeError("this Agent is already running")
        self._running = True
        self._stopping = False
        self._close_task = None
        self._ready = asyncio.Event()
        self._wakeup = asyncio.Event()
        failures = 0
        try:
            while not self._stopping:
                subscribed = False
                try:
                    subscribed = await self._session()
                except AgentError:
                    raise
                except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as error:
                    logger.warning("connection to %s failed: %s", self.url, error or type(error).__name__)
                if self._stopping:
                    break
                failures = 1 if subscribed else failures + 1
                delay = self._backoff_delay(failures)
                logger.info("reconnecting in %.1f s (after cursor %s)", delay, self.last_cursor)
                try:
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            await self._shutdown()

    def _backoff_delay(self, failures: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_first * 2 ** max(failures - 1, 0))
        return random.uniform(ceiling / 2, ceiling)

    async def _shutdown(self) -> None:
        self._stopping = True
        self._running = False
        assert self._ready is not None
        self._ready.clear()
        self._pending.fail_all("disconnected", "the client stopped")
        if self._close_task is not None:
            await asyncio.gather(self._close_task, return_exceptions=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in list(self._streams.values()):
            stream._abort("stopped")
        self._streams.clear()
        self._calls.clear()

    async def _session(self) -> bool:
        """One connection, from handshake to close; True when it got as far as subscribing."""
        try:
            socket = await connect(
                self.url,
                additional_headers={"Authorization": f"Bearer {self._api_key}"},
                open_timeout=self.open_timeout,
                max_size=MAX_FRAME_BYTES,
            )
        except InvalidStatus as error:
            status = error.response.status_code
            if status in FATAL_HTTP_STATUSES:
                raise self._fatal(
                    FATAL_HTTP_STATUSES[status], f"Parley refused the API key (HTTP {status})"
                ) from None
            raise
        self._socket = socket
        self._last_server_error = ""
        reader = asyncio.create_task(self._read(socket))
        subscribed = False
        try:
            if self._stopping:
                return False
            subscribed = await self._subscribe(socket)
            code, reason = await reader
        finally:
            assert self._ready is not None
            self._ready.clear()
            self._socket = None
            self._pending.fail_all("disconnected", "the connection to Parley was lost")
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await socket.close()
        if code in FATAL_CLOSE_CODES:
            said = f"; it said {self._last_server_error}" if self._last_server_error else ""
            raise self._fatal(
                FATAL_CLOSE_CODES[code], f"Parley closed the connection ({code} {reason}){said}"
            )
        if not self._stopping:
            logger.warning("connection to %s closed (%s %s)", self.url, code, reason)
        return subscribed

    async def _subscribe(self, socket: ClientConnection) -> bool:
        frame: dict[str, Any] = {"action": "subscribe", "agents": self.agents, "answer": self.answer}
        if self.last_cursor is not None:
            frame["after"] = self.last_cursor
        try:
            ack = await (await self._request(socket, frame))
        except AgentError as error:
            if error.code == "disconnected":
                return False
            if error.code == "timeout":
                # Events flow without the answer; say so rather than drop a working connection.
                logger.warning("no answer to subscribe within %.0f s; going on", self.command_timeout)
            else:
                raise self._fatal(error.code, f"Parley refused the subscription: {error.message}") from None
        else:
            # A server may say where its log stands, so a client that has seen nothing yet can
            # still resume without loss after a drop.
            head = cursor_parse(ack.get("cursor", ack.get("id")))
            if head is not None and self.last_cursor is None:
                self.last_cursor = head
        assert self._ready is not None
        self._ready.set()
        logger.info(
            "subscribed to %s on %s (answer=%s, after cursor %s)",
            ",".join(self.agents),
            self.url,
            self.answer,
            frame.get("after"),
        )
        return True

    def _fatal(self, code: str, message: str) -> AgentError:
        error = AgentError(code, message)
        logger.error("%s; not retrying (check the API key and the persona slugs %s)", message, self.agents)
        return error

    # --- Receiving --------------------------------------------------------------------

    async def _read(self, socket: ClientConnection) -> tuple[int | None, str]:
        """Read frames until the connection closes; the close code and reason."""
        # recv() rather than `async for`: a normal close must raise too, to tell its code.
        while True:
            try:
                message = await socket.recv()
            except ConnectionClosed as closed:
                # At once, not when the session winds up: a subscribe may be waiting on it.
                assert self._ready is not None
                self._ready.clear()
                self._pending.fail_all("disconnected", "the connection to Parley was lost")
                if closed.rcvd is not None:
                    return closed.rcvd.code, closed.rcvd.reason
                return None, "no close frame"
            if isinstance(message, str):
                self._frame_receive(message)
            else:
                logger.warning("binary frame from Parley ignored (%d bytes)", len(message))

    def _frame_receive(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            logger.warning("frame from Parley is not JSON: %.200s", text)
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("event"), str):
            logger.warning("frame from Parley without an event name: %.200s", text)
            return
        name = frame["event"]
        if name in REPLY_FRAMES:
            self._reply_receive(frame)
            return
        data = frame.get("data")
        if not isinstance(data, dict):
            data = {}
        cursor = cursor_parse(frame["id"] if frame.get("id") is not None else frame.get("cursor"))
        if cursor is not None:
            if self.last_cursor is not None and cursor <= self.last_cursor:
                logger.debug(
                    "event %s %s already seen (last cursor %s): dropped", name, cursor, self.last_cursor
                )
                return
            self.last_cursor = cursor
            data = {**data, "id": cursor}  # handlers see the event's cursor (kept events only)
        self._event_receive(name, data)

    def _reply_receive(self, frame: dict[str, Any]) -> None:
        if self._pending.answer(frame):
            return
        if frame["event"] == "error":
            self._last_server_error = (
                f"{frame.get('code')}: {frame.get('message') or frame.get('detail') or ''}"
            )
            logger.warning(
                "error from Parley: %s %s", frame.get("code"), frame.get("message") or frame.get("detail")
            )

    def _event_receive(self, name: str, data: dict[str, Any]) -> None:
        """Bookkeeping first (so handlers see streams already aborted), then the handlers."""
        call_id = data.get("callId")
        if name == "reply.aborted":
            stream = self._streams.get(str(data.get("messageId")))
            if stream is not None:
                stream._abort(str(data.get("reason") or "aborted"))
        if isinstance(call_id, str) and call_id:
            call = self._calls.get(call_id)
            if call is None:
                call = self._calls[call_id] = Call(self, call_id, str(data.get("agent") or ""))
        else:
            call = Call(self, "", str(data.get("agent") or ""))
        if name == "call.ended":
            self._calls.pop(call.id, None)
            for stream in list(self._streams.values()):
                if stream.call.id == call.id:
                    stream._abort("call_ended")
        handlers = [*self._handlers.get(name, ()), *self._handlers.get("*", ())]
        for handler in handlers:
            task = asyncio.get_running_loop().create_task(
                self._handler_run(handler, name, {**data, "event": name}, call)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handler_run(self, handler: Handler, name: str, data: dict[str, Any], call: Call) -> None:
        try:
            result = handler(data, call)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception(
                "handler %s for %s (call %s) raised", getattr(handler, "__qualname__", handler), name, call.id
            )

    # --- WhatsApp threads (not calls: named by session id or contact) -----------------

    async def whatsapp_pause(
        self, *, session_id: str | int | None = None, contact: str | None = None
    ) -> dict[str, Any]:
        """Stop the persona's automatic answers on a WhatsApp thread (a human takes over)."""
        return await self._command(_whatsapp_frame("whatsappPause", session_id, contact))

    async def whatsapp_resume(
        self, *, session_id: str | int | None = None, contact: str | None = None
    ) -> dict[str, Any]:
        """Let the persona answer the thread again."""
        return await self._command(_whatsapp_frame("whatsappResume", session_id, contact))

    async def whatsapp_send(
        self, text: str, *, session_id: str | int | None = None, contact: str | None = None
    ) -> dict[str, Any]:
        """Write on the thread as a human (recorded as `whatsapp.response` author `human`)."""
        return await self._command({**_whatsapp_frame("whatsappSend", session_id, contact), "text": text})

    # --- Commands ---------------------------------------------------------------------

    async def _command(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a command and wait for its `ack` (returned) or `error` (raised)."""
        return await (await self._command_nowait(frame))

    async def _command_nowait(self, frame: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Send a command once connected; the future of its answer."""
        return await self._request(await self._connection(), frame)

    async def _connection(self) -> ClientConnection:
        if not self._running or self._stopping or self._ready is None:
            raise AgentError("disconnected", "the client is not running (start it with agent.run())")
        if not self._ready.is_set():
            assert self._wakeup is not None
            waiters = [asyncio.ensure_future(self._ready.wait()), asyncio.ensure_future(self._wakeup.wait())]
            try:
                await asyncio.wait(waiters, timeout=self.reconnect_wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        socket = self._socket
        if self._stopping or socket is None or not self._ready.is_set():
            raise AgentError("disconnected", f"no connection to Parley within {self.reconnect_wait:g} s")
        return socket

    async def _request(
        self, socket: ClientConnection, frame: dict[str, Any]
    ) -> asyncio.Future[dict[str, Any]]:
        action = str(frame["action"])
        request_id, future = self._pending.open(action)
        try:
            await socket.send(json.dumps({"action": action, "requestId": request_id, **frame}))
        except ConnectionClosed:
            if not future.done():
                future.set_exception(
                    AgentError("disconnected", f"the connection closed before {action} was sent")
                )
        return future

    # --- Streams ----------------------------------------------------------------------

    def _stream_register(self, stream: ReplyStream) -> None:
        self._streams[stream.message_id] = stream

    def _stream_forget(self, stream: ReplyStream) -> None:
        if self._streams.get(stream.message_id) is stream:
            del self._streams[stream.message_id]


def _whatsapp_frame(action: str, session_id: str | int | None, contact: str | None) -> dict[str, Any]:
    """A thread command's frame: `sessionId` (as the whatsapp.* events spell it) or `contact`."""
    frame: dict[str, Any] = {"action": action}
    if session_id is not None:
        frame["sessionId"] = str(session_id)
    if contact is not None:
        frame["contact"] = contact
    return frame
