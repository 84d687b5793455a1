"""THE event vocabulary: one typed payload per event name of PROTOCOL §2, spelled as the agent seed.

Every event travels as a flat JSON object: the envelope (`callId`, `agent`) plus its payload
fields in camelCase. Payload models refuse unknown fields, so a typo fails where it is made.
Nothing here stores or sends; `calls.publishing` is the one publish path.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

__all__ = [
    "EVENT_TYPES",
    "Event",
    "EventValidationError",
    "event_class",
    "event_frame",
    "event_validate",
    "is_kept",
]


class EventValidationError(ValueError):
    """An event name or payload that does not match the vocabulary."""


class Event(BaseModel):
    """Base payload. Subclasses set `name` (the wire name) and `kept` (stored in the call log)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
    )

    name: ClassVar[str]
    kept: ClassVar[bool] = True

    def payload(self) -> dict[str, Any]:
        """The payload as it goes on the wire (camelCase, no unset optionals)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


EndReasonName = Literal["hangup", "timeout", "idle_timeout", "max_duration", "no_answer", "busy", "failed"]
TransportName = Literal["webrtc", "chat", "whatsapp", "phone"]
DirectionName = Literal["inbound", "outbound"]


# --- Lifecycle --------------------------------------------------------------------------


class TranscriptLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel)

    message_id: str
    role: Literal["user", "persona"]
    text: str
    interrupted: bool = False


class CallStarted(Event):
    """A call connected; the Call is partly known (no duration, end or reason yet)."""

    name: ClassVar[str] = "call.started"
    from_address: str = Field(default="", alias="from")
    to_address: str = Field(default="", alias="to")
    direction: DirectionName
    transport: TransportName
    metadata: dict[str, Any] = Field(default_factory=dict)
    started_at: str


class CallEnded(Event):
    """The call is over; the Call is fully known, transcript included."""

    name: ClassVar[str] = "call.ended"
    reason: EndReasonName
    from_address: str = Field(default="", alias="from")
    to_address: str = Field(default="", alias="to")
    direction: DirectionName
    transport: TransportName
    metadata: dict[str, Any] = Field(default_factory=dict)
    started_at: str | None = None
    ended_at: str
    duration: float = Field(ge=0, description="Seconds from start to end.")
    transcript: list[TranscriptLine] = Field(default_factory=list)


# --- User speech ------------------------------------------------------------------------


class SpeechStarted(Event):
    """VAD: the user's voice started."""

    name: ClassVar[str] = "speech.started"


class SpeechEnded(Event):
    """VAD: the user's voice stopped."""

    name: ClassVar[str] = "speech.ended"


class UserSpeaking(Event):
    """Interim transcript; fires several times per utterance."""

    name: ClassVar[str] = "user.speaking"
    kept: ClassVar[bool] = False
    text: str


class UserMessage(Event):
    """Final user text; `channel` (Parley's addition) says whether it was spoken or typed."""

    name: ClassVar[str] = "user.message"
    text: str
    message_id: str
    channel: Literal["spoken", "typed"] = "spoken"


# --- Turns ------------------------------------------------------------------------------


class EagerTurn(Event):
    """The user has probably finished: start thinking, be ready to abort."""

    name: ClassVar[str] = "eager.turn"
    text: str
    probability: float = Field(ge=0.0, le=1.0)


class TurnEnd(Event):
    """The user has finished (higher confidence than eager.turn)."""

    name: ClassVar[str] = "turn.end"
    text: str
    probability: float = Field(ge=0.0, le=1.0)


class TurnContinued(Event):
    """The user went on after a turn signal; running replies stop."""

    name: ClassVar[str] = "turn.continued"


# --- Bot speech -------------------------------------------------------------------------


class BotSpeaking(Event):
    name: ClassVar[str] = "bot.speaking"
    message_id: str
    text: str


class BotWord(Event):
    """One word was just played to the listener."""

    name: ClassVar[str] = "bot.word"
    kept: ClassVar[bool] = False
    message_id: str
    word: str


class BotFinished(Event):
    name: ClassVar[str] = "bot.finished"
    message_id: str


class BotInterrupted(Event):
    """The user cut the persona off; what had been played when it stopped."""

    name: ClassVar[str] = "bot.interrupted"
    message_id: str
    played_ms: int | None = Field(default=None, ge=0)
    words_spoken: int | None = Field(default=None, ge=0)
    last_word: str | None = None


# --- Protocol ---------------------------------------------------------------------------


class MessageConfirmed(Event):
    """The server accepted a message an app sent (say, reply, replyStream), or committed one of
    the persona's own replies to the conversation."""

    name: ClassVar[str] = "message.confirmed"
    message_id: str
    text: str = ""


class ReplyRejected(Event):
    """An app's reply came too late: a newer user message came after the one it answers."""

    name: ClassVar[str] = "reply.rejected"
    message_id: str
    in_reply_to: str | None = None
    reason: str


class ReplyAborted(Event):
    """An app's streamed reply was cut; later chunks of it are ignored."""

    name: ClassVar[str] = "reply.aborted"
    message_id: str
    reason: Literal["turn.continued", "interrupted", "call_ended", "cancelled"]


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    arguments: str = Field(description="JSON-encoded arguments, as the LLM produced them.")


class LlmToolCall(Event):
    name: ClassVar[str] = "llm.tool_call"
    msg_id: str
    tool_calls: list[ToolCall] = Field(min_length=1)


class SessionIdleWarning(Event):
    name: ClassVar[str] = "session.idle_warning"
    remaining_seconds: float = Field(ge=0)
    idle_timeout_seconds: float = Field(gt=0)


class SessionTimeout(Event):
    name: ClassVar[str] = "session.timeout"
    reason: Literal["max_duration", "idle_timeout"]


# --- WhatsApp ---------------------------------------------------------------------------


class WhatsAppSessionStarted(Event):
    name: ClassVar[str] = "whatsapp.session_started"
    session_id: str
    contact_phone: str
    contact_name: str = ""


class WhatsAppMessageReceived(Event):
    """An incoming message; for a voice note `text` is its transcript."""

    name: ClassVar[str] = "whatsapp.message"
    session_id: str
    from_address: str = Field(alias="from")
    name_: str = Field(default="", alias="name")
    # The seed's five, and the other kinds Parley records (text: a caption, emoji or place).
    type: Literal[
        "text",
        "audio",
        "image",
        "video",
        "document",
        "sticker",
        "reaction",
        "location",
        "contacts",
        "unsupported",
    ]
    text: str = ""
    message_id: str


class WhatsAppResponse(Event):
    """A message Parley sent on the thread (Meta accepted it); `author` says who wrote it."""

    name: ClassVar[str] = "whatsapp.response"
    session_id: str
    to_address: str = Field(alias="to")
    text: str
    message_id: str = ""
    author: Literal["persona", "human", "app"] = "persona"


class WhatsAppStatus(Event):
    name: ClassVar[str] = "whatsapp.status"
    status: Literal["sent", "delivered", "read", "played", "failed"]
    recipient: str
    message_id: str


# --- Audio metrics ----------------------------------------------------------------------


class AudioMetrics(Event):
    name: ClassVar[str] = "audio.metrics"
    kept: ClassVar[bool] = False
    source: Literal["user", "bot"]
    energy_db: float = Field(ge=-60.0, le=0.0)
    rms: float = Field(ge=0.0, le=1.0)
    peak: float = Field(ge=0.0, le=1.0)
    is_speech: bool
    vad_prob: float = Field(ge=0.0, le=1.0)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.name: cls
    for cls in (
        CallStarted,
        CallEnded,
        SpeechStarted,
        SpeechEnded,
        UserSpeaking,
        UserMessage,
        EagerTurn,
        TurnEnd,
        TurnContinued,
        BotSpeaking,
        BotWord,
        BotFinished,
        BotInterrupted,
        MessageConfirmed,
        ReplyRejected,
        ReplyAborted,
        LlmToolCall,
        SessionIdleWarning,
        SessionTimeout,
        WhatsAppSessionStarted,
        WhatsAppMessageReceived,
        WhatsAppResponse,
        WhatsAppStatus,
        AudioMetrics,
    )
}

ENVELOPE_FIELDS = ("callId", "agent")


def event_class(name: str) -> type[Event]:
    try:
        return EVENT_TYPES[name]
    except KeyError:
        raise EventValidationError(f"unknown event type {name!r}") from None


def is_kept(name: str) -> bool:
    return event_class(name).kept


def event_frame(*, event: Event, call_id: str, agent: str) -> dict[str, Any]:
    """The flat wire object: envelope first, then the payload."""
    return {"callId": call_id, **event.payload(), "agent": agent}


def event_validate(name: str, data: dict[str, Any]) -> Event:
    """Check a wire object against the vocabulary; raise EventValidationError naming the field."""
    cls = event_class(name)
    missing = [field for field in ENVELOPE_FIELDS if not isinstance(data.get(field), str) or not data[field]]
    if missing:
        raise EventValidationError(f"{name}: missing envelope field(s) {', '.join(missing)}")
    payload = {key: value for key, value in data.items() if key not in ENVELOPE_FIELDS}
    try:
        return cls.model_validate(payload)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or 'payload'}: {issue['msg']}"
            for issue in error.errors()
        )
        raise EventValidationError(f"{name}: {problems}") from None
