"""Sounds a microphone picks up that are not speech: coughs, breathing, a door, music, typing.

Each generator is deterministic (its own seed) and returns float32 samples at 48 kHz on the
int16 scale, like `tests.fakes.spoken.spoken_pcm`, so any of them can be said into a
`ScriptedMicrophone` or passed as `speech=` to `tests.fakes.spoken.heard_frames`. They are loud
(peaks near the microphone's limit) and, where the real thing is, voiced: a cough's "-uh", a
chair's squeal, music's melody. Silero's VAD still rarely takes them for speech (measured: only
`cough_by_a_fan`, whose cough it hears over the fan's noise, in these tests), so the tests of
the recogniser play them with the VAD's frames around them, as if it had: the recogniser alone
must refuse them. `ogg_opus` encodes any of them as a voice note (OGG/Opus, as WhatsApp sends
them).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import av
import numpy as np

from tests.fakes.spoken import RATE, to_int16

FULL_SCALE = 32767.0
# Peak levels (of 32768): a close cough or a door in the same room is near the microphone's
# limit; a browser's auto gain leaves speech at about -12 dBFS (peaks near 8000-16000).
COUGH_PEAK = 14_000.0
LOUD_COUGH_PEAK = 26_000.0
FAN_COUGH_PEAK = 15_000.0
DOOR_PEAK = 24_000.0
MUSIC_PEAK = 20_000.0
TYPING_PEAK = 12_000.0
CHAIR_PEAK = 16_000.0
# RMS levels (of 32768) of the steady sounds: breathing into a headset microphone, and a loud
# room (a desk fan close by) at about -30 dBFS, thirty times the tests' quiet room.
BREATH_RMS = 1_500.0
ROOM_RMS = 1_000.0


def _seconds(count: float) -> int:
    return int(count * RATE)


def _shaped_noise(
    rng: np.random.Generator, count: int, gain: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """`count` samples of white noise through the magnitude response `gain(frequencies in Hz)`,
    at unit RMS."""
    return _filtered(rng.normal(0.0, 1.0, count), gain)


def _resonances(*peaks: tuple[float, float, float]) -> Callable[[np.ndarray], np.ndarray]:
    """A response with a resonance at each (centre Hz, bandwidth Hz, gain): a vocal tract's
    formants, a door panel's modes."""

    def gain(frequencies: np.ndarray) -> np.ndarray:
        total = np.zeros_like(frequencies)
        for centre, bandwidth, weight in peaks:
            total += weight / (1.0 + np.square((frequencies - centre) / (bandwidth / 2.0)))
        return total

    return gain


def _band(low: float, high: float, slope: float = 4.0) -> Callable[[np.ndarray], np.ndarray]:
    """A band-pass response between `low` and `high` Hz with soft skirts."""

    def gain(frequencies: np.ndarray) -> np.ndarray:
        frequencies = np.maximum(frequencies, 1.0)
        return 1.0 / (1.0 + (low / frequencies) ** slope) / (1.0 + (frequencies / high) ** slope)

    return gain


def _pulse_train(f0: np.ndarray, rng: np.random.Generator, *, jitter: float, shimmer: float) -> np.ndarray:
    """A vibrating source (vocal folds, a stick-slipping chair leg): one impulse a period of the
    pitch track `f0` (Hz per sample), each period and height a little uneven (`jitter`, `shimmer`)."""
    pulses = np.zeros(f0.size)
    at = 0
    while at < f0.size:
        pulses[at] = 1.0 + shimmer * rng.normal()
        at += max(1, int(RATE / f0[at] * (1.0 + jitter * rng.normal())))
    return pulses


def _filtered(samples: np.ndarray, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`samples` through the magnitude response `gain(frequencies in Hz)`, at unit RMS."""
    shaped = np.fft.irfft(
        np.fft.rfft(samples) * gain(np.fft.rfftfreq(samples.size, 1.0 / RATE)), samples.size
    )
    return shaped / max(float(np.sqrt(np.mean(np.square(shaped)))), 1e-12)


def _glottal(frequencies: np.ndarray) -> np.ndarray:
    """The falling spectrum of a voiced source (about -6 dB an octave above 100 Hz)."""
    return 1.0 / np.sqrt(1.0 + np.square(frequencies / 100.0))


def _attack_decay(count: int, *, attack_seconds: float, decay_seconds: float) -> np.ndarray:
    """An envelope rising linearly over `attack_seconds`, then falling exponentially."""
    time = np.arange(count) / RATE
    rise = np.clip(time / attack_seconds, 0.0, 1.0)
    return rise * np.exp(-np.maximum(time - attack_seconds, 0.0) / decay_seconds)


def _at_peak(samples: np.ndarray, peak: float) -> np.ndarray:
    return (samples * (peak / max(float(np.max(np.abs(samples))), 1e-12))).astype(np.float32)


def _at_rms(samples: np.ndarray, rms: float) -> np.ndarray:
    scaled = samples * (rms / max(float(np.sqrt(np.mean(np.square(samples)))), 1e-12))
    return np.clip(scaled, -FULL_SCALE, FULL_SCALE).astype(np.float32)


def _place(total: np.ndarray, sound: np.ndarray, at_seconds: float) -> None:
    start = _seconds(at_seconds)
    end = min(total.size, start + sound.size)
    total[start:end] += sound[: end - start]


# The vocal tract of a cough (formants: centre Hz, bandwidth Hz, gain): a half-open, schwa-like
# shape, and the wide-open "ah" of a hard cough, which Silero takes for a vowel.
_COUGH_TRACT = _resonances(
    (600.0, 120.0, 1.0), (1_200.0, 150.0, 0.5), (2_500.0, 250.0, 0.25), (3_500.0, 300.0, 0.1)
)
_HARD_COUGH_TRACT = _resonances(
    (700.0, 150.0, 1.0), (1_100.0, 150.0, 0.7), (2_600.0, 250.0, 0.3), (3_500.0, 300.0, 0.1)
)


def _one_cough(
    rng: np.random.Generator, *, tract: Callable[[np.ndarray], np.ndarray], voicing: float, seconds: float
) -> np.ndarray:
    """One cough: an explosive burst of turbulent air through the open tract, then the vocal folds
    caught in the rush (a voiced "-uh" falling in pitch) as it dies away."""
    count = _seconds(seconds)
    burst = _shaped_noise(rng, count, lambda frequencies: tract(frequencies) + 0.1)
    f0 = np.linspace(rng.uniform(140.0, 160.0), rng.uniform(105.0, 120.0), count)
    voiced = _filtered(
        _pulse_train(f0, rng, jitter=0.015, shimmer=0.15),
        lambda frequencies: tract(frequencies) * _glottal(frequencies),
    )
    burst_envelope = _attack_decay(count, attack_seconds=0.005, decay_seconds=0.06)
    voiced_envelope = _attack_decay(count, attack_seconds=0.02, decay_seconds=0.25)
    voiced_envelope *= np.clip((count - np.arange(count)) / _seconds(0.03), 0.0, 1.0)  # no click at the end
    return burst * burst_envelope + voicing * voiced * voiced_envelope


def cough(*, times: int = 2, seed: int = 21, peak: float = COUGH_PEAK) -> np.ndarray:
    """`times` coughs a little apart (about 0.4 s each): a dry, half-voiced fit."""
    rng = np.random.default_rng(seed)
    gap = 0.45
    total = np.zeros(_seconds(0.4 + (times - 1) * gap + 0.05))
    for index in range(times):
        # Each cough of a fit is a little weaker than the one before.
        one = _one_cough(rng, tract=_COUGH_TRACT, voicing=1.5, seconds=0.4)
        _place(total, one * 0.8**index, index * gap)
    return _at_peak(total, peak)


def loud_cough(*, seed: int = 22, peak: float = LOUD_COUGH_PEAK) -> np.ndarray:
    """One hard cough close to the microphone (about 0.45 s), its voiced part an open "ah": loud
    and vowel-like enough that Silero takes it for speech once it is listening (`cough_by_a_fan`)."""
    rng = np.random.default_rng(seed)
    return _at_peak(_one_cough(rng, tract=_HARD_COUGH_TRACT, voicing=3.0, seconds=0.45), peak)


def cough_by_a_fan(*, seed: int = 29) -> np.ndarray:
    """A hard cough in a loud room (about 2 s: a fan running, the cough 0.8 s in).

    The VAD only runs Silero on audio above its volume floor, and a cough alone is over before
    the floor lets Silero hear it; over the fan's noise Silero is already listening, takes the
    cough's voiced part for speech, and the VAD reports a short utterance.
    """
    total = room_noise(seed=seed, seconds=2.0)
    _place(total, loud_cough(seed=seed, peak=FAN_COUGH_PEAK), 0.8)
    return total


def breathing(*, seed: int = 23, rms: float = BREATH_RMS) -> np.ndarray:
    """A breath in and out (about 2.6 s): slow swells of band-passed noise, the inhale hissier."""
    rng = np.random.default_rng(seed)
    total = np.zeros(_seconds(2.6))
    for start, seconds, band in ((0.0, 1.0, _band(700.0, 3_000.0)), (1.25, 1.3, _band(250.0, 1_600.0))):
        count = _seconds(seconds)
        swell = np.sin(np.pi * np.arange(count) / count) ** 2
        _place(total, _shaped_noise(rng, count, band) * swell, start)
    return _at_rms(total, rms)


def door(*, seed: int = 24, peak: float = DOOR_PEAK) -> np.ndarray:
    """A door closing (about 0.9 s): the slam's click, the panel's low thump, the latch's rattle."""
    rng = np.random.default_rng(seed)
    count = _seconds(0.9)
    time = np.arange(count) / RATE
    thump = sum(
        weight * np.sin(2.0 * np.pi * frequency * time + rng.uniform(0, 2 * np.pi)) * np.exp(-time / decay)
        for frequency, decay, weight in ((58.0, 0.22, 1.0), (87.0, 0.15, 0.7), (131.0, 0.09, 0.5))
    )
    click = _shaped_noise(rng, count, np.ones_like)  # white: a sharp impact
    click *= _attack_decay(count, attack_seconds=0.001, decay_seconds=0.006) * 1.5
    room = _shaped_noise(rng, count, _band(80.0, 1_200.0)) * _attack_decay(
        count, attack_seconds=0.005, decay_seconds=0.12
    )
    total = thump + click + 0.35 * room
    latch = _resonances((2_300.0, 300.0, 1.0), (3_800.0, 500.0, 0.6), (900.0, 200.0, 0.3))
    for bounce in range(7):
        at = 0.04 + 0.045 * bounce + rng.uniform(-0.01, 0.01)
        rattle = _shaped_noise(rng, _seconds(0.03), latch)
        rattle *= _attack_decay(rattle.size, attack_seconds=0.0005, decay_seconds=0.006)
        _place(total, rattle * 0.5 * 0.75**bounce, at)
    return _at_peak(total, peak)


def _note(frequency: float, seconds: float, *, harmonics: int = 8, decay_seconds: float = 0.6) -> np.ndarray:
    """A plucked, harmonic-rich note: a sawtooth-like sum falling off as 1/n, with a short attack."""
    count = _seconds(seconds)
    time = np.arange(count) / RATE
    vibrato = 1.0 + 0.004 * np.sin(2.0 * np.pi * 5.5 * time)
    phase = 2.0 * np.pi * frequency * np.cumsum(vibrato) / RATE
    tone = sum(np.sin(number * phase) / number for number in range(1, harmonics + 1))
    release = np.clip((seconds - time) / 0.03, 0.0, 1.0)
    return tone * _attack_decay(count, attack_seconds=0.01, decay_seconds=decay_seconds) * release


def _pitch(midi: int) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12.0)


def music(*, seed: int = 25, peak: float = MUSIC_PEAK, seconds: float = 3.0) -> np.ndarray:
    """A pop loop at 120 bpm (3 s): bass, chords C-Am-F-G, a melody, kick, snare and hi-hat."""
    rng = np.random.default_rng(seed)
    total = np.zeros(_seconds(seconds))
    beat = 0.5
    chords = ((60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62))  # C, Am, F, G (MIDI)
    melody = (76, 74, 72, 74, 72, 69, 72, 71, 69, 67, 71, 74)  # eighth notes over the chords
    bar = 1.5 * beat
    for index in range(int(seconds / bar) + 1):
        chord = chords[index % len(chords)]
        for midi in chord:
            _place(total, 0.35 * _note(_pitch(midi), bar, decay_seconds=0.8), index * bar)
        _place(total, 0.6 * _note(_pitch(chord[0] - 24), bar, harmonics=4, decay_seconds=1.0), index * bar)
    for index, midi in enumerate(melody * 2):
        at = index * beat / 2
        if at < seconds:
            _place(total, 0.5 * _note(_pitch(midi), beat / 2, harmonics=6, decay_seconds=0.25), at)
    kick_count = _seconds(0.25)
    kick_time = np.arange(kick_count) / RATE
    kick_phase = 2.0 * np.pi * np.cumsum(50.0 + 100.0 * np.exp(-kick_time / 0.03)) / RATE
    kick = np.sin(kick_phase) * np.exp(-kick_time / 0.08)
    for index in range(int(seconds / beat)):
        _place(total, 1.2 * kick, index * beat)
        if index % 2:
            snare = _shaped_noise(rng, _seconds(0.15), _band(1_000.0, 8_000.0))
            _place(
                total,
                0.5 * snare * _attack_decay(snare.size, attack_seconds=0.001, decay_seconds=0.04),
                index * beat,
            )
    for index in range(int(seconds / (beat / 2))):
        hat = _shaped_noise(rng, _seconds(0.05), _band(6_000.0, 16_000.0))
        _place(
            total,
            0.2 * hat * _attack_decay(hat.size, attack_seconds=0.0005, decay_seconds=0.01),
            index * beat / 2,
        )
    return _at_peak(total, peak)


def typing(*, seed: int = 26, peak: float = TYPING_PEAK, seconds: float = 2.5) -> np.ndarray:
    """Typing on a keyboard near the microphone: each key a click down and a softer one up, at an
    uneven eight keys a second, the space bar louder and duller."""
    rng = np.random.default_rng(seed)
    total = np.zeros(_seconds(seconds))
    key = _resonances((2_800.0, 1_200.0, 1.0), (5_000.0, 2_000.0, 0.6), (400.0, 300.0, 0.3))
    space = _resonances((900.0, 500.0, 1.0), (2_200.0, 900.0, 0.5), (180.0, 100.0, 0.4))
    at = 0.05
    while at < seconds - 0.15:
        is_space = rng.random() < 0.15
        for offset, loudness in ((0.0, 1.0), (rng.uniform(0.06, 0.1), 0.45)):
            click = _shaped_noise(rng, _seconds(0.02), space if is_space else key)
            click *= _attack_decay(click.size, attack_seconds=0.0003, decay_seconds=0.003)
            _place(total, click * loudness * (1.4 if is_space else rng.uniform(0.6, 1.0)), at + offset)
        at += rng.gamma(4.0, 0.125 / 4.0)
    return _at_peak(total, peak)


def chair_scrape(*, seed: int = 27, peak: float = CHAIR_PEAK) -> np.ndarray:
    """A chair dragged over a hard floor (about 1.2 s): friction noise and a stick-slip squeal
    whose pitch wanders as the speed changes, and which comes and goes as the legs catch."""
    rng = np.random.default_rng(seed)
    count = _seconds(1.2)
    time = np.arange(count) / RATE
    speed = np.sin(np.pi * time / time[-1]) ** 0.5  # pushed off, dragged, stopped
    wobble = np.cumsum(rng.normal(0.0, 1.0, count))
    wobble = (wobble - wobble.mean()) / (np.abs(wobble).max() + 1e-12)
    f0 = 180.0 + 140.0 * speed + 25.0 * wobble
    legs = _resonances((700.0, 400.0, 1.0), (1_600.0, 600.0, 0.6), (3_200.0, 900.0, 0.3))
    squeal = _filtered(_pulse_train(f0, rng, jitter=0.02, shimmer=0.3), legs)
    catches = np.clip(0.5 + 0.8 * np.sin(2.0 * np.pi * 3.0 * time + rng.uniform(0, 2 * np.pi)), 0.0, 1.0)
    friction = _shaped_noise(rng, count, _band(300.0, 4_000.0))
    return _at_peak((0.8 * squeal * catches + 0.7 * friction) * speed, peak)


def room_noise(*, seed: int = 28, rms: float = ROOM_RMS, seconds: float = 3.0) -> np.ndarray:
    """A loud room (about 3 s): a desk fan's motor hum (50 Hz and harmonics), its blades' beating
    and the rush of its air, over broadband noise."""
    rng = np.random.default_rng(seed)
    count = _seconds(seconds)
    time = np.arange(count) / RATE
    hum = sum(
        weight * np.sin(2.0 * np.pi * frequency * time + rng.uniform(0, 2 * np.pi))
        for frequency, weight in ((50.0, 1.0), (100.0, 0.6), (150.0, 0.35), (200.0, 0.2), (250.0, 0.1))
    )
    blades = 1.0 + 0.3 * np.sin(2.0 * np.pi * 23.0 * time)  # three blades at ~460 rpm
    rush = _shaped_noise(rng, count, _band(100.0, 2_500.0, slope=2.0)) * blades
    broadband = _shaped_noise(rng, count, lambda frequencies: 1.0 / np.sqrt(np.maximum(frequencies, 20.0)))
    return _at_rms(0.5 * hum + 1.0 * rush + 0.4 * broadband, rms)


# Every sound by name: what the tests go through.
SOUNDS: dict[str, Callable[[], np.ndarray]] = {
    "cough": cough,
    "loud cough": loud_cough,
    "cough by a fan": cough_by_a_fan,
    "breathing": breathing,
    "door": door,
    "music": music,
    "typing": typing,
    "chair scrape": chair_scrape,
    "room noise": room_noise,
}


def ogg_opus(samples: np.ndarray, *, rate: int = RATE) -> bytes:
    """`samples` (int16 scale) as an OGG/Opus file, as a voice note arrives."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=rate)
        stream.layout = "mono"
        pcm = np.frombuffer(to_int16(samples), dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
