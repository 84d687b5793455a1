"""Reads for call review: a call as a conversation, transcript search, list filters, export rows."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from django.conf import settings
from django.db import connection
from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet

from calls.models import Call, CallEvent, Message, Transport
from calls.review.models import ToolResult, TurnLatency
from calls.whatsapp.services import transcript_message_id

# Transcripts are in any language a persona speaks: no stemming, words as they are. The
# migration's GIN index is built on this same configuration.
TRANSCRIPT_SEARCH_CONFIG = "simple"
# The raw log shown under a call's conversation; the full log is the filtered CallEvent list.
RAW_EVENTS_SHOWN = 300
# Older calls only (lines recorded before `Message.channel`): a recognised utterance's final
# text comes within this of the voice detector's last word on it (speech.started/ended); a
# visitor line with no speech that recent was typed.
SPOKEN_TRANSCRIPT_WINDOW_SECONDS = 5.0
# The stages of a turn's latency as the call page shows them: (name, label, what it measures).
LATENCY_STAGES = (
    ("vad", "VAD end of speech", "the visitor's last word → the voice detector's stop"),
    ("transcript", "final transcript", "the VAD's stop → the recogniser's final words"),
    ("turn", "turn decision", "the final words → the turn taken as over"),
    ("brain", "brain first sentence", "the turn's end → the reply's first sentence"),
    ("audio", "first audio sent", "the first sentence → its first voice sent"),
)
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
    "turn.continued",
    "reply.rejected",
    "session.idle_warning",
    "session.timeout",
    "whatsapp.message",
)

Channel = Literal["spoken", "typed", "voice_note", "unknown"]


def offset_label(seconds: float | None) -> str:
    """Time since the call started, as `m:ss.s`, or `h:mm:ss` from an hour on (a WhatsApp thread
    lasts up to a day); `-` if unknown."""
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else "+"
    minutes, rest = divmod(abs(seconds), 60)
    if minutes >= 60:
        hours, minutes = divmod(int(minutes), 60)
        return f"{sign}{hours}:{minutes:02d}:{int(rest):02d}"
    return f"{sign}{int(minutes)}:{rest:04.1f}"


class _Timed:
    offset_seconds: float | None

    @property
    def offset_label(self) -> str:
        return offset_label(self.offset_seconds)


def percentile(values: list[int], fraction: float) -> int | None:
    """The nearest-rank percentile (`fraction` 0..1) of `values`; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def slow_turn_ms() -> int:
    """A persona answer slower than this (milliseconds) is flagged slow (`PARLEY_SLOW_TURN_MS`)."""
    return int(settings.PARLEY_SLOW_TURN_MS)


@dataclass(frozen=True)
class LatencyStage:
    """One stage of a turn's latency bar: its duration and its share of the bar's scale."""

    name: str
    label: str
    ms: int | None
    percent: float


@dataclass(frozen=True)
class TurnLatencyView(_Timed):
    """One persona answer's latency, as the live call recorded it (`TurnLatency`)."""

    message_id: str
    user_message_id: str
    channel: str
    started_at: datetime
    offset_seconds: float | None
    stages: tuple[LatencyStage, ...]
    total_ms: int
    slow: bool
    interrupted: bool
    text: str

    @property
    def flags(self) -> list[str]:
        return (["slow"] if self.slow else []) + (["cut off"] if self.interrupted else [])


@dataclass(frozen=True)
class CallLatency:
    """A call's persona answers with their latency, and its median and p95 voice-to-voice."""

    turns: list[TurnLatencyView]
    slow_ms: int
    scale_ms: int  # the bars' full width, in milliseconds
    spoken_median_ms: int | None
    spoken_p95_ms: int | None
    typed_median_ms: int | None

    @property
    def spoken_count(self) -> int:
        return sum(1 for turn in self.turns if turn.channel == "spoken")

    @property
    def typed_count(self) -> int:
        return sum(1 for turn in self.turns if turn.channel == "typed")

    @property
    def slow_count(self) -> int:
        return sum(1 for turn in self.turns if turn.slow)

    @property
    def threshold_percent(self) -> float:
        return round(100 * self.slow_ms / self.scale_ms, 2) if self.scale_ms else 100.0

    def for_message(self, message_id: str) -> TurnLatencyView | None:
        return next((turn for turn in self.turns if turn.message_id == message_id), None)


# The bars' scale reaches at least this far past the slow threshold.
LATENCY_SCALE_MARGIN = 1.1


def call_latency(call: Call, *, start: datetime | None = None) -> CallLatency:
    """The latency of each persona answer of the call, as recorded while it ran, oldest first.

    Median and p95 are over spoken turns (voice to voice); typed turns (text to voice, no
    listening stages) have their own median.
    """
    start = start or call.started_at or call.created_at
    slow_ms = slow_turn_ms()
    rows = list(TurnLatency.objects.filter(call=call).order_by("started_at", "id"))
    persona_lines = {
        message.message_id: message
        for message in Message.objects.filter(call=call, message_id__in=[row.message_id for row in rows])
    }
    # Past the slow threshold by a margin, so that its line shows even when no answer reaches it.
    scale = max([round(slow_ms * LATENCY_SCALE_MARGIN), *(row.total_ms for row in rows)])
    turns = []
    for row in rows:
        line = persona_lines.get(row.message_id)
        stages = tuple(
            LatencyStage(
                name=name,
                label=label,
                ms=getattr(row, f"{name}_ms"),
                percent=round(100 * (getattr(row, f"{name}_ms") or 0) / scale, 2),
            )
            for name, label, _ in LATENCY_STAGES
        )
        turns.append(
            TurnLatencyView(
                message_id=row.message_id,
                user_message_id=row.user_message_id,
                channel=row.channel,
                started_at=row.started_at,
                offset_seconds=_offset(row.started_at, start),
                stages=stages,
                total_ms=row.total_ms,
                slow=row.total_ms > slow_ms,
                interrupted=bool(line and line.interrupted),
                text=(line.text if line else ""),
            )
        )
    spoken = [turn.total_ms for turn in turns if turn.channel == "spoken"]
    typed = [turn.total_ms for turn in turns if turn.channel == "typed"]
    return CallLatency(
        turns=turns,
        slow_ms=slow_ms,
        scale_ms=scale,
        spoken_median_ms=round(statistics.median(spoken)) if spoken else None,
        spoken_p95_ms=percentile(spoken, 0.95),
        typed_median_ms=round(statistics.median(typed)) if typed else None,
    )


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
    latency: TurnLatencyView | None = None  # a persona answer's, as the call recorded it

    @property
    def flags(self) -> list[str]:
        """Why a reviewer should look at this turn: slow, cut off."""
        flags = []
        if self.latency is not None and self.latency.slow:
            flags.append("slow")
        if self.interrupted:
            flags.append("cut off")
        return flags

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
    """One tool the persona's LLM called, and what it came to (its result or its error)."""

    kind = "tool_call"
    tool_call_id: str
    name: str
    arguments: str
    at: datetime | None
    offset_seconds: float | None
    result: Any = None
    result_recorded: bool = False
    error: str = ""

    @property
    def result_pretty(self) -> str:
        return json.dumps(self.result, ensure_ascii=False, sort_keys=True)

    @property
    def flags(self) -> list[str]:
        return ["tool error"] if self.error else []

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

    @property
    def flags(self) -> list[str]:
        # The turn was taken as over while the visitor went on: an answer cut in on them.
        return ["cut off"] if self.name == "turn.continued" else []


ConversationItem = ConversationTurn | ConversationToolCall | ConversationNote


def _offset(at: datetime | None, start: datetime | None) -> float | None:
    if at is None or start is None:
        return None
    return (at - start).total_seconds()


def call_conversation(call: Call, *, latency: CallLatency | None = None) -> list[ConversationItem]:
    """The call as it happened: turns, tool calls and what happened to the call, oldest first.

    Times: a visitor turn is placed at its `user.message` event, a persona turn at its
    `bot.speaking` (when it began to speak), falling back to the transcript row's own times.

    Typed or spoken: a live call records it on the visitor's line as it arrives
    (`Message.channel`). Lines recorded before that are placed by the events: a webrtc visitor
    turn is spoken when the voice detector heard speech (`speech.started`/`ended`) since the
    visitor's previous turn and at most SPOKEN_TRANSCRIPT_WINDOW_SECONDS before it, typed
    otherwise; every turn of a chat call is typed; a WhatsApp turn is a voice note when its
    `whatsapp.message` is audio. Calls older than their events say "unknown".

    A tool call shows its arguments (`llm.tool_call`) and what it came to (`ToolResult`, stored
    as the call learned it); a persona answer carries its latency (`call_latency`).
    """
    start = call.started_at or call.created_at
    if latency is None:
        latency = call_latency(call, start=start)
    tool_results = {result.tool_call_id: result for result in ToolResult.objects.filter(call=call)}
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
                outcome = tool_results.get(str(tool_call.get("id", "")))
                item = ConversationToolCall(
                    tool_call_id=str(tool_call.get("id", "")),
                    name=str(tool_call.get("name", "")),
                    arguments=str(tool_call.get("arguments", "")),
                    at=at,
                    offset_seconds=_offset(at, start),
                    result=outcome.result if outcome is not None else None,
                    result_recorded=outcome is not None,
                    error=outcome.error if outcome is not None else "",
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
            channel = message.channel or _visitor_channel(
                call, message.message_id, user_channel, whatsapp_kind
            )
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
            latency=None if is_visitor else latency.for_message(message.message_id),
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
    if name == "turn.continued":
        return ConversationNote(
            name=name,
            text="The visitor went on after their turn was taken as over",
            at=at,
            offset_seconds=offset,
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


def calls_slow(queryset: QuerySet[Call], *, slow: bool) -> QuerySet[Call]:
    """Calls with (or without) a persona answer slower than `PARLEY_SLOW_TURN_MS`, as recorded."""
    slow_answer = Exists(TurnLatency.objects.filter(call=OuterRef("pk"), total_ms__gt=slow_turn_ms()))
    return queryset.filter(slow_answer if slow else ~slow_answer)


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
                    # How a visitor's line came (spoken, typed, a voice note); empty when not recorded.
                    "channel": message.channel,
                    "startedAt": _iso(message.started_at),
                    "endedAt": _iso(message.ended_at),
                }
                for message in call.messages.all()
            ],
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
