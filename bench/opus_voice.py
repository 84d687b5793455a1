"""Benchmark of the persona's voice encoder: libopus's modes for 20 ms pieces of synthesised speech.

The persona's voice is encoded on the event loop, one 20 ms piece at a time
(`calls.pipeline.transport.OpusPieceEncoder`), so its cost is the loop's. For each libopus
`application` (and the one Parley uses, marked), at Parley's bitrate, it prints:
- CPU microseconds a piece (the median of 5 passes over the sentence);
- bytes a packet;
- the codec's delay (the lag that best aligns what the decoder gives back with what went in);
- how close the decoded waveform is to the input (SNR over the aligned speech, dB).

`python bench/opus_voice.py [--text ...] [--voice en-us+f3]` (no server, no database).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calls.pipeline.transport import (  # noqa: E402
    OPUS_APPLICATION,
    OPUS_BITRATE,
    OUTPUT_SAMPLE_RATE,
    PIECE_SAMPLES,
)

APPLICATIONS = ("voip", "audio", "lowdelay")
PASSES = 5
# The most delay looked for when aligning the decoded voice with the input (samples at 48 kHz).
MAX_LAG_SAMPLES = 1_000
DEFAULT_TEXT = "Our almond croissant is baked fresh every morning, and the cardamom bun sells out by noon."


def pieces_of(text: str, voice: str) -> np.ndarray:
    from tests.fakes.spoken import spoken_pcm

    speech = asyncio.run(spoken_pcm(text, voice=voice))
    pcm = np.clip(speech, -32768, 32767).astype(np.int16)
    return pcm[: pcm.size // PIECE_SAMPLES * PIECE_SAMPLES].reshape(-1, PIECE_SAMPLES)


def encoder(application: str) -> av.CodecContext:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = OUTPUT_SAMPLE_RATE
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = OPUS_BITRATE
    codec.options = {"application": application}
    codec.time_base = Fraction(1, OUTPUT_SAMPLE_RATE)
    return codec


def frames_of(pieces: np.ndarray) -> list[av.AudioFrame]:
    frames = []
    for index, piece in enumerate(pieces):
        frame = av.AudioFrame.from_ndarray(piece.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = OUTPUT_SAMPLE_RATE
        frame.pts = index * PIECE_SAMPLES
        frames.append(frame)
    return frames


def cost(application: str, pieces: np.ndarray) -> tuple[float, float]:
    """(CPU µs a piece, bytes a packet)."""
    timings, sizes = [], []
    for _ in range(PASSES):
        codec, frames = encoder(application), frames_of(pieces)
        started = time.process_time()
        packets = [packet for frame in frames for packet in codec.encode(frame)]
        timings.append((time.process_time() - started) / len(frames) * 1e6)
        sizes.append(sum(packet.size for packet in packets) / max(1, len(packets)))
    return statistics.median(timings), statistics.median(sizes)


def fidelity(application: str, pieces: np.ndarray) -> tuple[int, float]:
    """(delay in samples, SNR in dB) of the decoded voice against the input."""
    codec, decoder = encoder(application), av.CodecContext.create("libopus", "r")
    decoder.sample_rate = OUTPUT_SAMPLE_RATE
    decoder.layout = "mono"
    padded = np.vstack([pieces, np.zeros((MAX_LAG_SAMPLES // PIECE_SAMPLES + 2, PIECE_SAMPLES), np.int16)])
    decoded = []
    for frame in frames_of(padded):
        for packet in codec.encode(frame):
            for out in decoder.decode(packet):
                samples = out.to_ndarray().reshape(-1).astype(np.float64)
                decoded.append(samples if out.format.name.startswith("s16") else samples * 32768)
    heard, said = np.concatenate(decoded), pieces.reshape(-1).astype(np.float64)
    errors = []
    for lag in range(MAX_LAG_SAMPLES):
        length = min(said.size, heard.size - lag)
        errors.append((float(np.sum((said[:length] - heard[lag : lag + length]) ** 2)), lag, length))
    error, lag, length = min(errors)
    return lag, 10 * np.log10(np.sum(said[:length] ** 2) / max(error, 1e-9))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--text", default=DEFAULT_TEXT)
    parser.add_argument("--voice", default="en-us+f3", help="espeak voice (default: the demo persona's)")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    pieces = pieces_of(args.text, args.voice)
    print(
        f"{len(pieces)} pieces of 20 ms ({args.voice}), mono Opus at {OPUS_BITRATE // 1000} kb/s; "
        f"{os.cpu_count()} cores"
    )
    print(f"  {'application':<12} {'µs a piece':>10} {'bytes':>7} {'delay ms':>9} {'SNR dB':>7}")
    for application in APPLICATIONS:
        micros, size = cost(application, pieces)
        lag, snr = fidelity(application, pieces)
        marker = "  <- Parley's" if application == OPUS_APPLICATION else ""
        print(
            f"  {application:<12} {micros:>10.0f} {size:>7.0f} {lag / OUTPUT_SAMPLE_RATE * 1000:>9.1f} "
            f"{snr:>7.1f}{marker}"
        )


if __name__ == "__main__":
    main()
