"""The Anam engine endpoints: session start (single use, retry-safe), talk, client metrics."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from calls.models import Call, CallStatus

TOKEN_URL = "/v1/auth/session-token"
START_URL = "/v1/engine/session"
SDK_BODY = {"clientMetadata": {"client": "js-sdk", "version": "4.27.0"}}


def mint(client_a, **config) -> str:
    body = {"personaConfig": config or {"personaId": "mara"}}
    return client_a.post(TOKEN_URL, body, format="json").json()["sessionToken"]


def start(token: str, body=None, **headers):
    client = APIClient()
    return client.post(
        START_URL,
        body if body is not None else SDK_BODY,
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
        **headers,
    )


@pytest.mark.django_db
def test_starting_a_session_creates_the_call_and_says_where_to_connect(client_a, persona_a):
    response = start(mint(client_a), HTTP_HOST="127.0.0.1:8000")
    assert response.status_code == 200, response.content
    data = response.json()
    call = Call.objects.get(pk=data["sessionId"])
    assert call.transport == "webrtc" and call.status == CallStatus.CONNECTING
    assert call.persona == persona_a and call.metadata["client"]["client"] == "js-sdk"
    assert data["engineHost"] == "127.0.0.1:8000" and data["engineProtocol"] == "http"
    assert data["signallingEndpoint"] == "/ws/engine/"
    config = data["clientConfig"]
    assert config["iceServers"] == [] and config["heartbeatIntervalSeconds"] > 0
    assert config["maxWsReconnectionAttempts"] > 0


@pytest.mark.django_db
def test_a_retry_before_connecting_gets_the_same_session_and_a_late_replay_is_refused(client_a, persona_a):
    token = mint(client_a)
    first = start(token).json()["sessionId"]
    assert start(token).json()["sessionId"] == first  # the SDK retries with the same token
    Call.objects.filter(pk=first).update(status=CallStatus.IN_PROGRESS)
    replay = start(token)
    assert replay.status_code == 401
    assert "already been used" in replay.json()["message"]
    assert Call.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("headers", "body", "status", "words"),
    [
        ({}, SDK_BODY, 401, "Bearer"),
        ({"HTTP_AUTHORIZATION": "Bearer not.a.jwt"}, SDK_BODY, 401, "malformed"),
        ({"HTTP_AUTHORIZATION": "Token abc"}, SDK_BODY, 401, "Bearer"),
        ("token", {"personaConfig": {"personaId": "mara"}}, 400, "personaConfig"),
        ("token", {"clientMetadata": "js"}, 400, "clientMetadata"),
        ("token", {"surprise": 1}, 400, "surprise"),
    ],
)
def test_bad_session_starts_get_json_errors_the_sdk_understands(
    client_a, persona_a, headers, body, status, words
):
    if headers == "token":
        headers = {"HTTP_AUTHORIZATION": f"Bearer {mint(client_a)}"}
    response = APIClient().post(START_URL, body, format="json", **headers)
    assert response.status_code == status, response.content
    data = response.json()
    assert words in data["message"] and data["error"]
    assert Call.objects.count() == 0


@pytest.mark.django_db
def test_an_api_key_is_not_a_session_token(client_a, key_a, persona_a):
    response = start(key_a)
    assert response.status_code == 401


@pytest.mark.django_db
def test_engine_endpoints_answer_cors_preflight_for_allowed_origins(client_a, persona_a):
    response = APIClient().options(
        START_URL,
        HTTP_ORIGIN="http://localhost:5173",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization,content-type",
    )
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()
    refused = start(mint(client_a), HTTP_ORIGIN="http://localhost:5173")
    assert refused.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"


@pytest.mark.django_db
def test_client_metrics_are_accepted_and_dropped():
    response = APIClient().post(
        "/v1/metrics/client", {"name": "client_session_attempt", "value": 1}, format="json"
    )
    assert response.status_code == 204


@pytest.mark.django_db
def test_talk_needs_a_live_session_and_content():
    client = APIClient()
    assert client.post("/talk", {"content": "hi"}, format="json").status_code == 400
    missing = client.post("/talk?session_id=CAnope", {"content": "hi"}, format="json")
    assert missing.status_code == 404 and "CAnope" in missing.json()["message"]
    empty = client.post("/talk?session_id=CAnope", {"content": ""}, format="json")
    assert empty.status_code == 400 and "content" in empty.json()["message"]


class _NeverReadySession:
    """A live session whose voice never came up (its peer never connected)."""

    def __init__(self) -> None:
        self.said: list[str] = []

    async def say(self, text: str) -> bool:
        self.said.append(text)
        return False


@pytest.mark.django_db
def test_talk_to_a_session_that_never_becomes_ready_is_refused_not_lost(monkeypatch):
    session = _NeverReadySession()
    monkeypatch.setattr("calls.engine_api.live_session_get", lambda session_id: session)
    response = APIClient().post("/talk?session_id=CAslow", {"content": "Hello there."}, format="json")
    assert response.status_code == 409 and response.json()["error"] == "not_ready"
    assert session.said == ["Hello there."]


@pytest.mark.django_db
def test_sessions_are_spread_over_the_engine_hosts_by_their_live_calls(client_a, persona_a, settings):
    settings.PARLEY_ENGINE_HOSTS = ["media-1:8001", "media-2:8002"]

    def host_of_a_new_session() -> str:
        data = start(mint(client_a), HTTP_HOST="127.0.0.1:8000").json()
        assert Call.objects.get(pk=data["sessionId"]).engine_host == data["engineHost"]
        return data["engineHost"]

    assert [host_of_a_new_session() for _ in range(3)] == ["media-1:8001", "media-2:8002", "media-1:8001"]
    # Ended calls and connecting calls whose browser never came do not count.
    Call.objects.filter(engine_host="media-1:8001").update(status=CallStatus.ENDED)
    assert host_of_a_new_session() == "media-1:8001"
    Call.objects.filter(engine_host="media-2:8002").update(created_at=timezone.now() - timedelta(minutes=5))
    assert host_of_a_new_session() == "media-2:8002"


@pytest.mark.django_db
def test_a_retried_session_start_keeps_its_engine_host(client_a, persona_a, settings):
    settings.PARLEY_ENGINE_HOSTS = ["media-1:8001", "media-2:8002"]
    token = mint(client_a)
    first = start(token).json()
    start(mint(client_a))  # media-2 now holds one too; the retry still answers media-1
    retry = start(token).json()
    assert (retry["sessionId"], retry["engineHost"]) == (first["sessionId"], "media-1:8001")


def test_pages_of_other_engine_hosts_may_open_websockets(settings):
    from webapp.origins import origin_allowed

    settings.PARLEY_ALLOW_LOCALHOST_ORIGINS = False
    settings.PARLEY_ENGINE_ORIGINS = ["http://parley.example:8000", "http://parley.example:8001"]
    assert origin_allowed("http://parley.example:8000", host="parley.example:8001")
    assert not origin_allowed("http://elsewhere.example:8000", host="parley.example:8001")
