"""The microphone path: each received Opus packet is handed on at once and decoded on the event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import av
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

from calls import live

logger = logging.getLogger(__name__)


class MicrophoneJitterBuffer(JitterBuffer):
    """Each audio RTP packet is one whole Opus frame: it is decoded as soon as it arrives.

    A packet older than one already handed on is dropped (too late to be heard in order); a
    lost one is simply skipped.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity=capacity, prefetch=0)
        self._next: int | None = None  # the sequence number expected next

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        if self._next is not None and (packet.sequence_number - self._next) & 0xFFFF >= 0x8000:
            return False, None
        self._next = (packet.sequence_number + 1) & 0xFFFF
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


class MicrophoneInlineDecoder:
    """Stands in for a microphone receiver's decoder queue: each packet is decoded on the loop.

    aiortc hands every received frame to a decoder thread through a `queue.Queue`, and the
    thread hands each decoded frame back with `run_coroutine_threadsafe` (a task and a wake-up
    of the loop per frame). Decoding 20 ms of Opus takes ~0.05 ms; the two handoffs cost far
    more, and the GIL that each one passes to the other thread is what the event loop then
    waits for: with 8 listening calls in a process, 7 % of the loop's samples were in the
    handoff (py-spy). As with the encoders (`transport.OpusPieceEncoder`), it is done inline.

    aiortc's decoder thread still starts; it waits here (`get`) until the receiver stops, and
    then ends the track as it would have.
    """

    def __init__(self, frames: asyncio.Queue[Any]) -> None:
        self._frames = frames
        self._decoder: Any = None
        self._codec_name: str | None = None
        self._stopped = threading.Event()

    def put(self, task: tuple[Any, Any] | None) -> None:
        """From the receiver (on the loop): a (codec, encoded frame) to decode, or None to stop."""
        if task is None:
            self._stopped.set()
            return
        codec, encoded_frame = task
        if codec.name != self._codec_name:
            # `calls.live.get_decoder`, read at each use so that tests can wrap it there.
            self._decoder, self._codec_name = live.get_decoder(codec), codec.name
        try:
            frames = self._decoder.decode(encoded_frame)
        except av.FFmpegError as error:  # one bad packet: the next ones still decode
            logger.warning("microphone packet could not be decoded: %s", error)
            return
        for frame in frames:
            self._frames.put_nowait(frame)

    def get(self) -> None:
        """aiortc's decoder thread: nothing to decode there; returns once the receiver stops."""
        self._stopped.wait()
        return None


def microphone_decode_inline(peer: Any, track: Any) -> None:
    """Give the receiver of this remote audio track a `MicrophoneInlineDecoder`.

    Only before the receiver starts (its "track" event): the decoder thread takes the queue
    it finds then.
    """
    for receiver in peer.getReceivers():
        if receiver.track is track and hasattr(receiver, "_RTCRtpReceiver__decoder_queue"):
            if receiver._RTCRtpReceiver__decoder_thread is None:
                receiver._RTCRtpReceiver__decoder_queue = MicrophoneInlineDecoder(track._queue)


def microphone_jitter_buffer_shorten(peer: Any, track: Any) -> None:
    """Give the receiver of this remote audio track a `MicrophoneJitterBuffer`.

    aiortc holds 4 audio packets (80 ms) before decoding, and even with fewer its buffer hands
    a packet on only when the next one arrives (it waits to know a frame is complete, which an
    audio packet always is): 20 ms more. Parley does not play the microphone out, it listens
    to it, so every packet it holds back only makes barge-in and turn-taking slower.
    """
    for receiver in peer.getReceivers():
        if receiver.track is track and hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
            buffer = receiver._RTCRtpReceiver__jitter_buffer
            receiver._RTCRtpReceiver__jitter_buffer = MicrophoneJitterBuffer(capacity=buffer.capacity)
