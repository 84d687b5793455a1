"""Honest health: /healthz checks the database and the channel layer; a Redis outage is a 503, not a 500.

Redis is "down" here by pointing the settings at a closed local port, never by stopping the
shared server.
"""

from __future__ import annotations

import json
import socket

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.testing import WebsocketCommunicator
from django.db import OperationalError, connection, connections
from django.test import Client

from webapp.asgi import application

RECEIVE_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 5.0


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def redis_down(settings):
    """The channel layer and the cache on a Redis that refuses connections."""
    url = f"redis://127.0.0.1:{closed_port()}/0"
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [url]}}
    }
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}}
    return url


@pytest.mark.django_db
def test_healthz_checks_the_database_and_the_channel_layer():
    response = Client().get("/healthz")
    assert response.status_code == 200
    data = response.json()
    assert data["status"] == "ok"
    assert data["checks"] == {"database": "ok", "channelLayer": "ok", "cache": "ok"}
    assert "warmUp" in data


@pytest.mark.django_db
def test_healthz_is_503_naming_the_channel_layer_while_redis_is_down(redis_down):
    response = Client().get("/healthz")
    assert response.status_code == 503
    data = response.json()
    assert data["status"] == "unavailable" and data["checks"]["database"] == "ok"
    assert data["checks"]["channelLayer"].startswith("down") and data["checks"]["cache"].startswith("down")
    assert redis_down.split("//")[1] not in json.dumps(data)  # no addresses for anonymous callers


@pytest.mark.django_db
def test_healthz_is_503_naming_the_database_when_it_does_not_answer(monkeypatch):
    def refuse(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr("webapp.health.connection.cursor", refuse)
    pool = getattr(connection, "pool", None)
    if pool is not None:  # PostgreSQL with the pool: the check takes its connection from it
        monkeypatch.setattr(pool, "getconn", refuse)
    response = Client().get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("down")


@pytest.mark.django_db
def test_healthz_opens_the_database_connection_pool_if_nothing_has_yet(monkeypatch):
    """A new process's first request may be the load balancer's probe (PostgreSQL's pool only)."""
    pool = getattr(connection, "pool", None)
    if pool is None:
        pytest.skip("no connection pool: SQLite, or PARLEY_DB_POOL_MAX=0")
    from psycopg_pool import ConnectionPool

    unopened = ConnectionPool(kwargs=pool.kwargs, configure=pool._configure, min_size=1, open=False)
    monkeypatch.setitem(type(connections["default"])._connection_pools, "default", unopened)
    try:
        response = Client().get("/healthz")
    finally:
        unopened.close()
    assert response.status_code == 200
    assert response.json()["checks"]["database"] == "ok"


@pytest.mark.django_db
def test_the_api_answers_503_with_a_clear_message_while_redis_is_down(client_a, persona_a, redis_down):
    response = client_a.get("/v1/personas")
    assert response.status_code == 503, response.content
    assert "Redis" in response.json()["detail"] and response.headers["Retry-After"]
    minted = client_a.post("/v1/auth/session-token", {"personaConfig": {"personaId": "mara"}}, format="json")
    assert minted.status_code == 503


@pytest.mark.django_db
def test_the_chat_page_token_answers_503_while_redis_is_down(persona_a, redis_down):
    response = Client().post(f"/p/{persona_a.slug}/token")
    assert response.status_code == 503
    assert "Redis" in response.json()["detail"]


@pytest.mark.django_db(transaction=True)
async def test_a_new_sse_stream_is_503_while_the_channel_layer_is_down(key_a, redis_down):
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": "/v1/events/stream",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {key_a}".encode())],
    }
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(RECEIVE_TIMEOUT_SECONDS)
    body = await communicator.receive_output(RECEIVE_TIMEOUT_SECONDS)
    await communicator.wait(CLOSE_TIMEOUT_SECONDS)
    assert start["status"] == 503
    assert (b"retry-after", b"5") in start["headers"]
    assert "Redis" in json.loads(body["body"])["detail"]


@pytest.mark.django_db(transaction=True)
async def test_a_new_event_websocket_is_told_and_closed_with_4503_while_the_channel_layer_is_down(
    key_a, redis_down
):
    communicator = WebsocketCommunicator(
        application, "/ws/events/", headers=[(b"authorization", f"Bearer {key_a}".encode())]
    )
    connected, _ = await communicator.connect(RECEIVE_TIMEOUT_SECONDS)
    assert connected
    error = await communicator.receive_json_from(RECEIVE_TIMEOUT_SECONDS)
    assert error["type"] == "error" and error["status"] == 503 and "Redis" in error["detail"]
    closed = await communicator.receive_output(RECEIVE_TIMEOUT_SECONDS)
    assert closed == {"type": "websocket.close", "code": 4503}
