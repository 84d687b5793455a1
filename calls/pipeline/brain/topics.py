"""How a knowledge question is said as a topic: "What is on the menu?" becomes "what's on the menu".

A topic is the entry's own question turned into what follows "I can help with" or "If you're
asking about": an embedded question ("how much things cost", "whether we deliver", "where we
are"), a noun phrase ("our opening hours", "parking") or a gerund ("ordering a cake"), seen
from the persona's side (the visitor's "your" is the persona's "our"). Only question shapes
the rules below know are rephrased; any other gives no topic, never a row of keywords.
"""

from __future__ import annotations

import re

# A longer topic is left out: a spoken list of three such would be a lecture.
TOPIC_MAX_WORDS = 10

_BE = frozenset({"is", "are", "am", "was", "were"})
_MODALS = frozenset({"can", "could", "will", "would", "should", "may", "might", "must", "shall"})
_DO = frozenset({"do", "does", "did"})
_AUXILIARIES = _BE | _MODALS | _DO
_WH_WORDS = frozenset({"what", "where", "when", "how", "why", "who", "which", "whose"})
# Words that can open a subject that is not a pronoun.
_DETERMINERS = frozenset(
    {"the", "a", "an", "your", "my", "our", "this", "that", "these", "those", "any", "some", "each", "every"}
)
# Subjects of one word: the personal pronouns and the indefinite ones.
_PRONOUN_SUBJECTS = frozenset(
    {
        "i",
        "you",
        "we",
        "they",
        "it",
        "he",
        "she",
        "this",
        "that",
        "anything",
        "anyone",
        "everything",
        "something",
    }
)
_PLURAL_SUBJECTS = frozenset({"we", "you", "they"})
# Visitor's point of view → the persona's. "you" is settled by its place (subject or object).
_PERSPECTIVE = {
    "i": "you",
    "me": "you",
    "my": "your",
    "mine": "yours",
    "myself": "yourself",
    "i'm": "you're",
    "i've": "you've",
    "i'd": "you'd",
    "we": "you",
    "us": "you",
    "our": "your",
    "ours": "yours",
    "your": "our",
    "yours": "ours",
    "yourself": "ourselves",
    "yourselves": "ourselves",
    "you're": "we're",
    "you've": "we've",
}
# After these a "you" starts a clause, so it is a subject ("when you deliver" → "when we deliver").
_CLAUSE_OPENERS = frozenset(
    {"when", "if", "that", "and", "or", "because", "before", "after", "while", "until", "unless", "where"}
)
# Words that start the predicate of "is/are <subject> <predicate>" ("is the café accessible").
_PREDICATES = frozenset(
    {"open", "closed", "available", "free", "ready", "possible", "safe", "suitable", "vegan", "allowed"}
)
_PREDICATE_ENDINGS = ("ed", "able", "ible")
# Verbs that may follow a noun subject after "does" or a modal ("how long does a repair take").
_VERBS = frozenset(
    """take cost open close start end work include need last come go run mean require stop serve
    offer happen contain apply cover charge accept arrive get have do make use keep change taste
    finish begin leave stay allow sell ship deliver expire be""".split()
)
# "Do you have X?" / "Is there X?" are asked about X itself.
_HAVE = frozenset({"have", "has"})
_CONTRACTED_IS = re.compile(r"^(what|where|when|how|who|which)'s$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[?.!])\s+")


def topic_phrase(question: str) -> str | None:
    """The first of the question's sentences that can be rephrased as a topic, or None."""
    for sentence in _SENTENCE_END.split(question.strip()):
        words = _words(sentence)
        phrase = _rephrased(words) if words else None
        if phrase and len(phrase.split()) <= TOPIC_MAX_WORDS:
            return phrase
    return None


def _words(sentence: str) -> list[str]:
    words = sentence.strip().rstrip("?.! ").split()
    if words and (contracted := _CONTRACTED_IS.match(words[0])):
        words[:1] = [contracted.group(1), "is"]
    if words and words[0].lower() != "i":  # the opening capital is not a proper noun's
        words[0] = words[0].lower()
    return words


def _bare(word: str) -> str:
    return word.lower().strip(",;:")


def _perspective(words: list[str], *, subject_at: int | None = None) -> list[str]:
    """The words as the persona says them; `subject_at` is where a subject "you" stands."""
    turned = []
    for position, word in enumerate(words):
        bare = _bare(word)
        trailing = word[len(word.rstrip(",;:")) :]
        if bare == "you":
            opens_clause = position == 0 or _bare(words[position - 1]) in _CLAUSE_OPENERS
            replacement = "we" if position == subject_at or opens_clause else "us"
        else:
            replacement = _PERSPECTIVE.get(bare, "")
        turned.append(replacement + trailing if replacement else word)
    return turned


def _be_for(subject: str, original: str) -> str:
    past = original in {"was", "were"}
    if subject.lower() in _PLURAL_SUBJECTS:
        return "were" if past else "are"
    return original if original not in {"am"} else "is"


def _third_person(verb: str) -> str:
    irregular = {"have": "has", "do": "does", "go": "goes", "be": "is"}
    if verb in irregular:
        return irregular[verb]
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if re.search(r"[^aeiou]y$", verb):
        return verb[:-1] + "ies"
    return verb + "s"


def _gerund(verb: str) -> str:
    if verb in {"be", "see", "flee", "agree"} or verb.endswith(("ee", "ye", "oe")):
        return verb + "ing"
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith("e"):
        return verb[:-1] + "ing"
    if re.fullmatch(r"[^aeiou]*[aeiou][^aeiouwxy]", verb):  # one syllable, consonant-vowel-consonant
        return verb + verb[-1] + "ing"
    return verb + "ing"


def _subject_length(rest: list[str], *, verb_follows: bool) -> int | None:
    """How many of `rest`'s words are the subject (None: the boundary cannot be told)."""
    first = _bare(rest[0])
    if first in _PRONOUN_SUBJECTS:
        return 1
    start = 2 if first in _DETERMINERS else 1
    for position in range(start, len(rest)):
        word = _bare(rest[position])
        if verb_follows and word in _VERBS:
            return position
        if not verb_follows and (word in _PREDICATES or word.endswith(_PREDICATE_ENDINGS)):
            return position
    return None


def _joined(words: list[str]) -> str:
    return " ".join(words)


def _rephrased(words: list[str]) -> str | None:
    first = _bare(words[0])
    if first in _WH_WORDS:
        return _wh_rephrased(words)
    if first in _AUXILIARIES:
        return _yes_no_rephrased(words)
    return None


def _wh_rephrased(words: list[str]) -> str | None:
    """ "How much do things cost" → "how much things cost"; "Where are you" → "where we are"."""
    auxiliary_at = next(
        (position for position in range(1, min(len(words), 5)) if _bare(words[position]) in _AUXILIARIES),
        None,
    )
    if auxiliary_at is None:  # the wh-word is the subject: "who makes the cakes" keeps its order
        return _joined(_perspective(words)) if _bare(words[0]) in {"who", "what", "which"} else None
    wh, auxiliary, rest = words[:auxiliary_at], _bare(words[auxiliary_at]), words[auxiliary_at + 1 :]
    if not rest:
        return None
    if auxiliary in _BE:
        if wh == ["what"] and _bare(rest[0]) in _DETERMINERS:
            return _joined(_perspective(rest))  # "what are your opening hours" → "our opening hours"
        if _bare(rest[0]) not in _PRONOUN_SUBJECTS and _bare(rest[0]) not in _DETERMINERS:
            if not rest[0][:1].isupper() and len(wh) == 1 and wh[0] in {"what", "who", "which"}:
                # The wh-word is the subject: "what is on the menu" keeps its order.
                verb = "what's" if wh[0] == "what" and auxiliary == "is" else f"{wh[0]} {auxiliary}"
                return _joined([verb, *_perspective(rest)])
        length = _subject_length(rest, verb_follows=False)
        if length is None:  # "where is the nearest stop" → "where the nearest stop is"
            if wh in (["why"], ["how"]):  # "why is my bike making a noise": no place for "is"
                return None
            subject, predicate = rest, []
        else:
            subject, predicate = rest[:length], rest[length:]
        be = _be_for(_perspective(subject, subject_at=0)[0], auxiliary) if len(subject) == 1 else auxiliary
        return _joined([*wh, *_perspective(subject, subject_at=0), be, *_perspective(predicate)])
    if auxiliary == "did":
        return None
    if auxiliary in _MODALS or auxiliary == "does":
        length = _subject_length(rest, verb_follows=True)
        if length is None:
            # "who does the repairs": "does" is the verb and the wh-word the subject.
            if auxiliary == "does" and wh[0] in {"who", "what", "which"}:
                return _joined([*wh, "does", *_perspective(rest)])
            return None
        subject, predicate = rest[:length], rest[length:]
        if auxiliary == "does":
            if not predicate:
                return None
            predicate = [_third_person(_bare(predicate[0])), *predicate[1:]]
            return _joined([*wh, *_perspective(subject, subject_at=0), *_perspective(predicate)])
        return _joined([*wh, *_perspective(subject, subject_at=0), auxiliary, *_perspective(predicate)])
    # "do": dropped, the verb keeps its form ("how much do things cost" → "how much things cost").
    return _joined([*wh, *_perspective(rest, subject_at=0)])


def _yes_no_rephrased(words: list[str]) -> str | None:
    """ "Do you deliver" → "whether we deliver"; "Is there parking" → "parking"; "Can I order a
    cake" → "ordering a cake"."""
    auxiliary, rest = _bare(words[0]), words[1:]
    if not rest:
        return None
    subject_word = _bare(rest[0])
    if auxiliary in {"is", "are"} and subject_word == "there" and len(rest) > 1:
        return _joined(_perspective(rest[1:]))
    if auxiliary in {"do", "does"} and subject_word == "you" and len(rest) > 2 and _bare(rest[1]) in _HAVE:
        return _joined(_perspective(rest[2:]))
    if auxiliary == "did":
        return None
    if auxiliary in {"can", "could", "may"} and subject_word in {"i", "we"} and len(rest) > 1:
        verb = _bare(rest[1])
        return _joined([_gerund(verb), *_perspective(rest[2:])])
    if auxiliary == "do":
        return _joined(["whether", *_perspective(rest, subject_at=0)])
    if auxiliary in _BE:
        length = _subject_length(rest, verb_follows=False)
        if length is None:
            return None
        subject, predicate = rest[:length], rest[length:]
        turned = _perspective(subject, subject_at=0)
        be = _be_for(turned[0], auxiliary) if len(subject) == 1 else auxiliary
        return _joined(["whether", *turned, be, *_perspective(predicate)])
    length = _subject_length(rest, verb_follows=True)
    if length is None:
        return None
    subject, predicate = rest[:length], rest[length:]
    if not predicate:
        return None
    if auxiliary == "does":
        predicate = [_third_person(_bare(predicate[0])), *predicate[1:]]
        return _joined(["whether", *_perspective(subject, subject_at=0), *_perspective(predicate)])
    return _joined(["whether", *_perspective(subject, subject_at=0), auxiliary, *_perspective(predicate)])
