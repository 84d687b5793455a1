"""VoiceGuard's first reaction to speech over the persona: pause at the onset, unless it is echo.

Real Silero on espeak speech over a quiet room's noise, at the pipeline's 16 kHz in 20 ms
frames. The guard's clock is the audio's own (one tick of 20 ms per frame), so what is
checked is which frame the pause comes on, not how fast this machine is.
"""

from __future__ import annotations

import numpy as np
from pipecat.frames.frames import InputAudioRawFrame, InterruptionFrame, TranscriptionFrame
from pipecat.tests.utils import run_test

from calls.pipeline.turns import ECHO_LEVEL_RATIO, OnsetDetector, UserSideListener, VoiceGuard
from tests.fakes.spoken import PIPELINE_RATE, at_pipeline_rate, spoken_pcm, with_room

FRAME_BYTES = PIPELINE_RATE // 50 * 2
LEAD_SECONDS = 0.6  # the room's quiet before the words


class PlayingVoice:
    """The persona's track, speaking at a steady level (RMS, 0..1)."""

    def __init__(self, level: float) -> None:
        self.level = level
        self.paused = False
        self.pauses: list[float] = []

    def level_at(self, now: float, window: float = 0.3) -> float:
        return self.level

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False


class AudioClock:
    """20 ms per call: the guard asks the time once per audio frame."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.calls * 0.02


async def spoken_frames(
    text: str, gain: float = 1.0, lead_seconds: float = LEAD_SECONDS
) -> list[InputAudioRawFrame]:
    speech = await spoken_pcm(text) * gain
    pcm = at_pipeline_rate(with_room(speech, lead_seconds=lead_seconds, tail_seconds=0.3))
    return [
        InputAudioRawFrame(audio=pcm[at : at + FRAME_BYTES], sample_rate=PIPELINE_RATE, num_channels=1)
        for at in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)
    ]


def onset_time(frames: list[InputAudioRawFrame]) -> float:
    """When Silero's first confident window ends, on the guard's clock."""
    detector = OnsetDetector()
    for index, frame in enumerate(frames, 1):
        if detector.push(frame.audio, frame.sample_rate):
            return index * 0.02
    raise AssertionError("Silero heard no speech")


async def guard_hearing(frames: list[InputAudioRawFrame], voice: PlayingVoice) -> VoiceGuard:
    async def interrupt() -> None:
        pass

    guard = VoiceGuard(
        voice=voice,
        reply_active=lambda: True,
        interrupt=interrupt,
        persona_words=lambda: ["our", "sourdough", "country", "loaf"],
        listener=UserSideListener(),
        clock=AudioClock(),
    )
    await run_test(guard, frames_to_send=frames)
    return guard


def loudest_level(frames: list[InputAudioRawFrame]) -> float:
    """The highest RMS (0..1) over 100 ms of these frames: a voice's level as the track measures it."""
    samples = np.frombuffer(b"".join(frame.audio for frame in frames), dtype=np.int16).astype(np.float32)
    window = PIPELINE_RATE // 10
    return max(
        float(np.sqrt(np.mean(samples[at : at + window] ** 2))) / 32768
        for at in range(0, samples.size - window, window // 2)
    )


async def test_speech_over_the_persona_pauses_it_on_the_first_confident_window():
    frames = await spoken_frames("Wait, do you deliver?")
    voice = PlayingVoice(level=loudest_level(frames))  # the user speaks as loud as the persona plays
    guard = await guard_hearing(frames, voice)
    assert voice.paused, "speech over the persona was taken for its echo"
    # The quiet before the words does not count against them (the echo check looks at the
    # newest audio only): the pause comes with Silero's first confident window or the next
    # (the first words are soft). Measuring the room's quiet too, it came 120 ms after it.
    onset = onset_time(frames)
    assert onset <= guard.last_pause_at <= onset + 0.04 + 1e-9


async def test_a_user_at_a_normal_microphone_level_pauses_a_louder_persona():
    # The persona plays at espeak's full level; the user speaks at -15 dBFS, about a quarter of
    # it, and what came back of the persona before was the room's quiet (a browser's echo
    # canceller at work) for the 0.6 s it has been speaking (a greeting's first words).
    loud = loudest_level(await spoken_frames("Wait, do you deliver?"))
    frames = await spoken_frames("Wait, do you deliver?", gain=0.25, lead_seconds=0.6)
    assert loudest_level(frames) < ECHO_LEVEL_RATIO * loud  # the level alone would say echo
    voice = PlayingVoice(level=loud)
    guard = await guard_hearing(frames, voice)
    assert voice.paused, "a user at a normal level was taken for the persona's echo"
    onset = onset_time(frames)
    assert onset <= guard.last_pause_at <= onset + 0.04 + 1e-9


async def test_the_onset_detector_leaves_a_quiet_room_unscored_and_hears_the_first_word_as_before():
    """Silero is not run on the room's quiet (-60 dBFS) while the persona speaks; the first
    confident window of speech is the same one a detector scoring every window finds."""
    from calls.pipeline.turns.vad import InlineSileroVADAnalyzer

    frames = await spoken_frames("Wait, do you deliver?")
    room = int(LEAD_SECONDS / 0.02) - 2  # frames of the room alone
    detector = OnsetDetector()
    for frame in frames[:room]:
        assert not detector.push(frame.audio, frame.sample_rate)
    assert detector.windows_scored == 0

    every_window = InlineSileroVADAnalyzer()
    every_window.set_sample_rate(PIPELINE_RATE)
    pcm = b"".join(frame.audio for frame in frames)
    size = every_window.num_frames_required() * 2
    first = next(
        at + size
        for at in range(0, len(pcm) - size + 1, size)
        if every_window.voice_confidence(pcm[at : at + size]) >= 0.7
    )
    # The detector hears in 20 ms frames: it says so on the frame that completes that window.
    assert onset_time(frames) == -(-first // FRAME_BYTES) * 0.02


async def test_the_personas_own_voice_coming_back_does_not_pause_it():
    # Its echo from its first word on (no echo canceller), at -12 dB: a quarter of its voice.
    frames = await spoken_frames(
        "Our sourdough country loaf and the cardamom buns are the favourites. We also bake almond croissants.",
        lead_seconds=0.1,
    )
    voice = PlayingVoice(level=loudest_level(frames) / 0.25)
    guard = await guard_hearing(frames, voice)
    assert onset_time(frames) < 0.5  # Silero hears the echo as speech: the level check decides
    assert not voice.paused and guard.last_pause_at is None


async def test_words_over_the_persona_interrupt_it_ahead_of_themselves():
    # The transcript of speech whose pause was undone (or that came over a reply still being
    # composed) interrupts the reply; the interruption must reach the brain before the words
    # do, or it drops the reply to them.
    interrupted: list[str] = []

    async def interrupt() -> None:
        interrupted.append("voice stopped")

    guard = VoiceGuard(
        voice=PlayingVoice(level=0.3),
        reply_active=lambda: True,
        interrupt=interrupt,
        persona_words=lambda: ["our", "sourdough", "country", "loaf"],
        listener=UserSideListener(),
        clock=AudioClock(),
    )
    words = TranscriptionFrame(text="where are you located", user_id="", timestamp="")
    down, _ = await run_test(
        guard,
        frames_to_send=[words],
        expected_down_frames=[InterruptionFrame, TranscriptionFrame],
    )
    assert interrupted == ["voice stopped"]
    assert down[-1].text == "where are you located"


async def test_analyzers_share_one_silero_session_and_keep_their_own_state() -> None:
    """Every analyzer of the process runs on one ONNX session (loading one per analyzer cost
    each call ~220 ms of CPU at its start); each keeps its own recurrent state."""
    from calls.pipeline.turns import InlineSileroVADAnalyzer, silero_session

    speech = at_pipeline_rate(with_room(await spoken_pcm("Are you open on Monday?")))
    quiet = at_pipeline_rate(with_room(np.zeros(0, dtype=np.float32), seed=3))
    window = 512 * 2  # Silero's 32 ms at 16 kHz, in bytes

    def analyzer() -> InlineSileroVADAnalyzer:
        made = InlineSileroVADAnalyzer()
        made.set_sample_rate(PIPELINE_RATE)
        return made

    alone, listening, other = analyzer(), analyzer(), analyzer()
    assert alone._model.session is listening._model.session is other._model.session is silero_session()
    expected = [
        np.ravel(alone.voice_confidence(speech[at : at + window]))[0]
        for at in range(0, len(speech) - window, window)
    ]
    heard = []
    for index, at in enumerate(range(0, len(speech) - window, window)):
        # Another call's analyzer runs between each of this one's windows, on other audio.
        other.voice_confidence(quiet[(index * window) % (len(quiet) - window) :][:window])
        heard.append(np.ravel(listening.voice_confidence(speech[at : at + window]))[0])
    assert max(expected) > 0.9  # the speech is heard at all
    assert heard == expected


async def test_quiet_windows_are_not_scored_and_the_vad_hears_the_same_speech() -> None:
    """Below the volume floor a window cannot be speech, so Silero is not run on it: the VAD
    hears each utterance start and end where it does when every window is scored (the model's
    state differs a little after the windows it skipped: ends may move by a window or two)."""
    from pipecat.audio.vad.vad_analyzer import VADState

    from calls.pipeline.turns import vad_analyzer_build

    sentences = ["Are you open on Monday?", "Hold on, how can I pay?", "Thank you very much for your help."]
    call = np.concatenate(
        [
            with_room(await spoken_pcm(text), lead_seconds=1.0, tail_seconds=1.2, seed=index)
            for index, text in enumerate(sentences)
        ]
    )
    audio = at_pipeline_rate(call)

    def utterances(gated: bool) -> tuple[list[tuple[int, int]], object]:
        """(first speaking frame, first quiet frame after it) of each utterance."""
        analyzer = vad_analyzer_build()
        analyzer.set_sample_rate(PIPELINE_RATE)
        spans, started = [], None
        for index, at in enumerate(range(0, len(audio) - FRAME_BYTES, FRAME_BYTES)):
            analyzer._analysing = gated  # as `analyze_audio` runs it in the pipeline, or not
            state = analyzer._run_analyzer(audio[at : at + FRAME_BYTES])
            analyzer._analysing = False
            if state == VADState.SPEAKING and started is None:
                started = index
            elif state == VADState.QUIET and started is not None:
                spans.append((started, index))
                started = None
        return spans, analyzer

    every, _ = utterances(gated=False)
    gated, analyzer = utterances(gated=True)
    assert len(every) == len(gated) >= len(sentences)  # "Hold on," may stand on its own
    for (start, end), (gated_start, gated_end) in zip(every, gated, strict=True):
        assert abs(gated_start - start) <= 1 and abs(gated_end - end) <= 3  # frames of 20 ms
    # A good part of even this talkative audio is quiet, and a listening call is mostly quiet.
    assert analyzer.windows_skipped >= 0.4 * (analyzer.windows_skipped + analyzer.windows_scored)


async def test_the_vad_keeps_its_latest_confidence_and_speaking_state_for_audio_metrics() -> None:
    """`audio.metrics` reads the VAD's own work: the confidence of the window it just analysed
    (0 in the room's quiet, which the model does not score) and whether the user is speaking
    (from speech.started to speech.ended)."""
    from calls.pipeline.turns import vad_analyzer_build

    audio = at_pipeline_rate(with_room(await spoken_pcm("Are you open on Monday?"), tail_seconds=1.0))
    analyzer = vad_analyzer_build()
    analyzer.set_sample_rate(PIPELINE_RATE)
    seen: list[tuple[float, bool]] = []
    for at in range(0, len(audio) - FRAME_BYTES, FRAME_BYTES):
        await analyzer.analyze_audio(audio[at : at + FRAME_BYTES])
        assert isinstance(analyzer.confidence, float)
        seen.append((analyzer.confidence, analyzer.speaking))
    lead = int(LEAD_SECONDS * 50) - 5  # frames of the room's quiet before the words
    assert all(confidence == 0.0 and not speaking for confidence, speaking in seen[:lead])
    assert max(confidence for confidence, _ in seen) > 0.9
    speaking = [index for index, (_, is_speaking) in enumerate(seen) if is_speaking]
    assert speaking and speaking[0] > lead and speaking[-1] < len(seen) - 10  # it ended, too
