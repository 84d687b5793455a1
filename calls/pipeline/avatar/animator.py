"""Brings the face to life: idle motion (blinks, sway, gaze) and lip sync from speech timings.

All times are seconds on one clock, the video track's (`time.monotonic()` by default), which is
also the clock `PacedAudioTrack` stamps its pieces with. `state_at(t)` must be called with
non-decreasing times; it is deterministic for a given seed and sequence of calls.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections import deque
from collections.abc import Iterable

from calls.pipeline.avatar.look import FaceState, Viseme

# Blinks: every 2-6 s, sometimes doubled, three frames long (~150 ms at 20 fps).
BLINK_INTERVAL_SECONDS = (2.0, 6.0)
DOUBLE_BLINK_CHANCE = 0.12
DOUBLE_BLINK_GAP_SECONDS = 0.3
# The lid's path, one value per frame from the blink's start; the peak lands on a frame.
BLINK_PROFILE = (0.55, 1.0, 0.45, 0.0)
# Gaze: every 3-8 s look a little away for 0.4-1.5 s; saccades take about one frame.
GAZE_INTERVAL_SECONDS = (3.0, 8.0)
GAZE_HOLD_SECONDS = (0.4, 1.5)
GAZE_SACCADE_SECONDS = 0.04
# Head: a slow sway (design px) and breathing; a little more movement while talking.
SWAY_PX = 1.4
BREATH_PX = 0.7
BREATH_PERIOD_SECONDS = 4.5
# Mouth easing time constants: open fast, close a little slower, snap shut on interruption.
MOUTH_ATTACK_SECONDS = 0.035
MOUTH_RELEASE_SECONDS = 0.05
MOUTH_STOP_SECONDS = 0.022
# Lips move slightly ahead of the sound they make, which reads as in sync.
SPEECH_LEAD_SECONDS = 0.03
# A timeline event holds at most this long with nothing after it (a lost final rest).
TIMELINE_HOLD_SECONDS = 0.35
# Keys already passed are dropped once this many have gathered (a few times a sentence). Kept,
# a call's keys grew with everything the persona said, and each frame looked through them all:
# 3 % of a process's samples with 8 calls talking (py-spy).
KEYS_PRUNE_AFTER = 64
# How far beyond a frame's stretch the keys are looked up before the exact comparison (seconds).
KEY_SEARCH_MARGIN_SECONDS = 1e-6
# Audio-level fallback: a level older than this is stale (the audio stopped reporting).
LEVEL_STALE_SECONDS = 0.1
LEVEL_HISTORY_SECONDS = 1.0
# RMS (0..1 full scale) in dBFS mapped onto openness 0..1.
LEVEL_SILENT_DBFS = -48.0
LEVEL_LOUD_DBFS = -18.0
# Brows: resting lift, and lifts while speaking every 0.8-2.2 s.
BROW_REST = 0.12
BROW_LIFT_INTERVAL_SECONDS = (0.8, 2.2)
BROW_LIFT_SECONDS = 0.45
BROW_EASE_SECONDS = 0.12
# Below this the mouth counts as closed (and is drawn exactly closed).
MOUTH_CLOSED_BELOW = 0.02

SpeechEvent = tuple[float, Viseme | str, float]

# espeak-ng phoneme mnemonics (the vowel and consonant symbols of its English voices).
_VOWEL_VISEMES = {
    "a": Viseme.OPEN,
    "A": Viseme.OPEN,
    "V": Viseme.OPEN,
    "@": Viseme.OPEN,
    "3": Viseme.OPEN,
    "0": Viseme.ROUND,
    "E": Viseme.WIDE,
    "e": Viseme.WIDE,
    "i": Viseme.WIDE,
    "I": Viseme.WIDE,
    "o": Viseme.ROUND,
    "O": Viseme.ROUND,
    "u": Viseme.ROUND,
    "U": Viseme.ROUND,
}
_CONSONANT_VISEMES = {
    "p": Viseme.CLOSED,
    "b": Viseme.CLOSED,
    "m": Viseme.CLOSED,
    "f": Viseme.TEETH_ON_LIP,
    "v": Viseme.TEETH_ON_LIP,
    "w": Viseme.ROUND,
    "r": Viseme.ROUND,
    "S": Viseme.ROUND,
    "Z": Viseme.ROUND,
    "tS": Viseme.ROUND,
    "dZ": Viseme.ROUND,
    "l": Viseme.OPEN,
    "T": Viseme.WIDE,
    "D": Viseme.WIDE,
    "s": Viseme.WIDE,
    "z": Viseme.WIDE,
    "t": Viseme.WIDE,
    "d": Viseme.WIDE,
    "n": Viseme.WIDE,
    "k": Viseme.WIDE,
    "g": Viseme.WIDE,
    "N": Viseme.WIDE,
    "h": Viseme.WIDE,
    "j": Viseme.WIDE,
}
# How open each phoneme class leaves the mouth (vowels open most; consonants barely).
VOWEL_OPENNESS = {Viseme.OPEN: 0.85, Viseme.WIDE: 0.6, Viseme.ROUND: 0.65}
CONSONANT_OPENNESS = {
    Viseme.CLOSED: 0.0,
    Viseme.TEETH_ON_LIP: 0.3,
    Viseme.ROUND: 0.35,
    Viseme.OPEN: 0.35,
    Viseme.WIDE: 0.25,
}


def viseme_for_phoneme(mnemonic: str) -> Viseme:
    """The mouth shape for an espeak-ng phoneme mnemonic ('a', 'tS', "'aI", 'i:', '_:' ...)."""
    return _phoneme_shape(mnemonic)[0]


def openness_for_phoneme(mnemonic: str) -> float:
    """How open the mouth is at a phoneme's peak, 0..1."""
    return _phoneme_shape(mnemonic)[1]


def _phoneme_shape(mnemonic: str) -> tuple[Viseme, float]:
    # Stress and length marks and espeak's ties carry no mouth shape.
    symbol = mnemonic.strip().lstrip("',%=").replace(":", "").replace("#", "").replace("-", "")
    if not symbol or symbol.startswith("_"):
        return Viseme.CLOSED, 0.0
    if symbol[:2] in _CONSONANT_VISEMES:
        shape = _CONSONANT_VISEMES[symbol[:2]]
        return shape, CONSONANT_OPENNESS[shape]
    # Diphthongs ('aI', 'aU', 'oU', 'eI') take the shape of their first, most open part.
    if symbol[0] in _VOWEL_VISEMES:
        shape = _VOWEL_VISEMES[symbol[0]]
        return shape, VOWEL_OPENNESS[shape]
    if symbol[0] in _CONSONANT_VISEMES:
        shape = _CONSONANT_VISEMES[symbol[0]]
        return shape, CONSONANT_OPENNESS[shape]
    return Viseme.WIDE, 0.2  # unknown sound: a small neutral opening beats a frozen mouth


def phoneme_events(
    phonemes: Iterable[tuple[float, str]], end_offset: float | None = None
) -> list[SpeechEvent]:
    """(offset seconds, espeak mnemonic) pairs → speech timeline events, closing at `end_offset`."""
    events: list[SpeechEvent] = [(offset, *_phoneme_shape(mnemonic)) for offset, mnemonic in phonemes]
    if end_offset is not None:
        events.append((end_offset, Viseme.CLOSED, 0.0))
    return events


def _ease_toward(value: float, target: float, seconds: float, time_constant: float) -> float:
    if seconds <= 0:
        return value
    return target + (value - target) * math.exp(-seconds / time_constant)


class FaceAnimator:
    """Produces a `FaceState` for any frame time from idle behaviour and pushed speech."""

    def __init__(self, fps: float = 20.0, seed: int | None = None) -> None:
        self.fps = fps
        self._frame_seconds = 1.0 / fps
        self._random = random.Random(seed)
        self._time: float | None = None
        # Speech: timeline keys (time, viseme, openness), sorted; and the audio level history.
        self._keys: list[tuple[float, Viseme, float]] = []
        self._levels: deque[tuple[float, float]] = deque()
        self._level_shape = Viseme.OPEN
        self._level_was_quiet = True
        self._stopped_at: float | None = None
        # Smoothed outputs.
        self._mouth_open = 0.0
        self._mouth_shape = Viseme.CLOSED
        self._speaking = False
        self._brow = BROW_REST
        # Idle schedules, fixed once the first time is known.
        self._next_blink = 0.0
        self._blink_started: float | None = None
        self._next_gaze = 0.0
        self._gaze_from = (0.0, 0.0)
        self._gaze_to = (0.0, 0.0)
        self._gaze_moved_at = -1.0
        self._gaze_return_at: float | None = None
        self._next_brow_lift = 0.0
        self._brow_lift_until = -1.0
        self._brow_lift = 0.0
        phases = [self._random.uniform(0, 2 * math.pi) for _ in range(3)]
        self._sway_phases = phases

    # -- input ---------------------------------------------------------------------------------

    def speech_timeline_push(self, start_time: float, events: Iterable[SpeechEvent]) -> None:
        """Schedule mouth shapes: each event (offset s, viseme, openness) holds until the next.

        `start_time` is when the audio these timings belong to starts playing, on the animator's
        clock. Keys already scheduled at or after `start_time` are replaced, so a synthesiser
        may push sentence after sentence, or re-push a corrected tail.
        """
        new_keys = sorted(
            (start_time + float(offset), Viseme(viseme), min(max(float(openness), 0.0), 1.0))
            for offset, viseme, openness in events
        )
        if not new_keys:
            return
        cut = bisect.bisect_left(self._keys, (start_time,))
        del self._keys[cut:]
        self._keys.extend(new_keys)
        if self._stopped_at is not None and new_keys[0][0] >= self._stopped_at:
            self._stopped_at = None

    def audio_level_push(self, time: float, rms: float) -> None:
        """The level (RMS, 0..1 of full scale) of audio that starts playing at `time`.

        Used to move the mouth whenever no speech timeline covers the moment.
        """
        self._levels.append((time, max(float(rms), 0.0)))
        while self._levels and self._levels[0][0] < time - LEVEL_HISTORY_SECONDS:
            self._levels.popleft()
        if self._stopped_at is not None and time > self._stopped_at and rms > 0:
            self._stopped_at = None

    def speech_stop(self, time: float) -> None:
        """The voice was cut off at `time`: drop what is scheduled and close the mouth quickly."""
        cut = bisect.bisect_left(self._keys, (time,))
        del self._keys[cut:]
        while self._levels and self._levels[-1][0] >= time:
            self._levels.pop()
        self._stopped_at = time

    # -- output --------------------------------------------------------------------------------

    def state_at(self, time: float) -> FaceState:
        """The face at `time` (call with non-decreasing times, once per frame)."""
        if self._time is None:
            self._start(time)
            self._time = time
        previous = self._time
        if time > previous:
            self._advance_mouth(previous, time)
            self._time = time
        speaking = self._speaking or self._mouth_open > MOUTH_CLOSED_BELOW
        blink = self._blink(time)
        gaze_x, gaze_y = self._gaze(time)
        brow = self._brows(previous, time, speaking)
        head_dx, head_dy, breath = self._head(time)
        openness = self._mouth_open if self._mouth_open >= MOUTH_CLOSED_BELOW else 0.0
        return FaceState(
            mouth_open=openness,
            mouth_shape=self._mouth_shape if openness > 0 else Viseme.CLOSED,
            blink=blink,
            head_dx=head_dx,
            head_dy=head_dy + 0.5 * openness,  # a slight nod with the jaw
            gaze_dx=gaze_x,
            gaze_dy=gaze_y,
            brow_raise=brow,
            breath=breath,
        )

    # -- speech --------------------------------------------------------------------------------

    def _mouth_target(self, time: float) -> tuple[Viseme, float]:
        if self._stopped_at is not None and time >= self._stopped_at:
            return Viseme.CLOSED, 0.0
        at = time + SPEECH_LEAD_SECONDS
        index = bisect.bisect_right(self._keys, (at, "\uffff")) - 1
        if index >= 0:
            key_time, viseme, openness = self._keys[index]
            last = index == len(self._keys) - 1
            if not (last and at - key_time > TIMELINE_HOLD_SECONDS):
                return viseme, openness
        return self._level_target(at)

    def _level_target(self, at: float) -> tuple[Viseme, float]:
        level = 0.0
        for stamp, rms in reversed(self._levels):
            if stamp <= at:
                level = rms if at - stamp <= LEVEL_STALE_SECONDS else 0.0
                break
        if level <= 0:
            self._level_was_quiet = True
            return Viseme.CLOSED, 0.0
        dbfs = 20.0 * math.log10(level)
        openness = min(max((dbfs - LEVEL_SILENT_DBFS) / (LEVEL_LOUD_DBFS - LEVEL_SILENT_DBFS), 0.0), 1.0)
        if openness < 0.12:
            self._level_was_quiet = True
            return Viseme.CLOSED, 0.0
        if self._level_was_quiet:
            # A new syllable: vary the vowel so the envelope does not look like a flapping jaw.
            self._level_shape = self._random.choices(
                (Viseme.OPEN, Viseme.WIDE, Viseme.ROUND), weights=(5, 3, 2)
            )[0]
            self._level_was_quiet = False
        return self._level_shape, openness

    def _advance_mouth(self, start: float, end: float) -> None:
        """Ease the mouth from `start` to `end`, in pieces split where the target changes."""
        keys = self._keys
        # Only the keys of this stretch (a little wider: the exact test is below); the list is
        # sorted, and holds only what is still to come (`_keys_prune`).
        first = bisect.bisect_left(keys, (start + SPEECH_LEAD_SECONDS - KEY_SEARCH_MARGIN_SECONDS,))
        last = bisect.bisect_right(keys, (end + SPEECH_LEAD_SECONDS + KEY_SEARCH_MARGIN_SECONDS, "\uffff"))
        cuts = [start]
        for key_time, _, _ in keys[first:last]:
            moment = key_time - SPEECH_LEAD_SECONDS
            if start < moment < end:
                cuts.append(moment)
        if self._stopped_at is not None and start < self._stopped_at < end:
            cuts.append(self._stopped_at)
        cuts = sorted(set(cuts))
        cuts.append(end)
        for piece_start, piece_end in itertools.pairwise(cuts):
            viseme, target = self._mouth_target(piece_start)
            self._speaking = target > 0
            stopping = self._stopped_at is not None and piece_start >= self._stopped_at
            if stopping:
                constant = MOUTH_STOP_SECONDS
            elif target > self._mouth_open:
                constant = MOUTH_ATTACK_SECONDS
            else:
                constant = MOUTH_RELEASE_SECONDS
            self._mouth_open = _ease_toward(self._mouth_open, target, piece_end - piece_start, constant)
            # Take on a new shape when opening into it; while closing, keep the last one so
            # the lips do not jump to another shape on their way shut.
            if target > 0.05 or viseme is Viseme.TEETH_ON_LIP:
                self._mouth_shape = viseme
            elif viseme is Viseme.CLOSED and self._mouth_open < 0.12:
                self._mouth_shape = Viseme.CLOSED
        self._keys_prune(end)

    def _keys_prune(self, time: float) -> None:
        """Forget the keys no later frame can use: all before the last one at or before `time`
        (plus the lead). Frames come in time order, so the mouth only ever looks forward."""
        keep_from = bisect.bisect_right(self._keys, (time + SPEECH_LEAD_SECONDS, "\uffff")) - 1
        if keep_from >= KEYS_PRUNE_AFTER:
            del self._keys[:keep_from]

    # -- idle life -------------------------------------------------------------------------------

    def _start(self, time: float) -> None:
        self._next_blink = time + self._random.uniform(0.8, 3.0)
        self._next_gaze = time + self._random.uniform(*GAZE_INTERVAL_SECONDS)
        self._next_brow_lift = time

    def _blink(self, time: float) -> float:
        if self._blink_started is None and time >= self._next_blink:
            self._blink_started = time
        if self._blink_started is None:
            return 0.0
        phase = (time - self._blink_started) / self._frame_seconds
        if phase >= len(BLINK_PROFILE) - 1:
            self._blink_started = None
            gap = (
                DOUBLE_BLINK_GAP_SECONDS
                if self._random.random() < DOUBLE_BLINK_CHANCE
                else self._random.uniform(*BLINK_INTERVAL_SECONDS)
            )
            self._next_blink = time + gap
            return 0.0
        index = int(phase)
        fraction = phase - index
        return BLINK_PROFILE[index] + (BLINK_PROFILE[index + 1] - BLINK_PROFILE[index]) * fraction

    def _gaze(self, time: float) -> tuple[float, float]:
        if self._gaze_return_at is not None and time >= self._gaze_return_at:
            self._gaze_from, self._gaze_to = self._current_gaze(time), (0.0, 0.0)
            self._gaze_moved_at = time
            self._gaze_return_at = None
            self._next_gaze = time + self._random.uniform(*GAZE_INTERVAL_SECONDS)
        elif self._gaze_return_at is None and time >= self._next_gaze:
            target = (self._random.uniform(-2.6, 2.6), self._random.uniform(-1.2, 0.8))
            self._gaze_from, self._gaze_to = self._current_gaze(time), target
            self._gaze_moved_at = time
            self._gaze_return_at = time + self._random.uniform(*GAZE_HOLD_SECONDS)
        return self._current_gaze(time)

    def _current_gaze(self, time: float) -> tuple[float, float]:
        progress = min(max((time - self._gaze_moved_at) / GAZE_SACCADE_SECONDS, 0.0), 1.0)
        ease = progress * progress * (3 - 2 * progress)
        return (
            self._gaze_from[0] + (self._gaze_to[0] - self._gaze_from[0]) * ease,
            self._gaze_from[1] + (self._gaze_to[1] - self._gaze_from[1]) * ease,
        )

    def _brows(self, previous: float, time: float, speaking: bool) -> float:
        if speaking and time >= self._next_brow_lift:
            self._brow_lift = self._random.uniform(0.35, 0.8)
            self._brow_lift_until = time + BROW_LIFT_SECONDS
            self._next_brow_lift = time + self._random.uniform(*BROW_LIFT_INTERVAL_SECONDS)
        elif not speaking:
            self._next_brow_lift = max(self._next_brow_lift, time)
        target = BROW_REST + (self._brow_lift if time < self._brow_lift_until else 0.0)
        self._brow = _ease_toward(self._brow, target, time - previous, BROW_EASE_SECONDS)
        return self._brow

    def _head(self, time: float) -> tuple[float, float, float]:
        """Sideways sway and breathing lift (design px), and the breath itself (-1 out .. 1 in)."""
        a, b, c = self._sway_phases
        sway = math.sin(2 * math.pi * time / 7.3 + a) * 0.65 + math.sin(2 * math.pi * time / 3.1 + b) * 0.35
        breath = math.sin(2 * math.pi * time / BREATH_PERIOD_SECONDS + c)
        return SWAY_PX * sway, BREATH_PX * breath, breath
