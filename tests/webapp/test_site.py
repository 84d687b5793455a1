"""Site-wide behaviour: JSON errors under /v1/, the schema, CORS, origins, log redaction."""

from __future__ import annotations

import logging

import pytest
from django.test import Client

from webapp.logging import RedactSecretsFilter, redact
from webapp.origins import origin_allowed


@pytest.mark.django_db
def test_an_unknown_api_path_is_a_json_404(client_a):
    response = client_a.get("/v1/nowhere")
    assert response.status_code == 404
    assert response.json()["detail"].startswith("no such endpoint")


@pytest.mark.django_db
def test_a_wrong_method_is_405(client_a, persona_a):
    response = client_a.get("/v1/auth/session-token")
    assert response.status_code == 405
    assert "GET" in response.json()["detail"]


@pytest.mark.django_db
def test_the_openapi_schema_and_docs_are_served():
    client = Client()
    schema = client.get("/v1/schema", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in (
        "/v1/auth/session-token",
        "/v1/auth/stream-token",
        "/v1/personas",
        "/v1/calls",
        "/v1/calls/{call_id}",
        "/v1/calls/{call_id}/events",
    ):
        assert path in paths, path
    docs = client.get("/v1/docs")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


@pytest.mark.django_db
def test_cors_allows_listed_origins_only(client_a, persona_a, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://shop.example"]
    settings.CORS_ALLOWED_ORIGIN_REGEXES = []
    ok = client_a.options(
        "/v1/auth/session-token",
        HTTP_ORIGIN="https://shop.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
    )
    assert ok.headers.get("Access-Control-Allow-Origin") == "https://shop.example"
    refused = client_a.options(
        "/v1/auth/session-token",
        HTTP_ORIGIN="https://evil.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
    )
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_websocket_origins(settings):
    settings.PARLEY_ALLOWED_ORIGINS = ["https://shop.example"]
    settings.PARLEY_ALLOW_LOCALHOST_ORIGINS = False
    assert origin_allowed("https://shop.example")
    assert not origin_allowed("https://evil.example")
    assert not origin_allowed("http://localhost:5173")
    assert origin_allowed("https://parley.example", host="parley.example")
    settings.PARLEY_ALLOW_LOCALHOST_ORIGINS = True
    assert origin_allowed("http://localhost:5173")


def test_no_token_or_key_reaches_a_log_line(caplog):
    samples = [
        "GET /v1/events/stream?token=eyJhbGciOiJIUzI1NiJ9.eyJ4IjoxfQ.c2ln&agents=mara",
        "Authorization: Bearer prl_ab12cd34_Zm9vYmFyYmF6cXV4cXV1eA",
        "key prl_ab12cd34_Zm9vYmFyYmF6cXV4cXV1eA leaked",
        "Authorization: Token Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Ng",  # Deepgram's scheme
    ]
    for sample in samples:
        cleaned = redact(sample)
        assert "eyJhbGciOiJIUzI1NiJ9" not in cleaned and "Zm9vYmFy" not in cleaned, cleaned
    assert "agents=mara" in redact(samples[0])
    assert redact("the token expired") == "the token expired"
    logger = logging.getLogger("parley.test")
    handler_filter = RedactSecretsFilter()
    record = logger.makeRecord("parley.test", logging.INFO, __file__, 1, "got %s", (samples[1],), None)
    handler_filter.filter(record)
    assert "Zm9vYmFy" not in record.getMessage()
