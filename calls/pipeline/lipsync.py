"""Lip sync: the synthesiser's IPA phoneme timings as mouth shapes, scheduled as the audio plays.

espeak-ng reports phonemes in IPA; the animator's table speaks espeak's ASCII mnemonics.
This maps one onto the other (a mouth only needs the rough class of each sound).
"""

from __future__ import annotations

from collections.abc import Iterable

from calls.pipeline.avatar.animator import SpeechEvent, phoneme_events

# IPA symbol → the espeak mnemonic with the same mouth shape. Plain ASCII letters (p, b, m, f,
# v, s, z, t, d, k, g, n, l, w, h, j, a, e, i, o, u) are the same in both and pass through.
IPA_TO_MNEMONIC = {
    "ə": "@",
    "ɚ": "3",
    "ɜ": "3",
    "ʌ": "V",
    "æ": "a",
    "ɑ": "A",
    "ɐ": "a",
    "ɒ": "0",
    "ɔ": "O",
    "ɛ": "E",
    "ɪ": "I",
    "ᵻ": "I",
    "ʊ": "U",
    "ʃ": "S",
    "ʒ": "Z",
    "θ": "T",
    "ð": "D",
    "ŋ": "N",
    "ɹ": "r",
    "ɾ": "t",
    "ɡ": "g",
    "ʔ": "t",
    "ɬ": "l",
    "ɫ": "l",
    "x": "h",
    "ç": "h",
    "ʎ": "j",
    "ɲ": "n",
    "ʁ": "r",
    "ʀ": "r",
    "y": "u",
    "ø": "o",
    "œ": "O",
}
# Marks with no mouth shape of their own.
_IGNORED = "ˈˌːˑ̃͡‿"


def mnemonic_for_ipa(symbol: str) -> str:
    """The espeak mnemonic for an IPA phoneme (first sound of a diphthong or affricate)."""
    cleaned = "".join(character for character in symbol if character not in _IGNORED).strip()
    if not cleaned or cleaned == "_":
        return "_"
    if cleaned.startswith(("tʃ", "ʧ")):
        return "tS"
    if cleaned.startswith(("dʒ", "ʤ")):
        return "dZ"
    first = cleaned[0]
    return IPA_TO_MNEMONIC.get(first, first)


def ipa_speech_events(
    phonemes: Iterable[tuple[float, str]], *, end_offset: float | None = None
) -> list[SpeechEvent]:
    """Timeline events for the animator from (offset seconds, IPA phoneme) pairs."""
    return phoneme_events(
        [(max(0.0, offset), mnemonic_for_ipa(symbol)) for offset, symbol in phonemes], end_offset=end_offset
    )
