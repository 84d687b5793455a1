"""The server's warm-up: what the first calls would have loaded is loaded at start."""

from __future__ import annotations

import pytest

from calls.live import persona_conversation_config
from calls.pipeline.avatar.look import FaceLook
from calls.pipeline.avatar.track import renderer_ready
from calls.pipeline.brain import knowledge
from calls.pipeline.listening import workers
from calls.pipeline.listening.corpus import corpus_key, persona_corpus
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
    # Its knowledge is encoded, and every recogniser worker has built its language model.
    assert any(persona_id == "bakery" for persona_id, _ in knowledge._embedding_cache)
    config = persona_conversation_config(bakery)
    corpus = persona_corpus(name=config.name, greeting=config.greeting, knowledge=config.knowledge)
    assert "eight to six" in corpus
    pool = workers.recogniser_pool()
    assert all(corpus_key(corpus) in worker.prepared for worker in pool.workers)
    assert all(worker.prepared[corpus_key(corpus)].is_set() for worker in pool.workers)
    # Its face is drawn: the first call's renderer is ready at once.
    look = FaceLook.from_dict(config.avatar_look, portrait=config.avatar_portrait or None)
    assert renderer_ready(look)
    assert quiet.slug not in {slug for slug, _ in summary["personas"]}
