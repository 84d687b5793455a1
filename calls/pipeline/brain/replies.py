"""What the builtin brain says: small talk, knowledge answers and honest don't-knows.

Pure functions over plain values, so the wording can be tested without a pipeline. Replies are
built only from templates, the persona's name, its knowledge and topics said as its questions
rephrased: the user's words are never repeated back (a speech recogniser's mistakes would be
read aloud, and echoing sounds like a broken bot). Phrasing varies with a deterministic seed
(persona, turn, intent), so a test sees the same reply every run.
"""

from __future__ import annotations

import enum
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from calls.pipeline.brain.knowledge import KnowledgeEntry, KnowledgeMatch, Verdict
from calls.pipeline.brain.topics import topic_phrase

# How many topics a "what can you do" or don't-know reply lists before saying "and more".
TOPICS_LISTED = 3


class Intent(enum.Enum):
    """What kind of turn the user took, before any knowledge lookup."""

    GREETING = "greeting"
    HOW_ARE_YOU = "how_are_you"
    THANKS = "thanks"
    IDENTITY = "identity"
    CAPABILITIES = "capabilities"
    GOODBYE = "goodbye"
    ACKNOWLEDGEMENT = "acknowledgement"
    QUESTION = "question"


_GREETING = re.compile(
    r"^(hi|hello|hey|hiya|howdy|greetings|good (morning|afternoon|evening|day)|yo|bonjour|hallo|hola)\b[\s,!.]*"
)
_PATTERNS: tuple[tuple[Intent, re.Pattern[str]], ...] = (
    (
        Intent.GOODBYE,
        re.compile(
            r"\b(bye|goodbye|see you|see ya|farewell|that'?s all|have a (nice|good|great) (day|one|evening))\b"
        ),
    ),
    (
        Intent.HOW_ARE_YOU,
        re.compile(r"\b(how are you|how'?s it going|how are things|how do you do|how have you been)\b"),
    ),
    (
        Intent.IDENTITY,
        re.compile(
            r"\b(who are you|what'?s your name|what is your name|who am i (talking|speaking) to|are you (a |an )?(bot|robot|human|real|ai|person))\b"
        ),
    ),
    (
        Intent.CAPABILITIES,
        re.compile(
            r"\b(what can you (do|help)|how can you help|what do you know|what (can|should|could) i ask|what are you (for|able))\b"
        ),
    ),
    (Intent.THANKS, re.compile(r"\b(thanks|thank you|thx|cheers|much appreciated|appreciate it)\b")),
    (
        Intent.ACKNOWLEDGEMENT,
        re.compile(
            r"^(ok|okay|great|cool|nice|perfect|alright|all right|got it|i see|good|awesome|fine|sure)\b[\s!.]*$"
        ),
    ),
)


@dataclass(frozen=True)
class PersonaProfile:
    """The parts of a persona replies are made of."""

    persona_id: str
    name: str
    greeting: str
    topics: tuple[str, ...]


def topics_from_knowledge(*, entries: Sequence[KnowledgeEntry]) -> tuple[str, ...]:
    """How each entry's question is said as a topic (see `topics.py`), in order, without repeats."""
    topics: list[str] = []
    for entry in entries:
        phrase = topic_phrase(entry.question)
        if phrase and phrase not in topics:
            topics.append(phrase)
    return tuple(topics)


@dataclass(frozen=True)
class UserTurn:
    """A classified user turn: its intent, the text left to answer, and whether it opened with a greeting."""

    intent: Intent
    remainder: str
    greeted: bool


def classify(*, text: str) -> UserTurn:
    """Classify `text`; a leading greeting is removed so "hi, do you deliver?" is a question."""
    normalised = re.sub(r"\s+", " ", text.lower().strip())
    remainder = _GREETING.sub("", normalised, count=1).strip(" ,!.?")
    greeted = remainder != normalised.strip(" ,!.?")
    for intent, pattern in _PATTERNS:
        if pattern.search(remainder):
            return UserTurn(intent=intent, remainder=remainder, greeted=greeted)
    if greeted and not remainder:
        return UserTurn(intent=Intent.GREETING, remainder="", greeted=True)
    return UserTurn(intent=Intent.QUESTION, remainder=remainder, greeted=greeted)


def choose(options: Sequence[str], *, key: str) -> str:
    """A deterministic pick: the same key gives the same phrasing in every process."""
    return options[zlib.crc32(key.encode()) % len(options)]


def _topic_list(topics: Sequence[str]) -> str:
    shown = list(topics[:TOPICS_LISTED])
    if len(topics) > TOPICS_LISTED:
        return f"{', '.join(shown)} and more"
    if len(shown) > 1:
        return f"{', '.join(shown[:-1])} and {shown[-1]}"
    return shown[0] if shown else ""


def _offer(profile: PersonaProfile, *, key: str) -> str:
    if not profile.topics:
        return choose(
            ("Is there anything else I can do for you?", "What else would you like to know?"), key=key
        )
    topics = _topic_list(profile.topics)
    return choose(
        (
            f"I can help with {topics}.",
            f"You can ask me about {topics}.",
            f"I know about {topics}, if that helps.",
        ),
        key=key,
    )


def opening_reply(*, profile: PersonaProfile) -> str:
    """What to say when asked to speak before the user has said anything."""
    if profile.greeting:
        return profile.greeting
    return f"Hello, I'm {profile.name}. How can I help you today?"


def small_talk_reply(*, intent: Intent, profile: PersonaProfile, turn: int) -> str:
    """The reply to a turn that needs no knowledge."""
    key = f"{profile.persona_id}:{turn}:{intent.value}"
    name = profile.name
    if intent is Intent.GREETING:
        return choose(
            (
                "Hello! How can I help you today?",
                f"Hi there, {name} here. What can I do for you?",
                "Hey! What would you like to know?",
                "Hello again! What can I help you with?",
            ),
            key=key,
        )
    if intent is Intent.HOW_ARE_YOU:
        return choose(
            (
                "I'm doing great, thanks for asking! How can I help you?",
                "Very well, thank you! What can I do for you today?",
            ),
            key=key,
        )
    if intent is Intent.THANKS:
        return choose(
            (
                "You're very welcome! Anything else?",
                "My pleasure. Is there anything else I can help with?",
                "Happy to help!",
            ),
            key=key,
        )
    if intent is Intent.IDENTITY:
        return f"I'm {name}, a virtual assistant. {_offer(profile, key=key)}"
    if intent is Intent.CAPABILITIES:
        lead = choose(("Good question!", "Happy to explain.", "Sure."), key=key)
        return f"{lead} {_offer(profile, key=key + ':offer')} Just ask."
    if intent is Intent.GOODBYE:
        return choose(
            (
                "Goodbye, and thanks for stopping by!",
                "Bye for now. Have a lovely day!",
                "Take care, and see you soon!",
            ),
            key=key,
        )
    # Intent.ACKNOWLEDGEMENT
    return choose(
        ("Great! Anything else I can help with?", "Perfect. What else would you like to know?"), key=key
    )


_OWN_INTERJECTION = re.compile(
    r"(yes|no|yep|nope|sure|absolutely|of course|definitely|certainly|sorry)\b", re.IGNORECASE
)


def knowledge_reply(
    *, match: KnowledgeMatch, profile: PersonaProfile, turn: int, greeted: bool = False
) -> str:
    """The reply to a question, from what retrieval found (or did not)."""
    key = f"{profile.persona_id}:{turn}:{match.verdict.value}"
    greeting = "Hi! " if greeted else ""
    if match.verdict is Verdict.ANSWER and match.entry is not None:
        lead = choose(("", "Sure! ", "Good question. ", "Of course. ", ""), key=key)
        if _OWN_INTERJECTION.match(match.entry.answer):
            lead = ""  # "Sure! Absolutely." says yes twice
        return f"{greeting}{lead}{match.entry.answer}"
    if match.verdict is Verdict.NOT_SURE and match.entry is not None:
        topic = topic_phrase(match.entry.question)
        lead = choose(
            (
                f"I'm not completely sure that's what you mean, but about {topic}: "
                if topic
                else "I'm not completely sure that's what you mean, but here's what I know: ",
                f"If you're asking about {topic}: " if topic else "If I understood you right: ",
            ),
            key=key,
        )
        return f"{greeting}{lead}{match.entry.answer}"
    apology = choose(
        (
            "I'm sorry, I don't know about that.",
            "Hmm, I'm afraid that's not something I know about.",
            "Sorry, I can't help with that one.",
        ),
        key=key,
    )
    return f"{greeting}{apology} {_offer(profile, key=key + ':offer')}"


# A streamed piece ends at a sentence end, or at a clause break once it is this long
# (characters): several pieces per answer, like an LLM's deltas, without one-word fragments.
STREAM_PIECE_MIN_CHARACTERS = 24
_PIECE_BOUNDARY = re.compile(r"(?P<sentence>(?<=[.!?…:])\s+)|(?P<clause>(?<=[,;])\s+)")


def sentences_for_streaming(text: str) -> list[str]:
    """Split a reply into pieces that concatenate back to `text` (each keeps its trailing space)."""
    pieces: list[str] = []
    start = 0
    for boundary in _PIECE_BOUNDARY.finditer(text):
        if boundary.end() >= len(text):
            break
        if boundary.group("clause") and boundary.start() - start < STREAM_PIECE_MIN_CHARACTERS:
            continue
        pieces.append(text[start : boundary.end()])
        start = boundary.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces
