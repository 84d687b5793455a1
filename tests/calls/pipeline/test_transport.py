"""The paced voice track: real-time pieces, Opus encoded inline, steady silence not re-encoded."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import numpy as np

from calls.pipeline.transport import LOOKAHEAD_PIECES, PIECE_BYTES, SETTLED_SILENCE_PIECES, PacedAudioTrack


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


async def test_the_voice_comes_out_of_the_decoder_as_it_went_in_a_few_ms_later(monkeypatch):
    # A sweep of tones and pauses through the track's own encoder and a browser's decoder: the
    # waveform is kept (not only its level) and the codec's delay is small (CELT, "lowdelay").
    track = PacedAudioTrack()
    monkeypatch.setattr("calls.pipeline.transport.MAX_LAG_SECONDS", 1e9)
    track._clock_start = -1e9
    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate = 48_000
    t = np.arange(48_000) / 48_000
    voice = np.sin(2 * np.pi * (150 + 600 * t) * t) * 8_000 * (np.sin(2 * np.pi * 3 * t) > -0.5)
    track.play(voice.astype(np.int16).tobytes())
    heard = []
    for _ in range(48_000 // 960 + 5):
        for frame in decoder.decode(await track.recv()):
            heard.append(frame.to_ndarray()[0] * 32768)  # planar floats; the left channel
    track.stop()
    heard = np.concatenate(heard)
    said = voice.astype(np.int16).astype(np.float64)
    errors = {lag: np.sum((said - heard[lag : lag + said.size]) ** 2) for lag in range(0, 1_500)}
    lag = min(errors, key=errors.get)
    assert lag * 1000 / 48_000 <= 3.0  # ms
    assert 10 * np.log10(np.sum(said**2) / errors[lag]) > 15.0  # dB


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


async def test_the_writer_is_released_while_the_last_pieces_of_its_audio_are_still_to_send(monkeypatch):
    # The output's next chunk takes a few event-loop turns to arrive: it is asked for while
    # LOOKAHEAD_PIECES are still queued, so the voice never runs dry between chunks.
    monkeypatch.setattr("calls.pipeline.transport.MAX_LAG_SECONDS", 1e9)
    track = PacedAudioTrack(encode=False)
    track._clock_start = -1e9  # every piece is already due
    piece = bytes(PIECE_BYTES)
    assert track.play(piece * LOOKAHEAD_PIECES).done()  # little queued: write more at once
    written = track.play(piece * 2)
    assert not written.done() and track.position == LOOKAHEAD_PIECES + 2
    await track.recv()
    assert not written.done()
    await track.recv()  # LOOKAHEAD_PIECES left to send
    await asyncio.sleep(0)
    assert written.done() and track.queued_seconds == LOOKAHEAD_PIECES * 0.02
    track.stop()


async def test_a_position_is_reached_when_the_voice_before_it_is_sent_or_dropped(monkeypatch):
    monkeypatch.setattr("calls.pipeline.transport.MAX_LAG_SECONDS", 1e9)
    track = PacedAudioTrack(encode=False)
    track._clock_start = -1e9
    track.play(bytes(PIECE_BYTES) * 4)
    second, fourth = track.reached(2), track.reached(4)
    assert track.reached(0).done()
    await track.recv()
    assert not second.done()
    await track.recv()
    assert second.done() and not fourth.done()
    track.pause()  # a paused voice is not sent: what follows it waits too
    await track.recv()
    assert not fourth.done()
    track.flush()  # dropped: nothing waits for voice that will not play
    assert fourth.done() and track.reached(track.position).done()
    track.stop()


async def test_an_interruptions_hold_releases_what_waited_and_holds_audio_written_during_it():
    track = PacedAudioTrack(encode=False)
    track.play(bytes(PIECE_BYTES) * 6)
    end_of_message = track.reached(track.position)
    track.flush(hold=True)
    assert end_of_message.done()
    # The output writes the chunk it had: it must wait for the hold's end, not run on ahead
    # (the message's end would reach the tracker as if it had been played).
    written = track.play(bytes(PIECE_BYTES) * 2)
    assert not written.done()
    track.flush()  # the InterruptionFrame has passed the output
    assert written.done()
    track.stop()


class _WaitingMicrophone:
    """A remote audio track with `count` 20 ms frames already waiting, then nothing more."""

    readyState = "live"

    def __init__(self, count: int) -> None:
        self._left = count
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self._left == 0:
            await asyncio.Event().wait()
        self._left -= 1
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, self._pts, Fraction(1, 48_000)
        self._pts += 960
        return frame


async def test_waiting_microphone_audio_reaches_the_pipeline_in_a_few_loop_turns():
    # pipecat's input transport hands each frame to a task of its own through a queue and
    # `asyncio.wait_for` (three loop turns a frame); with several calls in a process that queue
    # held seconds of audio. Parley's input pushes each frame on from the reader itself.
    from pipecat.frames.frames import InputAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.tests.utils import SleepFrame, run_test

    from calls.pipeline.transport import MicrophoneDrain, ParleyInput, transport_params

    turns = 0
    arrived_at: list[int] = []

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    class Arrivals(FrameProcessor):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, InputAudioRawFrame):
                arrived_at.append(turns)
            await self.push_frame(frame, direction)

    microphone = MicrophoneDrain()
    microphone.track = _WaitingMicrophone(200)
    counter = asyncio.create_task(count_turns())
    try:
        await run_test(
            Pipeline([ParleyInput(transport_params(), microphone), Arrivals()]),
            frames_to_send=[SleepFrame(sleep=1.0)],
        )
    finally:
        counter.cancel()
    assert len(arrived_at) >= 190, len(arrived_at)
    spent = arrived_at[-1] - arrived_at[0]
    print(f"{len(arrived_at)} frames through in {spent} loop turns")
    assert spent < 100, spent


async def test_the_microphone_audio_goes_no_further_than_the_listeners_and_everything_else_passes():
    # After the user aggregator nothing uses the microphone's audio; each 20 ms frame went on
    # through eight more processors. The end of speech, words and control frames go on.
    from pipecat.frames.frames import InputAudioRawFrame, TextFrame, VADUserStoppedSpeakingFrame
    from pipecat.tests.utils import run_test

    from calls.pipeline.transport import MicrophoneAudioEnd

    audio = InputAudioRawFrame(audio=bytes(640), sample_rate=16_000, num_channels=1)
    down, _ = await run_test(
        MicrophoneAudioEnd(),
        frames_to_send=[audio, VADUserStoppedSpeakingFrame(), TextFrame("hello"), audio],
        expected_down_frames=[VADUserStoppedSpeakingFrame, TextFrame],
    )
    assert down[1].text == "hello"


async def test_the_personas_audio_chunks_end_at_the_output_once_played():
    # Nothing after the output uses them; each took three more queue hops, 25 a second.
    from pipecat.frames.frames import OutputAudioRawFrame, TextFrame
    from pipecat.tests.utils import SleepFrame, run_test

    from calls.pipeline.transport import ParleyOutput, transport_params

    track = PacedAudioTrack()
    output = ParleyOutput(transport_params(), track)
    output.peer_ready.set()
    tone = (np.sin(np.arange(1920) / 4) * 10_000).astype(np.int16).tobytes()
    chunks = [OutputAudioRawFrame(audio=tone, sample_rate=48_000, num_channels=1) for _ in range(3)]

    async def send() -> None:  # as aiortc pulls the track
        while True:
            await track.recv()

    sender = asyncio.create_task(send())
    try:
        down, _ = await run_test(output, frames_to_send=[*chunks, SleepFrame(sleep=0.3), TextFrame("after")])
    finally:
        sender.cancel()
        track.stop()
    assert track.position == 6, "the chunks were played"
    assert not [frame for frame in down if isinstance(frame, OutputAudioRawFrame)]
    assert [frame.text for frame in down if isinstance(frame, TextFrame)] == ["after"]
