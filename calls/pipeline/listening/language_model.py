"""Inside a recogniser worker: a persona's language model, built from its corpus text.

`pocketsphinx.lm.ArpaBoLM` turns the corpus (`corpus.persona_corpus`) into a small trigram
ARPA model in a few milliseconds. Its words need pronunciations: those in the bundled
cmudict have them; a word that is not there (a name, "lindenguest") gets one from a simple
fallback: split into two or three dictionary words ("linden" + "guest"), else spelled with
letter-to-sound rules good enough for short names. Words that still get nothing are dropped
from the corpus. Light module: imported by worker processes only with pocketsphinx present.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Callable

# Parts a compound is split into at most, and the shortest part tried (in letters).
COMPOUND_PARTS = 3
COMPOUND_PART_MIN_LETTERS = 2

# Probability mass the persona model's n-grams give to backing off (ArpaBoLM's default 0.5):
# more lets sentences the persona's text does not hold through ("when do you open ...").
# bench/recognition_tune.py, persona model alone on the dev set's in-domain sentences:
# 0.3 38 %, 0.5 37 %, 0.7 36 %, 0.9 36 % WER; 0.7 lost "how can i pay" in test_listening.
DISCOUNT_MASS = 0.5

# Letter-to-sound rules for words cmudict lacks: (spelling, phones), longest spelling first.
# Crude (English spelling is not regular), but it gives short names a usable pronunciation.
_LETTER_SOUNDS: tuple[tuple[str, str], ...] = tuple(
    sorted(
        {
            "tion": "SH AH N",
            "sion": "ZH AH N",
            "ough": "AO",
            "igh": "AY",
            "sch": "S K",
            "tch": "CH",
            "dge": "JH",
            "ph": "F",
            "th": "TH",
            "sh": "SH",
            "ch": "CH",
            "ck": "K",
            "ng": "NG",
            "qu": "K W",
            "wh": "W",
            "ee": "IY",
            "ea": "IY",
            "oo": "UW",
            "ou": "AW",
            "ow": "OW",
            "oi": "OY",
            "oy": "OY",
            "ai": "EY",
            "ay": "EY",
            "au": "AO",
            "aw": "AO",
            "ie": "IY",
            "ei": "EY",
            "er": "ER",
            "ar": "AA R",
            "or": "AO R",
            "ir": "ER",
            "ur": "ER",
            "a": "AE",
            "b": "B",
            "c": "K",
            "d": "D",
            "e": "EH",
            "f": "F",
            "g": "G",
            "h": "HH",
            "i": "IH",
            "j": "JH",
            "k": "K",
            "l": "L",
            "m": "M",
            "n": "N",
            "o": "AA",
            "p": "P",
            "q": "K",
            "r": "R",
            "s": "S",
            "t": "T",
            "u": "AH",
            "v": "V",
            "w": "W",
            "x": "K S",
            "y": "Y",
            "z": "Z",
        }.items(),
        key=lambda rule: -len(rule[0]),
    )
)
_LETTERS = re.compile(r"^[a-z]+$")


def letter_to_sound(word: str) -> str | None:
    """A rough pronunciation from spelling (None for anything but plain letters)."""
    if not _LETTERS.match(word):
        return None
    phones: list[str] = []
    at = 0
    while at < len(word):
        if word[at] == "e" and at == len(word) - 1 and len(word) > 2:
            break  # a silent final e
        for spelling, sounds in _LETTER_SOUNDS:
            if word.startswith(spelling, at):
                if not (phones and phones[-1] == sounds):  # doubled letters sound once
                    phones.extend(sounds.split())
                at += len(spelling)
                break
    return " ".join(phones) or None


def compound_pronunciation(
    word: str, lookup: Callable[[str], str | None], parts: int = COMPOUND_PARTS
) -> str | None:
    """The pronunciation of `word` as dictionary words written together, if it is one."""
    whole = lookup(word)
    if whole:
        return whole
    if parts <= 1:
        return None
    for split in range(len(word) - COMPOUND_PART_MIN_LETTERS, COMPOUND_PART_MIN_LETTERS - 1, -1):
        head = lookup(word[:split])
        if head:
            tail = compound_pronunciation(word[split:], lookup, parts - 1)
            if tail:
                return f"{head} {tail}"
    return None


# British spellings cmudict lacks, as the American ones it has: (ending, replacement).
_AMERICAN_SPELLINGS: tuple[tuple[str, str], ...] = (
    ("ours", "ors"),
    ("our", "or"),
    ("ourite", "orite"),
    ("ourites", "orites"),
    ("tres", "ters"),
    ("tre", "ter"),
    ("ise", "ize"),
    ("ised", "ized"),
    ("ises", "izes"),
    ("ising", "izing"),
    ("ogue", "og"),
)


def american_pronunciation(word: str, lookup: Callable[[str], str | None]) -> str | None:
    """The pronunciation of a British spelling ("flavours", "kilometres") from the American one."""
    for ending, replacement in _AMERICAN_SPELLINGS:
        if word.endswith(ending):
            phones = lookup(word[: -len(ending)] + replacement)
            if phones:
                return phones
    return None


def pronunciation(word: str, lookup: Callable[[str], str | None]) -> str | None:
    """cmudict's pronunciation, an American spelling's, a compound's, or a letter-to-sound guess."""
    return (
        american_pronunciation(word, lookup) or compound_pronunciation(word, lookup) or letter_to_sound(word)
    )


def arpa_text(corpus: str) -> str:
    """A trigram ARPA model of `corpus` (one sentence per line, words separated by spaces)."""
    from pocketsphinx.lm import ArpaBoLM

    model = ArpaBoLM(text=corpus, add_start=True, discount_mass=DISCOUNT_MASS)
    model.compute()
    out = io.StringIO()
    model.write(out)
    return out.getvalue()


def persona_vocabulary(corpus: str, lookup: Callable[[str], str | None]) -> tuple[str, dict[str, str]]:
    """The corpus restricted to pronounceable words, and the pronunciations cmudict lacks."""
    added: dict[str, str] = {}
    dropped: set[str] = set()
    for word in set(corpus.split()):
        if lookup(word):
            continue
        phones = pronunciation(word, lookup)
        if phones:
            added[word] = phones
        else:
            dropped.add(word)
    if dropped:
        corpus = "\n".join(
            " ".join(w for w in line.split() if w not in dropped) for line in corpus.splitlines()
        )
    return corpus, added


def arpa_file(corpus: str, directory: str) -> str:
    """Write the ARPA model of `corpus` into `directory`; returns its path."""
    handle, path = tempfile.mkstemp(suffix=".arpa", dir=directory)
    with os.fdopen(handle, "w") as out:
        out.write(arpa_text(corpus))
    return path
