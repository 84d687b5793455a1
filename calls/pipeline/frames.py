"""Parley's own pipecat frames, passed between the pipeline's processors like pipecat's."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipecat.frames.frames import AggregatedTextFrame, DataFrame, LLMFullResponseStartFrame


@dataclass
class VisemeTimelineFrame(DataFrame):
    """The phonemes and words of the TTS audio that follows this frame: lip sync and word timing.

    Pushed right before the `TTSAudioRawFrame` it describes. A frame without `pts` waits in
    the output transport's audio queue behind earlier audio and leaves it stamped with its
    place in the voice, so it is handled just as its audio starts to play: schedule each
    phoneme and word `offset_seconds` after that moment. Offsets may run a little past the
    audio's end (the 48 kHz resampler holds back a few milliseconds) and, rarely, below zero
    (play those at once).

    Parameters:
        phonemes: (offset_seconds, phoneme) pairs in time order; phonemes are IPA without
            stress marks, and "_" is a pause.
        words: (offset_seconds, word) pairs in time order: the words that start in this audio.
            pipecat's word frames (`TTSTextFrame`) run on the transport's clock, which is set
            when the TTS produces audio, not when it plays (a reply queued behind another
            message had its words ~0.4 s late); these follow the voice itself.
        utterance_offset_seconds: Where the following audio starts within its utterance.
        context_id: The TTS context the audio belongs to.
    """

    phonemes: list[tuple[float, str]] = field(default_factory=list)
    words: list[tuple[float, str]] = field(default_factory=list)
    utterance_offset_seconds: float = 0.0
    context_id: str | None = None

    def __str__(self) -> str:
        return (
            f"{self.name}(phonemes: {len(self.phonemes)}, words: {len(self.words)},"
            f" at: {self.utterance_offset_seconds:.3f}s)"
        )


@dataclass
class TalkStreamStartFrame(LLMFullResponseStartFrame):
    """Starts a talk stream's speech: one reply the app streams in, spoken as it arrives.

    The TTS treats it as the start of an LLM reply (its sentences share one audio context);
    it reaches the playback side in order, just before the stream's first audio, which is
    when the persona's words start carrying `correlation_id`.
    """

    correlation_id: str = ""
    message_id: str | None = None  # the message's id in events (an app's own); None: a new one


@dataclass
class SpeechMessageStartFrame(DataFrame):
    """Starts a verbatim message (`Conversation.say`: the greeting, `/talk`): what plays after
    it is a new persona message saying `text`, even when its voice follows the last message's
    without a pause (both queued while the session connected, say).

    The TTS emits it in order behind the audio queued before it, and the output after that
    audio has played.
    """

    text: str = ""
    message_id: str | None = None  # the message's id in events (an app's own); None: a new one


@dataclass
class TalkTextFrame(AggregatedTextFrame):
    """One whole sentence of a talk stream: spoken at once, without waiting for the next one."""
