"""A local fake of Deepgram's live streaming recogniser (`wss://api.deepgram.com/v1/listen`), on 127.0.0.1.

It speaks Deepgram's websocket wire: the handshake carries `Authorization: Token <key>` (else
401 with Deepgram's error body) and the options as query parameters (`model`, `language`,
`encoding=linear16`, `sample_rate`, `channels`, `interim_results`, `endpointing`, ...; a bad
encoding, rate or channel count is a 400). Then the client streams raw audio as binary
messages and control messages as JSON text: `{"type": "KeepAlive"}`, `{"type": "Finalize"}`,
`{"type": "CloseStream"}`.

"Recognition" is scripted: audio louder than `SPEECH_RMS` is speech, and the speech of one
utterance is heard as the next text given to `script_transcripts(...)`. While speech arrives, an
interim `Results` (`is_final: false`) is sent every `INTERIM_EVERY_SECONDS` of audio with the
words so far (one per `SECONDS_PER_WORD` of speech). The whole text comes in a final `Results`
(`is_final: true`) on `Finalize` (with `from_finalize: true`), or, unless `endpointing=false`,
once silence has lasted the endpointing time after the speech (also `speech_final: true`).
`CloseStream` flushes what is left, answers `Metadata` and closes. Every connection attempt is
kept in `connections`: headers, query, audio bytes, control messages, whether it was accepted.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

DEFAULT_API_KEY = "test-deepgram-key"
# Mean level (of 32768) above which a piece of audio counts as speech: well over the tests'
# room noise (`tests.fakes.spoken.NOISE_RMS`, 30), well under espeak's voiced sounds.
SPEECH_RMS = 300.0
INTERIM_EVERY_SECONDS = 0.25
SECONDS_PER_WORD = 0.3
# Deepgram's own default endpointing (milliseconds of silence that end speech).
DEFAULT_ENDPOINTING_MS = 10
SUPPORTED_ENCODINGS = ("linear16",)


@dataclass
class DeepgramConnection:
    """One websocket handshake and what came over it."""

    headers: dict[str, str]
    query: dict[str, str]
    accepted: bool = False
    audio_bytes: int = 0
    controls: list[dict[str, Any]] = field(default_factory=list)  # the JSON messages received
    sent: list[dict[str, Any]] = field(default_factory=list)  # the JSON messages answered

    @property
    def control_types(self) -> list[str]:
        return [message.get("type", "") for message in self.controls]


@dataclass
class _Utterance:
    """The audio since the last final result, in bytes into the stream."""

    start: int
    speech_bytes: int = 0
    last_speech_end: int | None = None  # where the last loud piece ended
    interim_at: int = 0  # where the next interim is due
    words_sent: int = 0


@dataclass
class FakeDeepgramServer:
    """Run with `async with FakeDeepgramServer() as server:`; point the client at `server.base_url`."""

    api_key: str = DEFAULT_API_KEY
    connections: list[DeepgramConnection] = field(default_factory=list)
    _transcripts: deque[str] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        """As a self-hosted Deepgram's address would be given: http, the client makes it ws."""
        return f"http://127.0.0.1:{self.port}"

    def script_transcripts(self, *texts: str) -> None:
        """Queue what the recogniser "hears"; each utterance with speech in it takes the next one."""
        self._transcripts.extend(texts)

    async def __aenter__(self) -> FakeDeepgramServer:
        app = web.Application()
        app.router.add_get("/v1/listen", self._listen)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        connection = DeepgramConnection(headers=dict(request.headers), query=dict(request.query))
        self.connections.append(connection)
        request_id = str(uuid.uuid4())
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            return web.json_response(
                {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.", "request_id": request_id},
                status=401,
                headers={"dg-request-id": request_id},
            )
        problem = _options_problem(connection.query)
        if problem:
            return web.json_response(
                {"err_code": "Bad Request", "err_msg": problem, "request_id": request_id},
                status=400,
                headers={"dg-request-id": request_id},
            )
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        connection.accepted = True
        await _Stream(self, socket, connection, request_id).run()
        return socket

    def _next_transcript(self) -> str:
        return self._transcripts.popleft() if self._transcripts else ""


def _options_problem(query: dict[str, str]) -> str | None:
    encoding = query.get("encoding", "linear16")
    if encoding not in SUPPORTED_ENCODINGS:
        return f"encoding {encoding!r} is not supported by this fake"
    if not query.get("sample_rate", "").isdigit() or int(query["sample_rate"]) <= 0:
        return "sample_rate is required for raw audio"
    if query.get("channels", "1") != "1" or query.get("multichannel", "false") != "false":
        return "this fake transcribes one channel"
    return None


class _Stream:
    """One accepted connection: audio in, Results out."""

    def __init__(
        self,
        server: FakeDeepgramServer,
        socket: web.WebSocketResponse,
        connection: DeepgramConnection,
        request_id: str,
    ) -> None:
        self.server, self.socket, self.connection, self.request_id = server, socket, connection, request_id
        query = connection.query
        self.bytes_per_second = int(query["sample_rate"]) * 2
        self.interim = query.get("interim_results", "false") == "true"
        endpointing = query.get("endpointing", str(DEFAULT_ENDPOINTING_MS))
        self.endpointing_bytes = (
            None if endpointing == "false" else int(int(endpointing) / 1000 * self.bytes_per_second)
        )
        self.model = query.get("model", "base")
        self.received = 0
        self.utterance = _Utterance(start=0)
        self.text: str | None = None  # the scripted text of the utterance being heard

    async def run(self) -> None:
        async for message in self.socket:
            if message.type == WSMsgType.BINARY:
                await self._audio(message.data)
            elif message.type == WSMsgType.TEXT:
                control = json.loads(message.data)
                self.connection.controls.append(control)
                kind = control.get("type")
                if kind == "Finalize":
                    await self._final(from_finalize=True)
                elif kind == "CloseStream":
                    await self._final(from_finalize=False)
                    await self._send(self._metadata())
                    await self.socket.close()
                    return
                # KeepAlive: only kept.
            else:
                return

    async def _audio(self, audio: bytes) -> None:
        self.connection.audio_bytes += len(audio)
        self.received += len(audio)
        utterance = self.utterance
        samples = np.frombuffer(audio[: len(audio) // 2 * 2], dtype=np.int16).astype(np.float32)
        loud = samples.size > 0 and math.sqrt(float(np.mean(samples * samples))) > SPEECH_RMS
        if loud:
            if self.text is None:
                self.text = self.server._next_transcript()
                utterance.interim_at = self.received + int(INTERIM_EVERY_SECONDS * self.bytes_per_second)
            utterance.speech_bytes += len(audio)
            utterance.last_speech_end = self.received
        if self.text is None:
            return
        if (
            self.endpointing_bytes is not None
            and utterance.last_speech_end is not None
            and self.received - utterance.last_speech_end >= self.endpointing_bytes
        ):
            await self._final(from_finalize=False, speech_final=True)
        elif self.interim and self.received >= utterance.interim_at:
            utterance.interim_at = self.received + int(INTERIM_EVERY_SECONDS * self.bytes_per_second)
            words = self.text.split()
            heard = min(
                len(words), 1 + int(utterance.speech_bytes / self.bytes_per_second / SECONDS_PER_WORD)
            )
            if words and heard > utterance.words_sent:
                utterance.words_sent = heard
                await self._send(self._results(" ".join(words[:heard]), is_final=False))

    async def _final(self, *, from_finalize: bool, speech_final: bool = False) -> None:
        """The utterance's final result: its text if speech was heard, else an empty one."""
        if self.received == self.utterance.start and not from_finalize:
            return
        text = self.text or ""
        message = self._results(text, is_final=True, speech_final=speech_final or from_finalize)
        if from_finalize:
            message["from_finalize"] = True
        await self._send(message)
        self.utterance = _Utterance(start=self.received)
        self.text = None

    def _results(self, transcript: str, *, is_final: bool, speech_final: bool = False) -> dict[str, Any]:
        start = self.utterance.start / self.bytes_per_second
        duration = (self.received - self.utterance.start) / self.bytes_per_second
        words = transcript.split()
        step = duration / len(words) if words else 0.0
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(duration, 3),
            "start": round(start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "channel": {
                "alternatives": [
                    {
                        "transcript": transcript,
                        "confidence": 0.98 if words else 0.0,
                        "words": [
                            {
                                "word": word.strip(".,?!").lower(),
                                "start": round(start + index * step, 3),
                                "end": round(start + (index + 1) * step, 3),
                                "confidence": 0.98,
                                "punctuated_word": word,
                            }
                            for index, word in enumerate(words)
                        ],
                    }
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": {"name": f"general-{self.model}", "version": "fake", "arch": self.model},
                "model_uuid": "00000000-0000-0000-0000-000000000000",
            },
        }

    def _metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": "0" * 64,
            "created": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "duration": round(self.received / self.bytes_per_second, 3),
            "channels": 1,
        }

    async def _send(self, message: dict[str, Any]) -> None:
        self.connection.sent.append(message)
        if not self.socket.closed:
            await self.socket.send_str(json.dumps(message))
