"""The OpenAPI schema agrees with the API: schemathesis, with every check, against the ASGI app.

Each operation of `/v1/schema` gets a bounded number of generated requests (valid and invalid),
sent with a valid API key; every answer must be documented (status, content type, body shape)
and no input may give a 5xx.
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from rest_framework import status
from schemathesis.config import SchemathesisConfig

from webapp.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

# Generated requests per operation and generation phase: enough to reach each documented
# answer, few enough that the whole run stays around a minute.
MAX_EXAMPLES = 40
# The event stream never ends by itself: each request reads it this long (seconds), then stops.
STREAM_READ_SECONDS = 0.5


# Where a request the schema allows may still get a 400 naming the field: it names what this
# organization does not have (a persona id in `personaConfig`, slugs in `agents`), or breaks a
# rule between two fields that OpenAPI cannot state (`startedBefore` before `startedAfter`).
OPERATIONS_WITH_A_400_BEYOND_THE_SCHEMA = (
    "POST /v1/auth/session-token",
    "POST /v1/auth/stream-token",
    "GET /v1/calls",
)
CONFIG = SchemathesisConfig.from_dict(
    {
        # Credentials are the test's (a valid API key), not generated ones. No NUL characters:
        # all text refuses them with a 400 (the API description says so), which a JSON schema
        # cannot state on every string; their own tests cover them.
        "generation": {"with-security-parameters": False, "allow-x00": False},
        "operations": [
            {
                "include-name": name,
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404"]}
                },
            }
            for name in OPERATIONS_WITH_A_400_BEYOND_THE_SCHEMA
        ],
    }
)
# Loaded once, as served (schemathesis' lazy `from_fixture` does not run on pytest 9).
schema = schemathesis.openapi.from_asgi("/v1/schema", application, config=CONFIG)


@pytest.fixture
def unthrottled(settings):
    # The run sends hundreds of requests with one key; the rate limits have their own tests.
    rates = dict.fromkeys(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "100000/min")
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_the_schema_documents(case, key_a, persona_a, unthrottled):
    case.call_and_validate(headers={"Authorization": f"Bearer {key_a}"}, timeout=STREAM_READ_SECONDS)


@pytest.fixture
def served_schema(client) -> dict:
    response = client.get("/v1/schema", {"format": "json"})
    assert response.status_code == status.HTTP_200_OK
    return json.loads(response.content)


def test_the_schema_has_the_event_stream_and_the_answers_the_api_gives(served_schema):
    paths = served_schema["paths"]
    stream = paths["/v1/events/stream"]["get"]
    assert set(stream["responses"]) == {"200", "400", "401", "403"}
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert set(paths["/v1/metrics/client"]["post"]["responses"]) == {"204"}
    documented = {  # every endpoint may answer 503 while a backing service (Redis) is down
        ("post", "/v1/auth/session-token"): {"200", "400", "401", "403", "429", "503"},
        ("post", "/v1/auth/stream-token"): {"200", "400", "401", "429", "503"},
        ("get", "/v1/personas/{reference}"): {"200", "401", "404", "429", "503"},
        ("get", "/v1/calls"): {"200", "400", "401", "404", "429", "503"},
        ("get", "/v1/calls/{call_id}/events"): {"200", "400", "401", "404", "429", "503"},
        ("post", "/v1/engine/session"): {"200", "400", "401", "413", "429", "503"},
        ("post", "/talk"): {"200", "400", "404", "409", "429", "503"},
    }
    for (method, path), statuses in documented.items():
        assert set(paths[path][method]["responses"]) == statuses, (method, path)
    error = served_schema["components"]["schemas"]["Error"]
    assert error["required"] == ["detail"]


def test_the_schema_marks_nullable_fields_and_states_input_limits(served_schema):
    schemas = served_schema["components"]["schemas"]
    for field in ("startedAt", "endedAt", "duration"):
        assert schemas["Call"]["properties"][field].get("nullable") is True, field
    assert schemas["StreamTokenResponse"]["properties"]["agents"].get("nullable") is True
    assert schemas["TalkRequest"]["properties"]["content"]["maxLength"] == 5000
    assert schemas["TalkRequest"]["additionalProperties"] is False
    agents = schemas["StreamTokenRequestRequest"]["properties"]["agents"]
    assert (agents["minItems"], agents["maxItems"], agents["items"]["maxLength"]) == (1, 100, 80)
    events = {
        p["name"]: p["schema"]
        for p in served_schema["paths"]["/v1/calls/{call_id}/events"]["get"]["parameters"]
    }
    assert (events["after"]["minimum"], events["after"]["maximum"]) == (0, 2**63 - 1)
    assert (events["limit"]["minimum"], events["limit"]["maximum"]) == (1, 1000)
