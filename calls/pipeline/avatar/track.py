"""The avatar as an aiortc video track: the animated face at 20 fps, lip-synced to the voice (an
unchanged picture is sent again only 4 times a second).

Timing contract (one clock for everything)
------------------------------------------
The track has a `clock` (default `time.monotonic`, the clock `PacedAudioTrack` uses). Frame n
is due at `start + n / fps` on that clock, is drawn for exactly that moment, and is handed to
aiortc then, with `pts = n * 90000 / fps` (time base 1/90000). Whoever plays the voice tells
`track.animator` about it in the same clock's seconds:

- `animator.speech_timeline_push(start_time, events)`: `start_time` is when the first sample
  of that audio is handed to the encoder (or will be), and each event `(offset_seconds,
  viseme, openness)` is a phoneme's start relative to it (`animator.phoneme_events` turns
  espeak-ng phoneme timings into events). Push before the audio plays; a late push still
  works from the moment it arrives.
- `animator.audio_level_push(time, rms)`: the fallback when no timings exist. Given an
  `audio=` track with a `listeners` list (`PacedAudioTrack`), this track registers itself and
  feeds the level of every 20 ms piece at the moment the piece is sent.
- `animator.speech_stop(time)`: barge-in; the mouth closes within ~100 ms.

Because audio pieces and video frames are stamped on the same clock when they are sent, and
both tracks share one MediaStream, the browser's A/V sync keeps them together on the wire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, VideoStreamTrack

from calls.pipeline.avatar.animator import FaceAnimator
from calls.pipeline.avatar.encoding import Vp8InlineEncoder
from calls.pipeline.avatar.face import FaceRenderer, face_layers_cached
from calls.pipeline.avatar.look import FaceLook
from calls.pipeline.avatar.portrait import PortraitRenderer, PortraitUnavailable, portrait_layers_cached

logger = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000  # RTP video clock, Hz
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)
DEFAULT_FPS = 20
# If frames fall this far behind the clock (a stalled loop), skip ahead instead of bursting.
MAX_LAG_SECONDS = 0.25
# An unchanged picture (an idle face between blinks) is sent again only this often (seconds):
# the browser holds the last frame meanwhile. Every frame sent costs the event loop its VP8
# encoding (~0.2 ms even for a repeat), RTP, SRTP and a datagram; a call's idle face went from
# 20 frames a second to about 5. A changed picture is sent at its own due time, as before.
REPEAT_SEND_SECONDS = 0.25


Renderer = FaceRenderer | PortraitRenderer


def renderer_create(look: FaceLook, *, width: int = 320, height: int = 240) -> Renderer:
    """The look's portrait, animated, if it has one that can be read; else the drawn face.

    Slow (50-150 ms) the first time a look is seen in this process, fast after that: the
    expensive part is shared (`renderer_ready` says which it will be).
    """
    if look.portrait:
        try:
            return PortraitRenderer(look, width=width, height=height)
        except PortraitUnavailable as error:
            logger.warning("avatar portrait not shown, drawing the face instead: %s", error)
        look = dataclasses.replace(look, portrait=None)
    return FaceRenderer(look, width=width, height=height)


def renderer_ready(look: FaceLook, *, width: int = 320, height: int = 240) -> bool:
    """Whether `renderer_create` would be fast: the look is already prepared in this process."""
    if look.portrait:
        return portrait_layers_cached(look, width, height)
    return face_layers_cached(look, width, height)


class _LevelFeed:
    """A `PlaybackListener` for `PacedAudioTrack`: passes each piece's level to the animator.

    It holds the animator, not the track, so the audio track never keeps the video track alive.
    """

    def __init__(self, animator: FaceAnimator) -> None:
        self.animator = animator

    def on_piece(self, *, pcm: bytes, started_at: float, speaking: bool) -> None:
        if not speaking:
            self.animator.audio_level_push(started_at, 0.0)
            return
        samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
        rms = float(np.sqrt(np.mean(samples * samples))) / 32768.0 if samples.size else 0.0
        self.animator.audio_level_push(started_at, rms)


class AvatarVideoTrack(VideoStreamTrack):
    """The persona's face as video: `FaceAnimator` decides, a renderer draws, inline.

    The renderer is the look's portrait if it has one (`portrait`, a file path), else the drawn
    face. Constructing the track is cheap: when the look is not prepared in this process yet and
    an event loop runs, the renderer is built in a worker thread (while ICE and DTLS connect),
    and the first `recv()` waits for it.

    With `encode=True`, `recv()` returns VP8 packets encoded on the caller's thread instead of
    raw frames (see `encoding.py`); call `sender_attach()` with the track's `RTCRtpSender` so
    keyframe requests and bitrate estimates still reach the encoder.
    """

    kind = "video"

    def __init__(
        self,
        look: FaceLook | Mapping[str, Any] | None = None,
        audio: Any = None,
        *,
        portrait: str | None = None,
        fps: int = DEFAULT_FPS,
        width: int = 320,
        height: int = 240,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        encode: bool = False,
    ) -> None:
        super().__init__()
        if VIDEO_CLOCK_RATE % fps:
            raise ValueError("fps must divide 90000 so pts steps are whole")
        self.fps = fps
        self.clock = clock
        if not isinstance(look, FaceLook):
            look = FaceLook.from_dict(look, portrait=portrait)
        elif portrait:
            look = dataclasses.replace(look, portrait=portrait)
        self.look = look
        self.renderer: Renderer | None = None
        self._renderer_build: asyncio.Future[Renderer] | None = None
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or renderer_ready(look, width=width, height=height):
            self.renderer = renderer_create(look, width=width, height=height)
        else:
            self._renderer_build = loop.run_in_executor(
                None, lambda: renderer_create(look, width=width, height=height)
            )
        self.animator = FaceAnimator(fps=fps, seed=seed)
        self._encoder: Vp8InlineEncoder | None = None
        self._last_key: tuple[Any, ...] | None = None
        self._last_frame: av.VideoFrame | None = None
        self._last_sent_index: int | None = None  # the latest frame sent (encoding inline)
        if encode:
            from aiortc.codecs import vpx

            self._encoder = Vp8InlineEncoder(bitrate=vpx.DEFAULT_BITRATE)
        self._pts_step = VIDEO_CLOCK_RATE // fps
        self._start_time: float | None = None
        self._frame_index = 0
        self._audio = audio
        self._level_feed: _LevelFeed | None = None
        listeners = getattr(audio, "listeners", None)
        if isinstance(listeners, list):
            self._level_feed = _LevelFeed(self.animator)
            listeners.append(self._level_feed)

    @property
    def frame_time(self) -> float | None:
        """When the latest frame was due, on `clock` (None before the first frame)."""
        if self._start_time is None:
            return None
        return self._start_time + self._frame_index / self.fps

    async def next_timestamp(self) -> tuple[int, Fraction]:
        """Wait until the next frame is due; its pts (90 kHz) and time base."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start_time is None:
            self._start_time = self.clock()
            self._frame_index = 0
        else:
            self._frame_index += 1
            # Due times are computed from the start, never from the last frame: no drift.
            delay = self._start_time + self._frame_index / self.fps - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
                if self.readyState != "live":
                    raise MediaStreamError
            elif -delay > MAX_LAG_SECONDS:
                self._frame_index += int(-delay * self.fps)
        return self._frame_index * self._pts_step, VIDEO_TIME_BASE

    def sender_attach(self, sender: Any) -> None:
        """The `RTCRtpSender` sending this track: its keyframe requests and bitrate are followed."""
        if self._encoder is not None:
            self._encoder.follow(sender)

    async def recv(self) -> av.VideoFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self.renderer is None:
            # The first frame waits for the renderer being built off the loop; the clock starts after.
            build = self._renderer_build
            assert build is not None
            try:
                self.renderer = await build
            except asyncio.CancelledError:
                if build.cancelled() and self.readyState != "live":
                    raise MediaStreamError from None  # stopped while it was being built
                raise
            self._renderer_build = None
        while True:
            pts, time_base = await self.next_timestamp()
            frame_time = self.frame_time
            assert frame_time is not None
            state = self.animator.state_at(frame_time)
            key = self.renderer.frame_key(state)
            # Most idle frames repeat the last one (86 % of them, measured). Only when encoding
            # inline, where the frame is used up at once (whoever gets raw frames may keep them,
            # and aiortc's encoder marks a keyframe on the frame itself): a repeated picture is
            # neither drawn again nor, within `REPEAT_SEND_SECONDS`, encoded and sent again.
            repeat = self._encoder is not None and key == self._last_key and self._last_frame is not None
            if not repeat or not self._repeat_skippable():
                break
        if repeat:
            frame = self._last_frame
        else:
            frame = self.renderer.render(state)
            self._last_key, self._last_frame = key, frame
        frame.pts = pts
        frame.time_base = time_base
        if self._encoder is not None:
            self._last_sent_index = self._frame_index
            return self._encoder.encode(frame)
        return frame

    def _repeat_skippable(self) -> bool:
        """Whether a frame that repeats the last picture can go unsent (encoding inline only)."""
        assert self._encoder is not None
        last = self._last_sent_index
        if last is None or self._frame_index - last >= max(1, round(REPEAT_SEND_SECONDS * self.fps)):
            return False
        return not self._encoder.keyframe_wanted()

    def stop(self) -> None:
        """End the track and unhook it from the audio track."""
        if self._level_feed is not None:
            listeners = getattr(self._audio, "listeners", [])
            if self._level_feed in listeners:
                listeners.remove(self._level_feed)
            self._level_feed = None
        self._audio = None
        if self._renderer_build is not None:
            # The thread finishes on its own (its result still lands in the shared cache).
            self._renderer_build.cancel()
            self._renderer_build = None
        super().stop()
