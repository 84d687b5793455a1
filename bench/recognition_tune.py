"""Tuning the offline recogniser on its development set, offline and faster than real time.

Each sentence of `bench/recognition_dev.py` (or of the held-out bench sets) is spoken by
espeak-ng with each of the dev voices, laid over room noise, resampled to 16 kHz as the
transport does, and cut where `SphinxSTTService` would hand it to a worker (its pre-roll
before the VAD's start, up to the VAD's stop). The audio is cached (`--cache`). Both decoders
of `sphinx_worker` (built by its own functions, with its settings) decode every utterance in
this process, fed 0.1 s at a time, and the choice rule picks; the general decoder's results
are cached per setting, since it is the slow one. Prints WER per set for the persona model
alone, the general model alone, and the choice.

    python bench/recognition_tune.py [--set dev|bench|all] [--persona lw=8 --persona wip=0.2]
        [--general lw=9] [--worker PERSONA_FLOOR=0.7] [--corpus QUESTION_WEIGHT=4] [-v]

`--persona`/`--general` add pocketsphinx options to that decoder; `--worker`/`--corpus`/`--lm`
override a constant of `sphinx_worker`, `corpus` or `language_model` (a Python literal).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.recognition_dev import DEV_GENERAL, DEV_IN_DOMAIN, DEV_VOICES  # noqa: E402
from bench.voice_loop import GENERAL, IN_DOMAIN, word_errors  # noqa: E402

BENCH_VOICES = (("en-us", 160),)
CHUNK_BYTES = 3200  # 0.1 s at 16 kHz


def sets(which: str) -> list[tuple[str, list[str], tuple[tuple[str, int], ...]]]:
    chosen = []
    if which in ("dev", "all"):
        chosen += [("dev in-domain", DEV_IN_DOMAIN, DEV_VOICES), ("dev general", DEV_GENERAL, DEV_VOICES)]
    if which in ("bench", "all"):
        chosen += [("bench in-domain", IN_DOMAIN, BENCH_VOICES), ("bench general", GENERAL, BENCH_VOICES)]
    return chosen


async def utterance_pcm(text: str, voice: str, rate: int, cache: Path) -> bytes:
    """16 kHz int16 audio of `text` as a worker receives it for one utterance (cached)."""
    key = hashlib.sha256(f"{text}|{voice}|{rate}".encode()).hexdigest()[:20]
    path = cache / f"{key}.pcm"
    if path.exists():
        return path.read_bytes()
    from calls.pipeline.listening.providers import PRE_ROLL_SECONDS, SAMPLE_RATE
    from tests.fakes.spoken import (
        RATE,
        VAD_START_AFTER_SECONDS,
        VAD_STOP_AFTER_SECONDS,
        at_pipeline_rate,
        spoken_pcm,
        with_room,
    )

    lead = 0.6
    speech = await spoken_pcm(text, voice=voice, rate_wpm=rate)
    pcm = at_pipeline_rate(with_room(speech, lead_seconds=lead, tail_seconds=0.8))
    start = lead + VAD_START_AFTER_SECONDS - PRE_ROLL_SECONDS
    stop = lead + speech.size / RATE + VAD_STOP_AFTER_SECONDS
    cut = pcm[int(start * SAMPLE_RATE) * 2 : int(stop * SAMPLE_RATE) * 2]
    path.write_bytes(cut)
    return cut


def literal(value: str):
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def pairs(items: list[str]) -> dict:
    return {key: literal(value) for key, value in (item.split("=", 1) for item in items)}


def decode(decoder, pcm: bytes, cmn: str):
    from calls.pipeline.listening.sphinx_worker import _result

    decoder.set_cmn(cmn)
    decoder.start_utt()
    for at in range(0, len(pcm), CHUNK_BYTES):
        decoder.process_raw(pcm[at : at + CHUNK_BYTES], full_utt=False)
    decoder.end_utt()
    return _result(decoder)


def warm_cmn(general, voice: str, rate: int, cache: Path, general_cache: dict) -> str:
    """The cepstral mean after a first "Hello." in this voice (cached with the general results)."""
    from calls.pipeline.listening import sphinx_worker

    key = f"Hello.|{voice}|{rate}|"
    if key not in general_cache:
        decode(
            general, asyncio.run(utterance_pcm("Hello.", voice, rate, cache)), sphinx_worker.SPEECH_CMN_INIT
        )
        general_cache[key] = general.get_cmn()
    return general_cache[key]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", default="dev", choices=("dev", "bench", "all"))
    parser.add_argument("--persona", action="append", default=[], help="persona decoder option, e.g. wip=0.2")
    parser.add_argument("--general", action="append", default=[], help="general decoder option")
    parser.add_argument("--worker", action="append", default=[], help="sphinx_worker constant")
    parser.add_argument("--corpus", action="append", default=[], help="corpus constant")
    parser.add_argument("--lm", action="append", default=[], help="language_model constant")
    parser.add_argument("--cache", default="/tmp/parley-recognition-dev", help="audio and general results")
    parser.add_argument("-v", "--verbose", action="store_true", help="every utterance")
    parser.add_argument("--errors", action="store_true", help="utterances with errors only")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("PARLEY_DATA_DIR", tempfile.mkdtemp(prefix="parley-tune-"))
    from bench.recognition import demo_persona
    from calls.pipeline.listening import corpus as corpus_module
    from calls.pipeline.listening import language_model, sphinx_worker

    for module, overrides in (
        (sphinx_worker, args.worker),
        (corpus_module, args.corpus),
        (language_model, args.lm),
    ):
        for key, value in pairs(overrides).items():
            assert hasattr(module, key), f"{module.__name__} has no {key}"
            setattr(module, key, value)
    persona_options, general_options = pairs(args.persona), pairs(args.general)

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    from pocketsphinx import Decoder

    name, greeting, knowledge, phrases = demo_persona()
    text = corpus_module.persona_corpus(name=name, greeting=greeting, knowledge=knowledge, phrases=phrases)
    general = sphinx_worker.general_decoder(Decoder, **general_options)
    sphinx_worker.Recogniser._warm(general)
    persona = sphinx_worker.persona_decoder(
        Decoder, text, general.lookup_word, tempfile.mkdtemp(prefix="parley-tune-lm-"), **persona_options
    )
    sphinx_worker.Recogniser._warm(persona)
    general_key = hashlib.sha256(
        json.dumps(
            [sorted(general_options.items()), sphinx_worker.GENERAL_OPTIONS, sphinx_worker.SPEECH_CMN_INIT],
            default=str,
        ).encode()
    ).hexdigest()[:16]
    general_cache_path = cache / f"general-{general_key}.json"
    general_cache = json.loads(general_cache_path.read_text()) if general_cache_path.exists() else {}

    started = time.perf_counter()
    persona_seconds = general_seconds = audio_seconds = 0.0
    summary = []
    rows: list[list] = []  # every utterance's two hypotheses: cache/last-run.json (choice rule studies)
    for label, sentences, voices in sets(args.set):
        counts = {"persona": [0, 0], "general": [0, 0], "chosen": [0, 0]}
        picked_general = 0
        for voice, rate in voices:
            # As in a call: the cepstral mean carried from utterance to utterance, the first
            # (not scored) a greeting.
            cmn = warm_cmn(general, voice, rate, cache, general_cache)
            for sentence in sentences:
                pcm = asyncio.run(utterance_pcm(sentence, voice, rate, cache))
                audio_seconds += len(pcm) / 32000
                at = time.perf_counter()
                heard_persona = decode(persona, pcm, cmn)
                persona_seconds += time.perf_counter() - at
                key = f"{sentence}|{voice}|{rate}|{cmn}"
                if key not in general_cache:
                    at = time.perf_counter()
                    result = decode(general, pcm, cmn)
                    general_seconds += time.perf_counter() - at
                    after = general.get_cmn() if len(pcm) / 32000 >= sphinx_worker.CMN_MIN_SECONDS else cmn
                    general_cache[key] = [result.text, result.confidence, after]
                *heard, cmn = general_cache[key]
                heard_general = sphinx_worker.Decoded(*heard)
                chosen, model = sphinx_worker.choose(heard_persona, heard_general)
                rows.append(
                    [
                        label,
                        voice,
                        rate,
                        sentence,
                        heard_persona.text,
                        heard_persona.confidence,
                        heard_general.text,
                        heard_general.confidence,
                    ]
                )
                picked_general += model == "general"
                wrong = {}
                for which, heard in (
                    ("persona", heard_persona.text),
                    ("general", heard_general.text),
                    ("chosen", chosen),
                ):
                    errors, total = word_errors(sentence, heard)
                    counts[which][0] += errors
                    counts[which][1] += total
                    wrong[which] = errors
                if args.verbose or (args.errors and wrong["chosen"]):
                    print(
                        f"{label:15} {voice:8} {rate} {wrong['chosen']} {sentence!r} → {chosen!r} ({model})\n"
                        f"{'':15} persona {heard_persona.text!r} {heard_persona.confidence:.2f}"
                        f"  general {heard_general.text!r} {heard_general.confidence:.2f}"
                    )
        general_cache_path.write_text(json.dumps(general_cache))
        rates = {which: 100 * errors / total for which, (errors, total) in counts.items()}
        summary.append(
            f"{label:15} WER chosen {rates['chosen']:5.1f} %  (persona alone {rates['persona']:5.1f} %,"
            f" general alone {rates['general']:5.1f} %; general chosen {picked_general}/{len(sentences) * len(voices)})"
        )
    (cache / "last-run.json").write_text(json.dumps(rows))
    print("\n".join(summary))
    print(
        f"persona decoding {persona_seconds / audio_seconds:.3f} x real time"
        + (f", general {general_seconds / audio_seconds:.3f}" if general_seconds else ", general cached")
        + f"; {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
