"""A pipecat transport over a peer connection that Parley negotiated itself (Anam signalling).

pipecat's SmallWebRTC transport insists on creating its own RTCPeerConnection and reads the
data channel itself, so Parley brings its own (docs/pipecat-notes.md §1): the microphone
track is read, resampled to 16 kHz and pushed into the pipeline; the pipeline's audio goes to
a `PacedAudioTrack` that hands aiortc one 20 ms Opus-sized piece at a time, in real time, and
tells whoever listens (the avatar, the word clock) what is being played now.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    StartFrame,
    SystemFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

logger = logging.getLogger(__name__)

OUTPUT_SAMPLE_RATE = 48_000  # aiortc's Opus encoder works at 48 kHz
INPUT_SAMPLE_RATE = 16_000  # Silero VAD and the recognisers take 16 kHz
PIECE_SECONDS = 0.02  # one Opus frame
PIECE_SAMPLES = int(OUTPUT_SAMPLE_RATE * PIECE_SECONDS)
PIECE_BYTES = PIECE_SAMPLES * 2
# If the sender fell this far behind the clock (a stalled loop), restart the clock instead of
# bursting the backlog out.
MAX_LAG_SECONDS = 0.2
# How long to wait for the microphone track before checking again.
MIC_WAIT_SECONDS = 0.05
# The voice is sent as mono Opus at this bitrate (speech; the browser decodes it to stereo).
OPUS_BITRATE = 48_000
# libopus's mode for the voice: "lowdelay" codes every frame with CELT alone. At this bitrate,
# on a synthesised sentence (`bench/opus_voice.py`), it took ~95 µs a 20 ms piece against ~250
# for "voip" (SILK or hybrid: its analysis is the cost), delayed the voice 2.5 ms against 6.5,
# and came back closer to the waveform (21.4 dB SNR against 10.6), in packets a fifth larger
# (161 bytes against 133: ~64 kb/s while speaking). With 20 calls in a process the voice's
# encoding had been a third of the event loop's samples while the personas spoke (py-spy).
OPUS_APPLICATION = "lowdelay"
# After this many silent pieces in a row (its look-ahead and the decoder's overlap are long
# past), the encoder's output for silence no longer changes: it is repeated, not re-encoded.
SETTLED_SILENCE_PIECES = 5
# How far the pipeline's output may write ahead of what the track sends, in 20 ms pieces. After
# a write the output takes several event-loop turns to bring its next chunk; a track whose
# queue ran dry meanwhile sent silence in the middle of a word (8 listening calls on two
# processes: an 8.8 s greeting took 24.8 s, 19.5 s with this alone). Frames that follow the audio
# (words, the end of a message, mouth shapes) wait for its position: `PacedAudioTrack.reached`.
LOOKAHEAD_PIECES = 3
# Where in the voice a frame leaving the output stands (`frame.metadata`): the track's
# `position` when the output pushed it, so whoever is after the output can wait for it.
PLAYBACK_POSITION_KEY = "parley_playback_position"


class PlaybackListener:
    """Told about every 20 ms piece when it is handed to the encoder (lip sync, word timing)."""

    def on_piece(self, *, pcm: bytes, started_at: float, speaking: bool) -> None:  # pragma: no cover
        pass


class OpusPieceEncoder:
    """Encodes each 20 ms piece to one Opus packet, on the caller's thread.

    aiortc encodes every frame a track returns on asyncio's default thread pool; a track that
    returns encoded packets instead is sent as they are. Encoding 20 ms of mono speech takes
    ~0.1 ms (`OPUS_APPLICATION`), much less than the hop to a thread and back, and those hops are what starves the
    event loop of the GIL with many sessions in one process (every handoff can wait out the
    interpreter's switch interval). So the voice is encoded inline.
    """

    def __init__(self, bitrate: int = OPUS_BITRATE, application: str = OPUS_APPLICATION) -> None:
        self._bitrate = bitrate
        self._application = application
        self._codec = av.CodecContext.create("libopus", "w")
        self._codec.sample_rate = OUTPUT_SAMPLE_RATE
        self._codec.layout = "mono"
        self._codec.format = "s16"
        self._codec.bit_rate = bitrate
        self._codec.options = {"application": application}
        self._codec.time_base = Fraction(1, OUTPUT_SAMPLE_RATE)
        self._pending: deque[bytes] = deque()
        self._silence: bytes | None = None
        self._silent_pieces = 0  # silent pieces encoded in a row
        self._settled_silence: bytes | None = None  # the packet steady silence encodes to

    @property
    def silence_settled(self) -> bool:
        """Silence has lasted long enough that `silence()` stands in for encoding it."""
        return self._settled_silence is not None and not self._pending

    def encode(self, frame: av.AudioFrame, *, silent: bool = False) -> av.Packet:
        """The next packet; `silent` says the frame is all zeros (it may then settle)."""
        for packet in self._codec.encode(frame):
            self._pending.append(bytes(packet))
        if self._pending:
            payload = self._pending.popleft()
        else:  # the encoder is still filling its look-ahead: send a silent packet
            payload = self._silence_packet()
        self._silent_pieces = self._silent_pieces + 1 if silent else 0
        if self._silent_pieces == SETTLED_SILENCE_PIECES:
            self._settled_silence = payload
        elif not silent:
            self._settled_silence = None
        return self._packet(payload, frame.pts, frame.time_base)

    def silence(self, pts: int) -> av.Packet:
        """A silent piece without the encoder (~70 µs of the event loop saved, 50 times a second):
        only once `silence_settled`. The encoder, skipped, simply resumes where it left off."""
        assert self._settled_silence is not None
        return self._packet(self._settled_silence, pts, Fraction(1, OUTPUT_SAMPLE_RATE))

    @staticmethod
    def _packet(payload: bytes, pts: int | None, time_base: Fraction | None) -> av.Packet:
        packet = av.Packet(payload)
        packet.pts = pts
        packet.time_base = time_base
        return packet

    def _silence_packet(self) -> bytes:
        if self._silence is None:
            quiet = OpusPieceEncoder(self._bitrate, self._application)
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, PIECE_SAMPLES), dtype=np.int16), format="s16", layout="mono"
            )
            frame.sample_rate = OUTPUT_SAMPLE_RATE
            frame.pts = 0
            frame.time_base = Fraction(1, OUTPUT_SAMPLE_RATE)
            packets: list[av.Packet] = []
            while not packets:
                packets = list(quiet._codec.encode(frame))
                frame.pts += PIECE_SAMPLES
            self._silence = bytes(packets[0])
        return self._silence


class PacedAudioTrack(MediaStreamTrack):
    """The persona's voice: queued PCM played out in real time, silence in between.

    With `encode=True` (the default) `recv()` returns Opus packets (see `OpusPieceEncoder`);
    with `encode=False` it returns raw 48 kHz frames.
    """

    kind = "audio"

    def __init__(self, *, encode: bool = True) -> None:
        super().__init__()
        self._encoder = OpusPieceEncoder() if encode else None
        self._pieces: deque[bytes] = deque()
        self._queued_pieces = 0  # voice pieces ever queued: the position after the last one
        self._taken_pieces = 0  # voice pieces sent or dropped
        # (position, tie-breaker, future): resolved once the voice has been taken up to position.
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_order = itertools.count()
        self._sent_samples = 0
        self._clock_start: float | None = None
        self.listeners: list[PlaybackListener] = []
        self.samples_played = 0  # voice samples (not silence) handed to the encoder
        self.last_voice_at: float | None = None  # when the latest voice piece was sent
        self.paused = False  # barge-in: hold the queued voice, send silence
        self._held_since: float | None = None  # paused for an interruption on its way (monotonic)
        self._levels: deque[tuple[float, float]] = deque()  # (sent at, RMS 0..1) of voice pieces

    def play(self, pcm: bytes) -> asyncio.Future[None]:
        """Queue 16-bit mono 48 kHz audio; the future resolves when it is time to queue more.

        That is when at most `LOOKAHEAD_PIECES` are left to send (at once if there were fewer),
        so the next chunk arrives while this one's last pieces are still being sent.
        """
        for offset in range(0, len(pcm), PIECE_BYTES):
            piece = pcm[offset : offset + PIECE_BYTES]
            if len(piece) < PIECE_BYTES:
                piece = piece + bytes(PIECE_BYTES - len(piece))
            self._pieces.append(piece)
        self._queued_pieces += -(-len(pcm) // PIECE_BYTES)
        if self._held_since is not None:
            # Held for an interruption: this audio is going to be dropped, and the output must
            # not run ahead past it (the end of the message would reach the tracker as if
            # played); it waits for the hold to end.
            return self.reached(self._queued_pieces)
        return self.reached(self._queued_pieces - LOOKAHEAD_PIECES)

    @property
    def position(self) -> int:
        """The position (in pieces) right after the voice queued so far."""
        return self._queued_pieces

    def reached(self, position: int) -> asyncio.Future[None]:
        """A future resolved once the voice before `position` has been sent (or dropped).

        An interruption's hold (`flush(hold=True)`) releases everything waiting then: what was
        queued is dropped, and what follows it must not wait for voice that will not play. Audio
        written during the hold waits until the hold ends, as it would wait to be sent.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if position <= self._taken_pieces or self.readyState != "live":
            done.set_result(None)
        else:
            heapq.heappush(self._waiters, (position, next(self._waiter_order), done))
        return done

    def _release_waiters(self, *, every: bool = False) -> None:
        while self._waiters and (every or self._waiters[0][0] <= self._taken_pieces):
            _, _, done = heapq.heappop(self._waiters)
            if not done.done():
                done.set_result(None)

    def pause(self) -> None:
        """Hold the voice where it is (silence is sent) until `resume()` or `flush()`."""
        self.paused = True

    def resume(self) -> None:
        if self._held_since is None:  # an interruption's hold ends only with `flush()`
            self.paused = False

    def level_at(self, now: float, window: float = 0.3) -> float:
        """RMS (0..1) of the voice sent in the last `window` seconds before `now`."""
        levels = [level for at, level in self._levels if now - window <= at <= now]
        return max(levels) if levels else 0.0

    def flush(self, *, hold: bool = False) -> None:
        """Drop everything queued (barge-in); waiting writers are released.

        With `hold` (an interruption), the voice stays paused until the next plain `flush()`,
        which the pipeline makes once the interruption has passed its output: audio already on
        its way (the output writes its next chunk as soon as a writer is released) is then
        dropped too instead of being played.
        """
        self._held_since = time.monotonic() if hold else None
        self.paused = hold
        self._taken_pieces += len(self._pieces)
        self._pieces.clear()
        self._release_waiters(every=hold)

    @property
    def held_seconds(self) -> float:
        """How long the voice has been held for an interruption still on its way (0: not held)."""
        return 0.0 if self._held_since is None else time.monotonic() - self._held_since

    @property
    def queued_seconds(self) -> float:
        return len(self._pieces) * PIECE_SECONDS

    def stop(self) -> None:
        self.flush()
        self._release_waiters(every=True)
        super().stop()

    async def recv(self) -> av.AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._clock_start is None:
            self._clock_start = now
        else:
            due = self._clock_start + self._sent_samples / OUTPUT_SAMPLE_RATE
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > MAX_LAG_SECONDS:
                self._clock_start = now - self._sent_samples / OUTPUT_SAMPLE_RATE
        sent_at = time.monotonic()  # after the pacing wait: when this piece is chosen
        speaking = bool(self._pieces) and not self.paused
        piece = self._pieces.popleft() if speaking else bytes(PIECE_BYTES)
        if speaking:
            self._taken_pieces += 1
            self.samples_played += PIECE_SAMPLES
            self.last_voice_at = sent_at
            samples = np.frombuffer(piece, dtype=np.int16).astype(np.float32)
            self._levels.append((sent_at, float(np.sqrt(np.dot(samples, samples) / samples.size)) / 32768.0))
            while self._levels and self._levels[0][0] < sent_at - 1.0:
                self._levels.popleft()
        started_at = time.monotonic()
        for listener in self.listeners:
            try:
                listener.on_piece(pcm=piece, started_at=started_at, speaking=speaking)
            except Exception:  # a listener must never stop the voice
                logger.exception("playback listener failed")
        if speaking and self._waiters:
            self._release_waiters()
        if self._encoder is not None and not speaking and self._encoder.silence_settled:
            packet = self._encoder.silence(self._sent_samples)
            self._sent_samples += PIECE_SAMPLES
            return packet
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(piece, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = OUTPUT_SAMPLE_RATE
        frame.pts = self._sent_samples
        frame.time_base = Fraction(1, OUTPUT_SAMPLE_RATE)
        self._sent_samples += PIECE_SAMPLES
        if self._encoder is not None:
            return self._encoder.encode(frame, silent=not speaking)
        return frame


class MicrophoneDrain:
    """Reads a remote audio track so aiortc's unbounded receive queue never grows."""

    def __init__(self) -> None:
        self.track: MediaStreamTrack | None = None
        self.frames_received = 0
        self.last_frame_at: float | None = None
        # Told of every decoded microphone frame and when it arrived (the call's recording).
        self.taps: list[Callable[[av.AudioFrame, float], None]] = []


class ParleyInput(BaseInputTransport):
    """Microphone in: frames from the browser's audio track, as 16 kHz mono pipeline audio."""

    def __init__(self, params: TransportParams, microphone: MicrophoneDrain, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._microphone = microphone
        self._reader: asyncio.Task[None] | None = None
        self._resampler: av.AudioResampler | None = None
        # Called with each frame's 16 kHz PCM after it is pushed on (`audio_metrics.UserAudioTap`,
        # only when the persona sends audio metrics).
        self.audio_tap: Callable[[bytes], None] | None = None

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.sample_rate)
        self._reader = self.create_task(self._read_microphone())

    async def _read_microphone(self) -> None:
        assert self._resampler is not None
        while True:
            track = self._microphone.track
            if track is None or track.readyState != "live":
                await asyncio.sleep(MIC_WAIT_SECONDS)
                continue
            try:
                frame = await track.recv()
            except MediaStreamError:
                self._microphone.track = None
                continue
            self._microphone.frames_received += 1
            self._microphone.last_frame_at = time.monotonic()
            for tap in self._microphone.taps:
                try:
                    tap(frame, self._microphone.last_frame_at)
                except Exception:  # a recording must never stop the microphone
                    logger.exception("microphone tap failed")
            for resampled in self._resampler.resample(frame):
                await self.push_audio_frame(
                    InputAudioRawFrame(
                        audio=resampled.to_ndarray().tobytes(),
                        sample_rate=self.sample_rate,
                        num_channels=1,
                    )
                )

    async def push_audio_frame(self, frame: InputAudioRawFrame) -> None:
        """Straight on to the recogniser, from the reader's task.

        pipecat queues each frame for a task that takes it with `asyncio.wait_for`: three event
        loop turns per 20 ms frame. With several calls listening in one process that queue held
        seconds of audio, and the persona heard the user late by as much. Parley sets no input
        audio filter, the one thing that task adds.
        """
        if self._params.audio_in_enabled and not self._paused:
            await self.push_frame(frame)
            if self.audio_tap is not None:
                try:
                    self.audio_tap(frame.audio)
                except Exception:  # a meter must never stop the microphone
                    logger.exception("microphone audio tap failed")

    async def _stop_reader(self) -> None:
        if self._reader is not None:
            await self.cancel_task(self._reader)
            self._reader = None

    async def stop(self, frame: EndFrame) -> None:
        await self._stop_reader()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        await self._stop_reader()
        await super().cancel(frame)


class MicrophoneAudioEnd(FrameProcessor):
    """Where the microphone's audio leaves the pipeline: right after the user aggregator.

    pipecat passes every frame a processor does not consume on downstream, and the user
    aggregator (the last to listen: its VAD and turn strategies) pushes each microphone frame on
    before reading it. Nothing after it uses that audio, yet each 20 ms frame took eight more
    queue hops (the gate, the brain, the collector, the synthesizer, the aligner, the output, the
    tracker, the assistant aggregator): 400 a second per listening call on the event loop.
    """

    def __init__(self) -> None:
        super().__init__(name="MicrophoneAudioEnd")

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            return
        await self.push_frame(frame, direction)


class ParleyOutput(BaseOutputTransport):
    """Voice out: each chunk the pipeline writes is played by the paced track, in real time."""

    def __init__(self, params: TransportParams, track: PacedAudioTrack, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._track = track
        self.peer_ready = asyncio.Event()

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: Any) -> bool:
        # Before DTLS is up aiortc pulls nothing, so a write would wait forever and pipecat
        # would mark the output broken; the session queues its first words only once ready.
        if not self.peer_ready.is_set() or self._track.readyState != "live":
            return False
        await self._track.play(frame.audio)
        return True

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        """Frames that follow the voice leave stamped with their place in it.

        The output writes up to `LOOKAHEAD_PIECES` ahead of what is sent, so the frames it
        pushes after a chunk (the end of speech, the next message's start, mouth shapes and
        words) would reach the tracker that much early. Frames on the clock (pipecat's timed
        words) and the pipeline's own control and system frames are not stamped.
        """
        if direction == FrameDirection.DOWNSTREAM and isinstance(frame, OutputAudioRawFrame):
            # The audio chunks themselves, once played: nothing after the output uses them, and
            # each (25 a second while the persona speaks) took three more queue hops.
            return
        if (
            direction == FrameDirection.DOWNSTREAM
            and frame.pts is None
            and not isinstance(frame, EndFrame)
            and (
                not isinstance(frame, SystemFrame)
                or isinstance(frame, (BotStartedSpeakingFrame, BotStoppedSpeakingFrame))
            )
        ):
            frame.metadata[PLAYBACK_POSITION_KEY] = self._track.position
        await super().push_frame(frame, direction)


class ParleyTransport(BaseTransport):
    """Input and output processors sharing one peer connection's tracks."""

    def __init__(
        self,
        *,
        params: TransportParams,
        track: PacedAudioTrack,
        microphone: MicrophoneDrain,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self._input = ParleyInput(params, microphone, name=f"{self.name}#input")
        self._output = ParleyOutput(params, track, name=f"{self.name}#output")

    def input(self) -> ParleyInput:
        return self._input

    def output(self) -> ParleyOutput:
        return self._output


def transport_params() -> TransportParams:
    return TransportParams(
        audio_in_enabled=True,
        audio_in_sample_rate=INPUT_SAMPLE_RATE,
        audio_out_enabled=True,
        audio_out_sample_rate=OUTPUT_SAMPLE_RATE,
        # 40 ms per write: each chunk is a frame through the rest of the pipeline (a dozen queue
        # hops and handlers, ~0.5 ms of the event loop), so 20 ms chunks cost twice as much. A
        # viseme frame can leave the output up to one chunk before its audio: 40 ms of face
        # ahead of voice is within what viewers accept (audio may lag video by ~100 ms).
        audio_out_10ms_chunks=4,
        audio_out_end_silence_secs=0,  # the paced track plays silence by itself
    )
