"""seed_demo: idempotent demo data, a fixed or saved API key that works, and an admin login."""

from __future__ import annotations

import re
import stat
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from personas.models import ApiKey, KnowledgeEntry, Organization, Persona
from personas.services import api_key_authenticate, api_key_create, api_key_hash, api_key_revoke

FIXED_KEY = "prl_demo_fixed_key_for_the_test_suite_0123456789"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def isolated_seed(settings, tmp_path, monkeypatch) -> Path:
    """Keep the developer's var/ files out of it, and start from no configured key or admin."""
    settings.PARLEY_DATA_DIR = tmp_path
    settings.PARLEY_DEMO_API_KEY = ""
    for name in ("PARLEY_ADMIN_USERNAME", "PARLEY_ADMIN_PASSWORD", "PARLEY_ADMIN_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def seed(*args: str) -> str:
    out = StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def printed_api_key(output: str) -> str:
    match = re.search(r"API key:\s+(\S+)", output)
    assert match, output
    return match.group(1)


def printed_admin_password(output: str) -> str:
    match = re.search(r"password (\S+)", output)
    assert match, output
    return match.group(1)


def counts() -> dict[str, int]:
    return {
        "organizations": Organization.objects.count(),
        "personas": Persona.objects.count(),
        "knowledge": KnowledgeEntry.objects.count(),
        "api_keys": ApiKey.objects.count(),
        "active_api_keys": ApiKey.objects.filter(revoked_at__isnull=True).count(),
        "users": get_user_model().objects.count(),
    }


def test_first_run_creates_the_demo_organization_persona_knowledge_key_and_admin():
    output = seed()

    organization = Organization.objects.get(slug="demo")
    mara = Persona.objects.get(slug="mara")
    assert mara.organization == organization
    assert mara.name == "Mara"
    assert mara.language_code == "en-US"
    assert mara.voice == "en-us+f3"
    assert mara.greeting and mara.system_prompt
    # The demo records its calls (a first `make run` shows a recording in the admin).
    assert (mara.recording_enabled, mara.recording_retention_days) == (True, 7)
    assert mara.knowledge.count() >= 12
    questions = " ".join(mara.knowledge.values_list("question", flat=True)).lower()
    for topic in (
        "hours",
        "address",
        "menu",
        "cost",
        "allergen",
        "cake",
        "deliver",
        "parking",
        "wifi",
        "pay",
    ):
        assert topic in questions, topic
    assert "/v1/personas/mara" in output
    assert get_user_model().objects.get(username="admin").is_superuser


def test_running_twice_changes_nothing_and_duplicates_nothing():
    first = seed()
    before = counts()
    persona_updated_at = Persona.objects.get(slug="mara").updated_at

    second = seed()

    assert counts() == before
    assert Persona.objects.get(slug="mara").updated_at == persona_updated_at
    assert printed_api_key(second) == printed_api_key(first)
    assert printed_admin_password(second) == printed_admin_password(first)
    assert "nothing changed" in second


def test_the_printed_key_authenticates_for_the_demo_organization(isolated_seed):
    raw_key = printed_api_key(seed())

    api_key = api_key_authenticate(raw_key=raw_key)

    assert api_key is not None
    assert api_key.organization.slug == "demo"
    assert (isolated_seed / "demo-api-key").read_text().strip() == raw_key
    assert ApiKey.objects.filter(key_hash=api_key_hash(raw_key)).count() == 1


def test_secret_files_are_readable_by_their_owner_only(isolated_seed):
    seed()

    for name in ("demo-api-key", "admin-password"):
        mode = stat.S_IMODE((isolated_seed / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))


def test_a_revoked_saved_key_is_replaced_by_a_new_active_one():
    first_key = printed_api_key(seed())
    api_key_revoke(api_key=api_key_authenticate(raw_key=first_key))

    second_key = printed_api_key(seed())

    assert second_key != first_key
    assert api_key_authenticate(raw_key=first_key) is None
    assert api_key_authenticate(raw_key=second_key) is not None


def test_parley_demo_api_key_fixes_the_key(settings):
    settings.PARLEY_DEMO_API_KEY = FIXED_KEY

    output = seed()
    seed()

    assert printed_api_key(output) == FIXED_KEY
    assert ApiKey.objects.filter(key_hash=api_key_hash(FIXED_KEY)).count() == 1
    api_key = api_key_authenticate(raw_key=FIXED_KEY)
    assert api_key is not None
    assert api_key.organization.slug == "demo"
    assert FIXED_KEY not in set(ApiKey.objects.values_list("prefix", "key_hash", "name").get(pk=api_key.pk))


def test_parley_demo_api_key_is_reactivated_when_revoked(settings):
    settings.PARLEY_DEMO_API_KEY = FIXED_KEY
    seed()
    api_key_revoke(api_key=ApiKey.objects.get(key_hash=api_key_hash(FIXED_KEY)))

    seed()

    assert api_key_authenticate(raw_key=FIXED_KEY) is not None
    assert ApiKey.objects.filter(key_hash=api_key_hash(FIXED_KEY)).count() == 1


def test_parley_demo_api_key_of_another_organization_is_refused(settings, org_a):
    api_key_create(organization=org_a, name="not the demo's", raw_key=FIXED_KEY)
    settings.PARLEY_DEMO_API_KEY = FIXED_KEY

    with pytest.raises(CommandError, match="another organization"):
        seed()


def test_a_too_short_parley_demo_api_key_is_refused(settings):
    settings.PARLEY_DEMO_API_KEY = "short"

    with pytest.raises(CommandError, match="at least"):
        seed()


def test_the_generated_admin_password_is_printed_saved_and_works(isolated_seed):
    password = printed_admin_password(seed())

    assert (isolated_seed / "admin-password").read_text().strip() == password
    assert get_user_model().objects.get(username="admin").check_password(password)


def test_admin_credentials_come_from_the_environment(monkeypatch, isolated_seed):
    monkeypatch.setenv("PARLEY_ADMIN_USERNAME", "owner")
    monkeypatch.setenv("PARLEY_ADMIN_PASSWORD", "a-long-chosen-password")
    monkeypatch.setenv("PARLEY_ADMIN_EMAIL", "owner@example.com")

    output = seed()
    seed()

    owner = get_user_model().objects.get(username="owner")
    assert owner.is_superuser and owner.is_staff
    assert owner.email == "owner@example.com"
    assert owner.check_password("a-long-chosen-password")
    assert "a-long-chosen-password" not in output
    assert not (isolated_seed / "admin-password").exists()
    assert not get_user_model().objects.filter(username="admin").exists()


def test_an_existing_admins_own_password_is_left_alone():
    get_user_model().objects.create_superuser("admin", "", "chosen-by-the-owner")

    output = seed()

    assert get_user_model().objects.get(username="admin").check_password("chosen-by-the-owner")
    assert "password (not shown)" in output


def test_quiet_prints_nothing():
    assert seed("--quiet") == ""
    assert Persona.objects.filter(slug="mara").exists()
