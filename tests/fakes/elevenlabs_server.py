"""A local fake of ElevenLabs' streaming-with-timestamps TTS endpoint (NDJSON), on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# Each character "takes" this long in the fake voice, in seconds.
SECONDS_PER_CHARACTER = 0.05


def tone(seconds: float, sample_rate: int) -> bytes:
    """A quiet 220 Hz tone: audible, deterministic, and obviously not silence."""
    count = int(seconds * sample_rate)
    return b"".join(
        struct.pack("<h", int(6000 * math.sin(2 * math.pi * 220 * index / sample_rate)))
        for index in range(count)
    )


@dataclass
class FakeElevenLabs:
    requests: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    base_url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(
            {
                "voice": request.match_info["voice"],
                "api_key": request.headers.get("xi-api-key"),
                "query": dict(request.query),
                "body": body,
            }
        )
        if request.headers.get("xi-api-key") != "test-eleven-key":
            return web.json_response({"detail": {"status": "invalid_api_key"}}, status=401)
        sample_rate = int(request.query.get("output_format", "pcm_24000").split("_")[1])
        text = body["text"]
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        # Two chunks, as the real service streams: audio plus the alignment of its characters.
        middle = len(text) // 2
        for start, piece in ((0, text[:middle]), (middle, text[middle:])):
            if not piece:
                continue
            starts = [(start + index) * SECONDS_PER_CHARACTER for index in range(len(piece))]
            line = {
                "audio_base64": base64.b64encode(
                    tone(len(piece) * SECONDS_PER_CHARACTER, sample_rate)
                ).decode(),
                "alignment": {
                    "characters": list(piece),
                    "character_start_times_seconds": starts,
                    "character_end_times_seconds": [moment + SECONDS_PER_CHARACTER for moment in starts],
                },
            }
            await response.write((json.dumps(line) + "\n").encode())
        await response.write_eof()
        return response

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/text-to-speech/{voice}/stream/with-timestamps", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
