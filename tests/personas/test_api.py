"""The personas and stream-token endpoints, and what one organization may see of another."""

from __future__ import annotations

import pytest
from rest_framework import status

from personas.services import stream_token_verify


@pytest.mark.django_db
def test_personas_list_shows_only_the_callers_organization(client_a, client_b, persona_a, persona_b):
    slugs_a = [p["slug"] for p in client_a.get("/v1/personas").json()]
    slugs_b = [p["slug"] for p in client_b.get("/v1/personas").json()]
    assert slugs_a == ["mara"]
    assert slugs_b == ["otto"]


@pytest.mark.django_db
def test_persona_detail_has_knowledge_and_no_secrets(client_a, persona_a):
    persona_a.llm_api_key = "sk-very-secret"
    persona_a.save()
    response = client_a.get("/v1/personas/mara")
    assert response.status_code == 200
    data = response.json()
    assert data["knowledge"] == [{"kind": "qa", "question": "What do you do?", "answer": "I help."}]
    assert data["sessionLimits"]["maxDurationSeconds"] == 600
    assert data["sessionLimits"]["idleTimeoutSeconds"] == 60
    assert data["sessionLimits"]["idleWarningSeconds"] == 15
    assert "sk-very-secret" not in response.content.decode()
    assert client_a.get(f"/v1/personas/{persona_a.pk}").json()["slug"] == "mara"


@pytest.mark.django_db
def test_another_organizations_persona_is_404(client_a, persona_a, persona_b):
    response = client_a.get("/v1/personas/otto")
    assert response.status_code == status.HTTP_404_NOT_FOUND
    assert "otto" in response.json()["detail"]
    assert client_a.get(f"/v1/personas/{persona_b.pk}").status_code == 404


@pytest.mark.django_db
def test_a_stream_token_is_scoped_to_the_organization_and_personas(client_a, org_a, persona_a, persona_b):
    response = client_a.post("/v1/auth/stream-token", {"agents": ["mara"], "ttlSeconds": 60}, format="json")
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["agents"] == ["mara"]
    grant = stream_token_verify(token=data["streamToken"])
    assert grant.organization_id == org_a.pk
    assert grant.agents == frozenset({"mara"})

    whole = client_a.post("/v1/auth/stream-token", {}, format="json").json()
    assert stream_token_verify(token=whole["streamToken"]).agents is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"agents": ["otto"]}, "agents"),
        ({"agents": []}, "agents"),
        ({"agents": "mara"}, "agents"),
        ({"ttlSeconds": 1}, "ttlSeconds"),
        ({"scope": "all"}, "scope"),
    ],
)
def test_a_bad_stream_token_request_is_400(client_a, persona_a, persona_b, body, field):
    response = client_a.post("/v1/auth/stream-token", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]


@pytest.mark.django_db
def test_a_session_token_is_not_a_stream_token(client_a, persona_a):
    from personas.tokens import TokenError

    session = client_a.post(
        "/v1/auth/session-token", {"personaConfig": {"personaId": "mara"}}, format="json"
    ).json()["sessionToken"]
    with pytest.raises(TokenError, match="not meant"):
        stream_token_verify(token=session)
