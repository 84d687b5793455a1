"""A real Python WebRTC client (aiortc) against a real Daphne server: the speaking persona.

The client behaves as the Anam SDK does (bench/webrtc_client.py): it starts a session with a
token minted through the API, negotiates over the signalling websocket, receives the
persona's voice and face, types a question on the data channel and hears the answer. Then
the test checks the events and the transcript the server stored.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from django.conf import settings

from bench.webrtc_client import ParleyWebRTCClient
from calls.models import Call, CallEvent, Message
from personas.models import KnowledgeEntry
from personas.services import api_key_create

# How long the server may take to notice a closed session and store call.ended, in seconds.
CALL_END_TIMEOUT_SECONDS = 30.0


@pytest.fixture
def bakery(make_organization, make_persona):
    organization = make_organization("Bakery", slug="bakery")
    persona = make_persona(organization, "mara", greeting="Hello, I am Mara from the bakery.")
    KnowledgeEntry.objects.create(
        persona=persona,
        question="When are you open?",
        answer="We are open from seven in the morning to six in the evening, every day.",
    )
    return api_key_create(organization=organization, name="e2e").raw_key


def mint(base_url: str, key: str) -> str:
    response = httpx.post(
        f"{base_url}/v1/auth/session-token",
        json={"personaConfig": {"personaId": "mara"}},
        headers={"Authorization": f"Bearer {key}"},
    )
    return response.json()["sessionToken"]


async def converse(base_url: str, token: str) -> ParleyWebRTCClient:
    async with ParleyWebRTCClient(base_url=base_url, session_token=token) as client:
        record = client.record
        await client.wait_for(
            lambda: any(s["actionType"] == "sessionready" for s in record.signals), "sessionready"
        )
        await client.wait_for(lambda: len(record.video_frames) >= 20, "20 video frames")
        await client.wait_for(lambda: record.persona_finished_count() >= 1, "the greeting")
        client.ask("What are your opening hours?")
        await client.wait_for(lambda: record.persona_finished_count() >= 2, "the answer")
        await client.signal("heartbeat", "")
    return client


def wait_for_call_end(session_id: str) -> list[str]:
    deadline = time.monotonic() + CALL_END_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        types = list(CallEvent.objects.filter(call_id=session_id).values_list("type", flat=True))
        if "call.ended" in types:
            return types
        time.sleep(0.2)
    raise AssertionError(f"call.ended was never stored; events: {types}")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_an_aiortc_client_hears_and_sees_the_persona_answer_a_typed_question(live_server_url, bakery):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()  # the client gathers loopback candidates too
    client = asyncio.run(converse(live_server_url, mint(live_server_url, bakery)))
    closed_at = time.monotonic()  # the client closed its socket and peer connection
    record = client.record

    greeting, answer = record.persona_messages()[:2]
    assert "Mara" in greeting
    assert "seven" in answer.lower()
    assert [chunk["content"] for chunk in record.speech_texts("user")] == ["What are your opening hours?"]
    assert len(record.loud_audio_frames) > 25, "the voice was (almost) silent"

    types = wait_for_call_end(record.session_id)
    waited = time.monotonic() - closed_at
    assert types[0] == "call.started" and types[-1] == "call.ended"
    for expected in ("bot.speaking", "bot.finished", "user.message"):
        assert expected in types, types
    assert types.index("user.message") < len(types) - types[::-1].index("bot.speaking") - 1
    call = Call.objects.get(pk=record.session_id)
    # The socket did not come back: the call ends after the grace period, not as a stale session.
    assert call.status == "ended" and call.end_reason == "hangup"
    assert waited < settings.PARLEY_SESSION_STALE_SECONDS, waited
    transcript = list(Message.objects.filter(call=call).order_by("created_at").values_list("role", "text"))
    assert [role for role, _ in transcript] == ["persona", "user", "persona"]
    assert "seven" in transcript[2][1].lower()
    # The typed question is recorded as typed, and its answer's latency as it happened: no
    # listening stages, the brain's and the voice's adding up to the total.
    from calls.review.models import TurnLatency

    question = Message.objects.get(call=call, role="user")
    answer_id = Message.objects.filter(call=call, role="persona").order_by("created_at").last().message_id
    assert question.channel == Message.Channel.TYPED
    (latency,) = TurnLatency.objects.filter(call=call)
    assert (latency.message_id, latency.user_message_id, latency.channel) == (
        answer_id,
        question.message_id,
        "typed",
    )
    assert (latency.vad_ms, latency.transcript_ms, latency.turn_ms) == (None, None, None)
    assert latency.brain_ms is not None and latency.audio_ms is not None
    assert latency.brain_ms + latency.audio_ms == latency.total_ms > 0


async def interrupt_mid_answer(base_url: str, token: str) -> tuple[ParleyWebRTCClient, float, float]:
    """Ask for a long answer, interrupt it once the voice is flowing; when did the voice stop?"""
    async with ParleyWebRTCClient(base_url=base_url, session_token=token) as client:
        record = client.record
        await client.wait_for(lambda: record.persona_finished_count() >= 1, "the greeting")
        asked = client.ask("Tell me about your cakes please")
        await client.wait_for(
            lambda: sum(1 for t in record.loud_audio_frames if t > asked) >= 25, "half a second of the answer"
        )
        interrupted_at = client.interrupt()
        await client.wait_for(
            lambda: any(
                chunk["interrupted"] and chunk["end_of_speech"] for chunk in record.speech_texts("persona")
            ),
            "the interrupted end of the answer",
        )
        await asyncio.sleep(1.0)  # listen on: nothing more of that answer may come
        last_loud = max(record.loud_audio_frames)
    return client, interrupted_at, last_loud


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_interrupting_stops_the_voice_and_keeps_only_what_was_spoken(live_server_url, bakery):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    persona_knowledge = KnowledgeEntry.objects.get(question="When are you open?").persona
    KnowledgeEntry.objects.create(
        persona=persona_knowledge,
        question="Tell me about your cakes",
        answer=(
            "We bake chocolate layer cakes, lemon drizzle, carrot cake with walnuts, and a strawberry "
            "sponge every morning. Celebration cakes can be ordered three days ahead, in four sizes, "
            "with a message piped on top. We also make a flourless almond cake for gluten-free guests."
        ),
    )
    client, interrupted_at, last_loud = asyncio.run(
        interrupt_mid_answer(live_server_url, mint(live_server_url, bakery))
    )
    record = client.record
    # Audio that was already on the wire may still arrive; a new answer's worth may not.
    assert last_loud - interrupted_at < 0.5, (
        f"voice went on {last_loud - interrupted_at:.2f} s after interrupt"
    )

    types = wait_for_call_end(record.session_id)
    assert "bot.interrupted" in types
    event = CallEvent.objects.filter(call_id=record.session_id, type="bot.interrupted").get()
    assert event.data["playedMs"] > 300 and event.data["wordsSpoken"] >= 1 and event.data["lastWord"]
    answer = Message.objects.get(call_id=record.session_id, message_id=event.data["messageId"])
    assert answer.interrupted and answer.spoken_text
    assert len(answer.spoken_text) < len(answer.text), (answer.spoken_text, answer.text)
    assert answer.text.startswith(answer.spoken_text.split()[0])


async def ask_aloud(base_url: str, token: str, question: str) -> ParleyWebRTCClient:
    from tests.fakes.spoken import ScriptedMicrophone, spoken_pcm, with_room

    microphone = ScriptedMicrophone()
    async with ParleyWebRTCClient(
        base_url=base_url, session_token=token, microphone=microphone, inline_audio=True
    ) as client:
        record = client.record
        await client.wait_for(lambda: record.persona_finished_count() >= 1, "the greeting")
        microphone.say(with_room(await spoken_pcm(question), lead_seconds=0.3, tail_seconds=0.5))
        await client.wait_for(lambda: record.persona_finished_count() >= 2, "the answer")
    return client


def test_a_client_that_encodes_and_decodes_its_audio_on_the_loop_is_heard_and_hears(live_server_url, bakery):
    """The benchmarks' client (`inline_audio`: Opus packets made and read on its event loop,
    not on aiortc's threads) speaks and listens as a browser does."""
    client = asyncio.run(ask_aloud(live_server_url, mint(live_server_url, bakery), "When are you open?"))
    record = client.record
    heard = " ".join(chunk["content"] for chunk in record.speech_texts("user")).lower()
    assert "open" in heard, heard
    assert "seven in the morning" in record.persona_messages()[-1], record.persona_messages()
    assert len(record.loud_audio_frames) > 50  # the greeting and the answer were heard, decoded
    assert wait_for_call_end(record.session_id)
