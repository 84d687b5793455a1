"""What `audio.metrics` costs: CPU per session-second with the persona's metrics on and off.

Prints three figures:
- the meter alone (`AudioLevelMeter`): microseconds of CPU per second of audio, for the
  microphone (16 kHz, 20 ms frames) and for the voice (48 kHz, 20 ms pieces, voice or silence);
- the whole path without a pipeline: both taps, and `LiveSession.on_audio_metrics` building
  each event and broadcasting it (the in-memory channel layer and this process's stream hub),
  for simulated audio run as fast as it goes: CPU ms per session-second;
- real calls: `--sessions` live sessions at once (default 2), each a real listening
  conversation (Silero VAD, the offline recogniser, the built-in brain, espeak-ng) hearing a
  scripted microphone ask a question over room noise and answering it, without a peer
  connection (the voice track is pulled in real time as aiortc would; no Opus, no video). The
  process's CPU (all threads) over `--seconds` of talk, per session-second, metrics on and off
  in alternating rounds (`--rounds`): the difference is what metrics cost a call. With
  `--quiet` nobody speaks (room noise only), which leaves less varying work around the metrics.

It sets up its own throwaway SQLite database with the demo data: `python bench/audio_metrics.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Simulated seconds of audio for the meter and path figures.
SIMULATED_SECONDS = 300
# How long a real call talks before its CPU is measured (its pipeline has loaded by then).
SETTLE_SECONDS = 1.5
QUESTIONS = ["Are you open on Monday?", "What do you recommend?", "Where are you?"]


def django_set_up(data_dir: str) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "webapp.settings",
            "DJANGO_DEBUG": "1",
            "PARLEY_DATA_DIR": data_dir,
            "PARLEY_WARM_UP": "0",
            "PARLEY_LOG_LEVEL": os.environ.get("PARLEY_LOG_LEVEL", "WARNING"),
            # No signalling socket here: the sessions must not end for the lack of one.
            "PARLEY_SIGNALLING_GRACE_SECONDS": "3600",
            "PARLEY_SESSION_STALE_SECONDS": "3600",
        }
    )
    for command in (["migrate", "--noinput"], ["seed_demo", "--quiet"]):
        subprocess.run(
            [sys.executable, "manage.py", *command], cwd=ROOT, env=os.environ, check=True, capture_output=True
        )
    import django

    django.setup()


def tone_pcm(seconds: float, rate: int, amplitude: float = 0.3) -> bytes:
    """Speech-like enough for a level meter: a few tones and noise, as 16-bit PCM."""
    rng = np.random.default_rng(5)
    times = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * hz * times) for hz in (180, 420, 1100)) / 3
    wave = wave + rng.normal(0, 0.05, times.size)
    return np.clip(wave * amplitude * 32767, -32768, 32767).astype(np.int16).tobytes()


def meter_figures() -> None:
    from calls.pipeline.audio_metrics import AudioLevelMeter
    from calls.pipeline.transport import INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, PIECE_BYTES, PIECE_SAMPLES

    user_frames = tone_pcm(1.0, INPUT_SAMPLE_RATE)
    user_frame_bytes = INPUT_SAMPLE_RATE // 50 * 2
    frames = [user_frames[at : at + user_frame_bytes] for at in range(0, len(user_frames), user_frame_bytes)]
    voice = tone_pcm(1.0, OUTPUT_SAMPLE_RATE)
    pieces = [voice[at : at + PIECE_BYTES] for at in range(0, len(voice), PIECE_BYTES)]

    def per_audio_second(run: Any) -> float:
        meter_user = AudioLevelMeter(sample_rate=INPUT_SAMPLE_RATE)
        meter_bot = AudioLevelMeter(sample_rate=OUTPUT_SAMPLE_RATE)
        started = time.process_time()
        for _ in range(SIMULATED_SECONDS):
            run(meter_user, meter_bot)
        return (time.process_time() - started) / SIMULATED_SECONDS * 1e6

    user = per_audio_second(
        lambda meter, _: [meter.add(frame, is_speech=True, vad_prob=0.5) for frame in frames]
    )
    bot_voice = per_audio_second(
        lambda _, meter: [meter.add(piece, is_speech=True, vad_prob=1.0) for piece in pieces]
    )
    bot_silence = per_audio_second(lambda _, meter: [meter.add_silence(PIECE_SAMPLES) for _ in pieces])
    print("The meter alone, CPU µs per second of audio:")
    print(f"  microphone (16 kHz, 50 frames/s)   {user:7.0f}")
    print(f"  voice playing (48 kHz, 50 pieces/s) {bot_voice:6.0f}")
    print(f"  silence between messages            {bot_silence:6.0f}")


async def path_figure() -> None:
    """The taps and the session's broadcast of every reading, for simulated audio."""
    from asgiref.sync import sync_to_async

    from calls.live import LiveSession, _build_config
    from calls.models import Call, Transport
    from calls.pipeline.audio_metrics import BotAudioTap, UserAudioTap
    from calls.pipeline.transport import INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, PIECE_BYTES
    from personas.models import Persona

    def make_call() -> tuple[Call, Any]:
        persona = Persona.objects.select_related("organization").get(slug="mara")
        call = Call.objects.create(
            organization=persona.organization, persona=persona, transport=Transport.WEBRTC
        )
        return call, _build_config(call)

    call, config = await sync_to_async(make_call)()
    live = LiveSession(call=call, config=config)

    class Vad:  # what UserAudioTap reads from the VAD
        confidence, speaking = 0.8, True

    readings = 0

    def report(source: Any, level: Any) -> None:
        nonlocal readings
        readings += 1
        live.on_audio_metrics(source=source, level=level)

    user = UserAudioTap(report=report, vad=Vad())
    bot = BotAudioTap(report=report)
    mic = tone_pcm(1.0, INPUT_SAMPLE_RATE)
    frame_bytes = INPUT_SAMPLE_RATE // 50 * 2
    frames = [mic[at : at + frame_bytes] for at in range(0, len(mic), frame_bytes)]
    voice = tone_pcm(1.0, OUTPUT_SAMPLE_RATE)
    pieces = [voice[at : at + PIECE_BYTES] for at in range(0, len(voice), PIECE_BYTES)]
    started = time.process_time()
    for second in range(SIMULATED_SECONDS):
        speaking = second % 2 == 0  # the persona speaks every other second
        for index, (frame, piece) in enumerate(zip(frames, pieces, strict=True)):
            user.on_audio(frame)
            bot.on_piece(pcm=piece if speaking else bytes(PIECE_BYTES), started_at=0.0, speaking=speaking)
            if index % 5 == 4:
                await asyncio.sleep(0)  # the readings of this 100 ms go out, as they would
    from calls import publishing

    if publishing._broadcast_sender is not None:  # the last readings go out
        await publishing._broadcast_sender
    seconds = time.process_time() - started
    print(
        f"The taps and the broadcast of each event: {readings} readings for {SIMULATED_SECONDS} s of both"
        f" sources, {seconds / SIMULATED_SECONDS * 1000:.2f} CPU ms per session-second"
        f" ({seconds / readings * 1e6:.0f} µs per event)"
    )
    live._ended.set()


async def real_calls(
    count: int, seconds: float, metrics: bool, round_index: int, *, quiet: bool = False
) -> tuple[float, int]:
    """`count` live sessions talking for `seconds` (`quiet`: only the room's noise, nobody speaks):
    (CPU ms per session-second, metrics sent)."""
    from asgiref.sync import sync_to_async

    from calls.live import LiveSession, _build_config
    from calls.models import Call, EndReason, Transport
    from calls.pipeline.conversation import Conversation
    from calls.pipeline.transport import PacedAudioTrack
    from personas.models import Persona
    from tests.fakes.spoken import ScriptedMicrophone, spoken_pcm, with_room

    def make_call() -> tuple[Call, Any]:
        persona = Persona.objects.select_related("organization").get(slug="mara")
        call = Call.objects.create(
            organization=persona.organization, persona=persona, transport=Transport.WEBRTC
        )
        config = dataclasses.replace(
            _build_config(call), listening=True, skip_greeting=True, send_audio_metrics=metrics
        )
        return call, config

    sent = 0
    sessions: list[tuple[LiveSession, ScriptedMicrophone, asyncio.Task[None]]] = []

    async def signal(action_type: str, payload: Any) -> None:
        pass

    for _ in range(count):
        call, config = await sync_to_async(make_call)()
        live = LiveSession(call=call, config=config)
        live.attach(signal)
        live.audio_track = PacedAudioTrack(encode=False)
        microphone = ScriptedMicrophone()
        live.microphone.track = microphone
        live.conversation = Conversation(
            config=config, track=live.audio_track, microphone=live.microphone, listener=live
        )
        real_report = live.on_audio_metrics

        def counted(*, _report: Any = real_report, **reading: Any) -> None:
            nonlocal sent
            sent += 1
            _report(**reading)

        live.on_audio_metrics = counted  # type: ignore[method-assign]

        async def speaker(track: PacedAudioTrack) -> None:
            while True:
                await track.recv()

        await live.conversation.start()
        live.conversation.peer_ready()
        sessions.append((live, microphone, asyncio.create_task(speaker(live.audio_track))))
    if not quiet:
        question = with_room(await spoken_pcm(QUESTIONS[round_index % len(QUESTIONS)]), lead_seconds=0.5)
        for _, microphone, _ in sessions:
            microphone.say(question)
    await asyncio.sleep(SETTLE_SECONDS)
    sent = 0
    cpu_before, wall_before = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu_before, time.monotonic() - wall_before
    metrics_sent = sent
    for live, microphone, speaker_task in sessions:
        speaker_task.cancel()
        await live.end(reason=EndReason.HANGUP)
        microphone.stop()
    return cpu / wall / count * 1000, metrics_sent


async def calls_figures(count: int, seconds: float, rounds: int, quiet: bool) -> None:
    from tests.fakes.spoken import spoken_pcm

    for text in QUESTIONS:  # synthesised once, outside the measured windows
        await spoken_pcm(text)
    # A whole exchange first: every model is loaded and has run once before the measured rounds.
    await real_calls(count, seconds, True, 0)
    figures: dict[bool, list[float]] = {True: [], False: []}
    differences: list[float] = []
    what = "only the room's noise" if quiet else "a question asked and answered"
    print(
        f"Real calls: {count} listening session(s) at once, {what}, {seconds:.0f} s measured per"
        f" round; CPU ms per session-second (load average now {os.getloadavg()[0]:.2f}):"
    )
    for index in range(rounds):
        pair: dict[bool, float] = {}
        for metrics in (index % 2 == 0, index % 2 != 0):  # alternating which goes first
            per_session_second, sent = await real_calls(count, seconds, metrics, index, quiet=quiet)
            pair[metrics] = per_session_second
            figures[metrics].append(per_session_second)
            rate = sent / seconds / count
            print(
                f"  round {index + 1}, metrics {'on ' if metrics else 'off'}: {per_session_second:6.1f}"
                f"   ({rate:.1f} readings/s per session; load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
        differences.append(pair[True] - pair[False])
    on, off = statistics.median(figures[True]), statistics.median(figures[False])
    print(
        f"  median: metrics on {on:.1f}, off {off:.1f}; difference in each round (on - off):"
        f" {', '.join(f'{difference:+.1f}' for difference in differences)},"
        f" median {statistics.median(differences):+.1f} CPU ms per session-second"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=2, help="live sessions at once in the real calls")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of metrics on and off")
    parser.add_argument("--no-calls", action="store_true", help="only the meter and path figures")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="nobody speaks in the real calls (room noise only): less work around the metrics that"
        " varies from round to round, so a steadier difference",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as data_dir:
        django_set_up(data_dir)
        meter_figures()
        asyncio.run(path_figure())
        if not args.no_calls:
            asyncio.run(calls_figures(args.sessions, args.seconds, args.rounds, args.quiet))


if __name__ == "__main__":
    main()
