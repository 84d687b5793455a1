"""Reads for call review: a call as a conversation, transcript search, list filters, export rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from django.db import connection
from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet

from calls.models import Call, CallEvent, Message, Transport
from calls.whatsapp.services import transcript_message_id

# Transcripts are in any language a persona speaks: no stemming, words as they are. The
# migration's GIN index is built on this same configuration.
TRANSCRIPT_SEARCH_CONFIG = "simple"
# The raw log shown under a call's conversation; the full log is the filtered CallEvent list.
RAW_EVENTS_SHOWN = 300
# A recognised utterance's final text comes within this of the voice detector's last word on
# it (speech.started/ended); a visitor line with no speech that recent was typed.
SPOKEN_TRANSCRIPT_WINDOW_SECONDS = 5.0
# Calls read per database round trip while an export streams (each with its transcript).
EXPORT_CHUNK_CALLS = 200

# The event types a conversation is built from (the rest stay in the raw log).
CONVERSATION_EVENT_TYPES = (
    "call.started",
    "call.ended",
    "speech.started",
    "speech.ended",
    "user.message",
    "bot.speaking",
    "bot.interrupted",
    "llm.tool_call",
    "reply.rejected",
    "session.idle_warning",
    "session.timeout",
    "whatsapp.message",
)

Channel = Literal["spoken", "typed", "voice_note", "unknown"]


def offset_label(seconds: float | None) -> str:
    """Time since the call started, as `m:ss.s` (`-` if unknown)."""
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else "+"
    minutes, rest = divmod(abs(seconds), 60)
    return f"{sign}{int(minutes)}:{rest:04.1f}"


class _Timed:
    offset_seconds: float | None

    @property
    def offset_label(self) -> str:
        return offset_label(self.offset_seconds)


@dataclass(frozen=True)
class ConversationTurn(_Timed):
    """A transcript line: the visitor's or the persona's."""

    kind = "turn"
    speaker: Literal["visitor", "persona"]
    text: str
    spoken_text: str
    interrupted: bool
    # How the visitor said it: out loud, typed, a WhatsApp voice note (persona turns: spoken).
    channel: Channel
    at: datetime | None
    offset_seconds: float | None
    message_id: str
    played_ms: int | None = None
    # A spoken visitor turn: when its speech began (the turn itself is placed at its transcript,
    # after the speech); the recording player starts the line there.
    speech_offset_seconds: float | None = None

    @property
    def audio_offset_seconds(self) -> float | None:
        """Where the line's audio begins, in seconds since the call started."""
        return self.speech_offset_seconds if self.speech_offset_seconds is not None else self.offset_seconds

    @property
    def unspoken_text(self) -> str:
        """What the persona meant to say but was cut off before (empty if it said it all)."""
        if not self.interrupted:
            return ""
        if self.spoken_text and self.text.startswith(self.spoken_text):
            return self.text[len(self.spoken_text) :].strip()
        return self.text if self.text != self.spoken_text else ""


@dataclass(frozen=True)
class ConversationToolCall(_Timed):
    """One tool the persona's LLM called. Results are not in the event log (see `call_conversation`)."""

    kind = "tool_call"
    tool_call_id: str
    name: str
    arguments: str
    at: datetime | None
    offset_seconds: float | None
    result: Any = None
    result_recorded: bool = False

    @property
    def arguments_pretty(self) -> str:
        try:
            return json.dumps(json.loads(self.arguments), ensure_ascii=False, sort_keys=True)
        except (TypeError, ValueError):
            return self.arguments


@dataclass(frozen=True)
class ConversationNote(_Timed):
    """Something that happened to the call rather than in the conversation: start, end, limits."""

    kind = "note"
    name: str
    text: str
    at: datetime | None
    offset_seconds: float | None
    detail: dict[str, Any] = field(default_factory=dict)


ConversationItem = ConversationTurn | ConversationToolCall | ConversationNote


def _offset(at: datetime | None, start: datetime | None) -> float | None:
    if at is None or start is None:
        return None
    return (at - start).total_seconds()


def call_conversation(call: Call) -> list[ConversationItem]:
    """The call as it happened: turns, tool calls and what happened to the call, oldest first.

    Times: a visitor turn is placed at its `user.message` event, a persona turn at its
    `bot.speaking` (when it began to speak), falling back to the transcript row's own times.

    Typed or spoken: Parley records no source on `user.message`. A webrtc visitor turn is
    spoken when the voice detector heard speech (`speech.started`/`ended`) since the visitor's
    previous turn and at most SPOKEN_TRANSCRIPT_WINDOW_SECONDS before it, typed otherwise (a
    line typed within seconds of speaking reads as spoken); every turn of a chat call is typed; a WhatsApp turn is a voice note
    when its `whatsapp.message` is audio. Calls older than their events say "unknown".

    Tool results are not stored by the pipeline today (they go to the browser on the data
    channel only), so a tool call shows its arguments and says its result was not recorded.
    """
    start = call.started_at or call.created_at
    events = list(
        CallEvent.objects.filter(call=call, type__in=CONVERSATION_EVENT_TYPES)
        .order_by("cursor")
        .values("cursor", "type", "data", "created_at")
    )
    messages = list(call.messages.order_by("created_at", "id"))

    user_event_at: dict[str, datetime] = {}
    user_channel: dict[str, Channel] = {}
    persona_event_at: dict[str, datetime] = {}
    played_ms: dict[str, int] = {}
    whatsapp_kind: dict[str, str] = {}
    heard_speech_at: datetime | None = None
    speech_began_at: datetime | None = None  # the first speech.started since the visitor's last turn
    user_speech_at: dict[str, datetime] = {}
    items: list[tuple[datetime | None, int, ConversationItem]] = []
    for event in events:
        data, at, name = event["data"] or {}, event["created_at"], event["type"]
        if name in ("speech.started", "speech.ended"):
            heard_speech_at = at
            if name == "speech.started" and speech_began_at is None:
                speech_began_at = at
        elif name == "user.message":
            message_id = str(data.get("messageId", ""))
            user_event_at[message_id] = at
            spoken = heard_speech_at is not None and (
                (at - heard_speech_at).total_seconds() <= SPOKEN_TRANSCRIPT_WINDOW_SECONDS
            )
            user_channel[message_id] = "spoken" if spoken else "typed"
            if spoken and speech_began_at is not None:
                user_speech_at[message_id] = speech_began_at
            heard_speech_at = speech_began_at = None
        elif name == "bot.speaking":
            persona_event_at.setdefault(str(data.get("messageId", "")), at)
        elif name == "bot.interrupted" and data.get("playedMs") is not None:
            played_ms[str(data.get("messageId", ""))] = int(data["playedMs"])
        elif name == "whatsapp.message":
            whatsapp_kind[transcript_message_id(str(data.get("messageId", "")))] = str(data.get("type", ""))
        elif name == "llm.tool_call":
            for tool_call in data.get("toolCalls") or []:
                item = ConversationToolCall(
                    tool_call_id=str(tool_call.get("id", "")),
                    name=str(tool_call.get("name", "")),
                    arguments=str(tool_call.get("arguments", "")),
                    at=at,
                    offset_seconds=_offset(at, start),
                )
                items.append((at, event["cursor"], item))
        else:
            note = _note(name, data, at, start)
            if note is not None:
                items.append((at, event["cursor"], note))

    for index, message in enumerate(messages):
        is_visitor = message.role == Message.Role.USER
        if is_visitor:
            at = user_event_at.get(message.message_id) or message.started_at or message.created_at
            channel = _visitor_channel(call, message.message_id, user_channel, whatsapp_kind)
        else:
            # WhatsApp replies are recorded with the role "assistant": any other role is the persona.
            at = persona_event_at.get(message.message_id) or message.started_at or message.created_at
            channel = "spoken" if call.transport in (Transport.WEBRTC, Transport.PHONE) else "typed"
        turn = ConversationTurn(
            speaker="visitor" if is_visitor else "persona",
            text=message.text,
            spoken_text=message.spoken_text,
            interrupted=message.interrupted,
            channel=channel,
            at=at,
            offset_seconds=_offset(at, start),
            message_id=message.message_id,
            played_ms=played_ms.get(message.message_id),
            speech_offset_seconds=_offset(user_speech_at.get(message.message_id), start)
            if is_visitor
            else None,
        )
        # Rows have no cursor: on a tie of times, the transcript's own order holds.
        items.append((at, -len(messages) + index, turn))

    if not any(isinstance(item, ConversationNote) and item.name == "call.ended" for _, _, item in items):
        if call.ended_at is not None or call.end_reason:
            items.append((call.ended_at, 1 << 62, _ended_note(call.end_reason, call.ended_at, start)))

    far_future = datetime.max.replace(tzinfo=start.tzinfo) if start else None
    items.sort(key=lambda entry: (entry[0] or far_future or datetime.max, entry[1]))
    return [item for _, _, item in items]


def _visitor_channel(
    call: Call, message_id: str, spoken_or_typed: dict[str, Channel], whatsapp_kind: dict[str, str]
) -> Channel:
    if call.transport == Transport.CHAT:
        return "typed"
    if call.transport == Transport.WHATSAPP:
        kind = whatsapp_kind.get(message_id)
        return "voice_note" if kind == "audio" else ("typed" if kind else "unknown")
    return spoken_or_typed.get(message_id, "unknown")


END_REASON_TEXT = {
    "hangup": "the visitor hung up",
    "timeout": "timed out",
    "idle_timeout": "the visitor said nothing for too long",
    "max_duration": "it reached its maximum duration",
    "no_answer": "nobody answered",
    "busy": "the line was busy",
    "failed": "it failed",
}


def _ended_note(reason: str, at: datetime | None, start: datetime | None) -> ConversationNote:
    said = END_REASON_TEXT.get(reason, reason or "no reason recorded")
    return ConversationNote(
        name="call.ended",
        text=f"Call ended: {said}",
        at=at,
        offset_seconds=_offset(at, start),
        detail={"reason": reason},
    )


def _note(name: str, data: dict[str, Any], at: datetime, start: datetime | None) -> ConversationNote | None:
    offset = _offset(at, start)
    if name == "call.started":
        return ConversationNote(name=name, text="Call started", at=at, offset_seconds=offset)
    if name == "call.ended":
        return _ended_note(str(data.get("reason", "")), at, start)
    if name == "session.idle_warning":
        return ConversationNote(
            name=name,
            text=f"Idle warning: {data.get('remainingSeconds', '?')} s left before the call ends",
            at=at,
            offset_seconds=offset,
        )
    if name == "session.timeout":
        return ConversationNote(
            name=name, text=f"Session limit reached: {data.get('reason', '')}", at=at, offset_seconds=offset
        )
    if name == "reply.rejected":
        return ConversationNote(
            name=name,
            text=f"An app's reply was refused: {data.get('reason', '')}",
            at=at,
            offset_seconds=offset,
        )
    return None


def call_events_raw(call: Call, *, limit: int = RAW_EVENTS_SHOWN) -> tuple[list[dict[str, Any]], int]:
    """The first `limit` events of the call's log (data as compact JSON), and how many it holds."""
    queryset = CallEvent.objects.filter(call=call).order_by("cursor")
    rows = [
        {
            "cursor": event.cursor,
            "type": event.type,
            "created_at": event.created_at,
            "data_json": json.dumps(event.data, ensure_ascii=False, separators=(",", ":")),
        }
        for event in queryset[:limit]
    ]
    return rows, queryset.count()


# --- The calls list: search and filters --------------------------------------------------


def _transcript_matches(term: str) -> Exists:
    lines = Message.objects.filter(call=OuterRef("pk"))
    if connection.vendor == "postgresql":
        from django.contrib.postgres.search import SearchQuery, SearchVector

        lines = lines.annotate(search=SearchVector("text", config=TRANSCRIPT_SEARCH_CONFIG)).filter(
            search=SearchQuery(term, config=TRANSCRIPT_SEARCH_CONFIG, search_type="websearch")
        )
    else:
        for word in term.split():
            lines = lines.filter(text__icontains=word)
    return Exists(lines)


def call_search(queryset: QuerySet[Call], term: str) -> QuerySet[Call]:
    """Calls whose transcript says `term` (full-text on PostgreSQL, substrings elsewhere), or
    whose id or addresses contain it."""
    term = term.strip()
    if not term:
        return queryset
    by_fields = Q(id__icontains=term) | Q(from_address__icontains=term) | Q(to_address__icontains=term)
    return queryset.filter(by_fields | _transcript_matches(term))


def calls_interrupted(queryset: QuerySet[Call], *, interrupted: bool) -> QuerySet[Call]:
    """Calls in which the persona was (or was never) cut off."""
    cut_off = Exists(Message.objects.filter(call=OuterRef("pk"), interrupted=True))
    return queryset.filter(cut_off if interrupted else ~cut_off)


# Ranges of the duration filter: (name, label, from seconds inclusive, to seconds exclusive).
DURATION_RANGES: tuple[tuple[str, str, float | None, float | None], ...] = (
    ("under-30s", "under 30 s", None, 30),
    ("30s-2m", "30 s to 2 min", 30, 120),
    ("2m-10m", "2 to 10 min", 120, 600),
    ("over-10m", "over 10 min", 600, None),
)


def calls_by_duration(queryset: QuerySet[Call], *, range_name: str) -> QuerySet[Call]:
    for name, _, low, high in DURATION_RANGES:
        if name == range_name:
            if low is not None:
                queryset = queryset.filter(duration_seconds__gte=low)
            if high is not None:
                queryset = queryset.filter(duration_seconds__lt=high)
            return queryset
    return queryset


# --- Export ------------------------------------------------------------------------------


def call_export_rows(queryset: QuerySet[Call]) -> Iterator[dict[str, Any]]:
    """Each call of the list with its transcript, read a chunk at a time (a long list streams)."""
    transcript = Prefetch("messages", queryset=Message.objects.order_by("created_at", "id"))
    calls = queryset.select_related("persona").prefetch_related(transcript).order_by("-created_at", "id")
    for call in calls.iterator(chunk_size=EXPORT_CHUNK_CALLS):
        yield {
            "id": call.id,
            "persona": call.persona.slug,
            "transport": call.transport,
            "direction": call.direction,
            "status": call.status,
            "from": call.from_address,
            "to": call.to_address,
            "createdAt": _iso(call.created_at),
            "startedAt": _iso(call.started_at),
            "endedAt": _iso(call.ended_at),
            "durationSeconds": call.duration_seconds,
            "endReason": call.end_reason,
            "transcript": [
                {
                    "messageId": message.message_id,
                    "role": "user" if message.role == Message.Role.USER else "persona",
                    "text": message.text,
                    "spokenText": message.spoken_text,
                    "interrupted": message.interrupted,
                    "startedAt": _iso(message.started_at),
                }
                for message in call.messages.all()
            ],
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
