"""The paced voice track: real-time pieces, Opus encoded inline, steady silence not re-encoded."""

from __future__ import annotations

import av
import numpy as np

from calls.pipeline.transport import PIECE_BYTES, SETTLED_SILENCE_PIECES, PacedAudioTrack


def _decoded_peak(decoder: av.CodecContext, packet: av.Packet) -> float:
    """Peak of the decoded audio, 0..1 (the decoder gives floats)."""
    return max((float(np.abs(frame.to_ndarray()).max()) for frame in decoder.decode(packet)), default=0.0)


async def test_steady_silence_is_repeated_not_encoded_and_the_voice_after_it_is_heard(monkeypatch):
    track = PacedAudioTrack()
    encoder = track._encoder
    assert encoder is not None
    encoded = []
    encode = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda frame, **kw: encoded.append(frame) or encode(frame, **kw))
    monkeypatch.setattr("calls.pipeline.transport.MAX_LAG_SECONDS", 1e9)  # no real-time waits:
    track._clock_start = -1e9  # every piece is already due
    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate = 48_000
    quiet = [await track.recv() for _ in range(SETTLED_SILENCE_PIECES + 20)]
    assert len(encoded) == SETTLED_SILENCE_PIECES  # then the settled packet stands in
    assert [packet.pts for packet in quiet] == [index * 960 for index in range(len(quiet))]
    assert max(_decoded_peak(decoder, packet) for packet in quiet) < 0.001

    tone = (np.sin(np.arange(PIECE_BYTES // 2 * 10) / 4) * 10_000).astype(np.int16).tobytes()
    track.play(tone)
    voice = [await track.recv() for _ in range(12)]
    assert len(encoded) == SETTLED_SILENCE_PIECES + 12  # the voice is encoded again
    assert max(_decoded_peak(decoder, packet) for packet in voice) > 0.1
    track.stop()


async def test_an_interruption_holds_the_voice_until_it_has_passed_the_output():
    # Between the barge-in and the InterruptionFrame reaching the output, the output still
    # writes the chunks it holds: none of them may be heard. Only the pipeline's own flush
    # (after the output) frees the voice; a guard's resume does not.
    track = PacedAudioTrack(encode=False)
    loud = (np.full(PIECE_BYTES // 2, 8000, dtype=np.int16)).tobytes()
    track.play(loud * 3)
    track.flush(hold=True)
    track.play(loud * 2)  # written by the output before it saw the interruption
    track.resume()
    for _ in range(3):
        await track.recv()
    assert track.samples_played == 0 and track.paused and track.held_seconds > 0
    track.flush()  # the InterruptionFrame has passed the output
    track.play(loud)  # the next reply
    for _ in range(2):
        await track.recv()
    assert track.samples_played > 0 and not track.paused and track.held_seconds == 0
