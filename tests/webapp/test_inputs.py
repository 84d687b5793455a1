"""Input guards: JSON depth and size before parsing, storable text, one cursor parser; over HTTP."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from calls.models import Call
from personas.models import SessionToken
from webapp.inputs import MAX_JSON_DEPTH, InputRefused, cursor_parse, json_parse

# ~990 nested arrays: 2 kB that made Python's JSON parser overflow its recursion limit (a 500).
DEEP_JSON = "[" * 990 + "]" * 990


# --- The guard itself ---------------------------------------------------------------------


def test_a_document_nested_deeper_than_the_limit_is_refused_before_parsing():
    with pytest.raises(InputRefused) as refused:
        json_parse(DEEP_JSON, max_bytes=4096)
    assert refused.value.field == "body" and "nested deeper than" in refused.value.problem
    unclosed = "[" * 100_000  # never parsed: the scan stops at the limit
    with pytest.raises(InputRefused, match="nested deeper"):
        json_parse(unclosed, max_bytes=1_000_000)


def test_documents_at_the_depth_limit_wide_ones_and_brackets_inside_strings_are_fine():
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert json_parse(at_limit, max_bytes=4096) is not None
    wide = json.dumps([[i] for i in range(5000)])
    assert len(json_parse(wide, max_bytes=len(wide))) == 5000
    brackets_in_text = json.dumps({"text": "[" * 500 + '\\"{' * 100})
    assert json_parse(brackets_in_text, max_bytes=4096)["text"].startswith("[[[")


def test_size_encoding_and_syntax_are_refused_naming_the_field():
    with pytest.raises(InputRefused, match=r"^frame: must be at most 10 bytes of JSON$"):
        json_parse('{"a": "0123456789"}', field="frame", max_bytes=10)
    with pytest.raises(InputRefused, match="must be UTF-8"):
        json_parse(b'{"a": "\xff"}', max_bytes=100)
    with pytest.raises(InputRefused, match=r"^body: not valid JSON"):
        json_parse("{nope", max_bytes=100)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ('{"sessionOptions": {"note": "a\\u0000b"}}', "sessionOptions.note"),
        ('{"clientMetadata": {"tags": ["ok", "\\u0000"]}}', "clientMetadata.tags[1]"),
        ('{"content": "\\ud800"}', "content"),
        ('{"clientMetadata": {"\\u0000": 1}}', "clientMetadata"),
    ],
    ids=["nul-in-nested-string", "nul-in-list", "lone-surrogate", "nul-in-key"],
)
def test_text_the_database_cannot_store_is_refused_naming_its_path(document, field):
    with pytest.raises(InputRefused) as refused:
        json_parse(document, max_bytes=4096)
    assert refused.value.field == field


@pytest.mark.parametrize("value", ["9223372036854775808", "5.0", "٣", "²", "-1", "", "1e3", "0x10", "+1"])
def test_the_cursor_parser_refuses_anything_but_ascii_digits_that_fit_the_column(value):
    with pytest.raises(InputRefused, match=r"^after: must be a non-negative integer$"):
        cursor_parse(value, field="after")


def test_the_cursor_parser_takes_the_column_range():
    assert cursor_parse("0", field="after") == 0
    assert cursor_parse(" 9223372036854775807 ", field="after") == 2**63 - 1


# --- HTTP ----------------------------------------------------------------------------------


def post_raw(client: APIClient, url: str, body: str, **headers) -> object:
    return client.post(url, body, content_type="application/json", **headers)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    ["/talk?session_id=CAnope", "/v1/engine/session", "/v1/auth/session-token", "/v1/auth/stream-token"],
)
def test_deeply_nested_json_is_400_naming_the_body_on_every_endpoint(client_a, persona_a, url):
    client = client_a if url.startswith("/v1/auth/") else APIClient()
    headers = {"HTTP_AUTHORIZATION": "Bearer a.b.c"} if url == "/v1/engine/session" else {}
    response = post_raw(client, url, DEEP_JSON, **headers)
    assert response.status_code == 400, response.content
    assert response.json()["detail"] == f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels"


@pytest.mark.django_db
def test_engine_endpoints_refuse_bad_json_in_the_shape_the_sdk_reads():
    response = post_raw(APIClient(), "/talk?session_id=CAnope", "{nope")
    assert response.status_code == 400
    data = response.json()
    assert data["error"] == "invalid_body" and data["message"].startswith("body: not valid JSON")


@pytest.mark.django_db
def test_a_body_over_the_limit_is_413_even_when_drf_reads_the_stream(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = post_raw(APIClient(), "/talk?session_id=CAnope", json.dumps({"content": "x" * 2000}))
    assert response.status_code == 413


# --- Text the database cannot store (run on PostgreSQL: SQLite stores NULs) -----------------

NUL = "\u0000"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/calls/CA%00x", "call_id"),
        ("/v1/calls/CA%00x/events", "call_id"),
        ("/v1/personas/ma%00ra", "reference"),
        ("/v1/calls?endReason=hangup%00", "endReason"),
        ("/v1/calls/CAx/events?after=%00", "after"),
    ],
    ids=["call-id", "call-events-id", "persona-reference", "query", "cursor"],
)
def test_nul_in_a_path_id_or_query_parameter_is_400_naming_it(client_a, persona_a, path, field):
    response = client_a.get(path)
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith(f"{field}: must not contain NUL"), response.json()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "reference", ["²", "٣", "99999999999999999999999"], ids=["superscript", "arabic", "huge"]
)
def test_a_persona_reference_of_odd_digits_is_a_404_not_a_500(client_a, persona_a, reference):
    response = client_a.get(f"/v1/personas/{reference}")
    assert response.status_code == 404, response.content


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"personaConfig": {"personaId": "mara"}, "sessionOptions": {"note": f"a{NUL}b"}},
            "sessionOptions.note",
        ),
        ({"personaConfig": {"personaId": "ma\ud800ra"}}, "personaConfig.personaId"),
        ({"personaConfig": {"personaId": "mara"}, "clientLabel": "\udfff"}, "clientLabel"),
        ({"personaConfig": {"name": f"Ma{NUL}ra"}}, "personaConfig.name"),
    ],
    ids=["nul-in-session-options", "surrogate-in-persona-id", "surrogate-in-label", "nul-in-inline-name"],
)
def test_unstorable_text_in_a_session_token_request_is_400_naming_the_field(client_a, persona_a, body, field):
    raw = json.dumps(body)  # escapes NULs and lone surrogates as \\uXXXX, as a client would send them
    response = post_raw(client_a, "/v1/auth/session-token", raw)
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"], response.json()
    assert SessionToken.objects.count() == 0


@pytest.mark.django_db
def test_nul_in_client_metadata_is_400_and_leaves_the_single_use_token_usable(client_a, persona_a):
    token = client_a.post(
        "/v1/auth/session-token", {"personaConfig": {"personaId": "mara"}}, format="json"
    ).json()["sessionToken"]
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    refused = post_raw(
        APIClient(), "/v1/engine/session", json.dumps({"clientMetadata": {"client": f"js{NUL}"}}), **headers
    )
    assert refused.status_code == 400, refused.content
    assert refused.json()["message"].startswith("clientMetadata.client: must not contain NUL")
    assert SessionToken.objects.get().used_at is None and Call.objects.count() == 0
    started = post_raw(
        APIClient(), "/v1/engine/session", json.dumps({"clientMetadata": {"client": "js"}}), **headers
    )
    assert started.status_code == 200, started.content
