"""Text rules: whether the words end a turn, are a backchannel, or are the persona's own echo."""

import re

# Short acknowledgements that do not take the turn while the persona speaks.
BACKCHANNELS = frozenset(
    {
        "ah", "aha", "alright", "got it", "hm", "hmm", "i see", "mhm", "mm", "mm hmm", "mmhm",
        "mmm", "oh", "ok", "okay", "right", "sure", "uh huh", "uhhuh", "yeah", "yep", "yes",
        "uh", "um", "cool", "great", "nice", "oh okay", "okay okay", "yeah yeah", "right right",
    }
)  # fmt: skip
_WORD = re.compile(r"[a-z']+")


# A turn whose last word is one of these is not over ("Can I order a cake for ..."). Only words
# that (almost) never end a sentence: "you", "is", "that" or "so" often do ("where are you").
DANGLING_WORDS = frozenset(
    {
        "a", "about", "an", "and", "as", "at", "because", "but", "by", "for", "from", "if",
        "in", "like", "my", "of", "or", "our", "than", "the", "to", "uh", "um", "with", "your",
        "i", "we", "their", "his", "her", "its", "into", "onto", "whether", "although",
    }
)  # fmt: skip
QUESTION_OPENERS = frozenset(
    {
        "what", "where", "when", "how", "who", "why", "which", "can", "could", "do", "does",
        "is", "are", "will", "would", "should", "may", "have", "has", "did",
    }
)  # fmt: skip

# Words that close a request or a statement ("... the manager please", "... thanks").
CLOSING_WORDS = frozenset({"please", "thanks"})
# A turn that is only one of these has not said anything yet: "Wait, do you deliver?" paused
# after "Wait," long enough for the turn to end, and the persona answered "wait" on its own.
PREFACES = frozenset(
    {
        "wait", "wait wait", "wait a second", "wait a minute", "hold on", "hold on a second",
        "hang on", "sorry", "actually", "well", "so", "excuse me", "um", "uh", "er", "oh wait",
        "no wait", "one second", "just a second", "okay so", "and", "but", "listen",
    }
)  # fmt: skip


def text_completeness(text: str) -> float | None:
    """A lexical guess that the words form a finished turn: 0.1 (dangling), 0.9 (a whole question).

    SmartTurn listens to prosody only; on flat or synthetic voices it misjudges whole questions.
    The words say something it cannot: a sentence ending in "for" or "and" is not over, and
    "what are your opening hours" or "I'd like to speak to the manager please" is, and "Wait,"
    or "Hold on," alone has not begun. None when the words say nothing either way.
    """
    words = normalized_words(text)
    if not words:
        return None
    if words[-1] in DANGLING_WORDS or " ".join(words) in PREFACES or trails_off(text):
        return 0.1
    if len(words) >= 3 and (words[0] in QUESTION_OPENERS or words[-1] in CLOSING_WORDS):
        return 0.9
    return None


def trails_off(text: str) -> bool:
    """Whether the recogniser wrote the words as trailing off: "My phone number is...", "I would like to m-".

    Whisper ends a sentence left hanging with an ellipsis, and a word cut off with a dash; a
    finished one with a full stop or a question mark. Measured on unfinished sentences spoken
    by espeak in three voices: an ellipsis or a dash after 13 of 45, a full stop or question
    mark after 31 (so a full stop is no sign of a finished turn); after all 36 finished ones,
    a full stop or question mark.
    """
    end = text.rstrip()
    return end.endswith(("...", "\u2026", "-", "\u2014"))


def turn_probability(acoustic: float, text: str) -> float:
    """SmartTurn's probability, averaged with the lexical guess when the words have one."""
    lexical = text_completeness(text)
    if lexical is None:
        return acoustic
    return round((acoustic + lexical) / 2, 4)


def normalized_words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("-", " "))


def is_backchannel(text: str) -> bool:
    """True for an acknowledgement ("mm-hmm", "okay", "right right") that should not interrupt."""
    words = normalized_words(text)
    if not words or len(words) > 3:
        return not words
    return " ".join(words) in BACKCHANNELS or all(word in BACKCHANNELS for word in words)


def is_echo(text: str, persona_words: list[str]) -> bool:
    """True when every word heard is one the persona has just said (its voice coming back)."""
    words = normalized_words(text)
    if not words or not persona_words:
        return False
    recent = set(normalized_words(" ".join(persona_words)))
    return all(word in recent for word in words)
