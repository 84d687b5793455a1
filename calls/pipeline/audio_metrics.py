"""`audio.metrics`: the level of the user's microphone and of the persona's voice, every 100 ms.

`AudioLevelMeter` is the pure part: 16-bit PCM in, one `AudioLevel` per 100 ms of audio out
(RMS, peak and energy in dBFS, worked out with numpy, never a loop over samples). Two taps feed
it from audio the call already has; they exist only when the persona sends metrics
(`ConversationConfig.send_audio_metrics`), so a call without them runs none of this:

- `UserAudioTap`, a pipecat processor right after the input transport, meters every microphone
  frame the pipeline sees (16 kHz) and takes the voice-activity fields from the VAD's own work
  (`InlineSileroVADAnalyzer.confidence` and `.speaking`): Silero is not run again. The VAD sits
  further down the pipeline, so a frame is metered with its verdict on the audio before it
  (one 20 ms frame behind, well inside a 100 ms window).
- `BotAudioTap`, a `PlaybackListener` of the paced track, meters every 20 ms piece actually
  handed to the browser (48 kHz), silence included. The persona's voice has no VAD: its
  `isSpeech` says some of its voice played in the window, and its `vadProb` is 1.0 then, 0
  otherwise.

Windows are counted in audio, not on a clock: both streams flow in real time, so a reading comes
about every 100 ms while audio flows, and none while it does not (no microphone yet).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from pipecat.frames.frames import Frame, InputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from calls.pipeline.transport import INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, PacedAudioTrack, PlaybackListener

# One reading per this much audio (seconds): the agent seed's "about every 100 ms".
METRICS_WINDOW_SECONDS = 0.1
# The quietest energy reported (dBFS): the seed's range is -60..0, and digital silence has none.
ENERGY_FLOOR_DB = -60.0
# 16-bit full scale: a sample of -32768 is a peak of 1.0.
FULL_SCALE = 32768.0

AudioSource = Literal["user", "bot"]


@dataclass(frozen=True)
class AudioLevel:
    """One window's reading, in the seed's units and ranges."""

    energy_db: float  # 20·log10(rms), clamped to -60..0
    rms: float  # 0..1 of full scale
    peak: float  # 0..1 of full scale
    is_speech: bool
    vad_prob: float  # 0..1


class AudioLevelMeter:
    """Windowed level of 16-bit mono PCM: `add` returns the readings of the windows it completed.

    A window is `window_seconds` of audio (chunks are split exactly at its edge). It is speech if
    any of its audio was added as speech, and its `vad_prob` is the highest one added in it: a
    syllable shows even if the window ends in a gap between words.
    """

    def __init__(self, *, sample_rate: int, window_seconds: float = METRICS_WINDOW_SECONDS) -> None:
        self.window_samples = max(1, round(sample_rate * window_seconds))
        self._window_reset()

    def _window_reset(self) -> None:
        self._samples = 0
        self._square_sum = 0.0
        self._peak = 0
        self._speech = False
        self._vad_prob = 0.0

    def add(self, pcm: bytes, *, is_speech: bool = False, vad_prob: float = 0.0) -> list[AudioLevel]:
        samples = np.frombuffer(pcm, dtype=np.int16)
        levels: list[AudioLevel] = []
        start = 0
        while start < samples.size:
            part = samples[start : start + self.window_samples - self._samples]
            start += part.size
            wide = part.astype(np.float64)
            # max/min on int16, turned into Python ints: abs() of -32768 overflows int16.
            peak = max(int(part.max()), -int(part.min()))
            level = self._take(part.size, float(np.dot(wide, wide)), peak, is_speech, vad_prob)
            if level is not None:
                levels.append(level)
        return levels

    def add_silence(self, count: int, *, is_speech: bool = False, vad_prob: float = 0.0) -> list[AudioLevel]:
        """`count` samples of digital silence, without looking at them."""
        levels: list[AudioLevel] = []
        while count > 0:
            part = min(count, self.window_samples - self._samples)
            count -= part
            level = self._take(part, 0.0, 0, is_speech, vad_prob)
            if level is not None:
                levels.append(level)
        return levels

    def _take(
        self, count: int, square_sum: float, peak: int, is_speech: bool, vad_prob: float
    ) -> AudioLevel | None:
        """Add one part that fits in the current window; the window's reading once it is full."""
        self._samples += count
        self._square_sum += square_sum
        self._peak = max(self._peak, peak)
        self._speech = self._speech or is_speech
        self._vad_prob = max(self._vad_prob, vad_prob)
        if self._samples < self.window_samples:
            return None
        rms = math.sqrt(self._square_sum / self._samples) / FULL_SCALE
        peak, is_speech, vad_prob = self._peak / FULL_SCALE, self._speech, self._vad_prob
        self._window_reset()
        return audio_level(rms=rms, peak=peak, is_speech=is_speech, vad_prob=float(vad_prob))


def audio_level(*, rms: float, peak: float, is_speech: bool, vad_prob: float) -> AudioLevel:
    """A reading in the seed's ranges, rounded (four decimals are finer than 16 bits can tell)."""
    rms = min(1.0, max(0.0, rms))
    energy_db = 20.0 * math.log10(rms) if rms > 0 else ENERGY_FLOOR_DB
    return AudioLevel(
        energy_db=round(min(0.0, max(ENERGY_FLOOR_DB, energy_db)), 2),
        rms=round(rms, 4),
        peak=round(min(1.0, max(0.0, peak)), 4),
        is_speech=is_speech,
        vad_prob=round(min(1.0, max(0.0, vad_prob)), 3),
    )


# Called with each reading, on the event loop; it must hand the reading on and return at once.
LevelReport = Callable[[AudioSource, AudioLevel], None]


class VoiceActivity(Protocol):
    """What the user tap reads from the VAD (`InlineSileroVADAnalyzer`)."""

    @property
    def confidence(self) -> float: ...

    @property
    def speaking(self) -> bool: ...


class UserAudioTap(FrameProcessor):
    """Right after the input transport: meters the microphone, with the VAD's verdict.

    In direct mode, so the microphone's frames cross it inline, without a queue and a task of
    its own (each hop costs the event loop; see `ParleyInput.push_audio_frame`).
    """

    def __init__(self, *, report: LevelReport, vad: VoiceActivity | None = None) -> None:
        super().__init__(name="UserAudioTap", enable_direct_mode=True)
        self._report = report
        self._vad = vad  # None when nothing listens: then no frame is speech
        self._meter = AudioLevelMeter(sample_rate=INPUT_SAMPLE_RATE)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            vad = self._vad
            levels = self._meter.add(
                frame.audio,
                is_speech=vad is not None and vad.speaking,
                vad_prob=vad.confidence if vad is not None else 0.0,
            )
            for level in levels:
                self._report("user", level)


class BotAudioTap(PlaybackListener):
    """On the paced track: meters each 20 ms piece as it is handed to the browser."""

    def __init__(self, *, report: LevelReport) -> None:
        self._report = report
        self._meter = AudioLevelMeter(sample_rate=OUTPUT_SAMPLE_RATE)

    def on_piece(self, *, pcm: bytes, started_at: float, speaking: bool) -> None:
        if speaking:
            levels = self._meter.add(pcm, is_speech=True, vad_prob=1.0)
        else:  # the track sends zeros between and after messages
            levels = self._meter.add_silence(len(pcm) // 2)
        for level in levels:
            self._report("bot", level)

    def attach(self, track: PacedAudioTrack) -> None:
        track.listeners.append(self)

    def detach(self, track: PacedAudioTrack) -> None:
        if self in track.listeners:
            track.listeners.remove(self)
