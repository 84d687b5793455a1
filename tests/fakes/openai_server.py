"""A local OpenAI-compatible chat server for tests: scripted streamed replies, recorded requests.

`POST /v1/chat/completions` answers with the next scripted reply (a `TextReply` or a
`ToolCallReply`) as server-sent events in the real OpenAI chunk format; when the script is
empty it says `DEFAULT_REPLY`. `GET /v1/models` lists the one model. Every chat request is kept
in `requests` (headers and JSON body) so a test can assert what the client sent.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_REPLY = "OK."
MODEL_LISTED = "fake-model"


@dataclass(frozen=True)
class TextReply:
    """Streamed as one content delta per piece."""

    pieces: tuple[str, ...]


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


@dataclass
class FakeOpenAIServer:
    """Run with `async with FakeOpenAIServer() as server:`; point clients at `server.base_url`."""

    requests: list[RecordedRequest] = field(default_factory=list)
    _script: deque[TextReply | ToolCallReply] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: TextReply | ToolCallReply) -> None:
        """Queue replies; each chat request takes the next one."""
        self._script.extend(replies)

    async def __aenter__(self) -> FakeOpenAIServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
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

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(RecordedRequest(headers=dict(request.headers), body=body))
        reply = self._script.popleft() if self._script else TextReply(pieces=(DEFAULT_REPLY,))
        if not body.get("stream"):
            return web.json_response({"error": {"message": "the fake serves stream=true only"}}, status=400)

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
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
        return response
