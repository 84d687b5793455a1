"""Shared fixtures: organizations, personas, API keys, and calls to hang events on."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from calls.models import Call, Transport
from personas.models import KnowledgeEntry, Organization, Persona
from personas.services import api_key_create


@pytest.fixture(autouse=True)
def server_process_state():
    """Each test's database is new: this process registers itself again in it when it claims a
    call, and is not draining (`calls.lifecycle`)."""
    from calls.lifecycle import services

    services._state.id, services._state.draining = None, False
    yield
    services._state.id, services._state.draining = None, False


@pytest.fixture
def make_organization(db) -> Callable[..., Organization]:
    counter = {"n": 0}

    def make(name: str | None = None, **fields) -> Organization:
        counter["n"] += 1
        label = name or f"Org {counter['n']}"
        slug = fields.pop("slug", f"org-{counter['n']}-{Organization.objects.count()}")
        return Organization.objects.create(name=label, slug=slug, **fields)

    return make


@pytest.fixture
def make_persona(db) -> Callable[..., Persona]:
    def make(organization: Organization, slug: str, **fields) -> Persona:
        fields.setdefault("name", slug.title())
        fields.setdefault("greeting", f"Hello, I'm {fields['name']}.")
        persona = Persona.objects.create(organization=organization, slug=slug, **fields)
        KnowledgeEntry.objects.create(persona=persona, question="What do you do?", answer="I help.")
        return persona

    return make


@pytest.fixture
def org_a(make_organization) -> Organization:
    return make_organization("Alpha", slug="alpha")


@pytest.fixture
def org_b(make_organization) -> Organization:
    return make_organization("Beta", slug="beta")


@pytest.fixture
def persona_a(make_persona, org_a) -> Persona:
    return make_persona(org_a, "mara")


@pytest.fixture
def persona_b(make_persona, org_b) -> Persona:
    return make_persona(org_b, "otto")


@pytest.fixture
def key_a(org_a) -> str:
    return api_key_create(organization=org_a, name="test key A").raw_key


@pytest.fixture
def key_b(org_b) -> str:
    return api_key_create(organization=org_b, name="test key B").raw_key


@pytest.fixture
def client_a(key_a) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key_a}")
    return client


@pytest.fixture
def client_b(key_b) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key_b}")
    return client


@pytest.fixture
def make_call(db) -> Callable[..., Call]:
    def make(persona: Persona, **fields) -> Call:
        fields.setdefault("transport", Transport.WEBRTC)
        return Call.objects.create(organization=persona.organization, persona=persona, **fields)

    return make
