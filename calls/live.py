"""Live browser sessions: one per call, owning its peer connection, data channel and conversation.

A `LiveSession` outlives any one signalling socket (the Anam SDK reconnects its websocket
within a session) and ends when the call ends: the client goes away for longer than the
grace period, media and heartbeats stop, a limit is hit, or the server shuts it down. It is
the bridge between the pipeline (plain asyncio, no ORM) and the database: what happens in
the conversation becomes events and transcript rows through `calls.services`, run off the
event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import av
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.sdp import candidate_from_sdp
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from calls import events, services
from calls.models import Call, EndReason, new_message_id
from calls.pipeline.brain.config import BrainTool, brain_tools_from_definitions
from calls.pipeline.conversation import Conversation, ConversationConfig, ConversationListener
from calls.pipeline.tools import PendingToolCall
from calls.pipeline.transport import MicrophoneDrain, PacedAudioTrack
from personas.models import Persona
from personas.tools import tools_problems

logger = logging.getLogger(__name__)

# Data channel and signalling frames bigger than this are refused (typed text is short).
MAX_CLIENT_FRAME_BYTES = 64 * 1024
# How often the watchdog looks at a session's liveness, in seconds.
WATCHDOG_INTERVAL_SECONDS = 1.0
# How long `/talk` waits for a session that is still connecting (seconds): an app may call
# talk() as soon as the SDK's stream() resolves, before ICE and DTLS are up.
TALK_READY_TIMEOUT_SECONDS = 10.0
# Talk-stream chunks kept while the session is still connecting (more are refused).
MAX_EARLY_TALK_CHUNKS = 200

SendSignal = Callable[[str, Any], Awaitable[None]]

_LIVE: dict[str, LiveSession] = {}


def live_session_get(session_id: str) -> LiveSession | None:
    return _LIVE.get(session_id)


def live_sessions() -> list[LiveSession]:
    return list(_LIVE.values())


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def candidate_address_allowed(address: str) -> bool:
    """Refuse remote candidates aimed at this host's private side, unless configured otherwise."""
    if settings.PARLEY_ALLOW_PRIVATE_ICE:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        # mDNS names (x.local) cannot be resolved here anyway; anything else is refused.
        return False
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def ice_address_policy_apply() -> None:
    """With PARLEY_ICE_LOOPBACK_ONLY, gather only 127.0.0.1.

    aioice never offers loopback addresses, so a server and a browser on one machine with no
    network (tests, an offline demo) would have no candidate pair. Workaround for aioice's
    fixed host-address list; it can go when aioice lets callers choose interfaces.
    """
    if settings.PARLEY_ICE_LOOPBACK_ONLY:
        import aioice.ice

        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


# ICE consent freshness (RFC 7675): a check every ~5 s; consent expires when no check has been
# answered for 30 s. Each check is retransmitted (0.5 s, then 1 s; it fails after 3.5 s), so an
# answer that a busy event loop on either side delays still counts.
ICE_CONSENT_INTERVAL_SECONDS = 5.0
ICE_CONSENT_EXPIRY_SECONDS = 30.0
ICE_CONSENT_RETRANSMISSIONS = 2


async def _ice_consent_query(connection: Any) -> None:
    """Replaces `aioice.ice.Connection.query_consent` (see `ice_consent_policy_apply`)."""
    import random

    from aioice import stun

    assert connection.remote_password is not None  # checks start once connect() has it
    answered_at = time.monotonic()
    while True:
        await asyncio.sleep(ICE_CONSENT_INTERVAL_SECONDS * (0.8 + 0.4 * random.random()))
        for pair in list(connection._nominated.values()):
            request = connection.build_request(pair, nominate=False)
            try:
                await pair.protocol.request(
                    request,
                    pair.remote_addr,
                    integrity_key=connection.remote_password.encode("utf8"),
                    retransmissions=ICE_CONSENT_RETRANSMISSIONS,
                )
            except stun.TransactionError:
                continue
            answered_at = time.monotonic()
        if time.monotonic() - answered_at > ICE_CONSENT_EXPIRY_SECONDS:
            logger.info(
                "ICE consent expired: no answer to a consent check for %.0f s",
                time.monotonic() - answered_at,
            )
            connection._query_consent_task = None
            await connection.close()
            return


def ice_consent_policy_apply() -> None:
    """ICE consent as RFC 7675 has it: it expires 30 s after the last answered check.

    aioice (0.13) sends each consent check once and counts it failed unless answered within
    0.5 s; six failures in a row close the connection. With 16 sessions on this 2-core machine
    the event loops on both ends lag 0.5-1.3 s at times, answers arrived late over and over,
    and calls that were playing fine were closed ("Consent to send expired", streams at 0 fps in
    `bench/webrtc_sessions.py`). Process-wide, like `ice_address_policy_apply`; it relies on
    aioice's private `_nominated`, `build_request` and `_query_consent_task` (pinned version).
    """
    import aioice.ice

    if getattr(aioice.ice.Connection.query_consent, "_parley_consent", False):
        return

    async def query_consent(self: Any) -> None:
        await _ice_consent_query(self)

    query_consent._parley_consent = True  # type: ignore[attr-defined]
    aioice.ice.Connection.query_consent = query_consent


def video_bitrate_policy_apply() -> None:
    """Bound the avatar's VP8 bitrate to PARLEY_VIDEO_MAX_BITRATE (bits per second).

    aiortc starts every VP8 stream at 500 kbps and lets the receiver's estimate raise it to
    1.5 Mbps; a 320x240 face needs far less, and every extra RTP packet is Python work on the
    event loop (encryption, send) that all sessions of the process share. aiortc reads these
    module constants when it creates an encoder and when it applies a receiver estimate.
    """
    from aiortc.codecs import vpx

    ceiling = settings.PARLEY_VIDEO_MAX_BITRATE
    vpx.MAX_BITRATE = ceiling
    vpx.DEFAULT_BITRATE = min(vpx.DEFAULT_BITRATE, ceiling)
    vpx.MIN_BITRATE = min(vpx.MIN_BITRATE, ceiling)


# How long the end of a call waits for its queued events to be stored (seconds).
PUBLISH_DRAIN_SECONDS = 5.0


class MicrophoneJitterBuffer(JitterBuffer):
    """Each audio RTP packet is one whole Opus frame: it is decoded as soon as it arrives.

    A packet older than one already handed on is dropped (too late to be heard in order); a
    lost one is simply skipped.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity=capacity, prefetch=0)
        self._next: int | None = None  # the sequence number expected next

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        if self._next is not None and (packet.sequence_number - self._next) & 0xFFFF >= 0x8000:
            return False, None
        self._next = (packet.sequence_number + 1) & 0xFFFF
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


class MicrophoneInlineDecoder:
    """Stands in for a microphone receiver's decoder queue: each packet is decoded on the loop.

    aiortc hands every received frame to a decoder thread through a `queue.Queue`, and the
    thread hands each decoded frame back with `run_coroutine_threadsafe` (a task and a wake-up
    of the loop per frame). Decoding 20 ms of Opus takes ~0.05 ms; the two handoffs cost far
    more, and the GIL that each one passes to the other thread is what the event loop then
    waits for: with 8 listening calls in a process, 7 % of the loop's samples were in the
    handoff (py-spy). As with the encoders (`transport.OpusPieceEncoder`), it is done inline.

    aiortc's decoder thread still starts; it waits here (`get`) until the receiver stops, and
    then ends the track as it would have.
    """

    def __init__(self, frames: asyncio.Queue[Any]) -> None:
        self._frames = frames
        self._decoder: Any = None
        self._codec_name: str | None = None
        self._stopped = threading.Event()

    def put(self, task: tuple[Any, Any] | None) -> None:
        """From the receiver (on the loop): a (codec, encoded frame) to decode, or None to stop."""
        if task is None:
            self._stopped.set()
            return
        codec, encoded_frame = task
        if codec.name != self._codec_name:
            self._decoder, self._codec_name = get_decoder(codec), codec.name
        try:
            frames = self._decoder.decode(encoded_frame)
        except av.FFmpegError as error:  # one bad packet: the next ones still decode
            logger.warning("microphone packet could not be decoded: %s", error)
            return
        for frame in frames:
            self._frames.put_nowait(frame)

    def get(self) -> None:
        """aiortc's decoder thread: nothing to decode there; returns once the receiver stops."""
        self._stopped.wait()
        return None


def microphone_decode_inline(peer: Any, track: Any) -> None:
    """Give the receiver of this remote audio track a `MicrophoneInlineDecoder`.

    Only before the receiver starts (its "track" event): the decoder thread takes the queue
    it finds then.
    """
    for receiver in peer.getReceivers():
        if receiver.track is track and hasattr(receiver, "_RTCRtpReceiver__decoder_queue"):
            if receiver._RTCRtpReceiver__decoder_thread is None:
                receiver._RTCRtpReceiver__decoder_queue = MicrophoneInlineDecoder(track._queue)


def microphone_jitter_buffer_shorten(peer: Any, track: Any) -> None:
    """Give the receiver of this remote audio track a `MicrophoneJitterBuffer`.

    aiortc holds 4 audio packets (80 ms) before decoding, and even with fewer its buffer hands
    a packet on only when the next one arrives (it waits to know a frame is complete, which an
    audio packet always is): 20 ms more. Parley does not play the microphone out, it listens
    to it, so every packet it holds back only makes barge-in and turn-taking slower.
    """
    for receiver in peer.getReceivers():
        if receiver.track is track and hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
            buffer = receiver._RTCRtpReceiver__jitter_buffer
            receiver._RTCRtpReceiver__jitter_buffer = MicrophoneJitterBuffer(capacity=buffer.capacity)


class LiveSession(ConversationListener):
    """One call's real-time side. Created by the first signalling socket of its session."""

    def __init__(self, *, call: Call, config: ConversationConfig) -> None:
        self.call = call
        self.session_id = call.id
        self.config = config
        self.audio_track = PacedAudioTrack()
        self.microphone = MicrophoneDrain()
        self.peer: RTCPeerConnection | None = None
        self.channel: RTCDataChannel | None = None
        self.conversation: Conversation | None = None
        self._send_signal: SendSignal | None = None
        self._socket_lost_at: float | None = time.monotonic()
        self._last_heartbeat = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        # The latest event write; each write waits for the one before it, so a call's events
        # are stored (and broadcast) in the order they happened.
        self._publish_tail: asyncio.Future[Any] | None = None
        self._ended = asyncio.Event()
        self._connected = False
        self._started_at = time.monotonic()
        self._video_track: Any = None
        self._conversation_started: asyncio.Future[None] | None = None
        self._user_action_id = ""  # correlates userSpeechStarted/Ended of one utterance
        self._interrupted_talk_streams: set[str] = set()  # told to the client once each
        self._speech_ready = asyncio.Event()  # the persona can be heard: talk goes through
        self._early_talk_chunks: list[dict[str, Any]] = []
        _LIVE[self.session_id] = self
        self._spawn(self._watchdog(), "watchdog")

    # --- signalling socket ---------------------------------------------------------------

    def attach(self, send_signal: SendSignal) -> None:
        """A signalling socket (first, or a reconnect) now speaks for this session."""
        self._send_signal = send_signal
        self._socket_lost_at = None
        self._last_heartbeat = time.monotonic()

    def detach(self, send_signal: SendSignal) -> None:
        if self._send_signal is send_signal:
            self._send_signal = None
            self._socket_lost_at = time.monotonic()

    async def signal(self, action_type: str, payload: Any) -> None:
        if self._send_signal is not None:
            try:
                await self._send_signal(action_type, payload)
            except Exception:  # the socket went away mid-send; the client will reconnect
                logger.info("signalling send of %s failed for %s", action_type, self.session_id)

    async def on_signal(self, action_type: str, payload: Any) -> None:
        """One frame from the client (already parsed and shape-checked by the consumer)."""
        self._last_heartbeat = time.monotonic()
        if action_type == "offer":
            await self._on_offer(payload)
        elif action_type == "icecandidate":
            await self._on_remote_candidate(payload)
        elif action_type == "heartbeat":
            return
        elif action_type == "talkstream":
            await self._on_talk_stream(payload)
        elif action_type in {"agentaudioinput", "agentaudioinputend"}:
            await self.signal("warning", f"{action_type} is not supported by this server")
        else:
            await self.signal("warning", f"unknown actionType {action_type!r}")

    # --- WebRTC --------------------------------------------------------------------------

    def _ice_configuration(self) -> RTCConfiguration:
        servers = [
            RTCIceServer(
                urls=server["urls"], username=server.get("username"), credential=server.get("credential")
            )
            for server in settings.PARLEY_ICE_SERVERS
        ]
        return RTCConfiguration(iceServers=servers)

    async def _on_offer(self, payload: dict[str, Any]) -> None:
        description = payload["connectionDescription"]
        if self.peer is not None:
            # An ICE-restart re-offer: aiortc cannot restart ICE; say so instead of failing.
            await self.signal("warning", "ICE restart is not supported; the session continues as it is")
            return
        from calls.pipeline.avatar.track import AvatarVideoTrack  # heavy drawing setup, once

        ice_address_policy_apply()
        ice_consent_policy_apply()
        video_bitrate_policy_apply()
        self.peer = peer = RTCPeerConnection(self._ice_configuration())
        self._video_track = AvatarVideoTrack(
            look=self.config.avatar_look,
            portrait=self.config.avatar_portrait,
            audio=self.audio_track,
            encode=True,
        )
        # The pipeline (brain, voice) builds while ICE and DTLS connect.
        self.conversation = Conversation(
            config=self.config,
            track=self.audio_track,
            microphone=self.microphone,
            listener=self,
            face=self._video_track.animator,
        )
        self._conversation_started = asyncio.ensure_future(self.conversation.start())

        @peer.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label != "session":
                return
            self.channel = channel

            @channel.on("message")
            def on_message(message: str | bytes) -> None:
                self._spawn(self._on_data_message(message), "data-message")

        @peer.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio":
                microphone_jitter_buffer_shorten(peer, track)
                microphone_decode_inline(peer, track)
                self.microphone.track = track
            else:  # nothing to do with a video upstream; drain it so it does not pile up
                self._spawn(_drain(track), "drain-video")

        @peer.on("connectionstatechange")
        async def on_state() -> None:
            state = peer.connectionState
            logger.info("session %s: peer %s", self.session_id, state)
            if state == "connected" and not self._connected:
                self._connected = True
                await self._on_connected()
            elif state in {"failed", "closed"}:
                await self.end(reason=EndReason.HANGUP if state == "closed" else EndReason.FAILED)

        # Voice and face in one MediaStream (aiortc gives every track of a PC one stream id), so
        # the SDK's streamToVideoElement plays both.
        self._video_track.sender_attach(peer.addTrack(self._video_track))
        peer.addTrack(self.audio_track)
        await peer.setRemoteDescription(
            RTCSessionDescription(sdp=description["sdp"], type=description["type"])
        )
        answer = await peer.createAnswer()
        await peer.setLocalDescription(answer)  # aiortc gathers here; its candidates are in the SDP
        await self.signal("answer", {"type": "answer", "sdp": peer.localDescription.sdp})

    async def _on_remote_candidate(self, payload: dict[str, Any]) -> None:
        if self.peer is None:
            return
        text = payload.get("candidate") or ""
        if not text:
            return  # end-of-candidates
        try:
            candidate = candidate_from_sdp(text.removeprefix("candidate:"))
        except (ValueError, IndexError):
            await self.signal("warning", "icecandidate: not a valid candidate line")
            return
        if not candidate_address_allowed(candidate.ip):
            logger.info("session %s: refused a remote candidate on a private address", self.session_id)
            return
        candidate.sdpMid = payload.get("sdpMid")
        candidate.sdpMLineIndex = payload.get("sdpMLineIndex")
        try:
            await self.peer.addIceCandidate(candidate)
        except Exception as error:  # a candidate for an unknown m-line is the client's mistake
            await self.signal("warning", f"icecandidate: {error}")

    async def _conversation_ready(self) -> Conversation | None:
        """The conversation once its pipeline runs (None before the offer or if it failed)."""
        if self._conversation_started is None or self.conversation is None:
            return None
        try:
            await self._conversation_started
        except Exception:
            logger.exception("session %s: the conversation could not start", self.session_id)
            await self.end(reason=EndReason.FAILED, message="the persona could not start")
            return None
        return self.conversation

    async def _on_connected(self) -> None:
        self.call = await database_sync_to_async(services.call_start)(call=self.call)
        if await self._conversation_ready() is None:
            return
        await self.signal("sessionready", self.session_id)
        if self.conversation is not None:
            self.conversation.peer_ready()
            if not self.config.skip_greeting and self.config.greeting:
                await self.conversation.say(self.config.greeting)
            self._speech_ready.set()
            early, self._early_talk_chunks = self._early_talk_chunks, []
            for payload in early:
                await self._on_talk_stream(payload)

    # --- data channel ----------------------------------------------------------------------

    def send_data(self, message_type: str, data: dict[str, Any]) -> None:
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(json.dumps({"messageType": message_type, "data": data}))

    async def _on_data_message(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes) or len(raw) > MAX_CLIENT_FRAME_BYTES:
            return
        try:
            message = json.loads(raw)
        except ValueError:
            return
        if not isinstance(message, dict) or await self._conversation_ready() is None:
            return
        kind = message.get("message_type")
        content = message.get("content")
        if kind == "speech" and isinstance(content, str) and content.strip():
            await self.user_typed(content.strip())
        elif kind == "interrupt":
            await self.conversation.interrupt()
        elif kind == "context" and isinstance(content, str) and content.strip():
            await self.conversation.add_context(content.strip())
        elif kind == "tool_result" and message.get("tool_call_id"):
            accepted = await self.conversation.tool_result(
                tool_call_id=str(message["tool_call_id"]),
                result=message.get("result"),
                error=message.get("error"),
                kind="client",
            )
            if not accepted:
                logger.info("session %s: a tool_result for no waiting client tool call", self.session_id)
        # remote_rtp_stats, director_note_cue and anything unknown are ignored on purpose.

    async def user_typed(self, text: str) -> None:
        """Typed text is treated as if said: user.message, a transcript row, then a reply."""
        assert self.conversation is not None
        # The reply does not wait for the writes: every session's writes share one database
        # thread, busy with the word events of everyone speaking. They are queued there first,
        # so user.message still precedes the reply's events.
        self._spawn(self._user_said(text), "user-said")
        await asyncio.sleep(0)  # let it queue its writes
        if self.conversation.speaking:
            # Typing over the persona is a barge-in: its current reply stops where it is.
            await self.conversation.interrupt()
        await self.conversation.user_text(text)

    async def _user_said(self, text: str, *, wait: bool = True) -> None:
        """The user's final words (typed or recognised): event, transcript row, caption.

        `wait=False` (recognised speech): the turn decision must not wait for the database; the
        event and the row are written in order behind the events before them.
        """
        message_id = new_message_id()
        at = timezone.now()

        async def store() -> None:
            await self._publish_now(events.UserMessage(text=text, message_id=message_id), at)
            try:
                await database_sync_to_async(services.message_record)(
                    call=self.call, message_id=message_id, role="user", text=text
                )
            except Exception:
                logger.exception("session %s: could not record the user's message", self.session_id)

        stored = self._in_order(store)
        if wait:
            await stored
        self.send_data(
            "speechText",
            {
                "message_id": message_id,
                "content_index": 0,
                "content": text,
                "role": "user",
                "end_of_speech": True,
                "interrupted": False,
            },
        )

    async def say(self, text: str) -> bool:
        """Say this verbatim (`/talk`), once the persona can be heard; False if it never could."""
        try:
            await asyncio.wait_for(self._speech_ready.wait(), TALK_READY_TIMEOUT_SECONDS)
        except TimeoutError:
            return False
        if self.conversation is None or self.ended:
            return False
        await self.conversation.say(text)
        return True

    async def _on_talk_stream(self, payload: dict[str, Any]) -> None:
        if not self._speech_ready.is_set():
            # Before the voice is up its words would be lost: keep the chunks until then.
            if len(self._early_talk_chunks) < MAX_EARLY_TALK_CHUNKS:
                self._early_talk_chunks.append(payload)
            else:
                await self.signal("warning", "talkstream: the session is not ready; chunk dropped")
            return
        if self.conversation is None:
            return
        await self.conversation.talk_stream_chunk(
            content=str(payload.get("content") or ""),
            end_of_speech=bool(payload.get("endOfSpeech")),
            correlation_id=str(payload.get("correlationId") or ""),
        )

    # --- conversation listener (pipeline → events, transcript, data channel) ----------------

    async def publish(self, event: events.Event) -> None:
        """Store and broadcast an event, after those published before it; returns once stored."""
        at = timezone.now()
        await self._in_order(lambda: self._publish_now(event, at))

    def publish_soon(self, event: events.Event) -> None:
        """Like `publish`, without waiting: for the listening side, whose decisions (the end of
        the user's turn, the start of the reply) must not wait for the database."""
        at = timezone.now()
        self._in_order(lambda: self._publish_now(event, at))

    async def _publish_now(self, event: events.Event, at: Any = None) -> None:
        try:
            await services.acall_event_publish(call=self.call, event=event, at=at)
        except Exception:  # the conversation goes on even if one event cannot be stored
            logger.exception("session %s: could not publish %s", self.session_id, event.name)

    def _in_order(self, write: Callable[[], Awaitable[None]]) -> asyncio.Future[Any]:
        """Run `write` once every write queued before it has finished."""
        previous = self._publish_tail

        async def run() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            await write()

        task = asyncio.ensure_future(run())
        self._publish_tail = task
        return task

    async def on_user_speech_started(self) -> None:
        self._user_action_id = "ua_" + secrets.token_hex(8)
        self.publish_soon(events.SpeechStarted())
        self.send_data("userSpeechStarted", {"user_action_correlation_id": self._user_action_id})

    async def on_user_speech_ended(self) -> None:
        self.publish_soon(events.SpeechEnded())
        self.send_data("userSpeechEnded", {"user_action_correlation_id": self._user_action_id})

    async def on_user_speaking(self, *, text: str) -> None:
        self.publish_soon(events.UserSpeaking(text=text))
        # A Parley extension the Anam SDK ignores: Parley's page shows the words as they come.
        self.send_data(
            "userSpeechInterim", {"user_action_correlation_id": self._user_action_id, "content": text}
        )

    async def on_user_message(self, *, text: str) -> None:
        await self._user_said(text, wait=False)

    async def on_eager_turn(self, *, text: str, probability: float) -> None:
        self.publish_soon(events.EagerTurn(text=text, probability=probability))

    async def on_turn_end(self, *, text: str, probability: float) -> None:
        self.publish_soon(events.TurnEnd(text=text, probability=probability))

    async def on_turn_continued(self) -> None:
        self.publish_soon(events.TurnContinued())

    async def on_bot_speaking(self, *, message_id: str, text: str) -> None:
        await self.publish(events.BotSpeaking(message_id=message_id, text=text))

    async def on_bot_word(
        self, *, message_id: str, word: str, index: int, correlation_id: str | None
    ) -> None:
        await self.publish(events.BotWord(message_id=message_id, word=word))
        chunk: dict[str, Any] = {
            "message_id": message_id,
            "content_index": index,
            "content": word if index == 0 else f" {word}",
            "role": "persona",
            "end_of_speech": False,
            "interrupted": False,
        }
        if correlation_id:
            chunk["correlationId"] = correlation_id
        self.send_data("speechText", chunk)

    async def on_bot_finished(
        self, *, message_id: str, text: str, spoken: str, index: int, correlation_id: str | None
    ) -> None:
        self.send_data(
            "speechText",
            {
                "message_id": message_id,
                "content_index": index,
                "content": "",
                "role": "persona",
                "end_of_speech": True,
                "interrupted": False,
                **({"correlationId": correlation_id} if correlation_id else {}),
            },
        )
        await self.publish(events.BotFinished(message_id=message_id))
        await database_sync_to_async(services.message_record)(
            call=self.call, message_id=message_id, role="persona", text=text or spoken, spoken_text=spoken
        )

    async def on_bot_interrupted(
        self,
        *,
        message_id: str,
        text: str,
        spoken: str,
        index: int,
        played_ms: int,
        correlation_id: str | None,
    ) -> None:
        words = spoken.split()
        self.send_data(
            "speechText",
            {
                "message_id": message_id,
                "content_index": index,
                "content": "",
                "role": "persona",
                "end_of_speech": True,
                "interrupted": True,
                **({"correlationId": correlation_id} if correlation_id else {}),
            },
        )
        if correlation_id:
            await self.on_talk_stream_interrupted(correlation_id=correlation_id)
        await self.publish(
            events.BotInterrupted(
                message_id=message_id,
                played_ms=played_ms,
                words_spoken=len(words),
                last_word=words[-1] if words else None,
            )
        )
        await database_sync_to_async(services.message_record)(
            call=self.call,
            message_id=message_id,
            role="persona",
            text=text or spoken,
            spoken_text=spoken,
            interrupted=True,
        )

    async def on_tool_call(self, *, message_id: str, calls: list[dict[str, str]]) -> None:
        await self.publish(
            events.LlmToolCall(
                msg_id=message_id,
                tool_calls=[
                    events.ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"]) for c in calls
                ],
            )
        )

    async def on_talk_stream_interrupted(self, *, correlation_id: str) -> None:
        if correlation_id not in self._interrupted_talk_streams:
            self._interrupted_talk_streams.add(correlation_id)
            await self.signal("talkinputstreaminterrupted", {"correlationId": correlation_id})

    def _tool_call_frame(self, call: PendingToolCall) -> dict[str, Any]:
        """The fields every toolCall* data-channel frame carries, as the Anam SDK reads them."""
        return {
            "event_uid": str(uuid.uuid4()),
            "session_id": self.session_id,
            "tool_call_id": call.tool_call_id,
            "tool_name": call.name,
            "tool_type": call.kind,
            "arguments": call.arguments,
            "timestamp": _now_iso(),
            # Parley has no id for the user action behind a call; the llm.tool_call batch
            # (msgId) and its start stand in for it, and come back in the tool_result.
            "timestamp_user_action": call.started_at,
            "user_action_correlation_id": call.message_id,
        }

    async def on_tool_call_started(self, *, call: PendingToolCall) -> None:
        self.send_data("toolCallStarted", self._tool_call_frame(call))

    async def on_tool_call_completed(self, *, call: PendingToolCall, result: Any) -> None:
        self.send_data("toolCallCompleted", {**self._tool_call_frame(call), "result": result})

    async def on_tool_call_failed(self, *, call: PendingToolCall, error: str) -> None:
        self.send_data("toolCallFailed", {**self._tool_call_frame(call), "error_message": error})

    # --- ending -----------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        while not self._ended.is_set():
            await asyncio.sleep(WATCHDOG_INTERVAL_SECONDS)
            now = time.monotonic()
            elapsed = now - self._started_at
            if elapsed > self.config.max_duration_seconds:
                await self.publish(events.SessionTimeout(reason="max_duration"))
                await self.end(
                    reason=EndReason.MAX_DURATION, message="the session reached its maximum duration"
                )
                return
            if self._socket_lost_at is not None:
                media_at = self.microphone.last_frame_at
                media_stale = media_at is None or now - media_at > settings.PARLEY_SESSION_STALE_SECONDS
                lost_for = now - self._socket_lost_at
                if lost_for > settings.PARLEY_SIGNALLING_GRACE_SECONDS and (
                    not self._connected or media_stale or lost_for > settings.PARLEY_SESSION_STALE_SECONDS
                ):
                    await self.end(reason=EndReason.HANGUP)
                    return
            elif now - self._last_heartbeat > settings.PARLEY_SESSION_STALE_SECONDS:
                await self.end(reason=EndReason.TIMEOUT, message="no heartbeat from the client")
                return

    async def end(self, *, reason: str, message: str = "") -> None:
        """End the call once: tell the client, stop the pipeline, close media, publish call.ended."""
        if self._ended.is_set():
            return
        self._ended.set()
        _LIVE.pop(self.session_id, None)
        await self.signal("endsession", message or reason)
        if self.conversation is not None:
            await self.conversation.stop()
        if self._video_track is not None:
            self._video_track.stop()
        self.audio_track.stop()
        if self.peer is not None:
            await self.peer.close()
        if self._publish_tail is not None:  # the call's last events are stored before its end
            await asyncio.wait([self._publish_tail], timeout=PUBLISH_DRAIN_SECONDS)
        try:
            self.call = await database_sync_to_async(services.call_end)(call=self.call, reason=reason)
        except Exception:
            logger.exception("session %s: could not record its end", self.session_id)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self._tasks.clear()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def _spawn(self, coroutine: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coroutine)
        task.set_name(f"{self.session_id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "session %s: task %s failed", self.session_id, task.get_name(), exc_info=task.exception()
            )


async def _drain(track: Any) -> None:
    from aiortc.mediastreams import MediaStreamError

    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return


def _build_config(call: Call) -> ConversationConfig:
    """The call's persona as plain values, with an ephemeral token's inline overrides applied."""
    token = call.session_token
    overrides: dict[str, Any] = {}
    if token is not None and token.kind == "ephemeral":
        overrides = token.persona_config or {}
    return persona_conversation_config(call.persona, overrides)


def persona_conversation_config(
    persona: Persona, overrides: dict[str, Any] | None = None
) -> ConversationConfig:
    """The persona as plain values (an ephemeral token's `persona_config` as `overrides`)."""
    overrides = overrides or {}
    detection = overrides.get("voiceDetectionOptions") or {}
    llm_id = overrides.get("llmId")
    return ConversationConfig(
        agent=persona.slug,
        name=overrides.get("name") or persona.name,
        greeting=persona.greeting,
        system_prompt=overrides.get("systemPrompt", persona.system_prompt),
        language=overrides.get("languageCode") or persona.language_code,
        voice=overrides.get("voiceId") or persona.voice,
        tts_provider=persona.tts_provider,
        tts_model=persona.tts_model,
        tts_base_url=persona.tts_base_url,
        tts_api_key=persona.tts_api_key,
        listening=settings.PARLEY_LISTENING,
        stt_provider=persona.stt_provider,
        stt_model=persona.stt_model,
        stt_base_url=persona.stt_base_url,
        stt_api_key=persona.stt_api_key,
        stt_phrases=tuple(line.strip() for line in persona.stt_phrases.splitlines() if line.strip()),
        end_of_speech_sensitivity=float(
            detection.get("endOfSpeechSensitivity", persona.end_of_speech_sensitivity)
        ),
        silence_before_auto_end_turn_seconds=float(
            detection.get("silenceBeforeAutoEndTurnSeconds") or persona.silence_before_auto_end_turn_seconds
        ),
        brain_provider="builtin" if llm_id == "builtin" else persona.brain_provider,
        llm_base_url=persona.llm_base_url,
        llm_model=llm_id if llm_id and llm_id != "builtin" else persona.llm_model,
        llm_api_key=persona.llm_api_key,
        llm_temperature=persona.llm_temperature,
        knowledge=tuple((entry.question, entry.answer) for entry in persona.knowledge.all()),
        avatar_look=dict(persona.avatar_look or {}),
        avatar_portrait=persona.avatar_portrait.path if persona.avatar_portrait else "",
        skip_greeting=bool(overrides.get("skipGreeting", persona.skip_greeting)),
        max_duration_seconds=float(overrides.get("maxSessionLengthSeconds") or persona.max_duration_seconds),
        idle_timeout_seconds=float(
            detection.get("silenceBeforeSessionEndSeconds") or persona.idle_timeout_seconds
        ),
        idle_warning_seconds=float(persona.idle_warning_seconds),
        tools=_persona_tools(persona.slug, persona.tools),
        tool_timeout_seconds=settings.PARLEY_TOOL_TIMEOUT_SECONDS,
    )


def _persona_tools(slug: str, definitions: Any) -> tuple[BrainTool, ...]:
    """The persona's tools for the LLM; none if they were stored without validation and are bad."""
    if not definitions:
        return ()
    problems = tools_problems(definitions)
    if problems:
        logger.warning("persona %s: its tools are invalid and left out (%s)", slug, "; ".join(problems))
        return ()
    return brain_tools_from_definitions(definitions)


async def live_session_open(*, session_id: str) -> LiveSession | None:
    """The live session for a signalling socket: the existing one, or a new one for a new call."""
    existing = _LIVE.get(session_id)
    if existing is not None and not existing.ended:
        return existing
    call = await database_sync_to_async(_connectable_call)(session_id)
    if call is None:
        return None
    config = await database_sync_to_async(_build_config)(call)
    return LiveSession(call=call, config=config)


def _connectable_call(session_id: str) -> Call | None:
    from calls.models import CallStatus

    return (
        Call.objects.select_related("persona", "organization", "session_token")
        .prefetch_related("persona__knowledge")
        .filter(pk=session_id, status=CallStatus.CONNECTING)
        .first()
    )


async def live_sessions_shutdown() -> None:
    for live in live_sessions():
        await live.end(reason=EndReason.FAILED, message="the server is shutting down")


__all__ = ["LiveSession", "_now_iso", "candidate_address_allowed", "live_session_get", "live_session_open"]
