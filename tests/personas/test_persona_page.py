"""The persona chat page: a token minted server-side, fresh tokens on demand, no API key in sight."""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from django.utils.html import escape

from calls.models import CallStatus
from personas.models import Persona, SessionToken
from personas.services import session_token_check
from personas.views import TOKEN_REQUESTS_PER_WINDOW

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def empty_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def mara(settings, tmp_path: Path) -> tuple[Persona, str]:
    """The demo persona, seeded as the README says, and the demo API key it printed."""
    settings.PARLEY_DATA_DIR = tmp_path
    settings.PARLEY_DEMO_API_KEY = ""
    out = StringIO()
    call_command("seed_demo", stdout=out)
    api_key = re.search(r"API key:\s+(\S+)", out.getvalue()).group(1)
    return Persona.objects.get(slug="mara"), api_key


def page_config(html: str) -> dict:
    match = re.search(r'<script id="parley-page-config" type="application/json">(.*?)</script>', html, re.S)
    assert match, "the page carries no parley-page-config"
    return json.loads(match.group(1))


def test_the_page_renders_the_persona_and_mints_no_token(client: Client, mara):
    persona, _ = mara
    before = SessionToken.objects.count()
    response = client.get("/p/mara/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<h1 class="identity-name">Mara</h1>' in html
    assert escape(persona.description) in html
    assert "no-store" in response.headers["Cache-Control"]
    config = page_config(html)
    assert "sessionToken" not in config  # Start asks the token endpoint for one
    assert config["tokenUrl"] == "/p/mara/token"
    assert config["error"] == ""
    assert SessionToken.objects.count() == before


def test_page_loads_mint_nothing_however_many(client: Client, mara):
    # Anyone may load the page: 300 loads once minted 300 tokens (in 3.4 s), each able to start
    # a session and hold one of the organization's slots.
    before = SessionToken.objects.count()
    for _ in range(50):
        assert client.get("/p/mara/").status_code == 200
    assert SessionToken.objects.count() == before


def test_the_api_key_never_reaches_the_page(client: Client, mara):
    _, api_key = mara
    html = client.get("/p/mara/").content.decode()
    assert api_key not in html
    assert api_key[:12] not in html  # not even its public prefix


def test_an_unknown_persona_is_404(client: Client, mara):
    assert client.get("/p/nobody/").status_code == 404
    assert client.post("/p/nobody/token").status_code == 404


def test_an_inactive_persona_is_404(client: Client, mara):
    persona, _ = mara
    persona.is_active = False
    persona.save(update_fields=["is_active"])
    assert client.get("/p/mara/").status_code == 404


def test_the_token_endpoint_gives_a_fresh_single_use_token(mara):
    browser = Client(enforce_csrf_checks=True)
    html = browser.get("/p/mara/").content.decode()
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)

    response = browser.post("/p/mara/token", HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 200
    fresh = response.json()["sessionToken"]
    record = session_token_check(token=fresh)
    assert record.persona.slug == "mara" and record.kind == SessionToken.Kind.STATEFUL
    assert record.client_label == "parley-page"
    again = browser.post("/p/mara/token", HTTP_X_CSRFTOKEN=csrf).json()["sessionToken"]
    assert again != fresh


def test_the_token_endpoint_needs_the_csrf_token(mara):
    browser = Client(enforce_csrf_checks=True)
    browser.get("/p/mara/")
    before = SessionToken.objects.count()
    assert browser.post("/p/mara/token").status_code == 403
    assert SessionToken.objects.count() == before


def test_the_token_endpoint_only_takes_post(client: Client, mara):
    assert client.get("/p/mara/token").status_code == 405


def test_the_token_endpoint_is_rate_limited(client: Client, mara):
    from django.utils import timezone

    for _ in range(TOKEN_REQUESTS_PER_WINDOW):
        assert client.post("/p/mara/token").status_code == 200
        SessionToken.objects.update(expires_at=timezone.now())  # unused, gone: held by nobody
    response = client.post("/p/mara/token")
    assert response.status_code == 429
    assert response.json()["error"] == "rate_limited"


def test_a_busy_organization_gets_a_clear_message_not_a_token(client: Client, mara, settings, make_call):
    persona, _ = mara
    persona.organization.max_concurrent_sessions = 1
    persona.organization.save(update_fields=["max_concurrent_sessions"])
    make_call(persona, status=CallStatus.IN_PROGRESS)

    response = client.get("/p/mara/")
    assert response.status_code == 200
    html = response.content.decode()
    config = page_config(html)
    assert "sessionToken" not in config
    assert "busy" in config["error"] and "try again" in config["error"]
    assert 'id="start-button" disabled' in html

    refused = client.post("/p/mara/token")
    assert refused.status_code == 429
    assert refused.json()["error"] == "busy"


def test_a_visitor_holds_a_few_sessions_at_most_and_gets_more_as_they_end(client: Client, mara):
    # A script behind one address could otherwise mint 12 tokens a minute, start them all, and
    # hold most of the organization's live-session slots.
    from calls.models import Call, CallStatus
    from personas.views import PAGE_SESSIONS_PER_VISITOR

    persona, _ = mara
    tokens = [client.post("/p/mara/token").json()["sessionToken"] for _ in range(PAGE_SESSIONS_PER_VISITOR)]
    refused = client.post("/p/mara/token")
    assert refused.status_code == 429 and refused.json()["error"] == "too_many_sessions"
    other = Client(REMOTE_ADDR="10.1.2.3")  # another visitor is not held back
    assert other.post("/p/mara/token").status_code == 200

    # The tokens become calls; once one ends, the visitor may start another.
    from calls.services import call_end, engine_session_start

    calls = [engine_session_start(token=token, engine_hosts=["127.0.0.1:8000"]) for token in tokens]
    assert client.post("/p/mara/token").status_code == 429
    call_end(call=calls[0], reason="hangup")
    assert client.post("/p/mara/token").status_code == 200
    assert Call.objects.filter(persona=persona, status=CallStatus.CONNECTING).count() == 2


def test_a_page_token_is_short_lived(client: Client, mara):
    from personas.views import PAGE_TOKEN_TTL_SECONDS

    record = session_token_check(token=client.post("/p/mara/token").json()["sessionToken"])
    assert (record.expires_at - record.issued_at).total_seconds() == PAGE_TOKEN_TTL_SECONDS
