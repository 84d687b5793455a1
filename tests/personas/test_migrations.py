"""Migrations that change stored data: forwards and back."""

from __future__ import annotations

from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from personas.models import Persona


def test_new_personas_hear_with_whisper_and_pocketsphinx_ones_are_moved_to_it(transactional_db, org_a):
    before, after = ("personas", "0004_persona_stt_phrases"), ("personas", "0005_persona_stt_whisper")
    executor = MigrationExecutor(connection)
    try:
        executor.migrate([before])
        executor.loader.build_graph()
        OldPersona = executor.loader.project_state([before]).apps.get_model("personas", "Persona")
        OldPersona.objects.create(
            organization_id=org_a.pk, slug="sphinxy", name="Sphinxy", stt_provider="pocketsphinx"
        )
        OldPersona.objects.create(
            organization_id=org_a.pk, slug="cloudy", name="Cloudy", stt_provider="openai"
        )

        executor = MigrationExecutor(connection)
        executor.migrate([after])
        providers = dict(Persona.objects.values_list("slug", "stt_provider"))
        assert providers == {"sphinxy": "whisper", "cloudy": "openai"}

        executor = MigrationExecutor(connection)
        executor.migrate([before])
        providers = dict(OldPersona.objects.values_list("slug", "stt_provider"))
        assert providers == {"sphinxy": "pocketsphinx", "cloudy": "openai"}
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert Persona._meta.get_field("stt_provider").default == "whisper"
