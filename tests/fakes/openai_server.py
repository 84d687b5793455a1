"""A local OpenAI-compatible chat server for tests: streamed replies, recorded requests.

`POST /v1/chat/completions` answers as server-sent events in the real OpenAI chunk format
(`stream: true`), or as one completion object (`stream` false or absent).
A scripted reply (`script(TextReply | ToolCallReply)`) is used first. With an empty script
the reply follows from the request, the way a model given tools would behave:

- the last message is the user's and names one of the request's tools (`get_weather`, or
  `get weather`): the tool is called (tool_calls deltas, finish_reason "tool_calls"), with
  the arguments the user wrote as `name=value` pairs (`city="New York" days=3`), typed by
  the tool's JSON schema. Unless `tool_choice` is "none".
- the last messages are tool results: a sentence built from them (`The get weather result
  is sunny.`, or for an `{"error": ...}` result `Sorry, get weather failed: ...`).
- anything else: `DEFAULT_REPLY`.

`POST /v1/audio/transcriptions` (multipart: `file` a WAV, `model`, `language`, ...) checks the
WAV (RIFF, PCM, its rate and length are kept in `transcriptions`) and answers the next scripted
transcript (`script_transcripts(...)`), or 400 with OpenAI's error shape when the upload is not
a WAV with audio in it.

`GET /v1/models` lists the one model. Every chat request is kept in `requests` (headers and
JSON body) so a test can assert what the client sent.

By hand (to try `examples/agent_llm.py` or a persona's LLM offline):
`python tests/fakes/openai_server.py --port 8092` serves `http://127.0.0.1:8092/v1` and logs
each request's last message and the reply; `--reply TEXT` changes the default answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import re
import threading
import time
import wave
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_REPLY = "OK."
# Starting or stopping the fake's web server takes milliseconds; this bounds a broken one.
SERVER_START_TIMEOUT_SECONDS = 10.0
# `name=value` or `name="several words"` in the user's text: a tool argument.
_ARGUMENT = re.compile(r'(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?:"(?P<quoted>[^"]*)"|(?P<bare>[^\s"]+))')
MODEL_LISTED = "fake-model"

logger = logging.getLogger("fake-openai")


@dataclass(frozen=True)
class TextReply:
    """Streamed as one content delta per piece, the first after `thinking_seconds`."""

    pieces: tuple[str, ...]
    thinking_seconds: float = 0.0


@dataclass(frozen=True)
class ToolCall:
    """One function call; its JSON arguments are streamed in `argument_pieces`."""

    call_id: str
    name: str
    argument_pieces: tuple[str, ...]


@dataclass(frozen=True)
class ToolCallReply:
    calls: tuple[ToolCall, ...]


@dataclass
class RecordedRequest:
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])


@dataclass(frozen=True)
class RecordedTranscription:
    headers: dict[str, str]
    fields: dict[str, str]  # the form's other fields: model, language, response_format, ...
    sample_rate: int
    seconds: float


@dataclass
class FakeOpenAIServer:
    """Run with `async with FakeOpenAIServer() as server:`; point clients at `server.base_url`."""

    requests: list[RecordedRequest] = field(default_factory=list)
    transcriptions: list[RecordedTranscription] = field(default_factory=list)
    _script: deque[TextReply | ToolCallReply] = field(default_factory=deque)
    _transcripts: deque[str] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    port: int = 0
    default_reply: str = DEFAULT_REPLY

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: TextReply | ToolCallReply) -> None:
        """Queue replies; each chat request takes the next one."""
        self._script.extend(replies)

    def script_transcripts(self, *texts: str) -> None:
        """Queue what the recogniser "hears"; each transcription request takes the next one."""
        self._transcripts.extend(texts)

    async def __aenter__(self) -> FakeOpenAIServer:
        app = web.Application(client_max_size=25 * 1024 * 1024)  # OpenAI's upload limit
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": MODEL_LISTED, "object": "model", "created": 0, "owned_by": "parley-tests"}],
            }
        )

    async def _transcriptions(self, request: web.Request) -> web.Response:
        def refuse(message: str, param: str) -> web.Response:
            return web.json_response(
                {"error": {"message": message, "type": "invalid_request_error", "param": param}}, status=400
            )

        form = await request.post()
        upload = form.get("file")
        if not hasattr(upload, "file"):
            return refuse("'file' is required: the audio to transcribe", "file")
        audio = upload.file.read()
        try:
            with wave.open(io.BytesIO(audio), "rb") as wav:
                rate, frames = wav.getframerate(), wav.getnframes()
        except (wave.Error, EOFError):
            return refuse("'file' is not a WAV file", "file")
        if not frames:
            return refuse("'file' has no audio", "file")
        if not form.get("model"):
            return refuse("'model' is required", "model")
        fields = {key: str(value) for key, value in form.items() if key != "file"}
        self.transcriptions.append(
            RecordedTranscription(
                headers=dict(request.headers), fields=fields, sample_rate=rate, seconds=frames / rate
            )
        )
        text = self._transcripts.popleft() if self._transcripts else ""
        return web.json_response({"text": text})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(RecordedRequest(headers=dict(request.headers), body=body))
        reply = (
            self._script.popleft()
            if self._script
            else reply_for_request(body, serial=len(self.requests), default=self.default_reply)
        )
        if logger.isEnabledFor(logging.INFO):
            messages = body.get("messages") or [{}]
            logger.info(
                "chat %s: %r -> %s",
                "streamed" if body.get("stream") else "whole",
                _text_of(messages[-1])[:200],
                "".join(reply.pieces) if isinstance(reply, TextReply) else f"tool calls {reply.calls}",
            )
        if not body.get("stream"):
            return web.json_response(self._whole(body, reply))

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            await self._stream(request, response, body, reply)
        except ConnectionResetError:
            pass  # the client gave up on the reply (an interrupted turn): as a real server, stop
        return response

    def _whole(self, body: dict[str, Any], reply: TextReply | ToolCallReply) -> dict[str, Any]:
        """A non-streamed completion (`stream` false), as OpenAI answers it."""
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if isinstance(reply, TextReply):
            message["content"] = "".join(reply.pieces)
            finish_reason = "stop"
        else:
            message["tool_calls"] = [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": "".join(call.argument_pieces)},
                }
                for call in reply.calls
            ]
            finish_reason = "tool_calls"
        return {
            "id": f"chatcmpl-fake{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", MODEL_LISTED),
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        body: dict[str, Any],
        reply: TextReply | ToolCallReply,
    ) -> None:
        completion_id = f"chatcmpl-fake{len(self.requests)}"
        model = body.get("model", MODEL_LISTED)

        async def send(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        if isinstance(reply, TextReply):
            await send({"role": "assistant", "content": ""})
            await asyncio.sleep(reply.thinking_seconds)
            for piece in reply.pieces:
                await send({"content": piece})
            await send({}, finish_reason="stop")
        else:
            await send({"role": "assistant", "content": None})
            for index, call in enumerate(reply.calls):
                await send(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call.call_id,
                                "type": "function",
                                "function": {"name": call.name, "arguments": ""},
                            }
                        ]
                    }
                )
                for piece in call.argument_pieces:
                    await send({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            await send({}, finish_reason="tool_calls")

        if (body.get("stream_options") or {}).get("include_usage"):
            usage_chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
            await response.write(f"data: {json.dumps(usage_chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()


# --- replies derived from the request ------------------------------------------------------


def reply_for_request(
    body: dict[str, Any], *, serial: int, default: str = DEFAULT_REPLY
) -> TextReply | ToolCallReply:
    """What a model would answer to this request (see the module docstring)."""
    messages = body.get("messages") or []
    if not messages:
        return TextReply(pieces=_pieces(default))
    last = messages[-1]
    if last.get("role") == "tool":
        return _answer_from_tool_results(messages)
    if last.get("role") == "user" and body.get("tools") and body.get("tool_choice") != "none":
        calls = _tool_calls_asked_for(_text_of(last), body["tools"], serial=serial)
        if calls:
            return ToolCallReply(calls=calls)
    return TextReply(pieces=_pieces(default))


def _pieces(text: str) -> tuple[str, ...]:
    """`text` as a model streams it: a word (with the space before it) per delta."""
    return tuple(re.findall(r"\s*\S+", text)) or (text,)


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _tool_calls_asked_for(text: str, tools: list[dict[str, Any]], *, serial: int) -> tuple[ToolCall, ...]:
    lowered = text.lower()
    found = dict(
        (
            match.group("name"),
            match.group("quoted") if match.group("quoted") is not None else match.group("bare"),
        )
        for match in _ARGUMENT.finditer(text)
    )
    calls = []
    for tool in tools:
        function = tool.get("function") or {}
        name = function.get("name", "")
        if not name or (name.lower() not in lowered and name.replace("_", " ").lower() not in lowered):
            continue
        properties = (function.get("parameters") or {}).get("properties") or {}
        arguments = {
            argument: _typed(found[argument], schema)
            for argument, schema in properties.items()
            if argument in found
        }
        encoded = json.dumps(arguments)
        middle = len(encoded) // 2
        calls.append(
            ToolCall(
                call_id=f"call_{serial}_{len(calls)}",
                name=name,
                argument_pieces=(encoded[:middle], encoded[middle:]),
            )
        )
    return tuple(calls)


def _typed(value: str, schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        return value
    if kind == "boolean":
        return value.lower() in {"true", "yes", "1"}
    return value


def _answer_from_tool_results(messages: list[dict[str, Any]]) -> TextReply:
    """One sentence per tool result after the last assistant message that called tools."""
    names: dict[str, str] = {}
    results: list[tuple[str, Any]] = []
    for message in messages:
        if message.get("role") == "assistant" and message.get("tool_calls"):
            names.update({call["id"]: call["function"]["name"] for call in message["tool_calls"]})
            results = []
        elif message.get("role") == "tool":
            name = names.get(message.get("tool_call_id", ""), "the tool")
            try:
                value = json.loads(message.get("content") or "null")
            except ValueError:
                value = message.get("content")
            results.append((name.replace("_", " "), value))
    sentences = []
    for name, value in results:
        if isinstance(value, dict) and "error" in value:
            sentences.append(f"Sorry, {name} failed: {_spoken(value['error'])}.")
        else:
            sentences.append(f"The {name} result is {_spoken(value)}.")
    return TextReply(pieces=tuple(" ".join(sentences).replace(". ", ". |").split("|")) or (DEFAULT_REPLY,))


def _spoken(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {_spoken(item)}" for key, item in value.items())
    if isinstance(value, list):
        return ", ".join(_spoken(item) for item in value)
    return str(value).rstrip(".")


@contextlib.contextmanager
def fake_openai_server_in_thread() -> Iterator[FakeOpenAIServer]:
    """The fake on its own event loop in a thread, for a server in another process to call."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-openai", daemon=True)
    thread.start()
    server = FakeOpenAIServer()
    try:
        asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(SERVER_START_TIMEOUT_SECONDS)
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result(
            SERVER_START_TIMEOUT_SECONDS
        )
        loop.call_soon_threadsafe(loop.stop)
        thread.join(SERVER_START_TIMEOUT_SECONDS)
        loop.close()


async def _serve(port: int, reply: str) -> None:
    async with FakeOpenAIServer(port=port, default_reply=reply) as server:
        print(f"fake OpenAI-compatible server at {server.base_url} (model {MODEL_LISTED!r})", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="A fake OpenAI-compatible chat server on 127.0.0.1 for trying Parley by hand."
    )
    parser.add_argument("--port", type=int, default=8092, help="the port on 127.0.0.1 (0: any free one)")
    parser.add_argument(
        "--reply",
        default="This answer comes from the fake LLM on your machine.",
        help="what it answers when no tool is asked for",
    )
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(arguments.port, arguments.reply))


if __name__ == "__main__":
    main()
