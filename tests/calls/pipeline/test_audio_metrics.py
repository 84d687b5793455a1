"""audio.metrics: the windowed level meter, and the taps that feed it from the call's audio."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calls import events
from calls.pipeline.audio_metrics import (
    ENERGY_FLOOR_DB,
    AudioLevel,
    AudioLevelMeter,
    BotAudioTap,
    UserAudioTap,
)
from calls.pipeline.transport import OUTPUT_SAMPLE_RATE, PIECE_BYTES, PIECE_SAMPLES

RATE = 16_000
WINDOW = RATE // 10  # 100 ms
FRAME = RATE // 50  # 20 ms, as the microphone's frames come


def sine(seconds: float, *, amplitude: float = 1.0, rate: int = RATE, hz: float = 440.0) -> bytes:
    """A sine at `amplitude` of full scale (1.0: peaks at 32767), as 16-bit PCM."""
    times = np.arange(int(rate * seconds)) / rate
    return np.round(np.sin(2 * np.pi * hz * times) * amplitude * 32767).astype(np.int16).tobytes()


def chunks(pcm: bytes, samples: int) -> list[bytes]:
    return [pcm[offset : offset + samples * 2] for offset in range(0, len(pcm), samples * 2)]


def metered(pcm: bytes, *, chunk: int = FRAME, **marks) -> list[AudioLevel]:
    meter = AudioLevelMeter(sample_rate=RATE)
    return [level for part in chunks(pcm, chunk) for level in meter.add(part, **marks)]


def test_silence_reads_as_the_energy_floor():
    levels = metered(bytes(2 * RATE))
    assert len(levels) == 10
    for level in levels:
        assert level == AudioLevel(
            energy_db=ENERGY_FLOOR_DB, rms=0.0, peak=0.0, is_speech=False, vad_prob=0.0
        )


def test_a_full_scale_sine_has_the_rms_peak_and_energy_of_a_sine():
    for level in metered(sine(1.0)):
        assert level.rms == pytest.approx(1 / math.sqrt(2), abs=1e-3)
        assert level.peak == pytest.approx(1.0, abs=1e-3)
        assert level.energy_db == pytest.approx(-3.01, abs=0.02)


def test_a_sine_at_a_tenth_of_full_scale_is_20_db_quieter():
    for level in metered(sine(1.0, amplitude=0.1)):
        assert level.rms == pytest.approx(0.1 / math.sqrt(2), abs=1e-3)
        assert level.peak == pytest.approx(0.1, abs=1e-3)
        assert level.energy_db == pytest.approx(-23.01, abs=0.05)


def test_the_most_negative_sample_is_a_full_peak_not_an_overflow():
    (level,) = metered(np.full(WINDOW, -32768, dtype=np.int16).tobytes())
    assert level.peak == 1.0 and level.rms == 1.0 and level.energy_db == 0.0


def test_a_reading_comes_with_each_100_ms_of_audio_whatever_the_chunk_size():
    meter = AudioLevelMeter(sample_rate=RATE)
    assert meter.window_samples == WINDOW
    completed_after = []
    for index, part in enumerate(chunks(sine(1.0), FRAME)):
        if meter.add(part):
            completed_after.append(index + 1)
    assert completed_after == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]  # every 5th 20 ms frame
    # Odd chunks (333 samples) are split exactly at the window's edge: 2.5 s give 25 readings,
    # each window the same tone.
    odd = metered(sine(2.5), chunk=333)
    assert len(odd) == 25
    assert [level.rms for level in odd] == pytest.approx([1 / math.sqrt(2)] * 25, abs=2e-3)
    assert len(AudioLevelMeter(sample_rate=OUTPUT_SAMPLE_RATE).add(bytes(2 * 4799))) == 0


def test_a_window_half_tone_half_silence_has_the_rms_of_its_whole():
    pcm = bytes(WINDOW) + sine(0.05)  # 50 ms of silence (800 samples), then 50 ms of tone
    (level,) = metered(pcm, chunk=700)  # chunks straddle the change
    assert level.rms == pytest.approx(0.5, abs=2e-3)  # sqrt(half of 1/2)
    assert level.peak == pytest.approx(1.0, abs=1e-3)


def test_a_window_is_speech_if_any_of_it_was_and_has_its_highest_vad_probability():
    meter = AudioLevelMeter(sample_rate=RATE)
    frames = chunks(sine(0.2, amplitude=0.2), FRAME)
    marks = [(False, 0.1), (False, 0.3), (True, 0.9), (False, 0.4), (False, 0.0)]
    marks += [(False, 0.2)] * 5  # the next window: no speech
    levels = [
        level
        for part, (is_speech, vad_prob) in zip(frames, marks, strict=True)
        for level in meter.add(part, is_speech=is_speech, vad_prob=vad_prob)
    ]
    assert [(level.is_speech, level.vad_prob) for level in levels] == [(True, 0.9), (False, 0.2)]


def test_silence_added_unread_reads_as_silence_added_as_samples():
    meter = AudioLevelMeter(sample_rate=OUTPUT_SAMPLE_RATE)
    assert meter.add(sine(0.05, rate=OUTPUT_SAMPLE_RATE)) == []
    (level,) = meter.add_silence(PIECE_SAMPLES * 5)  # 100 ms: closes the window, 50 ms left over
    assert level.rms == pytest.approx(0.5, abs=2e-3)
    (quiet,) = meter.add_silence(OUTPUT_SAMPLE_RATE // 20)
    assert quiet.energy_db == ENERGY_FLOOR_DB


def test_every_reading_fits_the_audio_metrics_event():
    """The seed's ranges (energyDb -60..0, rms and peak 0..1) hold for anything the meter sees."""
    rng = np.random.default_rng(7)
    loud = rng.integers(-32768, 32768, size=RATE, dtype=np.int16).tobytes()
    quiet = rng.integers(-2, 3, size=RATE, dtype=np.int16).tobytes()  # below -60 dBFS
    for level in metered(loud + quiet + bytes(2 * RATE), vad_prob=1.0):
        events.AudioMetrics(
            source="user",
            energy_db=level.energy_db,
            rms=level.rms,
            peak=level.peak,
            is_speech=level.is_speech,
            vad_prob=level.vad_prob,
        )


def test_the_bot_tap_meters_each_piece_sent_with_voice_as_speech():
    readings: list[tuple[str, AudioLevel]] = []
    tap = BotAudioTap(report=lambda source, level: readings.append((source, level)))
    voice = chunks(sine(0.1, amplitude=0.5, rate=OUTPUT_SAMPLE_RATE), PIECE_SAMPLES)
    for piece in voice:
        tap.on_piece(pcm=piece, started_at=0.0, speaking=True)
    for _ in range(5):  # silence between messages
        tap.on_piece(pcm=bytes(PIECE_BYTES), started_at=0.0, speaking=False)
    assert [source for source, _ in readings] == ["bot", "bot"]
    speaking, silent = (level for _, level in readings)
    assert speaking.is_speech and speaking.vad_prob == 1.0
    assert speaking.rms == pytest.approx(0.5 / math.sqrt(2), abs=2e-3)
    assert silent == AudioLevel(energy_db=-60.0, rms=0.0, peak=0.0, is_speech=False, vad_prob=0.0)


class FakeVoiceActivity:
    def __init__(self) -> None:
        self.confidence = 0.0
        self.speaking = False


def test_the_user_tap_meters_the_microphone_with_the_vads_verdict():
    vad = FakeVoiceActivity()
    readings: list[tuple[str, AudioLevel]] = []
    tap = UserAudioTap(report=lambda source, level: readings.append((source, level)), vad=vad)
    for index, frame in enumerate(chunks(sine(0.3, amplitude=0.25), FRAME)):
        vad.confidence, vad.speaking = (0.85, True) if 5 <= index < 7 else (0.1, False)
        tap.on_audio(frame)
    assert [source for source, _ in readings] == ["user"] * 3
    assert [(level.is_speech, level.vad_prob) for _, level in readings] == [
        (False, 0.1),
        (True, 0.85),
        (False, 0.1),
    ]
    for _, level in readings:
        assert level.rms == pytest.approx(0.25 / math.sqrt(2), abs=2e-3)


def test_without_a_vad_no_microphone_window_is_speech():
    readings: list[AudioLevel] = []
    tap = UserAudioTap(report=lambda source, level: readings.append(level))
    for frame in chunks(sine(0.2), FRAME):
        tap.on_audio(frame)
    assert [(level.is_speech, level.vad_prob) for level in readings] == [(False, 0.0)] * 2
