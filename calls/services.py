"""Writes for calls: their lifecycle (`call_start`, `call_end`), browser sessions started from a
session token, and transcript lines. Their events go out through `calls.publishing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from calls import events
from calls.models import Call, CallStatus, Direction, EndReason, Message, Transport
from calls.publishing import call_event_publish
from calls.selectors import engine_host_least_busy, live_call_count
from personas.models import SessionToken
from personas.services import session_token_check, session_token_consume
from personas.tokens import SESSION_AUDIENCE, TokenError, token_decode, token_id

# --- Call lifecycle ---------------------------------------------------------------------


def _iso(moment: Any) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def call_start(*, call: Call) -> Call:
    """Mark a call connected and publish `call.started` (once)."""
    with transaction.atomic():
        locked = Call.objects.select_for_update().select_related("persona").get(pk=call.pk)
        if locked.status != CallStatus.CONNECTING:
            return locked
        locked.status = CallStatus.IN_PROGRESS
        locked.started_at = timezone.now()
        locked.save(update_fields=["status", "started_at"])
        call_event_publish(
            call=locked,
            event=events.CallStarted(
                from_address=locked.from_address,
                to_address=locked.to_address,
                direction=locked.direction,
                transport=locked.transport,
                metadata=locked.metadata,
                started_at=_iso(locked.started_at) or "",
            ),
        )
    return locked


def call_end(*, call: Call, reason: str) -> Call:
    """End a call once, with one of the seed's reasons, and publish `call.ended`."""
    if reason not in EndReason.values:
        raise ValueError(f"unknown end reason {reason!r}; expected one of {', '.join(EndReason.values)}")
    with transaction.atomic():
        locked = Call.objects.select_for_update().select_related("persona").get(pk=call.pk)
        if locked.status == CallStatus.ENDED:
            return locked
        now = timezone.now()
        locked.status = CallStatus.ENDED
        locked.ended_at = now
        locked.end_reason = reason
        locked.duration_seconds = (now - locked.started_at).total_seconds() if locked.started_at else 0.0
        locked.save(update_fields=["status", "ended_at", "end_reason", "duration_seconds"])
        transcript = [
            events.TranscriptLine(
                message_id=message.message_id,
                role=message.role,
                text=(message.spoken_text or message.text) if message.interrupted else message.text,
                interrupted=message.interrupted,
            )
            for message in Message.objects.filter(call=locked).order_by("created_at", "id")
        ]
        call_event_publish(
            call=locked,
            event=events.CallEnded(
                reason=reason,
                from_address=locked.from_address,
                to_address=locked.to_address,
                direction=locked.direction,
                transport=locked.transport,
                metadata=locked.metadata,
                started_at=_iso(locked.started_at),
                ended_at=_iso(now) or "",
                duration=round(locked.duration_seconds or 0.0, 3),
                transcript=transcript,
            ),
        )
    return locked


# --- Browser sessions -------------------------------------------------------------------

# A start that failed on the client's side (timeout, lost answer) is retried by the Anam SDK
# with the same single-use token; within this window the retry gets the same session back.
SESSION_START_RETRY_WINDOW = timedelta(seconds=60)


class SessionStartRefused(Exception):
    """The token cannot start a session; `status` is the HTTP status, `error` a short code."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


def engine_session_start(
    *, token: str, engine_hosts: Sequence[str], client_metadata: dict[str, Any] | None = None
) -> Call:
    """Consume a session token and create its Call (transport webrtc, status connecting).

    The call goes to the least busy of `engine_hosts` (the Parley processes browsers can
    reach); its signalling, media and /talk stay there.

    A retry with the same token inside SESSION_START_RETRY_WINDOW, while the call has not
    connected yet, returns the same call instead of refusing the replay.
    """
    from calls.lifecycle import services as lifecycle  # it ends calls through this module

    draining = lifecycle.draining_engine_hosts()
    if lifecycle.process_draining():  # this process is stopping: not here, and not through it alone
        draining.update(filter(None, [settings.PARLEY_PROCESS_ENGINE_HOST]))
        if len(engine_hosts) == 1:
            draining.add(engine_hosts[0])
    open_hosts = [host for host in engine_hosts if host not in draining]
    if not open_hosts:
        raise SessionStartRefused(503, "unavailable", "the server is restarting; try again in a few seconds")
    _session_limit_check(token=token)
    try:
        record = session_token_consume(token=token)
    except TokenError as error:
        if "already been used" in str(error):
            retry = _engine_session_retry(token=token)
            if retry is not None:
                return retry
        raise SessionStartRefused(401, "invalid_token", f"session token: {error}") from None
    with transaction.atomic():
        call = Call.objects.create(
            organization=record.organization,
            persona=record.persona,
            session_token=record,
            transport=Transport.WEBRTC,
            direction=Direction.INBOUND,
            from_address=(record.client_label or "browser")[:200],
            to_address=record.persona.slug,
            engine_host=engine_host_least_busy(
                open_hosts, connecting_since=timezone.now() - SESSION_START_RETRY_WINDOW
            ),
            metadata={
                "client": client_metadata or {},
                "tokenType": record.kind,
                **(
                    {"personaConfig": record.persona_config}
                    if record.kind == SessionToken.Kind.EPHEMERAL
                    else {}
                ),
                **({"sessionOptions": record.session_options} if record.session_options else {}),
            },
        )
    return Call.objects.select_related("persona", "organization", "session_token").get(pk=call.pk)


def _session_limit_check(*, token: str) -> None:
    """Refuse (429, the token kept) a start that would pass its organization's live-session limit.

    The limit is checked when a token is minted too, but tokens minted while there was room may
    be used later, when there is none.
    """
    try:
        record = session_token_check(token=token)
    except TokenError:
        return  # consuming it says what is wrong (or finds the retry of a start)
    organization = record.organization
    if live_call_count(organization=organization) >= organization.session_limit:
        raise SessionStartRefused(
            429,
            "busy",
            f"the organization has {organization.session_limit} live session(s), its limit; try again later",
        )


def _engine_session_retry(*, token: str) -> Call | None:
    try:
        jti = token_id(token_decode(token, audience=SESSION_AUDIENCE))
    except TokenError:
        return None
    return (
        Call.objects.select_related("persona", "organization", "session_token")
        .filter(
            session_token__jti=jti,
            status=CallStatus.CONNECTING,
            session_token__used_at__gte=timezone.now() - SESSION_START_RETRY_WINDOW,
        )
        .first()
    )


def message_record(
    *,
    call: Call,
    message_id: str,
    role: str,
    text: str,
    spoken_text: str | None = None,
    interrupted: bool = False,
    started_at: Any = None,
    ended_at: Any = None,
    channel: str = "",
) -> Message:
    """Store (or complete) one transcript line; an interrupted persona line keeps what was spoken.

    `channel`: how a visitor's line came (spoken, typed, a voice note), as it arrived.
    """
    message, created = Message.objects.get_or_create(
        call=call,
        message_id=message_id,
        defaults={
            "role": role,
            "text": text,
            "spoken_text": text if spoken_text is None else spoken_text,
            "interrupted": interrupted,
            "started_at": started_at or timezone.now(),
            "ended_at": ended_at,
            "channel": channel,
        },
    )
    if not created:
        message.text = text or message.text
        message.spoken_text = message.text if spoken_text is None else spoken_text
        message.interrupted = interrupted
        message.ended_at = ended_at or message.ended_at
        message.save(update_fields=["text", "spoken_text", "interrupted", "ended_at"])
    return message
