"""The server's warm-up: what the first calls would have loaded is loaded at start."""

from __future__ import annotations

import pytest

from calls.live import persona_conversation_config
from calls.pipeline.avatar.look import FaceLook
from calls.pipeline.avatar.track import renderer_ready
from calls.pipeline.brain import knowledge
from calls.pipeline.listening import whisper, workers
from calls.pipeline.listening.corpus import corpus_key, persona_corpus
from calls.pipeline.listening.providers import whisper_prompt_of
from calls.warmup import warm_up


@pytest.mark.django_db(transaction=True)
def test_the_warm_up_prepares_the_personas_last_called_first(make_organization, make_persona, make_call):
    organization = make_organization()
    quiet = make_persona(organization, "quiet", name="Quiet")
    bakery = make_persona(organization, "bakery", name="Bakery", greeting="Hello from the bakery.")
    bakery.knowledge.create(question="When are you open?", answer="Every day from eight to six.")
    make_call(persona=bakery)

    summary = warm_up(personas=1)

    assert [slug for slug, _ in summary["personas"]] == ["bakery"], summary
    assert summary["personas"][0][1] == ["face", "knowledge", "recogniser"], summary
    assert not summary["failed"]
    # Its knowledge is encoded, and Whisper is loaded with the persona's prompt ready.
    assert any(persona_id == "bakery" for persona_id, _ in knowledge._embedding_cache)
    config = persona_conversation_config(bakery)
    assert whisper.whisper_loaded()
    prompt = whisper_prompt_of(config)
    assert "When are you open?" in prompt
    assert prompt in whisper.whisper_recogniser()._prompts
    # Its face is drawn: the first call's renderer is ready at once.
    look = FaceLook.from_dict(config.avatar_look, portrait=config.avatar_portrait or None)
    assert renderer_ready(look)
    assert quiet.slug not in {slug for slug, _ in summary["personas"]}


@pytest.mark.django_db(transaction=True)
def test_a_persona_on_pocketsphinx_gets_its_language_model_built_in_the_warm_up(
    make_organization, make_persona, make_call
):
    persona = make_persona(make_organization(), "sphinx", name="Sphinx", stt_provider="pocketsphinx")
    persona.knowledge.create(question="Do you deliver?", answer="Yes, every morning.")
    make_call(persona=persona)

    summary = warm_up(personas=1)

    assert summary["personas"] == [("sphinx", ["face", "knowledge", "recogniser"])], summary
    config = persona_conversation_config(persona)
    corpus = persona_corpus(name=config.name, greeting=config.greeting, knowledge=config.knowledge)
    pool = workers.recogniser_pool()
    assert all(worker.prepared[corpus_key(corpus)].is_set() for worker in pool.workers)
