"""POST /v1/auth/session-token and the single-use life of a session token (PROTOCOL §1.1)."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

import jwt
import pytest
from django.utils import timezone
from rest_framework import status
from rest_framework.test import APIClient

from calls.models import CallStatus
from personas.models import SessionToken
from personas.services import api_key_create, api_key_revoke, session_token_check, session_token_consume
from personas.tokens import SESSION_AUDIENCE, TokenError, signing_key, token_encode

URL = "/v1/auth/session-token"


def payload_of(token: str) -> dict:
    """Decode the payload as the Anam SDK does: base64 of the middle part, no verification."""
    middle = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(middle + "=" * (-len(middle) % 4)))


@pytest.mark.django_db
def test_a_stateful_token_carries_what_the_anam_sdk_reads(client_a, persona_a, org_a):
    response = client_a.post(URL, {"personaConfig": {"personaId": "mara"}}, format="json")
    assert response.status_code == status.HTTP_200_OK, response.content
    token = response.json()["sessionToken"]
    claims = payload_of(token)
    assert claims["type"] == "stateful"
    assert claims["accountId"] == str(org_a.public_id)
    assert claims["personaId"] == "mara"
    assert claims["exp"] - claims["iat"] == 3600
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    record = SessionToken.objects.get(jti=claims["jti"])
    assert record.persona == persona_a and record.used_at is None


@pytest.mark.django_db
def test_an_inline_config_gives_an_ephemeral_token_based_on_a_persona(client_a, persona_a):
    config = {
        "name": "Cara",
        "voiceId": "en+f3",
        "systemPrompt": "Be brief.",
        "maxSessionLengthSeconds": 120,
        "voiceDetectionOptions": {"endOfSpeechSensitivity": 0.7},
    }
    response = client_a.post(URL, {"personaConfig": config, "clientLabel": "kiosk"}, format="json")
    assert response.status_code == 200, response.content
    claims = payload_of(response.json()["sessionToken"])
    assert claims["type"] == "ephemeral"
    assert claims["personaConfig"] == config
    record = SessionToken.objects.get(jti=claims["jti"])
    assert record.persona == persona_a and record.client_label == "kiosk"


@pytest.mark.django_db
def test_a_token_is_consumed_once_and_a_replay_is_refused(client_a, persona_a):
    token = client_a.post(URL, {"personaConfig": {"personaId": "mara"}}, format="json").json()["sessionToken"]
    record = session_token_consume(token=token)
    assert record.used_at is not None
    with pytest.raises(TokenError, match="already been used"):
        session_token_consume(token=token)
    with pytest.raises(TokenError, match="already been used"):
        session_token_check(token=token)


@pytest.mark.django_db
def test_an_expired_token_is_refused(client_a, persona_a):
    token = client_a.post(URL, {"personaConfig": {"personaId": "mara"}}, format="json").json()["sessionToken"]
    claims = payload_of(token)
    # Expired by its own claim...
    stale = token_encode({**claims, "iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600})
    with pytest.raises(TokenError, match="expired"):
        session_token_consume(token=stale)
    # ...and by the server's record even if the JWT were still valid.
    SessionToken.objects.filter(jti=claims["jti"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(TokenError, match="expired"):
        session_token_consume(token=token)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "forge",
    ["alg_none", "wrong_key", "tampered_payload", "other_audience", "garbage", "hs512"],
)
def test_a_forged_token_is_refused(client_a, persona_a, forge):
    token = client_a.post(URL, {"personaConfig": {"personaId": "mara"}}, format="json").json()["sessionToken"]
    claims = payload_of(token)
    if forge == "alg_none":
        header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
        forged = f"{header}.{token.split('.')[1]}."
    elif forge == "wrong_key":
        forged = jwt.encode(claims, "not-the-server-key-but-long-enough-32b", algorithm="HS256")
    elif forge == "tampered_payload":
        body = base64.urlsafe_b64encode(json.dumps({**claims, "personaId": "otto"}).encode()).rstrip(b"=")
        head, _, signature = token.split(".")
        forged = f"{head}.{body.decode()}.{signature}"
    elif forge == "other_audience":
        forged = token_encode({**claims, "aud": "parley:stream"})
    elif forge == "hs512":
        forged = jwt.encode({**claims, "iss": "parley"}, signing_key(), algorithm="HS512")
    else:
        forged = "not.a.jwt"
    with pytest.raises(TokenError):
        session_token_consume(token=forged)
    # The real token is still intact: a forgery consumes nothing.
    assert session_token_consume(token=token).jti == claims["jti"]


@pytest.mark.django_db
def test_a_token_signed_for_an_unknown_jti_is_refused(persona_a, org_a):
    now = int(time.time())
    forged = token_encode(
        {
            "type": "stateful",
            "accountId": str(org_a.public_id),
            "jti": "nope",
            "iat": now,
            "exp": now + 60,
            "aud": SESSION_AUDIENCE,
        }
    )
    with pytest.raises(TokenError, match="not known"):
        session_token_consume(token=forged)


@pytest.mark.django_db
def test_a_missing_or_bad_api_key_is_401(persona_a, org_a):
    anonymous = APIClient()
    response = anonymous.post(URL, {"personaConfig": {"personaId": "mara"}}, format="json")
    assert response.status_code == status.HTTP_401_UNAUTHORIZED
    assert "API key" in response.json()["detail"]
    for header in ("Bearer prl_nothing_real_at_all_0000000", "Basic abc", "Bearer"):
        anonymous.credentials(HTTP_AUTHORIZATION=header)
        response = anonymous.post(URL, {"personaConfig": {"personaId": "mara"}}, format="json")
        assert response.status_code == 401, header
        assert response.json()["detail"]
    issued = api_key_create(organization=org_a, name="to revoke")
    api_key_revoke(api_key=issued.api_key)
    anonymous.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.raw_key}")
    response = anonymous.post(URL, {"personaConfig": {"personaId": "mara"}}, format="json")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


@pytest.mark.django_db
def test_a_persona_of_another_organization_is_403(client_a, persona_a, persona_b):
    response = client_a.post(URL, {"personaConfig": {"personaId": "otto"}}, format="json")
    assert response.status_code == status.HTTP_403_FORBIDDEN
    assert "another organization" in response.json()["detail"]
    assert not SessionToken.objects.filter(persona=persona_b).exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "personaConfig"),
        ({"personaConfig": "mara"}, "personaConfig"),
        ({"personaConfig": {}}, "personaConfig"),
        ({"personaConfig": {"personaId": "nobody"}}, "personaConfig.personaId"),
        ({"personaConfig": {"personaId": 12.5}}, "personaConfig.personaId"),
        ({"personaConfig": {"personaId": "mara", "colour": "red"}}, "personaConfig.colour"),
        (
            {"personaConfig": {"name": "X", "maxSessionLengthSeconds": "long"}},
            "personaConfig.maxSessionLengthSeconds",
        ),
        (
            {"personaConfig": {"voiceDetectionOptions": {"endOfSpeechSensitivity": 3}}},
            "personaConfig.voiceDetectionOptions.endOfSpeechSensitivity",
        ),
        ({"personaConfig": {"personaId": "mara"}, "sessionOptions": []}, "sessionOptions"),
        ({"personaConfig": {"personaId": "mara"}, "extra": 1}, "extra"),
        ([1, 2], "body"),
    ],
)
def test_an_invalid_body_is_400_naming_the_field(client_a, persona_a, body, field):
    response = client_a.post(URL, body, format="json")
    assert response.status_code == status.HTTP_400_BAD_REQUEST, response.content
    data = response.json()
    assert field in data["errors"], data
    assert field.split(".")[-1] in data["detail"] or field == "body"


@pytest.mark.django_db
def test_malformed_json_is_400_and_wrong_content_type_is_415(client_a, persona_a):
    response = client_a.post(URL, data='{"personaConfig": ', content_type="application/json")
    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]
    response = client_a.post(URL, data="personaId=mara", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert "media type" in response.json()["detail"]


@pytest.mark.django_db
def test_an_oversized_body_is_413(client_a, persona_a):
    huge = {"personaConfig": {"personaId": "mara"}, "sessionOptions": {"blob": "x" * 400_000}}
    response = client_a.post(URL, huge, format="json")
    assert response.status_code == 413
    assert "too large" in response.json()["detail"]


@pytest.mark.django_db
def test_the_live_session_limit_is_429(client_a, org_a, persona_a, make_call):
    org_a.max_concurrent_sessions = 1
    org_a.save()
    make_call(persona_a, status=CallStatus.IN_PROGRESS)
    response = client_a.post(URL, {"personaConfig": {"personaId": "mara"}}, format="json")
    assert response.status_code == status.HTTP_429_TOO_MANY_REQUESTS
    assert "limit" in response.json()["detail"]


@pytest.mark.django_db
def test_minting_is_rate_limited_per_key(client_a, persona_a, settings):
    from django.core.cache import cache

    cache.clear()
    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "session_token": "3/min"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    try:
        codes = [
            client_a.post(URL, {"personaConfig": {"personaId": "mara"}}, format="json").status_code
            for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
    finally:
        cache.clear()
