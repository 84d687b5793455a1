"""What a persona's language model is built from: its own questions, greeting and name, and small talk.

The offline recogniser decodes each utterance twice, once with pocketsphinx's general en-US
model and once with a small model of what people say to *this* persona (see
`sphinx_worker`). This module writes that model's training text, one normalised sentence per
line, from plain configuration values; workers build the model from the text itself, and the
text's hash names the model in their caches. Pure functions, no pocketsphinx.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

# The persona's own questions and small talk outweigh its answers' wording in the model: the
# answers only lend their vocabulary ("do you have cardamom buns").
QUESTION_WEIGHT = 3
ANSWER_WEIGHT = 1

# What callers say to any persona the built-in brain understands (`brain/replies.py` intents),
# and the usual ways of asking about its topics.
CONVERSATIONAL_PHRASES: tuple[str, ...] = (
    "hello",
    "hi",
    "hi there",
    "hey",
    "hello there",
    "good morning",
    "good afternoon",
    "good evening",
    "how are you",
    "how are you doing",
    "how's it going",
    "how have you been",
    "i'm fine thanks",
    "thank you",
    "thank you very much",
    "thanks",
    "thanks a lot",
    "thanks for your help",
    "thank you for your help",
    "much appreciated",
    "goodbye",
    "bye",
    "bye bye",
    "see you",
    "see you later",
    "that's all",
    "that's all thanks",
    "have a nice day",
    "have a good day",
    "yes",
    "yes please",
    "no",
    "no thanks",
    "no thank you",
    "okay",
    "ok",
    "all right",
    "great",
    "cool",
    "perfect",
    "sure",
    "got it",
    "i see",
    "right",
    "yeah",
    "mm-hmm",
    "uh huh",
    "sorry",
    "excuse me",
    "wait",
    "stop",
    "hold on",
    "one moment",
    "can you repeat that",
    "could you repeat that please",
    "say that again",
    "what did you say",
    "sorry i didn't catch that",
    "can you say that again",
    "who are you",
    "what's your name",
    "what is your name",
    "are you a robot",
    "are you a real person",
    "what can you do",
    "how can you help",
    "what can i ask you",
    "what do you know",
    "can you help me",
    "i have a question",
    "i would like to know",
    "can i ask something",
    "tell me more",
    "what about",
    "and what about",
    "how much is it",
    "how much does it cost",
    "when are you open",
    "are you open today",
    "are you open on sunday",
    "what time do you close",
    "what time do you open",
    "where are you located",
    "where can i find you",
    "what's the address",
    "do you have",
    "can i",
    "is it possible",
    "i'd like to order",
    "i want to",
    "can i speak to someone",
    "can i talk to a person",
)

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# Days come up with any business: opening days, deliveries, bookings.
DAY_PHRASES: tuple[str, ...] = tuple(
    phrase
    for day in WEEKDAYS
    for phrase in (f"are you open on {day}", f"what about {day}", f"on {day}", f"is it possible on {day}")
)

# Questions about the things a persona's answers name: each noun phrase of the answers ("the
# cardamom buns", "a seasonal fruit tart") goes into TEMPLATES_PER_PHRASE of these, in turn.
TOPIC_TEMPLATES: tuple[str, ...] = (
    "do you have {}",
    "how much is {}",
    "what about {}",
    "is there {}",
    "how much does {} cost",
    "can i get {}",
    "tell me about {}",
    "i would like {}",
    "what is {}",
    "do you do {}",
    "can i have {}",
    "i'm looking for {}",
)
TEMPLATES_PER_PHRASE = 0
# Longest noun phrase taken (words, from its end: "sourdough country loaf", "country loaf").
PHRASE_WORDS = 3
# Words that end or break a noun phrase.
FUNCTION_WORDS = frozenset(
    """a an the our your my their its his her this that these those some any all each every no
    and or but so if then than as of to in on at by for from with within without over under
    between behind next near about into onto up down out off around after before until during
    is are was were be been being am do does did done have has had having can could will would
    shall should may might must we you i it they he she them us me him there here what which who
    whom whose when where why how not also too very just only more most less much many few
    we're you're it's there's they're we'll we've don't can't isn't aren't we'd i'm
    yes no please thanks thank free extra full same right one two three four five six seven eight
    nine ten eleven twelve hundred am pm minutes away served need needs made take takes serves
    costs cost answer answers make makes open closed quickest""".split()
)
ARTICLES = ("a", "an", "the", "our", "some", "any")

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")
_TOKEN = re.compile(r"[a-z0-9']+")
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(number: int) -> str:
    """0-999 as spoken words ("forty two"); larger numbers are left as digits (then dropped)."""
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if number < 1000:
        hundreds, rest = divmod(number, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")
    return str(number)


def normalised_sentence(text: str) -> str:
    """Lower case words as a recogniser would write them: no punctuation, numbers spelled out."""
    text = unicodedata.normalize("NFKD", text)  # "café" → "cafe"
    text = "".join(character for character in text if not unicodedata.combining(character))
    text = (
        text.lower().replace("&", " and ").replace("-", " ").replace("\u2019", "'").replace("%", " percent")
    )
    words: list[str] = []
    for token in _TOKEN.findall(text):
        token = token.strip("'")
        if not token:
            continue
        if token.isdigit():
            words.extend(number_words(int(token)).split())
        elif not any(character.isdigit() for character in token):
            words.append(token)
    return " ".join(word for word in words if not word.isdigit())


def sentences(text: str) -> list[str]:
    """`text` split into normalised sentences (empty ones dropped)."""
    return [line for part in _SENTENCE_END.split(text or "") if (line := normalised_sentence(part))]


def noun_phrases(sentence: str) -> list[str]:
    """The noun phrases of a normalised sentence, with the article before each, if any."""
    words = sentence.split()
    stop = FUNCTION_WORDS | set(WEEKDAYS) | {f"{day}s" for day in WEEKDAYS} | set(_ONES) | set(_TENS)
    phrases: list[str] = []
    run: list[str] = []
    for index, word in enumerate([*words, "."]):
        if word not in stop and word != ".":
            run.append(word)
            continue
        if run:
            before = words[index - len(run) - 1] if index - len(run) - 1 >= 0 else ""
            article = f"{before} " if before in ARTICLES else ""
            for length in range(1, min(PHRASE_WORDS, len(run)) + 1):
                phrase = " ".join(run[-length:])
                phrases.append(article + phrase if length == len(run) else phrase)
            run = []
    return phrases


def topic_questions(answers: Iterable[str]) -> list[str]:
    """Questions about what the answers name, from `TOPIC_TEMPLATES`."""
    questions: list[str] = []
    seen: set[str] = set()
    turn = 0
    for answer in answers:
        for sentence in sentences(answer):
            for phrase in noun_phrases(sentence):
                if phrase in seen:
                    continue
                seen.add(phrase)
                for _ in range(TEMPLATES_PER_PHRASE):
                    questions.append(TOPIC_TEMPLATES[turn % len(TOPIC_TEMPLATES)].format(phrase))
                    turn += 1
    return questions


def persona_corpus(
    *,
    name: str,
    greeting: str = "",
    knowledge: Sequence[tuple[str, str]] = (),
    phrases: Iterable[str] = (),
) -> str:
    """The training text of a persona's language model: one sentence per line."""
    lines: list[str] = []
    questions = [question for question, _ in knowledge] + list(phrases)
    for question in questions:
        lines.extend(sentences(question) * QUESTION_WEIGHT)
    for _, answer in knowledge:
        lines.extend(sentences(answer) * ANSWER_WEIGHT)
    lines.extend(topic_questions(answer for _, answer in knowledge))
    lines.extend(sentences(greeting))
    lines.extend(CONVERSATIONAL_PHRASES)
    lines.extend(DAY_PHRASES)
    persona_name = normalised_sentence(name)
    if persona_name:
        lines.extend(
            [
                persona_name,
                f"hi {persona_name}",
                f"hello {persona_name}",
                f"thank you {persona_name}",
                f"are you {persona_name}",
                f"is this {persona_name}",
            ]
        )
    return "\n".join(lines) + "\n"


def corpus_key(corpus: str) -> str:
    """The name of the model built from `corpus` (workers cache models by it)."""
    return hashlib.sha256(corpus.encode()).hexdigest()[:16]
