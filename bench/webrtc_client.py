"""A Python WebRTC client that talks to Parley exactly as the Anam SDK does (used by bench and tests).

Session start with the token, the signalling websocket (`offer` sent at once, answer
applied), a data channel `session` created first, video recvonly then audio sendrecv. It
records what arrives — signalling frames, data-channel messages, video and audio frames —
with monotonic timestamps, so callers can measure and assert.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import httpx
import numpy as np
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

# A received 20 ms audio frame whose peak passes this (of 32767) counts as voice, not silence.
LOUD_PEAK = 500
# What a browser sends its microphone at (Chrome's default for mono Opus), bits a second.
MICROPHONE_BITRATE = 32_000
# The Anam SDK's default heartbeat period.
HEARTBEAT_SECONDS = 5.0


class _CountingVideoDecoder:
    """Stands in for the VP8 decoder: every complete encoded frame counts, none is decoded.

    A benchmark that shares the server's cores must not spend them decoding video it never
    looks at; the frame still crosses the network, the jitter buffer and the depacketiser.
    """

    def __init__(self) -> None:
        self._frame = av.VideoFrame(16, 16, "yuv420p")

    def decode(self, encoded_frame: Any) -> list[av.VideoFrame]:
        self._frame.pts = encoded_frame.timestamp
        return [self._frame]


class _InlineVideoCounter:
    """A video receiver's decoder queue while video is counted, not decoded: each complete
    frame is counted on the event loop (`_CountingVideoDecoder`).

    aiortc hands every frame to its decoder thread through a `queue.Queue` and back with
    `run_coroutine_threadsafe`: with 16 clients in one process the handoff (a wake-up of that
    thread and the GIL passed to it, per frame) was 14 % of the client's samples (py-spy), for
    frames nobody decodes. The thread still starts; it waits here (`get`) until the receiver
    stops, then ends the track as it would have (`calls.live.microphone`'s decoder, likewise).
    """

    def __init__(self, frames: asyncio.Queue[Any]) -> None:
        self._frames = frames
        self._counter = _CountingVideoDecoder()
        self._stopped = threading.Event()

    def put(self, task: tuple[Any, Any] | None) -> None:
        if task is None:
            self._stopped.set()
            return
        for frame in self._counter.decode(task[1]):
            self._frames.put_nowait(frame)

    def get(self) -> None:
        self._stopped.wait()
        return None


def video_counting_inline(peer: RTCPeerConnection, track: MediaStreamTrack) -> None:
    """Count this remote video track's frames on the loop, when video is not decoded at all
    (`video_decoding_disable`); only before its receiver starts (the "track" event)."""
    from aiortc import rtcrtpreceiver

    if not getattr(rtcrtpreceiver.get_decoder, "_parley_counting", False):
        return
    for receiver in peer.getReceivers():
        if receiver.track is track and receiver._RTCRtpReceiver__decoder_thread is None:
            receiver._RTCRtpReceiver__decoder_queue = _InlineVideoCounter(track._queue)


# The Opus packets of a microphone's room-noise loop (`ScriptedMicrophone.floor`), by the loop's
# bytes: encoded once in a process, replayed by every client (`InlineOpusTrack`).
_FLOOR_PACKETS: dict[int, list[bytes]] = {}


def floor_packets(floor: np.ndarray, piece: int) -> list[bytes]:
    """A room-noise loop as Opus packets, one per `piece` samples, as a browser would code it.

    The loop is coded twice in a row by one encoder and the second pass kept: its packets are
    what a microphone playing the loop on and on sends, the encoder's state already settled.
    """
    from calls.pipeline.transport import OUTPUT_SAMPLE_RATE, OpusPieceEncoder

    key = hash(floor.tobytes())
    if key not in _FLOOR_PACKETS:
        encoder = OpusPieceEncoder(MICROPHONE_BITRATE, application="voip")
        pcm = np.clip(floor, -32768, 32767).astype(np.int16)
        pieces = pcm.size // piece
        packets: list[bytes] = []
        for index in range(2 * pieces):
            samples = pcm[(index % pieces) * piece : (index % pieces + 1) * piece]
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts = OUTPUT_SAMPLE_RATE, index * piece
            frame.time_base = Fraction(1, OUTPUT_SAMPLE_RATE)
            packets.append(bytes(encoder.encode(frame)))
        _FLOOR_PACKETS[key] = packets[pieces:]
    return _FLOOR_PACKETS[key]


class InlineOpusTrack(MediaStreamTrack):
    """Sends another audio track's frames as Opus packets encoded on the event loop.

    aiortc encodes each frame a track returns on asyncio's default thread pool: two thread
    handoffs per 20 ms packet, which in a benchmark with many clients in one process cost the
    client's loop more than the encoding itself and made it send its speech late. A track that
    returns encoded packets is sent as they are (`calls.pipeline.transport.OpusPieceEncoder`,
    what the server does with the persona's voice). The microphone is coded as a browser codes
    it: mono, libopus's "voip" mode (SILK for speech), at Chrome's default 32 kb/s.

    The room's noise between utterances, when the source says a frame is only that
    (`ScriptedMicrophone.floor_offset`), is not encoded again: the loop's packets, encoded once
    in the process (`floor_packets`), are sent. 16 clients encoding 50 frames a second each
    took 0.4 of the 2 cores the server under test had (py-spy, a 2-core EPYC): what visitors'
    browsers spend on their own machines. Speech and the room around it (`say`) are encoded
    as they come, by the client's own encoder.
    """

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        from calls.pipeline.transport import OpusPieceEncoder

        self._source = source
        self._encoder = OpusPieceEncoder(MICROPHONE_BITRATE, application="voip")
        self._floor: list[bytes] | None = None

    async def recv(self) -> av.Packet:
        frame = await self._source.recv()
        offset = getattr(self._source, "floor_offset", None)
        if offset is not None:
            if self._floor is None:
                self._floor = floor_packets(self._source.floor, frame.samples)
            packet = av.Packet(self._floor[offset // frame.samples])
            packet.pts, packet.time_base = frame.pts, frame.time_base
            return packet
        return self._encoder.encode(frame)

    def stop(self) -> None:
        self._source.stop()
        super().stop()


def video_decoding_disable() -> None:
    """Process-wide: received video frames are counted, not decoded (benchmarks only)."""
    from aiortc import rtcrtpreceiver

    if getattr(rtcrtpreceiver.get_decoder, "_parley_counting", False):
        return
    real_get_decoder = rtcrtpreceiver.get_decoder

    def get_decoder(codec: Any) -> Any:
        if codec.mimeType.lower().startswith("video/"):
            return _CountingVideoDecoder()
        return real_get_decoder(codec)

    get_decoder._parley_counting = True  # type: ignore[attr-defined]
    rtcrtpreceiver.get_decoder = get_decoder


@dataclass
class SessionRecord:
    """What one client saw, with `time.monotonic()` stamps."""

    session_id: str = ""
    started_at: float = 0.0
    # When each connection step ended (session started, socket open, offer made, answer, ...).
    steps: dict[str, float] = field(default_factory=dict)
    signals: list[dict[str, Any]] = field(default_factory=list)
    signal_times: list[float] = field(default_factory=list)  # when each of `signals` arrived
    data: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    video_frames: list[float] = field(default_factory=list)
    audio_frames: list[float] = field(default_factory=list)
    loud_audio_frames: list[float] = field(default_factory=list)
    # `data` indexed as it arrives (`data_add`): the waits poll these at every frame, and a scan
    # of all the data each time was 14 % of a 16-client benchmark's samples (py-spy).
    _by_type: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)
    _speech_by_role: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)
    _persona_finished: int = field(default=0, repr=False)

    def data_add(self, at: float, item: dict[str, Any]) -> None:
        """Keep one data-channel frame received at `at`."""
        self.data.append((at, item))
        message_type = item.get("messageType")
        payload = item.get("data")
        if not isinstance(message_type, str):
            return
        self._by_type.setdefault(message_type, []).append(payload)
        if message_type == "speechText" and isinstance(payload, dict):
            role = payload.get("role")
            self._speech_by_role.setdefault(role, []).append(payload)
            if role == "persona" and payload.get("end_of_speech"):
                self._persona_finished += 1

    def speech_texts(self, role: str) -> list[dict[str, Any]]:
        return list(self._speech_by_role.get(role, ()))

    def data_of(self, message_type: str) -> list[dict[str, Any]]:
        """The `data` of every data-channel frame of this type received so far, in order."""
        return list(self._by_type.get(message_type, ()))

    def persona_messages(self) -> list[str]:
        texts: dict[str, str] = {}
        for chunk in self.speech_texts("persona"):
            texts[chunk["message_id"]] = texts.get(chunk["message_id"], "") + chunk["content"]
        return list(texts.values())

    def persona_finished_count(self) -> int:
        return self._persona_finished


class ParleyWebRTCClient:
    """One browser-like session. Use `async with`; call `ask(text)` to type a question."""

    def __init__(
        self,
        *,
        base_url: str,
        session_token: str,
        step_timeout_seconds: float = 30.0,
        microphone: Any = None,
        playout_packets: int | None = None,
        inline_audio: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session_token = session_token
        self.step_timeout_seconds = step_timeout_seconds
        self.record = SessionRecord()
        self.microphone = microphone  # an audio MediaStreamTrack to send, or None (silent)
        # Packets of the persona's voice held before playout: aiortc's default is 4 (80 ms); a
        # browser's adaptive buffer on a quiet loopback holds about 1-2. None keeps aiortc's.
        self.playout_packets = playout_packets
        # Encode the microphone and decode the persona's voice on the event loop instead of
        # aiortc's threads (benchmarks with many clients in one process: see InlineOpusTrack).
        self.inline_audio = inline_audio
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._peer: RTCPeerConnection | None = None
        self._socket: Any = None
        self._channel: Any = None

    async def __aenter__(self) -> ParleyWebRTCClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _note(self) -> None:
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        async def loop() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(loop(), self.step_timeout_seconds)
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what}; last data: {self.record.data[-3:]}"
            ) from None

    async def connect(self) -> None:
        record = self.record
        record.started_at = time.monotonic()
        async with httpx.AsyncClient(base_url=self.base_url) as http:
            response = await http.post(
                "/v1/engine/session",
                json={"clientMetadata": {"client": "parley-python", "version": "1"}},
                headers={"Authorization": f"Bearer {self.session_token}"},
            )
        if response.status_code != 200:
            raise AssertionError(f"session start failed: {response.status_code} {response.text}")
        session = response.json()
        record.steps["session started"] = time.monotonic()
        record.session_id = session["sessionId"]
        scheme = "ws" if session["engineProtocol"] == "http" else "wss"
        url = f"{scheme}://{session['engineHost']}{session['signallingEndpoint']}?session_id={record.session_id}"
        self._peer = peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._channel = channel = peer.createDataChannel("session", ordered=True)
        peer.addTransceiver("video", direction="recvonly")
        audio = peer.addTransceiver("audio", direction="sendrecv")
        if self.microphone is not None:
            audio.sender.replaceTrack(
                InlineOpusTrack(self.microphone) if self.inline_audio else self.microphone
            )

        @peer.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio" and self.playout_packets is not None:
                from aiortc.jitterbuffer import JitterBuffer

                for receiver in peer.getReceivers():
                    if receiver.track is track:
                        receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(
                            capacity=16, prefetch=self.playout_packets
                        )
            if track.kind == "audio" and self.inline_audio:
                from calls.live.microphone import microphone_decode_inline

                microphone_decode_inline(peer, track)  # the same as the server's, for the voice
            if track.kind == "video":
                video_counting_inline(peer, track)
            self._tasks.append(asyncio.ensure_future(self._read_track(track)))

        @channel.on("message")
        def on_message(message: str) -> None:
            record.data_add(time.monotonic(), json.loads(message))
            self._note()

        self._socket = await websockets.connect(url)
        record.steps["socket open"] = time.monotonic()
        self._tasks.append(asyncio.ensure_future(self._read_signals()))
        self._tasks.append(asyncio.ensure_future(self._heartbeats()))
        await peer.setLocalDescription(await peer.createOffer())
        record.steps["offer made"] = time.monotonic()
        await self.signal(
            "offer",
            {
                "connectionDescription": {"type": "offer", "sdp": peer.localDescription.sdp},
                "userUid": record.session_id,
            },
        )
        await self.wait_for(lambda: channel.readyState == "open", "the data channel to open")
        record.steps["data channel open"] = time.monotonic()

    async def signal(self, action_type: str, payload: Any) -> None:
        await self._socket.send(
            json.dumps({"actionType": action_type, "sessionId": self.record.session_id, "payload": payload})
        )

    async def _heartbeats(self) -> None:
        """Every 5 s, as the SDK does: the server ends a session whose client went quiet."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.signal("heartbeat", "")
            except websockets.ConnectionClosed:
                return

    async def _read_signals(self) -> None:
        try:
            async for raw in self._socket:
                frame = json.loads(raw)
                self.record.signals.append(frame)
                self.record.signal_times.append(time.monotonic())
                if frame["actionType"] == "answer":
                    self.record.steps["answer"] = time.monotonic()
                    assert self._peer is not None
                    await self._peer.setRemoteDescription(RTCSessionDescription(**frame["payload"]))
                self._note()
        except websockets.ConnectionClosed:
            self._note()

    async def _read_track(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if track.kind == "video":
                self.record.video_frames.append(now)
            else:
                self.record.audio_frames.append(now)
                if np.abs(frame.to_ndarray().astype(np.int32)).max() > LOUD_PEAK:
                    self.record.loud_audio_frames.append(now)
            self._note()

    def ask(self, text: str) -> float:
        """Type a question on the data channel; returns when it was sent."""
        self._channel.send(
            json.dumps(
                {
                    "message_type": "speech",
                    "content": text,
                    "session_id": self.record.session_id,
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
            )
        )
        return time.monotonic()

    def interrupt(self) -> float:
        self._channel.send(json.dumps({"message_type": "interrupt", "session_id": self.record.session_id}))
        return time.monotonic()

    def send_data(self, message: dict[str, Any]) -> float:
        """Send any client frame on the data channel (e.g. a `tool_result`); returns when."""
        self._channel.send(json.dumps(message))
        return time.monotonic()

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._peer is not None:
            await self._peer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
