"""`audio.metrics`: the level of the user's microphone and of the persona's voice, every 100 ms.

`AudioLevelMeter` is the pure part: 16-bit PCM in, one `AudioLevel` per 100 ms of audio out
(RMS, peak and energy in dBFS, worked out with numpy once per window, never a loop over
samples). Two taps feed it from audio the call already has; they exist only when the persona
sends metrics (`ConversationConfig.send_audio_metrics`), so a call without them runs none of it:

- `UserAudioTap`, on the input transport (`ParleyInput.audio_tap`), meters every microphone
  frame as the pipeline receives it (16 kHz) and takes the voice-activity fields from the VAD's
  own work (`InlineSileroVADAnalyzer.confidence` and `.speaking`): Silero is not run again. The
  VAD sits further down the pipeline, so a frame is metered with its verdict on the audio
  before it (one 20 ms frame behind, well inside a 100 ms window).
- `BotAudioTap`, a `PlaybackListener` of the paced track, meters every 20 ms piece actually
  handed to the browser (48 kHz), silence included. The persona's voice has no VAD: its
  `isSpeech` says some of its voice played in the window, and its `vadProb` is 1.0 then, 0
  otherwise.

Windows are counted in audio, not on a clock: both streams flow in real time, so a reading comes
about every 100 ms while audio flows, and none while it does not (no microphone yet).

Hooks, not pipecat processors, and numpy once per window, not per frame: in a running call
every numpy call and every processor hop meets cold caches, and the first version (a processor
after the input, numpy on every frame) cost 2.8 CPU ms per session-second for the two taps
alone (`bench/audio_metrics.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from calls.pipeline.transport import (
    INPUT_SAMPLE_RATE,
    OUTPUT_SAMPLE_RATE,
    PacedAudioTrack,
    ParleyInput,
    PlaybackListener,
)

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

    A window is `window_samples` of audio (chunks are split exactly at its edge); its audio is
    kept until the window is full and measured then, in one go. It is speech if any of its audio
    was added as speech, and its `vad_prob` is the highest one added in it: a syllable shows
    even if the window ends in a gap between words.
    """

    def __init__(self, *, sample_rate: int, window_seconds: float = METRICS_WINDOW_SECONDS) -> None:
        self.window_samples = max(1, round(sample_rate * window_seconds))
        self._window_reset()

    def _window_reset(self) -> None:
        self._audio = bytearray()  # the window's samples so far, except silence added unread
        self._samples = 0  # including that silence
        self._speech = False
        self._vad_prob = 0.0

    def add(self, pcm: bytes, *, is_speech: bool = False, vad_prob: float = 0.0) -> list[AudioLevel]:
        return self._add(pcm, len(pcm) // 2, is_speech, vad_prob)

    def add_silence(self, count: int, *, is_speech: bool = False, vad_prob: float = 0.0) -> list[AudioLevel]:
        """`count` samples of digital silence, without looking at them."""
        return self._add(None, count, is_speech, vad_prob)

    def _add(self, pcm: bytes | None, count: int, is_speech: bool, vad_prob: float) -> list[AudioLevel]:
        levels: list[AudioLevel] = []
        taken = 0
        while taken < count:
            part = min(count - taken, self.window_samples - self._samples)
            if pcm is not None:
                self._audio += pcm if part == count else pcm[taken * 2 : (taken + part) * 2]
            taken += part
            self._samples += part
            self._speech = self._speech or is_speech
            self._vad_prob = max(self._vad_prob, vad_prob)
            if self._samples == self.window_samples:
                levels.append(self._reading())
        return levels

    def _reading(self) -> AudioLevel:
        """The full window's level; the next window starts empty (first, whatever happens)."""
        audio, samples_in_window = self._audio, self._samples
        is_speech, vad_prob = self._speech, self._vad_prob
        self._window_reset()
        square_sum, peak = 0.0, 0
        if audio:
            samples = np.frombuffer(audio, dtype=np.int16)
            wide = samples.astype(np.float64)
            square_sum = float(np.dot(wide, wide))
            # max/min on int16, as Python ints: abs() of -32768 overflows int16.
            peak = max(int(samples.max()), -int(samples.min()))
        return audio_level(
            rms=math.sqrt(square_sum / samples_in_window) / FULL_SCALE,
            peak=peak / FULL_SCALE,
            is_speech=is_speech,
            vad_prob=vad_prob,
        )


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


class UserAudioTap:
    """On the input transport: meters each microphone frame, with the VAD's verdict."""

    def __init__(self, *, report: LevelReport, vad: VoiceActivity | None = None) -> None:
        self._report = report
        self._vad = vad  # None when nothing listens: then no frame is speech
        self._meter = AudioLevelMeter(sample_rate=INPUT_SAMPLE_RATE)

    def on_audio(self, pcm: bytes) -> None:
        vad = self._vad
        if vad is None:
            levels = self._meter.add(pcm)
        else:
            levels = self._meter.add(pcm, is_speech=vad.speaking, vad_prob=vad.confidence)
        for level in levels:
            self._report("user", level)

    def attach(self, microphone: ParleyInput) -> None:
        microphone.audio_tap = self.on_audio

    def detach(self, microphone: ParleyInput) -> None:
        if microphone.audio_tap == self.on_audio:
            microphone.audio_tap = None


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
