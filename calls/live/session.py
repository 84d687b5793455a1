"""Live browser sessions: one per call, owning its peer connection, data channel and conversation.

A `LiveSession` outlives any one signalling socket (the Anam SDK reconnects its websocket
within a session) and ends when the call ends: the client goes away for longer than the
grace period, media and heartbeats stop, a limit is hit, or the server shuts it down. It is
the bridge between the pipeline (plain asyncio, no ORM) and the database: what happens in
the conversation becomes events (`calls.publishing`) and transcript rows (`calls.services`),
run off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.sdp import candidate_from_sdp
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from calls import events, publishing, services
from calls.agents.control import CallControl
from calls.agents.hooks import hooks_dispatch, hooks_present
from calls.live.latency import stamp_wall_time, tool_result_write, turn_latency_write
from calls.live.limits import LimitReason, SessionLimits
from calls.live.microphone import microphone_decode_inline, microphone_jitter_buffer_shorten
from calls.live.registry import _LIVE
from calls.live.webrtc_policy import (
    candidate_address_allowed,
    ice_address_policy_apply,
    ice_consent_policy_apply,
    video_bitrate_policy_apply,
)
from calls.models import Call, EndReason, new_message_id
from calls.pipeline.audio_metrics import AudioLevel, AudioSource
from calls.pipeline.conversation import Conversation, ConversationConfig, ConversationListener
from calls.pipeline.latency import TurnLatencyClock
from calls.pipeline.recording import CallRecorder
from calls.pipeline.tools import PendingToolCall
from calls.pipeline.transport import MicrophoneDrain, PacedAudioTrack
from calls.review import recordings
from calls.selectors import call_event_data
from webapp.inputs import InputRefused, json_parse

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
# Data messages kept for the client while its data channel is not open yet (the greeting's
# first words can be due before it is: the peer connects, then the channel's own handshake).
MAX_EARLY_DATA_MESSAGES = 200

SendSignal = Callable[[str, Any], Awaitable[None]]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# How long the end of a call waits for its queued events to be stored (seconds).
PUBLISH_DRAIN_SECONDS = 5.0


class LiveSession(ConversationListener):
    """One call's real-time side. Created by the first signalling socket of its session."""

    def __init__(self, *, call: Call, config: ConversationConfig) -> None:
        self.call = call
        self.session_id = call.id
        self.config = config
        self.audio_track = PacedAudioTrack()
        self.microphone = MicrophoneDrain()
        self.latency = TurnLatencyClock()  # each turn's stages, stamped as they happen
        # When each persona message being spoken began: its transcript row is written at its end.
        self._speaking_since: dict[str, Any] = {}
        self.peer: RTCPeerConnection | None = None
        self.channel: RTCDataChannel | None = None
        # What was due on the data channel before it opened, sent once it does (oldest first).
        self._early_data: list[str] | None = []
        self.conversation: Conversation | None = None
        self._send_signal: SendSignal | None = None
        self._socket_lost_at: float | None = time.monotonic()
        self._last_heartbeat = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        # The latest event write; each write waits for the one before it, so a call's events
        # are stored (and broadcast) in the order they happened.
        self._publish_tail: asyncio.Future[Any] | None = None
        # The latest write was handed to the event store (a kept event or a row of the call),
        # which keeps their order: the next may go straight after it.
        self._tail_on_store = False
        self._ended = asyncio.Event()
        self._connected = False
        self._video_track: Any = None
        self._conversation_started: asyncio.Future[None] | None = None
        self._user_action_id = ""  # correlates userSpeechStarted/Ended of one utterance
        self._interrupted_talk_streams: set[str] = set()  # told to the client once each
        self._speech_ready = asyncio.Event()  # the persona can be heard: talk goes through
        self._early_talk_chunks: list[dict[str, Any]] = []
        self.recorder: CallRecorder | None = None  # while the call is recorded
        self.limits = SessionLimits(
            max_duration_seconds=config.max_duration_seconds,
            idle_timeout_seconds=config.idle_timeout_seconds,
            idle_warning_seconds=config.idle_warning_seconds,
            on_idle_warning=self._on_idle_warning,
            on_limit=self._on_limit,
        )
        self.control = CallControl(self)  # the agent API's side of the call
        _LIVE[self.session_id] = self
        self._spawn(self._watchdog(), "watchdog")
        self._spawn(self.limits.run(), "limits")
        self._spawn(self.control.watch(), "agents")

    # --- signalling socket ---------------------------------------------------------------

    def attach(self, send_signal: SendSignal) -> None:
        """A signalling socket (first, or a reconnect) now speaks for this session."""
        self._send_signal = send_signal
        self._socket_lost_at = None
        self._last_heartbeat = time.monotonic()

    def detach(self, send_signal: SendSignal) -> None:
        """The socket that spoke for this session closed; the grace period starts, unless a newer
        socket already took over. Compared with `==`: a bound method (`consumer.send_signal`) is
        a new object at each access, so `is` never matched and the grace never started."""
        if self._send_signal == send_signal:
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
            latency=self.latency,
        )
        self.conversation.app_answers = lambda: self.control.answering
        self._conversation_started = asyncio.ensure_future(self.conversation.start())

        @peer.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label != "session":
                return
            self.channel = channel
            self._early_data_flush()

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
        if self.peer is None:  # aiortc can place a candidate only once it has the offer
            await self.signal(
                "warning", "icecandidate: no offer yet; send the offer first (candidate dropped)"
            )
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
        if self.config.record:  # from now: its 0:00 is (within milliseconds) the call's start
            self.recorder = recordings.recorder_attach(
                call_id=self.session_id, track=self.audio_track, microphone=self.microphone
            )
        self.call = await database_sync_to_async(services.call_start)(call=self.call)
        await self._hooks_tell_stored(events.CallStarted.name)
        if await self._conversation_ready() is None:
            return
        await self.signal("sessionready", self.session_id)
        if self.conversation is not None:
            self.conversation.peer_ready()
            greeting = not self.config.skip_greeting and bool(self.config.greeting)
            if greeting:
                await self.conversation.say(self.config.greeting)
            self._speech_ready.set()
            self.limits.idle_clock_start(after_persona_speaks=greeting)
            early, self._early_talk_chunks = self._early_talk_chunks, []
            for payload in early:
                await self._on_talk_stream(payload)

    # --- data channel ----------------------------------------------------------------------

    def send_data(self, message_type: str, data: dict[str, Any]) -> None:
        payload = json.dumps({"messageType": message_type, "data": data})
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(payload)
        elif self._early_data is not None and len(self._early_data) < MAX_EARLY_DATA_MESSAGES:
            self._early_data.append(payload)

    def _early_data_flush(self) -> None:
        """The channel opened: what was due before goes first; from now on nothing is kept."""
        early, self._early_data = self._early_data or [], None
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        for payload in early:
            channel.send(payload)

    async def _on_data_message(self, raw: str | bytes) -> None:
        try:
            message = data_message_parse(raw)
        except InputRefused as refusal:  # told on the signalling socket; the channel stays open
            await self.signal("warning", f"data channel: {refusal.detail}")
            return
        if await self._conversation_ready() is None:
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
        """Typed text is treated as if said: user.message, a transcript row, then a reply.

        A typed message is a whole turn: `turn.end` (probability 1) follows its `user.message`,
        as after speech, so apps that answer turns answer typed ones too.
        """
        assert self.conversation is not None
        self.limits.user_active()
        message_id = new_message_id()
        self.latency.typed(user_message_id=message_id)
        # The reply does not wait for the writes: every session's writes share one database
        # thread, busy with the word events of everyone speaking. They are queued there first,
        # so user.message still precedes the reply's events.
        self._spawn(self._user_said(text, channel="typed", message_id=message_id), "user-said")
        await asyncio.sleep(0)  # let it queue its writes
        await self.on_turn_end(text=text, probability=1.0)
        if self.conversation.speaking:
            # Typing over the persona is a barge-in: its current reply stops where it is.
            await self.conversation.interrupt()
        await self.conversation.user_text(text)

    async def _user_said(
        self, text: str, *, channel: str, wait: bool = True, message_id: str | None = None
    ) -> None:
        """The user's final words (typed or recognised): event, transcript row, caption.

        `wait=False` (recognised speech): the turn decision must not wait for the database; the
        event and the row are written in order behind the events before them. `channel`
        ("spoken" or "typed") is recorded on the transcript row.
        """
        message_id = message_id or new_message_id()
        if channel == "spoken":
            self.latency.transcript_ready(user_message_id=message_id)
        self.control.user_message(message_id)
        at = timezone.now()

        self._publish_in_order(events.UserMessage(text=text, message_id=message_id, channel=channel), at=at)
        stored = self._write_in_order(
            functools.partial(
                services.message_record,
                call=self.call,
                message_id=message_id,
                role="user",
                text=text,
                channel=channel,
            ),
            what="the user's message",
        )
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
        if self.peer is None:  # no call to speak in until the client offers
            await self.signal(
                "warning", "talkstream: the call is not connected; send the offer first (chunk dropped)"
            )
            return
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
        await self._publish_in_order(event)

    def publish_soon(self, event: events.Event) -> None:
        """Like `publish`, without waiting: for the listening side, whose decisions (the end of
        the user's turn, the start of the reply) must not wait for the database."""
        self._publish_in_order(event)

    def _publish_in_order(self, event: events.Event, *, at: Any = None) -> asyncio.Future[Any]:
        """A kept event goes to the event store at once when nothing but what went to the store
        is ahead of it (the store keeps their order); behind another write, it waits."""
        at = at or timezone.now()
        previous = self._publish_tail
        if not event.kept or not (previous is None or previous.done() or self._tail_on_store):
            return self._in_order(lambda: self._publish_now(event, at))
        stored = asyncio.get_running_loop().create_future()
        try:
            stored = publishing.call_event_submit(call=self.call, event=event, at=at)
        except Exception:  # the conversation goes on even if one event cannot be stored
            logger.exception("session %s: could not publish %s", self.session_id, event.name)
            stored.set_result(None)
        task = asyncio.ensure_future(self._publish_now(event, at, stored=stored))
        self._publish_tail = task
        self._tail_on_store = True  # submitted: the next event may go straight after it
        return task

    def _write_in_order(self, write: Callable[[], Any], *, what: str) -> asyncio.Future[Any]:
        """A write of the call's rows (`write`, a blocking function of the database) on the event
        store's thread, behind the call's events and writes before it; a failure is logged."""
        previous = self._publish_tail
        if not (previous is None or previous.done() or self._tail_on_store):
            return self._in_order(lambda: self._write_now(write, what=what))
        task = asyncio.ensure_future(self._write_now(write, what=what))
        self._publish_tail = task
        self._tail_on_store = True
        return task

    async def _write_now(self, write: Callable[[], Any], *, what: str) -> None:
        try:
            await publishing.call_write_submit(write)
        except Exception:  # the conversation goes on even if a row cannot be stored
            logger.exception("session %s: could not record %s", self.session_id, what)

    async def _publish_now(
        self, event: events.Event, at: Any = None, *, stored: asyncio.Future[Any] | None = None
    ) -> None:
        try:
            if stored is not None:
                await stored
            else:
                await publishing.acall_event_publish(call=self.call, event=event, at=at)
        except Exception:  # the conversation goes on even if one event cannot be stored
            logger.exception("session %s: could not publish %s", self.session_id, event.name)
        if hooks_present(self.config.agent):
            frame = events.event_frame(event=event, call_id=self.session_id, agent=self.config.agent)
            hooks_dispatch(call_id=self.session_id, slug=self.config.agent, name=event.name, data=frame)

    async def _hooks_tell_stored(self, name: str) -> None:
        """Hand in-process hooks an event `calls.publishing` published (call.started, call.ended:
        they change the call's row too), as it was stored."""
        if not hooks_present(self.config.agent):
            return
        try:
            data = await database_sync_to_async(call_event_data)(call_id=self.session_id, name=name)
        except Exception:
            logger.exception("session %s: could not read %s for its hooks", self.session_id, name)
            return
        if data is not None:
            hooks_dispatch(call_id=self.session_id, slug=self.config.agent, name=name, data=data)

    def _in_order(self, write: Callable[[], Awaitable[None]]) -> asyncio.Future[Any]:
        """Run `write` once every write queued before it has finished."""
        previous = self._publish_tail

        async def run() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            await write()

        task = asyncio.ensure_future(run())
        self._publish_tail = task
        self._tail_on_store = False
        return task

    def on_audio_metrics(self, *, source: AudioSource, level: AudioLevel) -> None:
        """A live level (the persona sends audio metrics): broadcast now, without waiting.

        Not through `publish_soon`: these would wait there behind the storing of every kept
        event before them (tens of milliseconds each), and a level reported late is a level
        meter lagging the voice; and 20 a second, a task each cost the event loop more than the
        reading itself (`bench/audio_metrics.py`).
        """
        if self.ended:
            return
        event = events.AudioMetrics(
            source=source,
            energy_db=level.energy_db,
            rms=level.rms,
            peak=level.peak,
            is_speech=level.is_speech,
            vad_prob=level.vad_prob,
        )
        try:
            publishing.call_event_broadcast_soon(call=self.call, event=event)
        except Exception:  # the conversation goes on; a reading is soon followed by the next
            logger.exception("session %s: could not broadcast audio.metrics", self.session_id)

    async def on_user_speech_started(self) -> None:
        self._user_action_id = "ua_" + secrets.token_hex(8)
        self.limits.user_speaking(True)
        self.publish_soon(events.SpeechStarted())
        self.send_data("userSpeechStarted", {"user_action_correlation_id": self._user_action_id})

    async def on_user_speech_ended(self) -> None:
        self.latency.speech_ended()
        self.limits.user_speaking(False)
        self.publish_soon(events.SpeechEnded())
        self.send_data("userSpeechEnded", {"user_action_correlation_id": self._user_action_id})

    async def on_user_speaking(self, *, text: str) -> None:
        self.publish_soon(events.UserSpeaking(text=text))
        # A Parley extension the Anam SDK ignores: Parley's page shows the words as they come.
        self.send_data(
            "userSpeechInterim", {"user_action_correlation_id": self._user_action_id, "content": text}
        )

    async def on_user_message(self, *, text: str) -> None:
        await self._user_said(text, channel="spoken", wait=False)

    async def on_eager_turn(self, *, text: str, probability: float) -> None:
        self.control.turn_eager()
        self.publish_soon(events.EagerTurn(text=text, probability=probability))

    async def on_turn_end(self, *, text: str, probability: float) -> None:
        self.latency.turn_ended()
        self.publish_soon(events.TurnEnd(text=text, probability=probability))
        await self.control.turn_end()

    async def on_turn_continued(self) -> None:
        self.publish_soon(events.TurnContinued())
        await self.control.turn_continued()

    async def on_bot_speaking(self, *, message_id: str, text: str) -> None:
        self.latency.answer_started(message_id=message_id)
        self.limits.persona_speaking(True)
        self._speaking_since[message_id] = timezone.now()
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
        self.limits.persona_speaking(False)
        self._turn_latency_store(message_id)
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
        self.publish_soon(events.BotFinished(message_id=message_id))
        await self._write_in_order(
            functools.partial(
                services.message_record,
                call=self.call,
                message_id=message_id,
                role="persona",
                text=text or spoken,
                spoken_text=spoken,
                started_at=self._speaking_since.pop(message_id, None),
                ended_at=timezone.now(),
            ),
            what="the persona's message",
        )
        if not self.control.owns(message_id):  # an app's messages were confirmed when accepted
            # The persona's own message, now in the transcript: committed to the conversation.
            self.publish_soon(events.MessageConfirmed(message_id=message_id, text=text or spoken))

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
        self.limits.persona_speaking(False)
        self._turn_latency_store(message_id)
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
        await self._write_in_order(
            functools.partial(
                services.message_record,
                call=self.call,
                message_id=message_id,
                role="persona",
                text=text or spoken,
                spoken_text=spoken,
                interrupted=True,
                started_at=self._speaking_since.pop(message_id, None),
                ended_at=timezone.now(),
            ),
            what="the persona's interrupted message",
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
        if self.control.owns(correlation_id):  # an app's reply stream, not the browser's talk stream
            await self.control.message_interrupted(correlation_id)
            return
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
        self._write_in_order(
            tool_result_write(call=self.call, tool_call=call, result=result), what="a tool's result"
        )

    async def on_tool_call_failed(self, *, call: PendingToolCall, error: str) -> None:
        self.send_data("toolCallFailed", {**self._tool_call_frame(call), "error_message": error})
        self._write_in_order(
            tool_result_write(call=self.call, tool_call=call, error=error), what="a tool's failure"
        )

    def _turn_latency_store(self, message_id: str) -> None:
        """The stages of the turn this persona message answered, stored behind the call's events
        (never awaited: the voice goes on)."""
        stamps = self.latency.answer_over(message_id=message_id)
        if stamps is None or stamps.origin is None:
            return
        started_at = stamp_wall_time(stamps.origin)
        self._write_in_order(
            turn_latency_write(call=self.call, stamps=stamps, started_at=started_at), what="a turn's latency"
        )

    # --- ending -----------------------------------------------------------------------------

    async def _app_answers_idle_warning(self) -> bool:
        """Whether an app answers this session's idle warning (then the persona says nothing)."""
        return await self.control.answers_idle_warning()

    async def _on_idle_warning(self, remaining_seconds: float) -> None:
        """The user has been silent for the idle timeout less the warning: say so, then check in."""
        await self.publish(
            events.SessionIdleWarning(
                remaining_seconds=round(remaining_seconds, 1),
                idle_timeout_seconds=self.limits.idle_timeout_seconds,
            )
        )
        line = self.config.idle_check_in.strip()
        if line and self.conversation is not None and not self.ended:
            if not await self._app_answers_idle_warning():
                await self.conversation.say(line)

    async def _on_limit(self, reason: LimitReason) -> None:
        """A session limit hit: `session.timeout`, then the call ends with that reason."""
        if self.ended:
            return
        await self.publish(events.SessionTimeout(reason=reason))
        # The reason itself goes to the browser (the Anam SDK's CONNECTION_CLOSED details).
        await self.end(reason=EndReason.IDLE_TIMEOUT if reason == "idle_timeout" else EndReason.MAX_DURATION)

    async def _watchdog(self) -> None:
        while not self._ended.is_set():
            await asyncio.sleep(WATCHDOG_INTERVAL_SECONDS)
            now = time.monotonic()
            if self._socket_lost_at is not None:
                # No socket and no microphone for the grace period: the client has gone (a closed
                # tab). While media still flows the socket may come back, up to the stale time.
                grace = settings.PARLEY_SIGNALLING_GRACE_SECONDS
                media_at = self.microphone.last_frame_at
                media_stopped = media_at is None or now - media_at > grace
                lost_for = now - self._socket_lost_at
                if lost_for > grace and (
                    not self._connected or media_stopped or lost_for > settings.PARLEY_SESSION_STALE_SECONDS
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
        await self.control.call_ending()
        if self.conversation is not None:
            try:  # the answer being spoken is kept, as far as it was heard
                await self.conversation.cut_short()
            except Exception:
                logger.exception("session %s: could not keep the message cut short", self.session_id)
        if self.latency.answering_message_id:  # an answer the end of the call cut short
            self._turn_latency_store(self.latency.answering_message_id)
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
        else:
            await self._hooks_tell_stored(events.CallEnded.name)
        if self.recorder is not None:  # after call.ended: storing it may take a while
            recorder, self.recorder = self.recorder, None
            await recordings.recorder_keep(call=self.call, recorder=recorder)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self._tasks.clear()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    @property
    def speech_ready(self) -> bool:
        """The persona can be heard (its voice is up)."""
        return self._speech_ready.is_set()

    def end_soon(self, *, reason: str, message: str = "") -> None:
        """End the call in a task of its own (a command that ends it answers first)."""
        self._spawn(self.end(reason=reason, message=message), "end")

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


# The typed fields of the client's data-channel messages (others are ignored, as before).
DATA_MESSAGE_TEXT_FIELDS = {"speech": "content", "context": "content", "tool_result": "tool_call_id"}


def data_message_parse(raw: str | bytes) -> dict[str, Any]:
    """A client's data-channel message `{message_type, ...}`, or InputRefused saying what is wrong."""
    if isinstance(raw, bytes):
        raise InputRefused("message", "must be JSON text, not binary")
    message = json_parse(raw, field="message", max_bytes=MAX_CLIENT_FRAME_BYTES)
    if not isinstance(message, dict) or not isinstance(message.get("message_type"), str):
        raise InputRefused("message", "must be a JSON object {message_type, ...}")
    kind = message["message_type"]
    field = DATA_MESSAGE_TEXT_FIELDS.get(kind)
    if field is not None and not isinstance(message.get(field), str):
        raise InputRefused(f"{kind}.{field}", "must be a string")
    return message


async def _drain(track: Any) -> None:
    from aiortc.mediastreams import MediaStreamError

    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
