"""Silero voice activity detection: one shared model session, run inline on the caller's thread."""

from __future__ import annotations

import importlib.resources
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState

# Silero's thresholds (pipecat's defaults) and timings. A short start time makes the persona
# pause quickly when the user speaks over it; the pause is undone if it was nothing.
VAD_CONFIDENCE = 0.7
VAD_MIN_VOLUME = 0.6
VAD_START_SECONDS = 0.12
VAD_STOP_SECONDS = 0.2
# Below pipecat's volume floor a window is never speech, whatever Silero says, so the model is
# not run on it (a listening call is mostly quiet: Silero was 11 % of a loaded loop's samples).
# When the audio gets loud again the model first hears this many of the quiet windows before it
# (their confidences are not used), so it meets the speech with the sound that led into it.
VAD_LEAD_IN_WINDOWS = 2
# After this many quiet windows in a row (~0.5 s) the model's recurrent state starts afresh, as
# pipecat resets it during quiet every few seconds.
VAD_QUIET_RESET_WINDOWS = 16
# The onset detector (`VoiceGuard`), which must react to the first window of speech and so
# cannot wait for pipecat's smoothed volume, skips a window whose own RMS is below this (dBFS):
# a quiet room (-60 dBFS), or a microphone whose echo canceller took the persona's voice out.
# The VAD's floor (pipecat's 0.6: about -50 LUFS over the last 400 ms) would never confirm it
# as speech. With the persona greeting 8 callers in one process, the onset detector's Silero
# had been a third of the pipeline's samples (py-spy) on microphones that only heard the room.
ONSET_QUIET_DBFS = -55.0
ONSET_QUIET_RMS = 32768.0 * 10 ** (ONSET_QUIET_DBFS / 20)

_SILERO_MODEL = "silero_vad.onnx"
_silero_session: Any = None
_silero_lock = threading.Lock()


def silero_session() -> Any:
    """The process's one ONNX session of the Silero VAD model pipecat ships (loaded once).

    pipecat's `SileroVADAnalyzer` loads its own session for every analyzer: ~110 ms of CPU
    each, two per listening call (the VAD and `VoiceGuard`'s onset detector). With 8 calls
    starting at once on one process that was 1.8 s of CPU, most of their wait for a first
    frame. The model's recurrent state is an input and an output of each run, kept by each
    `SileroOnnxModel`, so one session serves every analyzer; ONNX Runtime runs a session from
    several threads at once.
    """
    global _silero_session
    with _silero_lock:
        if _silero_session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()  # as pipecat's SileroOnnxModel sets them
            options.inter_op_num_threads = 1
            options.intra_op_num_threads = 1
            path = importlib.resources.files("pipecat.audio.vad.data").joinpath(_SILERO_MODEL)
            _silero_session = ort.InferenceSession(
                str(path), providers=["CPUExecutionProvider"], sess_options=options
            )
        return _silero_session


class _SharedSileroModel(SileroOnnxModel):
    """pipecat's Silero wrapper (its own recurrent state) on the process's shared session."""

    def __init__(self) -> None:  # not super().__init__(): it would load a session of its own
        self.session = silero_session()
        self.reset_states()
        self.sample_rates = [8000, 16000]


class InlineSileroVADAnalyzer(SileroVADAnalyzer):
    """Silero VAD run on the caller's thread, on the process's shared model session.

    pipecat hands every 20 ms of audio to a one-thread pool; one 32 ms window takes ~0.25 ms,
    far less than the hop there and back, and with many calls in one process those hops are
    what starve the event loop (each can wait out the interpreter's switch interval).
    """

    def __init__(self, *, sample_rate: int | None = None, params: VADParams | None = None) -> None:
        # What pipecat's SileroVADAnalyzer.__init__ (pinned 1.14) does, but the model wrapper
        # takes the shared session (`silero_session`) instead of loading one.
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._model = _SharedSileroModel()
        self._windows_since_reset = 0
        self._low_confidence_windows = 0
        # Called with each new state (QUIET, STARTING, SPEAKING, STOPPING) as it is entered.
        self.state_listeners: list[Callable[[VADState], None]] = []
        self._state_seen = VADState.QUIET
        # Bytes of audio analysed: where the VAD is in the call's audio when it tells a listener
        # of a state (processors upstream of it may have taken more audio by then).
        self.bytes_analysed = 0
        self._analysing = False  # inside pipecat's analysis, which asks for the volume next
        self._window_volume: tuple[bytes, float] | None = None  # (window, its smoothed volume)
        self._quiet_windows: deque[bytes] = deque(maxlen=VAD_LEAD_IN_WINDOWS)
        self._quiet_run = 0  # windows in a row not given to the model
        self.windows_skipped = self.windows_scored = 0  # counts, for tests and benchmarks
        # The latest analysed window's voice confidence as the model gave it (0 for one below
        # the volume floor, which the model did not score): see `confidence`.
        self._confidence: Any = 0.0

    @property
    def confidence(self) -> float:
        """The voice confidence (0..1) of the latest window analysed, for `audio.metrics`."""
        confidence = self._confidence  # Silero gives a (1, 1) array
        return float(confidence.item() if isinstance(confidence, np.ndarray) else confidence)

    @property
    def speaking(self) -> bool:
        """The user is speaking as the VAD reports it: from `speech.started` to `speech.ended`."""
        return self._state_seen in (VADState.SPEAKING, VADState.STOPPING)

    def voice_confidence(self, buffer: bytes) -> float:
        """Silero's confidence, or 0 without running it when the window is below the volume floor.

        pipecat asks for the confidence, then for the window's smoothed volume, and counts a
        window as speech only if both pass their thresholds; the volume is worked out first here
        (and handed back when it asks), so a window that cannot be speech costs no inference.
        """
        if not self._analysing:  # asked on its own: the model always runs
            return super().voice_confidence(buffer)
        volume = super()._get_smoothed_volume(buffer)
        self._window_volume = (buffer, volume)
        return self._scored_unless_quiet(buffer, quiet=volume < self._params.min_volume)

    def onset_confidence(self, buffer: bytes) -> float:
        """Silero's confidence for the onset detector, or 0 without running it when the window
        itself is quiet (below `ONSET_QUIET_DBFS`; no smoothing, so speech's first window counts)."""
        samples = np.frombuffer(buffer, dtype=np.int16).astype(np.float32)
        rms = float(np.sqrt(np.dot(samples, samples) / samples.size)) if samples.size else 0.0
        return self._scored_unless_quiet(buffer, quiet=rms < ONSET_QUIET_RMS)

    def _scored_unless_quiet(self, buffer: bytes, *, quiet: bool) -> float:
        """The model's confidence, or 0 for a quiet window (kept as lead-in, not scored)."""
        if quiet:
            self._quiet_windows.append(buffer)
            self._quiet_run += 1
            self.windows_skipped += 1
            self._confidence = 0.0
            return 0.0
        if self._quiet_run:
            if self._quiet_run >= VAD_QUIET_RESET_WINDOWS:
                self._model.reset_states()
            for quiet_window in self._quiet_windows:  # the sound leading into this window
                super().voice_confidence(quiet_window)
            self._quiet_windows.clear()
            self._quiet_run = 0
        self.windows_scored += 1
        self._confidence = super().voice_confidence(buffer)
        return self._confidence

    def _get_smoothed_volume(self, audio: bytes) -> float:
        if self._window_volume is not None and self._window_volume[0] is audio:
            volume = self._window_volume[1]
            self._window_volume = None
            return volume
        return super()._get_smoothed_volume(audio)

    async def analyze_audio(self, buffer: bytes) -> VADState:
        self.bytes_analysed += len(buffer)
        self._analysing = True
        try:
            state = self._run_analyzer(buffer)
        finally:
            self._analysing = False
        if state != self._state_seen:
            self._state_seen = state
            for listener in self.state_listeners:
                listener(state)
        return state


def vad_analyzer_build() -> InlineSileroVADAnalyzer:
    return InlineSileroVADAnalyzer(
        params=VADParams(
            confidence=VAD_CONFIDENCE,
            start_secs=VAD_START_SECONDS,
            stop_secs=VAD_STOP_SECONDS,
            min_volume=VAD_MIN_VOLUME,
        )
    )
