"""Calls, transcripts and the per-call event log over REST, scoped to one organization."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework import status

from calls import events
from calls.models import CallStatus, Message, Transport
from calls.publishing import call_event_publish
from calls.services import call_end, call_start


@pytest.mark.django_db
def test_calls_list_filters_and_pages(client_a, persona_a, make_persona, org_a, make_call):
    other = make_persona(org_a, "lena")
    now = timezone.now()
    for index in range(5):
        make_call(persona_a, started_at=now - timedelta(days=index), status=CallStatus.ENDED)
    make_call(other, transport=Transport.WHATSAPP, started_at=now, status=CallStatus.IN_PROGRESS)

    everything = client_a.get("/v1/calls").json()
    assert everything["count"] == 6
    assert client_a.get("/v1/calls?persona=lena").json()["count"] == 1
    assert client_a.get("/v1/calls?transport=whatsapp").json()["results"][0]["agent"] == "lena"
    assert client_a.get("/v1/calls?status=ended").json()["count"] == 5
    since = (now - timedelta(days=2, hours=1)).isoformat()
    assert client_a.get("/v1/calls", {"startedAfter": since, "persona": "mara"}).json()["count"] == 3
    page = client_a.get("/v1/calls?pageSize=2&page=2").json()
    assert len(page["results"]) == 2 and page["next"] and page["previous"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("transport=fax", "transport"),
        ("status=maybe", "status"),
        ("startedAfter=yesterday", "startedAfter"),
        ("pageSize=0", "pageSize"),
        ("pageSize=abc", "pageSize"),
        ("colour=red", "colour"),
        ("startedAfter=2026-01-02T00:00:00Z&startedBefore=2026-01-01T00:00:00Z", "startedBefore"),
    ],
)
def test_bad_call_filters_are_400_naming_the_parameter(client_a, persona_a, query, field):
    response = client_a.get(f"/v1/calls?{query}")
    assert response.status_code == status.HTTP_400_BAD_REQUEST, response.content
    assert field in response.json()["errors"]


@pytest.mark.django_db
def test_call_detail_has_the_transcript_in_order(client_a, persona_a, make_call):
    call = make_call(persona_a)
    Message.objects.create(call=call, message_id="m1", role="persona", text="Hello, I'm Mara.")
    Message.objects.create(call=call, message_id="m2", role="user", text="When do you open?")
    Message.objects.create(
        call=call,
        message_id="m3",
        role="persona",
        text="We open at seven and close at six.",
        spoken_text="We open at seven",
        interrupted=True,
    )
    data = client_a.get(f"/v1/calls/{call.id}").json()
    assert [m["messageId"] for m in data["transcript"]] == ["m1", "m2", "m3"]
    assert data["transcript"][2]["spokenText"] == "We open at seven"
    assert data["transcript"][2]["interrupted"] is True
    assert data["agent"] == "mara" and data["from"] == "" and data["transport"] == "webrtc"


@pytest.mark.django_db
def test_organization_a_never_sees_organization_bs_calls_or_events(
    client_a, client_b, persona_a, persona_b, make_call
):
    call_b = make_call(persona_b)
    call_event_publish(call=call_b, event=events.SpeechStarted())
    assert client_a.get("/v1/calls").json()["count"] == 0
    assert client_a.get(f"/v1/calls/{call_b.id}").status_code == 404
    assert client_a.get(f"/v1/calls/{call_b.id}/events").status_code == 404
    assert client_a.get("/v1/calls?persona=otto").json()["count"] == 0
    assert client_b.get(f"/v1/calls/{call_b.id}/events").json()["events"][0]["event"] == "speech.started"


@pytest.mark.django_db
def test_call_events_page_by_cursor(client_a, persona_a, make_call):
    call = make_call(persona_a)
    call_start(call=call)
    for index in range(4):
        call_event_publish(call=call, event=events.UserMessage(text=f"line {index}", message_id=f"m{index}"))
    call_event_publish(call=call, event=events.BotWord(message_id="m", word="ephemeral"))
    call_end(call=call, reason="hangup")

    first = client_a.get(f"/v1/calls/{call.id}/events?limit=2").json()
    assert [e["event"] for e in first["events"]] == ["call.started", "user.message"]
    assert first["hasMore"] is True
    rest = client_a.get(f"/v1/calls/{call.id}/events?after={first['nextCursor']}").json()
    assert [e["event"] for e in rest["events"]] == ["user.message"] * 3 + ["call.ended"]
    assert rest["hasMore"] is False
    cursors = [e["cursor"] for e in first["events"] + rest["events"]]
    assert cursors == sorted(cursors) and len(set(cursors)) == 6
    ended = rest["events"][-1]["data"]
    assert ended["reason"] == "hangup" and ended["callId"] == call.id and ended["agent"] == "mara"


@pytest.mark.django_db
@pytest.mark.parametrize("after", ["abc", "-1", "1.5", ""])
def test_a_bad_cursor_is_400(client_a, persona_a, make_call, after):
    call = make_call(persona_a)
    response = client_a.get(f"/v1/calls/{call.id}/events?after={after}")
    assert response.status_code == 400
    assert "after" in response.json()["errors"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "after",
    ["9223372036854775808", "5.0", "٣", "-1", "1e3"],
    ids=["2^63", "decimal", "arabic-digit", "negative", "exponent"],
)
def test_the_event_list_refuses_the_cursors_the_event_stream_refuses(client_a, make_call, persona_a, after):
    call = make_call(persona_a)
    response = client_a.get(f"/v1/calls/{call.id}/events", {"after": after})
    assert response.status_code == 400, response.content
    assert response.json()["detail"] == "after: must be a non-negative integer"


@pytest.mark.django_db
def test_the_event_list_takes_the_largest_cursor(client_a, make_call, persona_a):
    call = make_call(persona_a)
    response = client_a.get(f"/v1/calls/{call.id}/events", {"after": str(2**63 - 1)})
    assert response.status_code == 200 and response.json()["events"] == []
