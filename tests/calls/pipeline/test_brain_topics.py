"""Topics the builtin brain offers are its knowledge questions rephrased, never keyword labels."""

from __future__ import annotations

import re

import pytest

from calls.pipeline.brain.builtin import BuiltinBrain
from calls.pipeline.brain.config import BrainConfig
from calls.pipeline.brain.knowledge import KnowledgeEntry, KnowledgeMatch, Verdict
from calls.pipeline.brain.replies import PersonaProfile, knowledge_reply, topics_from_knowledge
from calls.pipeline.brain.topics import topic_phrase
from personas.management.commands.seed_demo import MARA_KNOWLEDGE

DEMO_KNOWLEDGE = tuple(KnowledgeEntry(question, answer) for question, answer in MARA_KNOWLEDGE)

# A persona unlike the demo's bakery (held out: the rules were not written against it).
WORKSHOP_KNOWLEDGE = tuple(
    KnowledgeEntry(question, "An answer.")
    for question in (
        "How long does a repair take?",
        "When is the workshop open?",
        "Do you sell second-hand bikes?",
        "Can I rent a bike for a day?",
        "What brands do you stock?",
        "Is there a warranty on repairs?",
        "How much does a service cost?",
        "Where can I park my bike?",
        "Do I need an appointment?",
        "What's included in a full service?",
        "Are e-bikes repaired here?",
        "Who does the repairs?",
        "Where is the nearest bus stop?",
        "What time do you close on Saturdays?",
        "Are you open on bank holidays?",
        "Can you fix a puncture while I wait?",
        "Does the shop take card payments?",
        "What is your returns policy?",
    )
)

# What a rephrasing may drop from the question, or add to it: auxiliaries, "there", "have"
# (of "do you have"), and the "whether" of a yes/no question. Pronouns change sides.
_AUXILIARIES = {"do", "does", "did", "is", "are", "am", "was", "were", "can", "could", "will", "would", "may"}
_DROPPABLE = _AUXILIARIES | {"there", "have", "has"}
_ADDABLE = _AUXILIARIES | {"whether"}
_PRONOUNS = {"i", "me", "my", "we", "us", "our", "you", "your", "yours", "ours"}
_DETERMINERS = {"the", "a", "an", "our", "your", "this", "these"}


def _words(text: str) -> list[str]:
    words = [word.strip(",").lower() for word in text.strip().rstrip("?.!").split()]
    if words and words[0].endswith("'s"):
        words[:1] = [words[0][:-2], "is"]
    return words


def _inflections(word: str) -> set[str]:
    return {
        word,
        word + "s",
        word + "es",
        word[:-1] + "ies",
        word + "ing",
        word[:-1] + "ing",
        word + word[-1:] + "ing",
    }


def _rephrases(phrase: str, sentence: str) -> bool:
    """Every word of the question sentence is kept, in order, bar auxiliaries and pronouns, and
    nothing but auxiliaries and "whether" is added (verbs may take an inflection)."""
    asked = [word for word in _words(sentence) if word not in _DROPPABLE and word not in _PRONOUNS]
    said = [word for word in _words(phrase) if word not in _ADDABLE and word not in _PRONOUNS]
    if asked[:1] == ["what"] and _words(phrase)[:1] and _words(phrase)[0] in _DETERMINERS:
        asked = asked[1:]  # "what is your address" → "our address"
    return len(asked) == len(said) and all(
        spoken in _inflections(written) for written, spoken in zip(asked, said, strict=True)
    )


def assert_natural_topic(phrase: str, question: str) -> None:
    sentences = re.split(r"(?<=[?.!])\s+", question)
    assert any(_rephrases(phrase, sentence) for sentence in sentences), (phrase, question)
    # Said by the persona: the visitor is "you", never "I" or "my".
    assert not {"i", "me", "my"} & set(_words(phrase)), phrase


def test_the_demo_personas_topics_are_its_questions_rephrased():
    assert [topic_phrase(entry.question) for entry in DEMO_KNOWLEDGE] == [
        "our opening hours",
        "where we are",
        "what's on the menu",
        "how much things cost",
        "allergen information",
        "ordering a cake for a birthday or celebration",
        "whether we deliver",
        "parking",
        "wifi",
        "how you can pay",
        "a loyalty card",
        "how you can contact us",
        "whether the café is accessible",
    ]
    for entry in DEMO_KNOWLEDGE:
        assert_natural_topic(topic_phrase(entry.question) or "", entry.question)


def test_a_held_out_personas_topics_are_its_questions_rephrased():
    for entry in WORKSHOP_KNOWLEDGE:
        phrase = topic_phrase(entry.question)
        assert phrase, entry.question
        assert_natural_topic(phrase, entry.question)


@pytest.mark.parametrize(
    "question",
    ["Opening hours", "", "Why is my bike making a noise?", "Did you get my email?", "Tell me about cakes"],
)
def test_a_question_of_an_unknown_shape_gives_no_topic_rather_than_keywords(question: str):
    assert topic_phrase(question) is None


@pytest.mark.parametrize("knowledge", [DEMO_KNOWLEDGE, WORKSHOP_KNOWLEDGE], ids=["demo", "held-out"])
async def test_what_i_can_help_with_lists_natural_topics(knowledge: tuple[KnowledgeEntry, ...]):
    brain = BuiltinBrain(
        config=BrainConfig(persona_id="p", name="Mara", knowledge=knowledge), use_embeddings=False
    )
    reply = await brain.reply(user_text="What can you do?")
    listed = re.search(r"(?:help with|ask me about|know about) (.+?) and more", reply)
    assert listed, reply
    topics = listed.group(1).split(", ")
    assert topics == [topic_phrase(entry.question) for entry in knowledge[:3]], reply
    for topic, entry in zip(topics, knowledge, strict=False):
        assert_natural_topic(topic, entry.question)
    if knowledge is DEMO_KNOWLEDGE:
        assert "our opening hours, where we are, what's on the menu and more" in reply
        assert "on menu recommend" not in reply


@pytest.mark.parametrize("knowledge", [DEMO_KNOWLEDGE, WORKSHOP_KNOWLEDGE], ids=["demo", "held-out"])
def test_a_hedged_answer_names_its_topic_as_the_question_rephrased(knowledge: tuple[KnowledgeEntry, ...]):
    profile = PersonaProfile(
        persona_id="p", name="Mara", greeting="", topics=topics_from_knowledge(entries=knowledge)
    )
    for index, entry in enumerate(knowledge):
        match = KnowledgeMatch(entry, index, 0.35, 0.3, 0.4, Verdict.NOT_SURE)
        replies = {knowledge_reply(match=match, profile=profile, turn=turn) for turn in range(6)}
        for reply in replies:
            topic = re.match(r"(?:If you're asking about|.*, but about) (.+?): ", reply)
            assert topic, reply
            assert_natural_topic(topic.group(1), entry.question)
    if knowledge is DEMO_KNOWLEDGE:
        menu = knowledge[2]
        replies = {
            knowledge_reply(
                match=KnowledgeMatch(menu, 2, 0.35, 0.3, 0.4, Verdict.NOT_SURE), profile=profile, turn=turn
            )
            for turn in range(6)
        }
        assert f"If you're asking about what's on the menu: {menu.answer}" in replies
