"""Several Parley processes: a session started on one is sent to the least busy, and lives there.

Two real Daphne processes share the test database, each configured with both as engine hosts
(`PARLEY_ENGINE_HOSTS`, the second listed first). An aiortc client starts its session on the
first process, is told to connect to the second, and holds its whole call there: signalling,
media, and `/talk`, which the first process does not know about.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from django.conf import settings as django_settings

from bench.webrtc_client import ParleyWebRTCClient
from calls.models import Call, CallStatus, Message
from personas.services import api_key_create
from tests.browser.conftest import LiveServer, calls_settle, daphne_start, free_port
from tests.browser.test_session_aiortc import mint

TALK_TEXT = "The second oven is in the other room."


@pytest.fixture(scope="module")
def two_processes(django_db_setup, tmp_path_factory) -> Iterator[tuple[LiveServer, LiveServer]]:
    front_port, worker_port = free_port(), free_port()
    hosts = {"PARLEY_ENGINE_HOSTS": f"127.0.0.1:{worker_port},127.0.0.1:{front_port}"}
    logs = tmp_path_factory.mktemp("engine-hosts")
    front = daphne_start(front_port, logs / "front.log", hosts)
    try:
        worker = daphne_start(worker_port, logs / "worker.log", hosts)
    except BaseException:
        front.stop()
        raise
    yield front, worker
    worker.stop()
    front.stop()


@pytest.fixture
def bakery(make_organization, make_persona):
    organization = make_organization("Bakery", slug="bakery")
    make_persona(organization, "mara", greeting="", skip_greeting=True)
    return api_key_create(organization=organization, name="e2e").raw_key


async def call_on_the_worker(front: LiveServer, worker: LiveServer, key: str) -> dict:
    """One call held on the worker; while it is live, a second session is started."""
    seen: dict = {}
    async with ParleyWebRTCClient(base_url=front.url, session_token=mint(front.url, key)) as client:
        record = client.record
        await client.wait_for(lambda: any(s["actionType"] == "sessionready" for s in record.signals), "ready")
        seen["session_id"] = record.session_id
        async with httpx.AsyncClient() as http:
            elsewhere = await http.post(
                f"{front.url}/talk?session_id={record.session_id}", json={"content": "Hi"}
            )
            here = await http.post(
                f"{worker.url}/talk?session_id={record.session_id}", json={"content": TALK_TEXT}
            )
            seen["talk_statuses"] = (elsewhere.status_code, here.status_code)
            await client.wait_for(lambda: record.persona_finished_count() >= 1, "the talk to be spoken")
            seen["loud_frames"] = len(record.loud_audio_frames)
            # The worker holds a live call now: the next session goes to the front process.
            second = await http.post(
                f"{front.url}/v1/engine/session",
                json={},
                headers={"Authorization": f"Bearer {mint(front.url, key)}"},
            )
            seen["second"] = (second.status_code, second.json())
    return seen


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_sessions_go_to_the_least_busy_process_and_live_there(two_processes, bakery):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    front, worker = two_processes
    worker_host = worker.url.removeprefix("http://")
    front_host = front.url.removeprefix("http://")

    seen = asyncio.run(call_on_the_worker(front, worker, bakery))

    first = Call.objects.get(pk=seen["session_id"])
    assert first.engine_host == worker_host  # listed first, and no process had a call yet
    elsewhere, here = seen["talk_statuses"]
    assert elsewhere == 404, "the front process does not hold the call, so /talk there finds nothing"
    assert here == 200 and seen["loud_frames"] > 25
    assert Message.objects.filter(call_id=first.pk, role="persona", text=TALK_TEXT).exists()

    status, answer = seen["second"]
    assert status == 200, answer
    assert answer["engineHost"] == front_host
    second = Call.objects.get(pk=answer["sessionId"])
    assert (second.engine_host, second.status) == (front_host, CallStatus.CONNECTING)
    calls_settle()


async def app_on_the_front_drives_a_call_on_the_worker(
    front: LiveServer, worker: LiveServer, key: str
) -> dict:
    from parley_agent import Agent, AgentError

    seen: dict = {"said": None, "errors": []}
    handled = asyncio.Event()
    agent = Agent(front.url.replace("http://", "ws://"), api_key=key, agents=["mara"])

    @agent.on("call.started")
    async def started(event: dict, call) -> None:
        try:
            await asyncio.sleep(1.0)  # the call's voice comes up
            seen["said"] = await call.say(TALK_TEXT)
            await asyncio.sleep(4.0)
            await call.hangup()
        except AgentError as error:
            seen["errors"].append(error.code)
        finally:
            handled.set()

    runner = asyncio.create_task(agent.run())
    try:
        for _ in range(200):
            if agent.connected:
                break
            await asyncio.sleep(0.1)
        async with ParleyWebRTCClient(base_url=front.url, session_token=mint(front.url, key)) as client:
            record = client.record
            await client.wait_for(
                lambda: any(s["actionType"] == "endsession" for s in record.signals), "the app's hangup"
            )
            seen["session_id"] = record.session_id
            seen["persona"] = record.persona_messages()
        # The browser can hear of the hangup before the app has its ack: the ack comes back
        # from the worker through the channel layer. Stopping the agent before it came would
        # fail the hangup with "disconnected".
        await asyncio.wait_for(handled.wait(), 10)
    finally:
        agent.stop()
        await asyncio.wait_for(runner, 10)
    return seen


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    not django_settings.CHANNEL_LAYERS["default"]["BACKEND"].startswith("channels_redis"),
    reason="processes reach each other's calls through a shared channel layer (REDIS_URL)",
)
def test_an_app_connected_to_one_process_drives_a_call_held_by_another(two_processes, bakery):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()
    front, worker = two_processes
    seen = asyncio.run(app_on_the_front_drives_a_call_on_the_worker(front, worker, bakery))
    assert seen["errors"] == []
    call = Call.objects.get(pk=seen["session_id"])
    assert call.engine_host == worker.url.removeprefix("http://")
    assert seen["persona"] == [TALK_TEXT]
    calls_settle()
    call.refresh_from_db()
    assert call.end_reason == "hangup"
