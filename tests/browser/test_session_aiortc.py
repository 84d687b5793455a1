"""A real Python WebRTC client (aiortc) against a real Daphne server: the speaking persona.

It mints a token with the API, starts a session, negotiates over the signalling websocket
exactly as the Anam SDK does (data channel `session` first, video recvonly, audio
sendrecv, offer sent at once, candidates trickled), receives the persona's voice and face,
types a question on the data channel and hears the answer; then checks the events and the
transcript the server stored.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from calls.models import Call, CallEvent, Message
from personas.models import KnowledgeEntry
from personas.services import api_key_create

# Generous: a cold server loads its speech and face code on the first session.
STEP_TIMEOUT_SECONDS = 30.0


class Collector:
    """Everything the client receives, with events to wait on."""

    def __init__(self) -> None:
        self.signals: list[dict[str, Any]] = []
        self.data: list[dict[str, Any]] = []
        self.video_frames = 0
        self.audio_frames = 0
        self.loud_audio_frames = 0
        self.changed = asyncio.Event()

    def note(self) -> None:
        self.changed.set()

    async def wait_for(self, predicate, what: str) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(loop(), STEP_TIMEOUT_SECONDS)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; data={self.data[-5:]}") from None


async def read_track(track, collector: Collector) -> None:
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if track.kind == "video":
            collector.video_frames += 1
        else:
            collector.audio_frames += 1
            samples = frame.to_ndarray()
            if np.abs(samples.astype(np.int32)).max() > 500:
                collector.loud_audio_frames += 1
        collector.note()


async def run_client(base_url: str, session_token: str, question: str, collector: Collector) -> str:
    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await http.post(
            "/v1/engine/session",
            json={"clientMetadata": {"client": "parley-test", "version": "0"}},
            headers={"Authorization": f"Bearer {session_token}"},
        )
        assert response.status_code == 200, response.text
        session = response.json()
    session_id = session["sessionId"]
    url = f"ws://{session['engineHost']}{session['signallingEndpoint']}?session_id={session_id}"
    peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = peer.createDataChannel("session", ordered=True)
    peer.addTransceiver("video", direction="recvonly")
    peer.addTransceiver("audio", direction="sendrecv")
    tasks: list[asyncio.Task] = []

    @peer.on("track")
    def on_track(track) -> None:
        tasks.append(asyncio.ensure_future(read_track(track, collector)))

    @channel.on("message")
    def on_message(message: str) -> None:
        collector.data.append(json.loads(message))
        collector.note()

    async with websockets.connect(url) as socket:

        async def send(action_type: str, payload: Any) -> None:
            await socket.send(
                json.dumps({"actionType": action_type, "sessionId": session_id, "payload": payload})
            )

        async def receive() -> None:
            async for raw in socket:
                frame = json.loads(raw)
                collector.signals.append(frame)
                if frame["actionType"] == "answer":
                    await peer.setRemoteDescription(RTCSessionDescription(**frame["payload"]))
                collector.note()

        tasks.append(asyncio.ensure_future(receive()))
        await peer.setLocalDescription(await peer.createOffer())
        await send(
            "offer",
            {
                "connectionDescription": {"type": "offer", "sdp": peer.localDescription.sdp},
                "userUid": session_id,
            },
        )
        await collector.wait_for(
            lambda: any(s["actionType"] == "sessionready" for s in collector.signals), "sessionready"
        )
        await collector.wait_for(lambda: collector.video_frames >= 20, "20 video frames")
        # The greeting is spoken: persona captions end with end_of_speech.
        await collector.wait_for(lambda: _persona_finished(collector, 1), "the greeting")
        await collector.wait_for(lambda: channel.readyState == "open", "the data channel")
        channel.send(
            json.dumps(
                {
                    "message_type": "speech",
                    "content": question,
                    "session_id": session_id,
                    "timestamp": "2026-01-01T00:00:00.000",
                }
            )
        )
        await collector.wait_for(lambda: _persona_finished(collector, 2), "the answer")
        await send("heartbeat", "")
        assert collector.loud_audio_frames > 25, "the voice was (almost) silent"
    await peer.close()
    for task in tasks:
        task.cancel()
    return session_id


def _persona_finished(collector: Collector, count: int) -> bool:
    ends = [
        d
        for d in collector.data
        if d.get("messageType") == "speechText"
        and d["data"]["role"] == "persona"
        and d["data"]["end_of_speech"]
    ]
    return len(ends) >= count


def persona_texts(collector: Collector) -> list[str]:
    texts: dict[str, str] = {}
    for item in collector.data:
        if item.get("messageType") == "speechText" and item["data"]["role"] == "persona":
            texts[item["data"]["message_id"]] = (
                texts.get(item["data"]["message_id"], "") + item["data"]["content"]
            )
    return list(texts.values())


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_an_aiortc_client_hears_and_sees_the_persona_answer_a_typed_question(
    live_server_url, make_organization, make_persona
):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()  # the client side gathers loopback too
    organization = make_organization("Bakery", slug="bakery")
    persona = make_persona(organization, "mara", greeting="Hello, I am Mara from the bakery.")
    KnowledgeEntry.objects.create(
        persona=persona,
        question="When are you open?",
        answer="We are open from seven in the morning to six in the evening, every day.",
    )
    key = api_key_create(organization=organization, name="e2e").raw_key
    token = httpx.post(
        f"{live_server_url}/v1/auth/session-token",
        json={"personaConfig": {"personaId": "mara"}},
        headers={"Authorization": f"Bearer {key}"},
    ).json()["sessionToken"]
    collector = Collector()
    session_id = asyncio.run(run_client(live_server_url, token, "What are your opening hours?", collector))

    greeting, answer = persona_texts(collector)[:2]
    assert "Mara" in greeting
    assert "seven" in answer.lower()
    user_chunks = [
        d["data"]
        for d in collector.data
        if d.get("messageType") == "speechText" and d["data"]["role"] == "user"
    ]
    assert user_chunks and user_chunks[0]["content"] == "What are your opening hours?"

    def stored_types() -> list[str]:
        return list(CallEvent.objects.filter(call_id=session_id).values_list("type", flat=True))

    deadline = asyncio.run(_wait_until(lambda: "call.ended" in stored_types()))
    assert deadline, f"call.ended never stored: {stored_types()}"
    types = stored_types()
    assert types[0] == "call.started"
    assert types.index("user.message") < len(types) - 1
    for expected in ("bot.speaking", "bot.finished", "user.message", "call.ended"):
        assert expected in types
    call = Call.objects.get(pk=session_id)
    assert call.status == "ended" and call.end_reason in {"hangup", "timeout"}
    roles = list(Message.objects.filter(call=call).order_by("created_at").values_list("role", "text"))
    assert [role for role, _ in roles] == ["persona", "user", "persona"]
    assert "seven" in roles[2][1].lower()


async def _wait_until(predicate, limit_seconds: float = STEP_TIMEOUT_SECONDS) -> bool:
    from asgiref.sync import sync_to_async

    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_seconds
    while loop.time() < deadline:
        if await sync_to_async(predicate)():
            return True
        await asyncio.sleep(0.2)
    return False
