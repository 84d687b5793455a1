"""Session limits end to end: a real Python WebRTC client (aiortc) against a real Daphne server.

The client connects, hears the greeting and says nothing. With short limits the persona warns,
says its check-in line, and the server ends the call: `endsession` with the reason (what the
Anam SDK hands to CONNECTION_CLOSED as its details), `session.timeout`, then `call.ended`.
Assertions are about what happened and in which order, never about how fast.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from bench.webrtc_client import ParleyWebRTCClient
from calls.models import Call, CallEvent
from personas.services import api_key_create

# How long the server may take to store call.ended after it ended the call, in seconds.
CALL_END_TIMEOUT_SECONDS = 30.0
GREETING = "Hello, I am Mara."
# Several seconds of espeak voice: longer than the time left after the warning, so a clock that the
# persona's voice did not pause would end the call in the middle of it.
CHECK_IN = "Are you still there? Take your time, I am happy to wait while you decide what you would like."


@pytest.fixture
def mara(make_organization, make_persona):
    organization = make_organization("Bakery", slug="bakery")
    persona = make_persona(organization, "mara", greeting=GREETING, idle_check_in=CHECK_IN)
    return persona, api_key_create(organization=organization, name="e2e").raw_key


def mint(base_url: str, key: str) -> str:
    response = httpx.post(
        f"{base_url}/v1/auth/session-token",
        json={"personaConfig": {"personaId": "mara"}},
        headers={"Authorization": f"Bearer {key}"},
    )
    return response.json()["sessionToken"]


async def stay_silent_until_the_end(base_url: str, token: str) -> ParleyWebRTCClient:
    async with ParleyWebRTCClient(
        base_url=base_url, session_token=token, step_timeout_seconds=60.0
    ) as client:
        await client.wait_for(
            lambda: any(s["actionType"] == "endsession" for s in client.record.signals), "endsession"
        )
    return client


def events_until_call_end(session_id: str) -> list[tuple[str, dict]]:
    deadline = time.monotonic() + CALL_END_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        events = list(
            CallEvent.objects.filter(call_id=session_id).order_by("cursor").values_list("type", "data")
        )
        if events and events[-1][0] == "call.ended":
            return events
        time.sleep(0.2)
    raise AssertionError(f"call.ended was never stored; events: {[name for name, _ in events]}")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_silent_user_hears_the_check_in_then_the_call_ends_as_idle_timeout(live_server_url, mara):
    from calls.live import ice_address_policy_apply

    persona, key = mara
    persona.idle_timeout_seconds = 6
    persona.idle_warning_seconds = 3
    persona.save()
    ice_address_policy_apply()  # the client gathers loopback candidates too
    client = asyncio.run(stay_silent_until_the_end(live_server_url, mint(live_server_url, key)))
    record = client.record

    endsession = next(s for s in record.signals if s["actionType"] == "endsession")
    assert endsession["payload"] == "idle_timeout"
    assert record.persona_messages() == [GREETING, CHECK_IN]

    events = events_until_call_end(record.session_id)
    types = [name for name, _ in events if name != "bot.word"]
    assert types == [
        "call.started",
        "bot.speaking",  # the greeting
        "bot.finished",
        "message.confirmed",  # the persona's own message, committed to the conversation
        "session.idle_warning",
        "bot.speaking",  # the check-in, which pauses the idle clock
        "bot.finished",
        "message.confirmed",
        "session.timeout",
        "call.ended",
    ], types
    data = dict(events)
    assert data["session.idle_warning"]["idleTimeoutSeconds"] == 6
    assert 0 < data["session.idle_warning"]["remainingSeconds"] <= 3
    speaking = [payload for name, payload in events if name == "bot.speaking"]
    assert speaking[1]["text"] == CHECK_IN
    assert data["session.timeout"]["reason"] == "idle_timeout"
    assert data["call.ended"]["reason"] == "idle_timeout"
    assert Call.objects.get(pk=record.session_id).end_reason == "idle_timeout"


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_call_that_reaches_its_maximum_duration_ends_as_max_duration(live_server_url, mara):
    from calls.live import ice_address_policy_apply

    persona, key = mara
    persona.max_duration_seconds = 5  # the idle timeout stays at its 60 s default
    persona.save()
    ice_address_policy_apply()
    client = asyncio.run(stay_silent_until_the_end(live_server_url, mint(live_server_url, key)))
    record = client.record

    endsession = next(s for s in record.signals if s["actionType"] == "endsession")
    assert endsession["payload"] == "max_duration"
    events = events_until_call_end(record.session_id)
    types = [name for name, _ in events]
    assert types[-2:] == ["session.timeout", "call.ended"], types
    assert "session.idle_warning" not in types
    assert events[-2][1]["reason"] == "max_duration"
    assert events[-1][1]["reason"] == "max_duration"
    assert Call.objects.get(pk=record.session_id).end_reason == "max_duration"
