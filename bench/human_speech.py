"""Recordings of real human English speech with exact reference texts, for word error rate.

Nothing here is committed: `human_utterances()` fetches pinned packages from the package
registries (pip, npm, apt-get) into a cache directory (default `var/bench-cache/human-speech`,
git-ignored), checks each archive's SHA-256, pulls out the audio, decodes it with PyAV,
resamples it to 16 kHz mono int16 with soxr and, where a recording holds several phrases,
splits it at its pauses. Later runs reuse the cache and need no network.

Sources (every recording is a real person's voice; every text comes from the package itself
or, for JFK, from the public-domain speech as the package's own tests and README quote it):

1. `asterisk-core-sounds-en-g722=1.6.1-1` (Debian bookworm, apt), files
   `usr/share/asterisk/sounds/en_US_f_Allison/<name>.g722` (G.722: genuine 16 kHz wideband,
   unlike the 8 kHz `-wav` package), with texts from `asterisk-core-sounds-en=1.6.1-1`,
   `usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz` (the upstream prompt list).
   Speaker: Allison Smith (professional voice, female, US). Licence: CC-BY-SA-3.0 (Debian
   copyright file: "Copyright 2003-2010, Allison Smith"). 30 prompts chosen by hand in
   `ALLISON_PROMPTS`: plain sentences of 1.5-5.5 s whose listed text has no digits, symbols,
   spellings, trailing "..." or bracketed notes, and no word a recogniser may write two ways.
2. `pocketsphinx==5.1.1` (PyPI sdist), `pocketsphinx-5.1.1/test/data/...`, licence BSD-2-Clause
   (CMU, the sdist's LICENSE):
   - `librivox/sense_and_sensibility_01_austen_64kb-{0870,0880,0890,0920,0930}.wav` with the
     `.txt` beside each. Speaker: the LibriVox volunteer reading *Sense and Sensibility* ch. 1
     (LibriVox recordings are public domain). 0870 is 7.1 s, left whole (no pause in it is
     long enough to cut at safely). 0920's text is corrected (`LIBRIVOX_FIXES`).
   - `cards/00{1..5}.wav` with `cards/cards.transcription`. Speaker: unnamed (test data added
     by the CMU Sphinx maintainers in 2010).
   - `goforward.raw` (16 kHz s16le), text "go forward ten meters" from
     `cython/test/decoder_test.py`. Speaker: unnamed.
3. `nodejs-whisper@0.3.1` (npm), `package/cpp/whisper.cpp/samples/jfk.mp3`: John F. Kennedy,
   inaugural address, 20 January 1961 (a US government work: public domain; the package is
   MIT). Text: "And so, my fellow Americans, ask not what your country can do for you, ask
   what you can do for your country." (`tests/parakeet-expected-jfk-output.txt` in the same
   package). 11 s, split at its pauses into 4 pieces (see `JFK_PIECES`).
4. `praatio==6.2.2` (PyPI sdist), `praatio-6.2.2/examples/files/{bobby,mary,damon_set_test}.wav`
   with the word tier of `bobby_words.TextGrid`, `mary.TextGrid`, `damon_set_test.TextGrid`.
   Licence MIT. Speaker: unnamed (the package's example recordings; it does not say whether
   they are one speaker or two).

Not used: pocketsphinx's `tidigits/` (LDC corpus, not freely licensed), `forever/` (a user's
recording of unclear licence), `numbers.raw`, `something.raw`, `regression/chan3.*` (no
transcript in the package); alsa-utils' `/usr/share/sounds/alsa/*.wav` (nothing says who
speaks); the openai-whisper sdists (the current one ships no audio, older ones do not build).

Splitting (JFK only): 20 ms frames, a frame is speech when its level is above the 10th
percentile level plus 40 % of the way to the 95th; speech runs less than 0.6 s apart are
joined; runs shorter than 0.3 s are dropped (the crowd starting at the very end); each piece
gets 0.25 s of the recording either side. The loader refuses the split unless it gives exactly
as many pieces as `JFK_PIECES` has texts and each lasts 0.2-0.8 s per word.

How the texts were checked (once, by hand, not at run time): every utterance was transcribed
by Whisper tiny.en and pocketsphinx's general model. Where both departed from the text the
same way, pocketsphinx's forced alignment scored the two readings: the Asterisk prompt
`vm-savefolder` says "this message", not the listed "the message", and `privacy-unident`
may say "you're" for the listed "you are", so both were left out; LibriVox 0920 has no second
"a" (see `LIBRIVOX_FIXES`). Otherwise the recognisers' differences are their own errors
("Mr." for "mister", "old-sposed", "4. Queen of Clothes", "And so am I fellow Americans").

Held out (`held_out=True`, for acceptance; tune on the rest): every speaker of sources 2 and 3,
i.e. four voices the tuning set never has (LibriVox reader, cards and goforward speakers, JFK):
15 of 48 utterances, 117 of 370 words, 47 of 140 s.

    python bench/human_speech.py [--cache DIR]

    from bench.human_speech import human_utterances
    for utterance in human_utterances():
        utterance.samples  # int16 numpy array, 16 kHz mono
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import lzma
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / "var" / "bench-cache" / "human-speech"
SAMPLE_RATE = 16000

# SHA-256 of each archive whose texts were checked: another digest means other recordings.
SHA256 = {
    "pocketsphinx-5.1.1.tar.gz": "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355",
    "praatio-6.2.2.tar.gz": "ed8fdee6121bdae142817879ed9a50cc8334e72c03c110162e21ed8160180d2a",
    "nodejs-whisper-0.3.1.tgz": "92041caf2b26c74b7f489fedf37bd093f216eebd61df512045ec2d19d0531d37",
    "asterisk-core-sounds-en-g722_1.6.1-1_all.deb": "38c5261820b406dcb0ecb37675720da2b0864850690690352ca52707eb623806",
    "asterisk-core-sounds-en_1.6.1-1_all.deb": "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50",
}

ALLISON = "Allison Smith (Asterisk prompts)"
ALLISON_DIR = "usr/share/asterisk/sounds/en_US_f_Allison"
ALLISON_TEXTS = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
ALLISON_PROMPTS = (
    "agent-pass",
    "all-circuits-busy-now",
    "cannot-complete-as-dialed",
    "check-number-dial-again",
    "conf-extended",
    "conf-invalid",
    "conf-onlyperson",
    "conf-waitforleader",
    "confbridge-pin-bad",
    "confbridge-unmuted",
    "demo-echodone",
    "demo-nomatch",
    "dir-nomore",
    "feature-not-avail-line",
    "info-about-last-call",
    "number-not-answering",
    "please-try-call-later",
    "pls-hold-while-try",
    "priv-introsaved",
    "privacy-prompt",
    "queue-thankyou",
    "queue-youarenext",
    "speed-dial-empty",
    "ss-noservice",
    "tt-monkeysintro",
    "tt-weasels",
    "vm-msgforwarded",
    "vm-nobodyavail",
    "vm-sorry",
    "vm-tempgreetactive",
)

PS_ROOT = "pocketsphinx-5.1.1/test/data"
LIBRIVOX = ("0870", "0880", "0890", "0920", "0930")
# The package's 0920.txt reads "a more a amiable"; the book, the package's own decoding reference
# (test-main.json, in its repository) and both recognisers have "a more amiable", and a forced
# alignment fits the audio far better without the second "a" (see the module doc).
LIBRIVOX_FIXES = {"0920": ("a more a amiable", "a more amiable")}
JFK_MEMBER = "package/cpp/whisper.cpp/samples/jfk.mp3"
JFK_PIECES = (
    "And so, my fellow Americans,",
    "ask not",
    "what your country can do for you,",
    "ask what you can do for your country.",
)
PRAATIO_ROOT = "praatio-6.2.2/examples/files"
PRAATIO_FILES = {"bobby": "bobby_words", "mary": "mary", "damon_set_test": "damon_set_test"}  # wav: TextGrid


@dataclass(frozen=True)
class HumanUtterance:
    source: str  # package==version (registry): path of the file inside it
    speaker: str
    text: str
    samples: np.ndarray = field(repr=False)  # int16, 16 kHz, mono
    licence: str = ""
    held_out: bool = False

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


class RegistryError(RuntimeError):
    """A package could not be fetched (registry unreachable, version gone, client missing)."""


# --- fetching -------------------------------------------------------------------------------


def _run(command: list[str], cwd: Path, hint: str) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError as error:
        raise RegistryError(f"{command[0]} is not installed: {error}. {hint}") from error
    except subprocess.TimeoutExpired as error:
        raise RegistryError(
            f"`{' '.join(command)}` timed out after 900 s: registry unreachable? {hint}"
        ) from error
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise RegistryError(f"`{' '.join(command)}` failed ({done.returncode}):\n{tail}\n{hint}")


def _checked(path: Path) -> Path:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256[path.name]:
        raise RuntimeError(f"{path} has SHA-256 {digest}, expected {SHA256[path.name]}: delete it and retry")
    return path


def _pypi_sdist(name: str, version: str, filename: str, downloads: Path) -> Path:
    target = downloads / filename
    if not target.exists():
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", "-d", str(downloads), f"{name}=={version}"],
            downloads,
            "PyPI must be reachable through pip on the first run.",
        )  # fmt: skip
    return _checked(target)


def _npm_tarball(name: str, version: str, filename: str, downloads: Path) -> Path:
    target = downloads / filename
    if not target.exists():
        _run(
            [
                "npm",
                "pack",
                f"{name}@{version}",
                "--ignore-scripts",
                "--silent",
                "--pack-destination",
                str(downloads),
            ],
            downloads,
            "The npm registry must be reachable through npm on the first run.",
        )
    return _checked(target)


def _debian_package(name: str, version: str, downloads: Path) -> Path:
    target = downloads / f"{name}_{version}_all.deb"
    if not target.exists():
        _run(
            ["apt-get", "download", f"{name}={version}"],
            downloads,
            "Debian's archive must be reachable through apt-get on the first run; if apt-get "
            "cannot find the package, run `apt-get update` once and retry.",
        )
    return _checked(target)


# --- reading archives -----------------------------------------------------------------------


def _extract_tar(archive: Path, members: list[str], into: Path) -> dict[str, Path]:
    """Members of a (compressed) tar archive, written once under `into`."""
    paths = {member: into / member for member in members}
    missing = [member for member, path in paths.items() if not path.exists()]
    if missing:
        with tarfile.open(archive) as tar:
            for member in missing:
                handle = tar.extractfile(member)
                if handle is None:
                    raise RuntimeError(f"{member} is not a file in {archive.name}")
                paths[member].parent.mkdir(parents=True, exist_ok=True)
                paths[member].write_bytes(handle.read())
    return paths


def _deb_data(deb: Path) -> tarfile.TarFile:
    """The data.tar.xz of a .deb (an `ar` archive)."""
    blob = deb.read_bytes()
    position = 8  # after "!<arch>\n"
    while position < len(blob):
        name = blob[position : position + 16].decode().strip().rstrip("/")
        size = int(blob[position + 48 : position + 58])
        if name.startswith("data.tar"):
            body = blob[position + 60 : position + 60 + size]
            if name.endswith(".xz"):
                body = lzma.decompress(body)
            elif name.endswith(".gz"):
                body = gzip.decompress(body)
            return tarfile.open(fileobj=io.BytesIO(body))
        position += 60 + size + (size & 1)
    raise RuntimeError(f"no data.tar in {deb.name}")


def _extract_deb(deb: Path, members: list[str], into: Path) -> dict[str, Path]:
    paths = {member: into / member for member in members}
    if any(not path.exists() for path in paths.values()):
        with _deb_data(deb) as tar:
            for member, path in paths.items():
                handle = tar.extractfile("./" + member)
                if handle is None:
                    raise RuntimeError(f"{member} is not a file in {deb.name}")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(handle.read())
    return paths


# --- decoding and splitting -----------------------------------------------------------------


def _decode(path: Path, container_format: str | None = None) -> np.ndarray:
    """Any audio file PyAV reads, as 16 kHz mono int16."""
    import av
    import soxr

    chunks = []
    with av.open(str(path), format=container_format) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in container.decode(stream):
            for converted in resampler.resample(frame):
                chunks.append(converted.to_ndarray().reshape(-1))
        for converted in resampler.resample(None):
            chunks.append(converted.to_ndarray().reshape(-1))
    audio = np.concatenate(chunks).astype(np.float32)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE)
    return _int16(audio)


def _int16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def split_at_pauses(
    samples: np.ndarray, min_pause: float = 0.6, min_piece: float = 0.3, margin: float = 0.25
) -> list[np.ndarray]:
    """Pieces of speech between pauses of at least `min_pause` s (see the module doc)."""
    frame = SAMPLE_RATE // 50
    count = len(samples) // frame
    frames = samples[: count * frame].astype(np.float64).reshape(count, frame) / 32768.0
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    floor, peak = np.percentile(level, 10), np.percentile(level, 95)
    speech = level > floor + 0.4 * (peak - floor)
    runs: list[list[int]] = []
    for index in np.flatnonzero(speech):
        if runs and index - runs[-1][1] < min_pause * 50:
            runs[-1][1] = index + 1
        else:
            runs.append([index, index + 1])
    runs = [run for run in runs if (run[1] - run[0]) / 50 >= min_piece]
    pad = int(margin * SAMPLE_RATE)
    return [
        samples[max(0, start * frame - pad) : min(len(samples), end * frame + pad)] for start, end in runs
    ]


def _words(text: str) -> int:
    return len(re.findall(r"[A-Za-z']+", text))


# --- the sources ----------------------------------------------------------------------------


def _allison(downloads: Path, extracted: Path) -> list[HumanUtterance]:
    texts_deb = _debian_package("asterisk-core-sounds-en", "1.6.1-1", downloads)
    audio_deb = _debian_package("asterisk-core-sounds-en-g722", "1.6.1-1", downloads)
    texts_path = _extract_deb(texts_deb, [ALLISON_TEXTS], extracted / "asterisk-core-sounds-en")[
        ALLISON_TEXTS
    ]
    texts = {}
    for line in gzip.decompress(texts_path.read_bytes()).decode("utf-8", "replace").splitlines():
        name, colon, text = line.partition(":")
        if colon and not line.startswith(";"):
            texts[name.strip()] = " ".join(text.split())
    members = [f"{ALLISON_DIR}/{name}.g722" for name in ALLISON_PROMPTS]
    paths = _extract_deb(audio_deb, members, extracted / "asterisk-core-sounds-en-g722")
    return [
        HumanUtterance(
            source=f"asterisk-core-sounds-en-g722=1.6.1-1 (Debian): /{member}",
            speaker=ALLISON,
            text=texts[name],
            samples=_decode(paths[member], "g722"),
            licence="CC-BY-SA-3.0",
        )
        for name, member in zip(ALLISON_PROMPTS, members, strict=True)
    ]


def _pocketsphinx(downloads: Path, extracted: Path) -> list[HumanUtterance]:
    sdist = _pypi_sdist("pocketsphinx", "5.1.1", "pocketsphinx-5.1.1.tar.gz", downloads)
    source = "pocketsphinx==5.1.1 (PyPI sdist): "
    licence = "BSD-2-Clause (CMU)"
    librivox = {n: f"{PS_ROOT}/librivox/sense_and_sensibility_01_austen_64kb-{n}" for n in LIBRIVOX}
    cards = [f"{PS_ROOT}/cards/00{n}.wav" for n in range(1, 6)]
    members = [stem + ext for stem in librivox.values() for ext in (".wav", ".txt")]
    members += [*cards, f"{PS_ROOT}/cards/cards.transcription", f"{PS_ROOT}/goforward.raw"]
    paths = _extract_tar(sdist, members, extracted)
    utterances = []
    for number, stem in librivox.items():
        text = " ".join(paths[stem + ".txt"].read_text().split())
        if number in LIBRIVOX_FIXES:
            wrong, right = LIBRIVOX_FIXES[number]
            if wrong not in text:
                raise RuntimeError(f"{stem}.txt no longer reads {wrong!r}: {text!r}")
            text = text.replace(wrong, right)
        utterances.append(
            HumanUtterance(
                source=source + stem + ".wav",
                speaker="LibriVox reader (Sense and Sensibility, ch. 1)",
                text=text,
                samples=_decode(paths[stem + ".wav"]),
                licence="public domain (LibriVox); package BSD-2-Clause",
                held_out=True,
            )
        )
    card_texts = {}
    for line in paths[f"{PS_ROOT}/cards/cards.transcription"].read_text().splitlines():
        found = re.fullmatch(r"\s*<s>(.*)</s>\s*\((\w+)\)\s*", line)
        if found:
            card_texts[found[2]] = " ".join(found[1].split())
    for member in cards:
        utterances.append(
            HumanUtterance(
                source=source + member,
                speaker="pocketsphinx cards speaker (unnamed)",
                text=card_texts[Path(member).stem],
                samples=_decode(paths[member]),
                licence=licence,
                held_out=True,
            )
        )
    raw = np.frombuffer(paths[f"{PS_ROOT}/goforward.raw"].read_bytes(), dtype="<i2").astype(np.int16)
    utterances.append(
        HumanUtterance(
            source=source + f"{PS_ROOT}/goforward.raw",
            speaker="pocketsphinx goforward speaker (unnamed)",
            text="go forward ten meters",
            samples=raw,
            licence=licence,
            held_out=True,
        )
    )
    return utterances


def _jfk(downloads: Path, extracted: Path) -> list[HumanUtterance]:
    tarball = _npm_tarball("nodejs-whisper", "0.3.1", "nodejs-whisper-0.3.1.tgz", downloads)
    path = _extract_tar(tarball, [JFK_MEMBER], extracted / "nodejs-whisper-0.3.1")[JFK_MEMBER]
    pieces = split_at_pauses(_decode(path))
    if len(pieces) != len(JFK_PIECES):
        raise RuntimeError(f"jfk.mp3 split into {len(pieces)} pieces, expected {len(JFK_PIECES)}")
    for piece, text in zip(pieces, JFK_PIECES, strict=True):
        speech = len(piece) / SAMPLE_RATE - 0.5  # without the margins
        if not 0.2 <= speech / _words(text) <= 0.8:
            raise RuntimeError(f"jfk.mp3 piece of {speech:.2f} s cannot hold {text!r}")
    return [
        HumanUtterance(
            source=f"nodejs-whisper@0.3.1 (npm): {JFK_MEMBER} (piece {index} of {len(pieces)})",
            speaker="John F. Kennedy (inaugural address, 1961)",
            text=text,
            samples=piece,
            licence="public domain (US government work); package MIT",
            held_out=True,
        )
        for index, (piece, text) in enumerate(zip(pieces, JFK_PIECES, strict=True), 1)
    ]


def _textgrid_words(path: Path) -> str:
    """The labels of the tier named word(s) of a TextGrid (long or short text format)."""
    content = "\n".join(line for line in path.read_text(errors="replace").splitlines() if "[" not in line)
    tokens = [
        text.replace('""', '"') if number == "" else float(number)
        for text, number in re.findall(r'"((?:[^"]|"")*)"|(?<![\w<])(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)', content)
    ]
    position = 5  # after "ooTextFile", "TextGrid", xmin, xmax and the tier count
    while position < len(tokens):
        kind, name, count = tokens[position], tokens[position + 1], int(tokens[position + 4])
        width = 3 if kind == "IntervalTier" else 2
        labels = tokens[position + 5 : position + 5 + width * count]
        if name in ("word", "words"):
            return " ".join(
                str(label).strip().lower() for label in labels[width - 1 :: width] if str(label).strip()
            )
        position += 5 + width * count
    return ""


def _praatio(downloads: Path, extracted: Path) -> list[HumanUtterance]:
    sdist = _pypi_sdist("praatio", "6.2.2", "praatio-6.2.2.tar.gz", downloads)
    members = [f"{PRAATIO_ROOT}/{name}.wav" for name in PRAATIO_FILES]
    members += [f"{PRAATIO_ROOT}/{grid}.TextGrid" for grid in PRAATIO_FILES.values()]
    paths = _extract_tar(sdist, members, extracted)
    utterances = []
    for name, grid in PRAATIO_FILES.items():
        text = _textgrid_words(paths[f"{PRAATIO_ROOT}/{grid}.TextGrid"])
        if not text:
            raise RuntimeError(f"no word tier in {grid}.TextGrid")
        utterances.append(
            HumanUtterance(
                source=f"praatio==6.2.2 (PyPI sdist): {PRAATIO_ROOT}/{name}.wav",
                speaker="praatio example speaker (unnamed)",
                text=text,
                samples=_decode(paths[f"{PRAATIO_ROOT}/{name}.wav"]),
                licence="MIT",
            )
        )
    return utterances


def human_utterances(cache_dir: Path | None = None) -> list[HumanUtterance]:
    """All utterances, fetching and unpacking the packages into `cache_dir` on first use."""
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    downloads, extracted = cache / "downloads", cache / "extracted"
    downloads.mkdir(parents=True, exist_ok=True)
    extracted.mkdir(parents=True, exist_ok=True)
    return [
        *_allison(downloads, extracted),
        *_praatio(downloads, extracted),
        *_pocketsphinx(downloads, extracted),
        *_jfk(downloads, extracted),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--cache", type=Path, default=None, help=f"cache directory (default {DEFAULT_CACHE})")
    try:
        utterances = human_utterances(parser.parse_args().cache)
    except RegistryError as error:
        sys.exit(f"human_speech: {error}")
    for utterance in utterances:
        mark = "held-out" if utterance.held_out else "tuning  "
        print(f"{mark} {utterance.seconds:4.1f} s  {utterance.speaker:45.45s}  {utterance.text}")
        print(f"         {utterance.source}  [{utterance.licence}]")
    for held_out in (False, True):
        group = [u for u in utterances if u.held_out == held_out]
        print(
            f"{'held-out' if held_out else 'tuning'}: {len(group)} utterances, "
            f"{len({u.speaker for u in group})} speakers, {sum(_words(u.text) for u in group)} words, "
            f"{sum(u.seconds for u in group):.1f} s"
        )
    print(
        f"total: {len(utterances)} utterances, {len({u.speaker for u in utterances})} speakers, "
        f"{sum(_words(u.text) for u in utterances)} words, {sum(u.seconds for u in utterances):.1f} s"
    )


if __name__ == "__main__":
    main()
