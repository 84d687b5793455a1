"""What runs inside a recogniser worker process: one pocketsphinx decoder, general en-US model.

pocketsphinx holds the GIL while it decodes (0.25-0.55 x real time here), which would stall
every call's media on the server's event loop; so it runs in worker processes. This module
is imported by the workers themselves and must stay light (no Django, no pipecat).
"""

from __future__ import annotations

_decoder = None


def worker_start() -> None:
    """Process initializer: load the model once (the wheel ships the en-US model)."""
    global _decoder
    from pocketsphinx import Decoder

    _decoder = Decoder(samprate=16000, loglevel="FATAL", dither=True)
    # Warm up: a fresh decoder's cepstral mean is off for its first utterance.
    decode(bytes(16000 * 2))


def decode(pcm: bytes) -> str:
    """The best hypothesis for 16 kHz 16-bit mono speech (an empty string if none)."""
    decoder = _decoder
    if decoder is None:
        worker_start()
        decoder = _decoder
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr.strip() if hypothesis is not None else ""
