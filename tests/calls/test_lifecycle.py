"""Calls nobody is in end: sessions never connected (timeout), calls of a process that is gone
(failed). Nobody can hold an organization's live-session slots with them.

The processes killed and restarted for real are in tests/browser/test_server_process.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone
from rest_framework.test import APIClient

from calls.lifecycle import services
from calls.lifecycle.housekeeper import housekeeping_round
from calls.lifecycle.models import EngineProcess
from calls.models import Call, CallEvent, CallStatus
from webapp.asgi import application


def session_start(client: APIClient, slug: str = "mara") -> str:
    """A session started with the engine API (its signalling socket not opened): its id."""
    response = client.post("/v1/auth/session-token", {"personaConfig": {"personaId": slug}}, format="json")
    assert response.status_code == 200, response.content
    token = response.json()["sessionToken"]
    started = APIClient().post("/v1/engine/session", {}, format="json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert started.status_code == 200, started.content
    return started.json()["sessionId"]


def age(call_id: str, seconds: float) -> None:
    Call.objects.filter(pk=call_id).update(created_at=timezone.now() - timedelta(seconds=seconds))


def ended(call_id: str) -> Call:
    return Call.objects.get(pk=call_id)


def other_process(**fields) -> EngineProcess:
    now = timezone.now()
    defaults = {
        "id": os.urandom(8).hex(),
        "hostname": "elsewhere|another-boot/1",
        "pid": 4242,
        "started_at": now,
        "heartbeat_at": now,
    }
    return EngineProcess.objects.create(**{**defaults, **fields})


def exited_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --- Sessions whose socket never opened -------------------------------------------------


@pytest.mark.django_db
def test_sessions_never_connected_expire_as_timeout_and_free_the_organizations_slots(
    client_a, org_a, persona_a, settings
):
    # Ten page loads and ten session starts once refused every new session for as long as anyone
    # watched: the sessions stayed `connecting` and each held a slot.
    settings.PARLEY_CONNECT_TIMEOUT_SECONDS = 30
    org_a.max_concurrent_sessions = 2
    org_a.save(update_fields=["max_concurrent_sessions"])
    stuck = [session_start(client_a), session_start(client_a)]
    refused = client_a.post("/v1/auth/session-token", {"personaConfig": {"personaId": "mara"}}, format="json")
    assert refused.status_code == 429

    housekeeping_round()  # not yet: a browser may still be connecting
    assert all(ended(call_id).status == CallStatus.CONNECTING for call_id in stuck)

    for call_id in stuck:
        age(call_id, 31)
    housekeeping_round()
    for call_id in stuck:
        call = ended(call_id)
        assert call.status == CallStatus.ENDED and call.end_reason == "timeout"
        assert CallEvent.objects.filter(call=call, type="call.ended").count() == 1
    again = client_a.post("/v1/auth/session-token", {"personaConfig": {"personaId": "mara"}}, format="json")
    assert again.status_code == 200


@pytest.mark.django_db
def test_a_session_whose_socket_opened_is_not_expired(client_a, persona_a):
    call_id = session_start(client_a)
    assert services.call_claim(call_id=call_id)  # what the signalling socket's opening does
    age(call_id, 3600)
    housekeeping_round()
    call = ended(call_id)
    assert call.status == CallStatus.CONNECTING and call.owner_id == services.this_process_id()


@pytest.mark.django_db(transaction=True)
async def test_an_expired_sessions_socket_is_refused(client_a, persona_a):
    call_id = await database_sync_to_async(session_start)(client_a)
    await database_sync_to_async(age)(call_id, 60)
    await database_sync_to_async(housekeeping_round)()
    socket = WebsocketCommunicator(application, f"/ws/engine/?session_id={call_id}")
    connected, code = await socket.connect()
    assert not connected and code == 4404
    await socket.disconnect()


@pytest.mark.django_db
def test_a_call_held_by_another_process_cannot_be_claimed(client_a, persona_a):
    call_id = session_start(client_a)
    Call.objects.filter(pk=call_id).update(owner=other_process())
    assert not services.call_claim(call_id=call_id)


# --- Calls of a process that is gone ----------------------------------------------------


@pytest.mark.django_db
def test_a_call_of_a_dead_process_on_this_machine_ends_as_failed_at_once(persona_a, make_call):
    # A restart after SIGKILL: the old process's heartbeat is still fresh, but its pid is gone.
    hostname, _ = services._process_identity()
    dead = other_process(hostname=hostname, pid=exited_pid(), pid_started=1)
    call = make_call(persona_a, status=CallStatus.IN_PROGRESS, started_at=timezone.now(), owner=dead)
    housekeeping_round()
    call.refresh_from_db()
    assert call.status == CallStatus.ENDED and call.end_reason == "failed"
    assert CallEvent.objects.filter(call=call, type="call.ended").count() == 1
    assert EngineProcess.objects.get(pk=dead.pk).stopped_at is not None


@pytest.mark.django_db
def test_a_reused_pid_is_not_the_process_that_held_the_call(persona_a, make_call):
    hostname, _ = services._process_identity()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = services._proc_start_ticks(sleeper.pid)
        impostor = other_process(hostname=hostname, pid=sleeper.pid, pid_started=started + 1)
        living = other_process(hostname=hostname, pid=sleeper.pid, pid_started=started)
        lost = make_call(persona_a, status=CallStatus.IN_PROGRESS, owner=impostor)
        kept = make_call(persona_a, status=CallStatus.IN_PROGRESS, owner=living)
        housekeeping_round()
    finally:
        sleeper.kill()
        sleeper.wait()
    lost.refresh_from_db()
    kept.refresh_from_db()
    assert lost.end_reason == "failed"
    assert kept.status == CallStatus.IN_PROGRESS


@pytest.mark.django_db
def test_a_process_elsewhere_keeps_its_calls_until_its_heartbeat_is_stale(persona_a, make_call, settings):
    settings.PARLEY_PROCESS_STALE_SECONDS = 45
    elsewhere = other_process()  # another machine: its pid means nothing here
    call = make_call(persona_a, status=CallStatus.IN_PROGRESS, owner=elsewhere)
    housekeeping_round()
    call.refresh_from_db()
    assert call.status == CallStatus.IN_PROGRESS

    EngineProcess.objects.filter(pk=elsewhere.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=46))
    housekeeping_round()
    call.refresh_from_db()
    assert call.status == CallStatus.ENDED and call.end_reason == "failed"


@pytest.mark.django_db
def test_this_processs_own_calls_are_never_ended_by_housekeeping(persona_a, make_call, settings):
    settings.PARLEY_PROCESS_STALE_SECONDS = 45
    me = EngineProcess.objects.get(pk=services.this_process_id())
    EngineProcess.objects.filter(pk=me.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    call = make_call(persona_a, status=CallStatus.IN_PROGRESS, owner=me)
    housekeeping_round()  # its heartbeat comes first
    call.refresh_from_db()
    assert call.status == CallStatus.IN_PROGRESS
    assert EngineProcess.objects.get(pk=me.pk).heartbeat_at > timezone.now() - timedelta(minutes=1)


# --- Draining ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_draining_process_says_so_and_starts_no_session(client_a, persona_a, client):
    token = client_a.post(
        "/v1/auth/session-token", {"personaConfig": {"personaId": "mara"}}, format="json"
    ).json()["sessionToken"]
    services.process_drain_begin()

    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "draining"
    refused = APIClient().post("/v1/engine/session", {}, format="json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert refused.status_code == 503 and "restarting" in refused.json()["message"]

    services._state.draining = False  # the token was not used up by the refusal
    started = APIClient().post("/v1/engine/session", {}, format="json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert started.status_code == 200, started.content


@pytest.mark.django_db
def test_new_sessions_go_to_the_processes_that_are_not_draining(client_a, persona_a, settings):
    settings.PARLEY_ENGINE_HOSTS = ["127.0.0.1:8000", "127.0.0.1:8001"]
    other_process(engine_host="127.0.0.1:8000", draining_since=timezone.now())
    for _ in range(3):
        call_id = session_start(client_a)
        assert ended(call_id).engine_host == "127.0.0.1:8001"


@pytest.mark.django_db(transaction=True)
async def test_a_draining_process_refuses_a_new_calls_socket_with_the_reason(client_a, persona_a):
    call_id = await database_sync_to_async(session_start)(client_a)
    services._state.draining = True
    socket = WebsocketCommunicator(application, f"/ws/engine/?session_id={call_id}")
    connected, _ = await socket.connect()
    assert connected  # accepted to be told why
    message = await socket.receive_json_from()
    assert message["actionType"] == "endsession" and "restarting" in message["payload"]
    assert (await socket.receive_output())["code"] == 4503
    await socket.disconnect()


@pytest.mark.django_db
def test_tokens_minted_while_there_was_room_cannot_pass_the_limit_later(client_a, org_a, persona_a):
    org_a.max_concurrent_sessions = 1
    org_a.save(update_fields=["max_concurrent_sessions"])
    tokens = [
        client_a.post(
            "/v1/auth/session-token", {"personaConfig": {"personaId": "mara"}}, format="json"
        ).json()["sessionToken"]
        for _ in range(2)
    ]
    start = APIClient()
    assert (
        start.post(
            "/v1/engine/session", {}, format="json", HTTP_AUTHORIZATION=f"Bearer {tokens[0]}"
        ).status_code
        == 200
    )
    refused = start.post("/v1/engine/session", {}, format="json", HTTP_AUTHORIZATION=f"Bearer {tokens[1]}")
    assert refused.status_code == 429 and refused.json()["error"] == "busy"
    assert Call.objects.filter(organization=org_a).count() == 1
    assert services_token_unused(tokens[1])  # refused, not used up: it works once there is room


def services_token_unused(token: str) -> bool:
    from personas.services import session_token_check

    return session_token_check(token=token).used_at is None
