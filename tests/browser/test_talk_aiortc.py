"""Talk end to end: `/talk` and talk streams make the persona say the app's text verbatim.

An aiortc client (bench/webrtc_client.py, behaving as the Anam SDK) holds the session. The
app posts `/talk` with the session id (as the SDK's `talk()` does), or streams text over the
signalling socket as `talkstream` frames (the SDK's `createTalkMessageStream`). The persona
speaks exactly that text, captions carry the stream's correlation id, and a user who
interrupts a talk stream gets `talkinputstreaminterrupted` with that id.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from bench.webrtc_client import ParleyWebRTCClient
from calls.models import CallEvent, Message
from personas.services import api_key_create
from tests.browser.test_session_aiortc import mint, wait_for_call_end

TALK_TEXT = "Fresh sourdough comes out of the oven at nine. Come early, it sells out fast!"
STREAM_CHUNKS = (
    "Our ovens start at five in the morning. ",
    "The first loaves come out at six",
    ", and the shop opens at seven.",
)
LONG_STREAM = (
    "Let me tell you the whole story of our bakery. It began sixty years ago in a tiny kitchen "
    "behind the church. My grandmother baked rye bread for the neighbours every Saturday. "
    "Soon the whole town was queuing at her window, and she bought a second oven. "
)


@pytest.fixture
def bakery(make_organization, make_persona):
    organization = make_organization("Bakery", slug="bakery")
    make_persona(organization, "mara", greeting="", skip_greeting=True)
    return api_key_create(organization=organization, name="e2e").raw_key


def talk_frame(content: str, *, start: bool, end: bool, correlation_id: str) -> dict:
    return {"content": content, "startOfSpeech": start, "endOfSpeech": end, "correlationId": correlation_id}


async def ready(client: ParleyWebRTCClient) -> None:
    record = client.record
    await client.wait_for(lambda: any(s["actionType"] == "sessionready" for s in record.signals), "ready")


async def talk(base_url: str, token: str) -> ParleyWebRTCClient:
    async with ParleyWebRTCClient(base_url=base_url, session_token=token) as client:
        await ready(client)
        async with httpx.AsyncClient() as http:
            # As the SDK sends it: no Authorization, the session id is the credential.
            response = await http.post(
                f"{base_url}/talk?session_id={client.record.session_id}", json={"content": TALK_TEXT}
            )
        assert response.status_code == 200, response.text
        await client.wait_for(lambda: client.record.persona_finished_count() >= 1, "the talk to be spoken")
    return client


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_talk_makes_the_persona_say_the_text_verbatim(live_server_url, bakery):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    client = asyncio.run(talk(live_server_url, mint(live_server_url, bakery)))
    record = client.record

    chunks = record.speech_texts("persona")
    assert "".join(chunk["content"] for chunk in chunks) == TALK_TEXT
    assert [chunk["content_index"] for chunk in chunks[:-1]] == list(range(len(TALK_TEXT.split())))
    assert chunks[-1]["end_of_speech"] and not any(chunk["interrupted"] for chunk in chunks)
    assert len({chunk["message_id"] for chunk in chunks}) == 1
    assert len(record.loud_audio_frames) > 25, "the voice was (almost) silent"

    wait_for_call_end(record.session_id)
    events = list(CallEvent.objects.filter(call_id=record.session_id).order_by("cursor"))
    speaking = [event for event in events if event.type == "bot.speaking"]
    assert [event.data["text"] for event in speaking] == [TALK_TEXT]
    message_id = speaking[0].data["messageId"]
    assert message_id == chunks[0]["message_id"]
    assert [event.data for event in events if event.type == "bot.finished"] == [
        {"callId": record.session_id, "agent": "mara", "messageId": message_id}
    ]
    assert not any(event.type in {"user.message", "bot.interrupted"} for event in events)
    (message,) = Message.objects.filter(call_id=record.session_id)
    assert (message.role, message.text, message.spoken_text, message.interrupted) == (
        "persona",
        TALK_TEXT,
        TALK_TEXT,
        False,
    )


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_talk_refuses_unknown_sessions_and_empty_text(live_server_url, bakery):
    unknown = httpx.post(f"{live_server_url}/talk?session_id=CAnothing", json={"content": "Hi"})
    assert unknown.status_code == 404 and unknown.json()["error"] == "no_session"
    missing = httpx.post(f"{live_server_url}/talk", json={"content": "Hi"})
    assert missing.status_code == 400
    empty = httpx.post(f"{live_server_url}/talk?session_id=CAnothing", json={"content": "  "})
    assert empty.status_code == 400 and "content" in empty.json()["message"]


async def talk_stream(base_url: str, token: str) -> tuple[ParleyWebRTCClient, int]:
    """Stream three chunks; the first sentence must be heard before the stream ends."""
    async with ParleyWebRTCClient(base_url=base_url, session_token=token) as client:
        record = client.record
        await ready(client)
        await client.signal(
            "talkstream", talk_frame(STREAM_CHUNKS[0], start=True, end=False, correlation_id="corr-1")
        )
        await client.wait_for(lambda: record.speech_texts("persona"), "the first sentence to be spoken")
        heard_before_the_rest = len(record.speech_texts("persona"))
        await client.signal(
            "talkstream", talk_frame(STREAM_CHUNKS[1], start=False, end=False, correlation_id="corr-1")
        )
        await client.signal(
            "talkstream", talk_frame(STREAM_CHUNKS[2], start=False, end=True, correlation_id="corr-1")
        )
        expected_words = len("".join(STREAM_CHUNKS).split())
        await client.wait_for(
            lambda: (
                sum(1 for chunk in record.speech_texts("persona") if chunk["content"]) >= expected_words
                and record.speech_texts("persona")[-1]["end_of_speech"]
            ),
            "the whole stream to be spoken",
        )
    return client, heard_before_the_rest


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_talk_stream_is_spoken_sentence_by_sentence_with_its_correlation_id(live_server_url, bakery):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    client, heard_before_the_rest = asyncio.run(talk_stream(live_server_url, mint(live_server_url, bakery)))
    record = client.record

    assert heard_before_the_rest >= 1
    chunks = record.speech_texts("persona")
    spoken = " ".join("".join(chunk["content"] for chunk in chunks).split())
    assert spoken == " ".join("".join(STREAM_CHUNKS).split())
    assert {chunk.get("correlationId") for chunk in chunks} == {"corr-1"}
    # The chunks came while the first sentence played: one message, in one voice.
    assert len({chunk["message_id"] for chunk in chunks}) == 1
    assert not any(chunk["interrupted"] for chunk in chunks)
    assert not any(signal["actionType"] == "talkinputstreaminterrupted" for signal in record.signals)

    wait_for_call_end(record.session_id)
    (message,) = Message.objects.filter(call_id=record.session_id)
    assert message.message_id == chunks[0]["message_id"]
    assert " ".join(message.text.split()) == spoken
    assert CallEvent.objects.filter(call_id=record.session_id, type="bot.finished").count() == 1


async def interrupt_a_talk_stream(base_url: str, token: str) -> ParleyWebRTCClient:
    async with ParleyWebRTCClient(base_url=base_url, session_token=token) as client:
        record = client.record
        await ready(client)
        await client.signal(
            "talkstream", talk_frame(LONG_STREAM, start=True, end=False, correlation_id="story-7")
        )
        await client.wait_for(lambda: len(record.speech_texts("persona")) >= 3, "the story to be under way")
        client.interrupt()
        await client.wait_for(
            lambda: any(signal["actionType"] == "talkinputstreaminterrupted" for signal in record.signals),
            "talkinputstreaminterrupted",
        )
        await client.wait_for(
            lambda: any(chunk["interrupted"] for chunk in record.speech_texts("persona")),
            "the interrupted end of the caption",
        )
        await asyncio.sleep(1.0)  # the rest of the stream must not be spoken after all
    return client


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_interrupting_a_talk_stream_sends_talkinputstreaminterrupted_with_its_correlation_id(
    live_server_url, bakery
):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    client = asyncio.run(interrupt_a_talk_stream(live_server_url, mint(live_server_url, bakery)))
    record = client.record

    interrupted = [s for s in record.signals if s["actionType"] == "talkinputstreaminterrupted"]
    assert [signal["payload"] for signal in interrupted] == [{"correlationId": "story-7"}]
    assert interrupted[0]["sessionId"] == record.session_id
    chunks = record.speech_texts("persona")
    assert {chunk.get("correlationId") for chunk in chunks} == {"story-7"}
    assert chunks[-1]["end_of_speech"] and chunks[-1]["interrupted"]
    spoken_words = sum(1 for chunk in chunks if chunk["content"])
    assert spoken_words < len(LONG_STREAM.split())

    types = wait_for_call_end(record.session_id)
    assert "bot.interrupted" in types
    message = Message.objects.get(call_id=record.session_id, interrupted=True)
    assert LONG_STREAM.startswith(message.spoken_text.rstrip(".,!?"))


async def talk_while_connecting(base_url: str, token: str) -> tuple[ParleyWebRTCClient, int, float]:
    """Post /talk and stream a chunk as soon as the server answered the offer, before it is ready."""
    client = ParleyWebRTCClient(base_url=base_url, session_token=token)
    record = client.record
    connecting = asyncio.ensure_future(client.connect())
    try:
        await client.wait_for(lambda: any(s["actionType"] == "answer" for s in record.signals), "the answer")
        sent_at = time.monotonic()
        await client.signal(
            "talkstream", talk_frame("Welcome back!", start=True, end=True, correlation_id="early")
        )
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(
                f"{base_url}/talk?session_id={record.session_id}", json={"content": TALK_TEXT}
            )
        await connecting
        await client.wait_for(lambda: record.persona_finished_count() >= 2, "both texts to be spoken")
    finally:
        await client.close()
    return client, response.status_code, sent_at


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_talk_sent_while_the_session_connects_is_spoken_once_it_is_ready(live_server_url, bakery):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    client, status_code, sent_at = asyncio.run(
        talk_while_connecting(live_server_url, mint(live_server_url, bakery))
    )
    record = client.record

    assert status_code == 200
    ready_at = next(
        at
        for at, signal in zip(record.signal_times, record.signals, strict=True)
        if signal["actionType"] == "sessionready"
    )
    assert sent_at < ready_at, "the texts were sent after the session was ready: nothing was tested"
    early, talked = record.persona_messages()
    assert early == "Welcome back!"
    assert talked == TALK_TEXT
