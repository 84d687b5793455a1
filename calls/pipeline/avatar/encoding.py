"""VP8 encoding of the avatar on the event loop's thread, for aiortc to send as it is.

aiortc encodes every video frame a track returns on asyncio's default thread pool. For a
320x240 face that is the wrong trade: encoding takes ~0.3-0.5 ms, while each hop to a pool
thread and back makes the event loop give up the GIL and wait to get it back, and with many
sessions in one process those waits (not the encoding) are what starves the loop (README,
"Performance"). A track that returns an encoded `av.Packet` is only packetised by aiortc
(`RTCRtpSender._next_encoded_frame`), so the avatar track encodes inline with this class.

aiortc has no public hook for a track that encodes itself: keyframe requests (PLI/FIR) and
the receiver's bitrate estimate (REMB) reach only the sender's own encoder object. `follow()`
reads both from the sender's private attributes (aiortc 1.16); it can go when aiortc
exposes them for pre-encoded tracks.
"""

from __future__ import annotations

from typing import Any

import av

# The settings aiortc's own VP8 encoder uses (aiortc/codecs/vpx.py, 1.16), so the rate control
# is the same as before, except the speed and the denoiser (below).
KEYFRAME_INTERVAL_FRAMES = 3000
MIN_QUANTIZER = 2
MAX_QUANTIZER = 56
# aiortc re-creates its encoder when the target bitrate moves by more than this share.
BITRATE_CHANGE_RATIO = 0.1


class Vp8InlineEncoder:
    """Encodes yuv420p frames to whole VP8 frames (one `av.Packet` each), on the caller's thread."""

    def __init__(self, *, bitrate: int) -> None:
        self.bitrate = bitrate
        self._codec: Any = None
        self._size: tuple[int, int] | None = None
        self._sender: Any = None

    def follow(self, sender: Any) -> None:
        """Take keyframe requests and bitrate changes from this `RTCRtpSender` (see module doc)."""
        self._sender = sender

    def keyframe_wanted(self) -> bool:
        """Whether the receiver asked for a keyframe that has not been encoded yet."""
        return bool(getattr(self._sender, "_RTCRtpSender__force_keyframe", False))

    def _sender_requests(self) -> tuple[bool, int | None]:
        """(a keyframe was asked for, the bitrate the sender's estimate wants), consuming the former."""
        sender = self._sender
        if sender is None:
            return False, None
        keyframe = bool(getattr(sender, "_RTCRtpSender__force_keyframe", False))
        if keyframe:
            sender._RTCRtpSender__force_keyframe = False
        encoder = getattr(sender, "_RTCRtpSender__encoder", None)
        bitrate = getattr(encoder, "target_bitrate", None)
        return keyframe, bitrate if isinstance(bitrate, int) else None

    def _open(self, width: int, height: int) -> None:
        codec = av.CodecContext.create("libvpx", "w")
        codec.width = width
        codec.height = height
        codec.bit_rate = self.bitrate
        codec.pix_fmt = "yuv420p"
        codec.gop_size = KEYFRAME_INTERVAL_FRAMES
        codec.qmin = MIN_QUANTIZER
        codec.qmax = MAX_QUANTIZER
        codec.options = {
            "bufsize": str(self.bitrate),  # a one-second rate-control buffer
            # libvpx's fastest real-time setting (aiortc uses -6): ~12 % less encoding time,
            # the same picture error on the face (0.16-0.17 of 255, measured).
            "cpu-used": "-16",
            "deadline": "realtime",
            "lag-in-frames": "0",
            "minrate": str(self.bitrate),  # minrate = maxrate = bit_rate: constant bitrate
            "maxrate": str(self.bitrate),
            # A drawn face has no camera noise: the temporal denoiser only cost ~25 % of the
            # encoding time (and softened the picture).
            "noise-sensitivity": "0",
            "overshoot-pct": "15",
            "partitions": "0",
            "static-thresh": "1",
            "undershoot-pct": "100",
        }
        codec.thread_count = 1  # a small picture; the other core serves other sessions
        self._codec = codec
        self._size = (width, height)

    def encode(self, frame: av.VideoFrame) -> av.Packet:
        keyframe, wanted_bitrate = self._sender_requests()
        if (
            wanted_bitrate is not None
            and abs(wanted_bitrate - self.bitrate) > self.bitrate * BITRATE_CHANGE_RATIO
        ):
            self.bitrate = wanted_bitrate
            self._codec = None
        if self._codec is None or self._size != (frame.width, frame.height):
            self._open(frame.width, frame.height)
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        pts, time_base = frame.pts, frame.time_base  # encoding rebases the frame to the codec's
        payload = b"".join(bytes(packet) for packet in self._codec.encode(frame))
        if keyframe:  # the caller may hand the same frame again (an unchanged picture)
            frame.pict_type = av.video.frame.PictureType.NONE
        packet = av.Packet(payload)
        packet.pts = pts
        packet.time_base = time_base
        return packet
