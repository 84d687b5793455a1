"""The persona answers WhatsApp threads: voice notes transcribed, one combined reply, sent once.

Each server process runs one answerer on its event loop (started beside the delivery processor,
`calls.lifecycle.drain`). The work it does is written in the database by processing
(`needs_transcript`, `needs_answer` on inbound messages; `pending` outbound messages), so a
process killed at any point leaves it to another:

1. It claims threads with work owed, with an expiring lease (`answer_owner`, `answer_until`),
   as processing claims deliveries; a thread is answered by one process at a time.
2. Voice notes are downloaded at once (Meta's media URLs last five minutes), decoded and
   transcribed with the persona's recogniser; then `whatsapp.message` is told with the
   transcript as its `text` — also while a human has taken the thread over.
3. Unless a human has taken over: if an app answers this persona (agent API, `answer: true`),
   it has the persona's `app_answer_timeout_seconds` to reply; then, or at once, the thread's
   newest message is marked read with the typing indicator, and the persona's brain answers
   every message still owed in **one** reply (Meta's pair rate limit is one message per 6 s:
   a persona must not answer in many bubbles).
4. The reply is queued (`calls.whatsapp.outbox`) and sent: rate limits and outages are tried
   again with backoff, then later (`next_attempt_at`); Meta's refusals (outside the 24-hour
   window, undeliverable) are recorded as failed with Meta's reason and not retried; a send
   whose outcome is unknown is never sent again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from calls.models import Direction, WhatsAppChannel, WhatsAppMessage, WhatsAppSession
from calls.whatsapp import outbox
from calls.whatsapp.brain import ThreadLine, thread_answer
from calls.whatsapp.graph import GraphClient, GraphError, MediaTooLargeError, retrying
from calls.whatsapp.processing import WORKER_ID, intake_first
from calls.whatsapp.tools import AskedCall, tool_calls_wait, whatsapp_tool_calls_announce
from webapp.database import closing_connections

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Threads one process answers at once (each waits mostly on Meta, an LLM or a recogniser).
MAX_THREADS = 8
# The typing indicator lasts 25 s (research §3): shown again this often while the brain works.
TYPING_REFRESH_SECONDS = 20.0
# An app that answers the persona is asked for its reply this often while it has time (s).
APP_REPLY_CHECK_SECONDS = 0.2
# A send Meta refused for now is tried again later, up to this many sends in all, the n-th
# after SEND_RETRY_BASE_SECONDS * 4**n (at most SEND_RETRY_MAX_SECONDS): about an hour.
MAX_SEND_ATTEMPTS = 6
SEND_RETRY_BASE_SECONDS = 2.0
SEND_RETRY_MAX_SECONDS = 20 * 60.0
# A thread whose work failed unexpectedly is left alone this long before it is tried again.
FAILED_THREAD_PAUSE_SECONDS = 30.0

_task: asyncio.Task[None] | None = None
_wake: asyncio.Event | None = None
_loop: asyncio.AbstractEventLoop | None = None
_active: set[int] = set()
_executor: ThreadPoolExecutor | None = None


# --- Claims ---------------------------------------------------------------------------------


def whatsapp_threads_claim(
    *, worker: str, lease: timedelta, limit: int, exclude: list[int] | None = None
) -> list[int]:
    """Claim threads with work owed whose lease is free; their sends that a killed process
    left half-done are resolved first (as failed: never sent twice)."""
    now = timezone.now()
    owed = WhatsAppMessage.objects.filter(session=OuterRef("pk")).filter(
        Q(needs_transcript=True)
        | Q(needs_answer=True)
        | (
            Q(direction=Direction.OUTBOUND, status=WhatsAppMessage.Status.PENDING)
            & (
                Q(send_started_at__isnull=False)
                | Q(next_attempt_at__isnull=True)
                | Q(next_attempt_at__lte=now)
            )
        )
    )
    channel = WhatsAppChannel.objects.filter(phone_number_id=OuterRef("phone_number_id"), enabled=True)
    with transaction.atomic():
        claimable = (
            WhatsAppSession.objects.filter(Exists(owed), Exists(channel))
            .filter(Q(answer_until__isnull=True) | Q(answer_until__lt=now))
            .exclude(pk__in=exclude or [])
            .order_by("id")
            .select_for_update(skip_locked=True)
        )
        ids = list(claimable.values_list("pk", flat=True)[:limit])
        if ids:
            WhatsAppSession.objects.filter(pk__in=ids).update(answer_owner=worker, answer_until=now + lease)
    for session_id in ids:
        outbox.whatsapp_sends_interrupted(session_id=session_id)
    return ids


def whatsapp_thread_renew(*, session_id: int, worker: str, lease: timedelta) -> bool:
    return bool(
        WhatsAppSession.objects.filter(pk=session_id, answer_owner=worker).update(
            answer_until=timezone.now() + lease
        )
    )


def whatsapp_thread_release(*, session_id: int, worker: str, pause: float = 0.0) -> None:
    """Give the thread up (`pause` seconds: leave it alone that long, after a failure)."""
    until = timezone.now() + timedelta(seconds=pause) if pause else None
    WhatsAppSession.objects.filter(pk=session_id, answer_owner=worker).update(
        answer_owner="" if not pause else worker, answer_until=until
    )


# --- What a thread is owed ------------------------------------------------------------------


@dataclass
class ThreadWork:
    session: WhatsAppSession
    phone_number_id: str
    access_token: str
    conversation: Any  # the persona's ConversationConfig (its recogniser, brain, timeouts)
    to_transcribe: list[WhatsAppMessage] = field(default_factory=list)
    owed: list[WhatsAppMessage] = field(default_factory=list)
    history: list[ThreadLine] = field(default_factory=list)
    persona_turns: int = 0


def whatsapp_thread_work(*, session_id: int) -> ThreadWork | None:
    """The thread's owed work and its history; None if its channel is gone or disabled."""
    from calls.live.persona_config import persona_conversation_config
    from calls.whatsapp.services import transcript_line

    session = WhatsAppSession.objects.select_related("persona", "call").get(pk=session_id)
    channel = WhatsAppChannel.objects.filter(phone_number_id=session.phone_number_id, enabled=True).first()
    if channel is None:
        return None
    work = ThreadWork(
        session=session,
        phone_number_id=channel.phone_number_id,
        access_token=channel.access_token,
        conversation=persona_conversation_config(session.persona),
    )
    for message in WhatsAppMessage.objects.filter(session=session).order_by("id"):
        if message.needs_transcript:
            work.to_transcribe.append(message)
        elif message.needs_answer:
            work.owed.append(message)
        elif message.direction == Direction.INBOUND:
            work.history.append(ThreadLine("user", transcript_line(message.type, message.text)))
        elif message.status not in (WhatsAppMessage.Status.PENDING, WhatsAppMessage.Status.FAILED):
            work.history.append(ThreadLine("assistant", message.text))
            work.persona_turns += message.author == WhatsAppMessage.Author.PERSONA
    return work


def whatsapp_transcript_record(*, message_id: int, text: str, error: str = "") -> None:
    """A voice note's transcript (or why there is none); then it is told as any message."""
    from calls.whatsapp.services import whatsapp_message_tell

    with transaction.atomic():
        message = WhatsAppMessage.objects.select_related("session", "session__call").get(pk=message_id)
        message.text = text
        message.needs_transcript = False
        if error:
            message.metadata = {**(message.metadata or {}), "transcriptError": error[:500]}
        message.save(update_fields=["text", "needs_transcript", "metadata"])
        whatsapp_message_tell(message=message, session=message.session)


# The file extension a stored voice note gets, by the MIME type Meta gave (its parameters cut).
MEDIA_EXTENSIONS = {
    "audio/ogg": "ogg",
    "audio/opus": "opus",
    "audio/mpeg": "mp3",
    "audio/mp4": "m4a",
    "audio/aac": "aac",
    "audio/amr": "amr",
    "audio/wav": "wav",
}


def whatsapp_media_keep(*, message_id: int, data: bytes, mime_type: str) -> None:
    """Keep a downloaded voice note's audio through Django's storage API (once per message).

    Blocking (a file or bucket write): call it on a database thread. Meta's copy expires; ours is
    what staff listen to beside the transcript.
    """
    from django.core.files.base import ContentFile

    message = WhatsAppMessage.objects.get(pk=message_id)
    if message.media_file:
        return
    kind = mime_type.split(";")[0].strip().lower()
    extension = MEDIA_EXTENSIONS.get(kind, "bin")
    message.media_file.save(f"{message.session_id}-{message.pk}.{extension}", ContentFile(data), save=False)
    WhatsAppMessage.objects.filter(pk=message_id).update(
        media_file=message.media_file.name, mime_type=message.mime_type or kind
    )


def whatsapp_still_owed(*, message_ids: list[int]) -> bool:
    return WhatsAppMessage.objects.filter(pk__in=message_ids, needs_answer=True).exists()


# --- What the contact said, for the brain ----------------------------------------------------

VOICE_NOTE_UNHEARD = "Sorry, I couldn't make out your voice note. Could you say it again, or type it?"
VOICE_NOTE_TOO_LONG = "Sorry, that voice note is too long for me. Could you send a shorter one, or type it?"
MEDIA_NOT_READ = "Thanks for the {noun}! I can't open {noun}s here, but tell me in a message what you need and I'll gladly help."
SHARED = "Thanks for sending {what}! What can I help you with?"
UNSUPPORTED = "Sorry, I can't open that kind of message here. Could you send it as text?"
_NOUNS = {"image": "picture", "video": "video", "document": "document"}


def contact_turn(owed: list[WhatsAppMessage]) -> tuple[str, str | None]:
    """What the contact's owed messages say, as one turn for the brain; or, when none of them
    holds words (a photo without a caption, an unheard voice note), the answer to give."""
    words = [message.text.strip() for message in owed if message.text.strip() and message.type != "location"]
    if words:
        return " ".join(words), None
    first = owed[-1]
    if first.type == WhatsAppMessage.Kind.AUDIO:
        too_long = "too long" in (first.metadata or {}).get("transcriptError", "")
        return "", VOICE_NOTE_TOO_LONG if too_long else VOICE_NOTE_UNHEARD
    if first.type in _NOUNS:
        return "", MEDIA_NOT_READ.format(noun=_NOUNS[first.type])
    if first.type == WhatsAppMessage.Kind.LOCATION:
        return "", SHARED.format(what="your location")
    if first.type == WhatsAppMessage.Kind.CONTACTS:
        return "", SHARED.format(what="the contact")
    return "", UNSUPPORTED


# --- Answering one thread ---------------------------------------------------------------------


def _db(function: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    # SyncToAsync (not a bare executor) so the thread knows the loop: the events it publishes
    # are broadcast on it as any other's (`calls.publishing._broadcast_sync`).
    return SyncToAsync(
        closing_connections(_after_intake(function)), thread_sensitive=False, executor=_executor
    )


def _after_intake(function: Callable[..., T]) -> Callable[..., T]:
    """`function`, once the webhook has stored what it was given (`processing.intake_first`)."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> T:
        intake_first()
        return function(*args, **kwargs)

    return call


def _lease() -> timedelta:
    return timedelta(seconds=settings.PARLEY_WHATSAPP_LEASE_SECONDS)


def _recipient(contact: str) -> str:
    return contact if contact.startswith("+") else "+" + contact


class _Thread:
    """One claimed thread, answered until it owes nothing."""

    def __init__(self, session_id: int) -> None:
        self.session_id = session_id
        self.client: GraphClient | None = None
        self.read: set[str] = set()  # messages marked read (with typing) by this claim

    async def run(self) -> None:
        renewing = asyncio.create_task(self._renew())
        pause = 0.0
        try:
            while await self._round():
                pass
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("whatsapp session %s: answering failed; tried again later", self.session_id)
            pause = FAILED_THREAD_PAUSE_SECONDS
        finally:
            renewing.cancel()
            if self.client is not None:
                await self.client.aclose()
            try:
                await _db(whatsapp_thread_release)(session_id=self.session_id, worker=WORKER_ID, pause=pause)
            except Exception:
                logger.exception("whatsapp session %s: releasing the claim failed", self.session_id)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(_lease().total_seconds() / 3)
            try:
                await _db(whatsapp_thread_renew)(session_id=self.session_id, worker=WORKER_ID, lease=_lease())
            except Exception:
                logger.exception("whatsapp session %s: renewing the claim failed", self.session_id)

    async def _round(self) -> bool:
        """One step of the thread's owed work; False when nothing is left to do now."""
        work = await _db(whatsapp_thread_work)(session_id=self.session_id)
        if work is None:
            logger.warning("whatsapp session %s: its channel is gone or disabled", self.session_id)
            return False
        if self.client is None:
            self.client = GraphClient(
                settings.PARLEY_WHATSAPP_GRAPH_URL, work.phone_number_id, work.access_token
            )
        if work.to_transcribe:
            if not work.session.human_takeover:
                # Read, with the typing indicator, while the voice note is heard.
                await self._mark_read(work.to_transcribe[-1].meta_message_id)
            for message in work.to_transcribe:
                await self._transcribe(work, message)
            return True
        if work.owed and not work.session.human_takeover:
            await self._answer(work)
            return True
        unsent = await _db(outbox.whatsapp_unsent)(session_id=self.session_id)
        for message in unsent:
            await self._send(work, message)
        return bool(unsent)

    async def _transcribe(self, work: ThreadWork, message: WhatsAppMessage) -> None:
        from calls.whatsapp.voice_notes import VoiceNoteError, voice_note_transcribe

        assert self.client is not None
        client = self.client
        text, error = "", ""
        try:
            media = await retrying(
                lambda: client.media_download(
                    message.media_id, max_bytes=settings.PARLEY_WHATSAPP_MEDIA_MAX_BYTES
                )
            )
            await self._media_keep(message, media.data, media.mime_type)
            text = await voice_note_transcribe(work.conversation, media.data)
        except MediaTooLargeError as failure:
            error = f"too long: {failure}"
        except VoiceNoteError as failure:
            error = f"too long: {failure}" if "long" in str(failure) else str(failure)
        except (GraphError, NotImplementedError) as failure:
            error = str(failure)
        if error:
            logger.warning("whatsapp voice note %s: no transcript: %s", message.meta_message_id, error)
        await _db(whatsapp_transcript_record)(message_id=message.pk, text=text, error=error)

    async def _media_keep(self, message: WhatsAppMessage, data: bytes, mime_type: str) -> None:
        # Not keeping the audio costs staff a player, never the contact their answer.
        try:
            await _db(whatsapp_media_keep)(message_id=message.pk, data=data, mime_type=mime_type)
        except Exception:
            logger.exception("whatsapp voice note %s: its audio could not be stored", message.meta_message_id)

    async def _answer(self, work: ThreadWork) -> None:
        from calls.agents.hooks import hooks_answer
        from calls.agents.presence import answering_apps
        from calls.pipeline.conversation import brain_config

        owed_ids = [message.pk for message in work.owed]
        persona = work.session.persona
        if hooks_answer(persona.slug) or await answering_apps(
            organization_id=persona.organization_id, slug=persona.slug
        ):
            # An app answers this persona: it has its time to reply (`reply` on the call).
            waited = 0.0
            while waited < work.conversation.app_answer_timeout_seconds:
                await asyncio.sleep(APP_REPLY_CHECK_SECONDS)
                waited += APP_REPLY_CHECK_SECONDS
                if not await _db(whatsapp_still_owed)(message_ids=owed_ids):
                    return
        assert self.client is not None
        text, fixed_answer = contact_turn(work.owed)
        newest = work.owed[-1].meta_message_id
        await self._mark_read(newest)
        typing = asyncio.create_task(self._typing(newest))
        try:
            if fixed_answer is not None:
                answer = fixed_answer
            else:
                config = brain_config(work.conversation)
                answer = await thread_answer(
                    config,
                    history=work.history,
                    text=text,
                    persona_turns=work.persona_turns,
                    on_tool_calls=lambda asked: self._tools_run(work, config, asked),
                )
        finally:
            typing.cancel()
        queued = await _db(outbox.whatsapp_reply_queue)(
            session=work.session,
            text=answer,
            author=WhatsAppMessage.Author.PERSONA,
            answering=owed_ids,
            only_if_owed=True,
        )
        if queued is None:
            logger.info("whatsapp session %s: answered meanwhile by someone else", self.session_id)

    async def _tools_run(self, work: ThreadWork, config: Any, asked: list[AskedCall]) -> dict[str, Any]:
        """The LLM's tool calls, answered by an app (`toolResult` on the thread's call)."""
        call_id = str(work.session.call_id)

        async def announce(msg_id: str, calls: list[AskedCall]) -> None:
            await _db(whatsapp_tool_calls_announce)(call_id=call_id, msg_id=msg_id, asked=calls)

        return await tool_calls_wait(
            call_id=call_id,
            tools=config.tools,
            asked=asked,
            default_timeout_seconds=work.conversation.tool_timeout_seconds,
            announce=announce,
        )

    async def _mark_read(self, message_id: str, *, again: bool = False) -> None:
        """Mark the newest message read, with the typing indicator (it lasts until the reply)."""
        assert self.client is not None
        if message_id in self.read and not again:
            return
        self.read.add(message_id)
        try:
            await self.client.mark_read(message_id, typing=True)
        except GraphError as error:  # a courtesy: the answer goes on without it
            logger.warning("whatsapp: marking %s read failed: %s", message_id, error)

    async def _typing(self, message_id: str) -> None:
        """Show the typing indicator again while the brain works (it fades after 25 s)."""
        while True:
            await asyncio.sleep(TYPING_REFRESH_SECONDS)
            await self._mark_read(message_id, again=True)

    async def _send(self, work: ThreadWork, message: WhatsAppMessage) -> None:
        assert self.client is not None
        client = self.client
        if not await _db(outbox.whatsapp_send_started)(message_id=message.pk, worker=WORKER_ID):
            return
        reply_to = message.reply_to.meta_message_id if message.reply_to is not None else None

        async def send_once() -> str:
            try:
                return await client.send_text(
                    _recipient(work.session.contact_phone),
                    message.text,
                    reply_to=reply_to,
                    callback_data=message.meta_message_id,
                )
            except GraphError as error:
                if error.uncertain:
                    error.retryable = False  # it may have arrived: never sent twice
                raise

        try:
            wamid = await retrying(send_once)
        except GraphError as error:
            await self._send_failed(message, error)
        except ValueError as error:  # empty or too long: refused before sending
            await _db(outbox.whatsapp_send_failed)(message_id=message.pk, error=str(error))
        else:
            await _db(outbox.whatsapp_send_accepted)(message_id=message.pk, meta_message_id=wamid)

    async def _send_failed(self, message: WhatsAppMessage, error: GraphError) -> None:
        attempts = message.send_attempts + 1
        if error.uncertain:
            reason = outbox.UNCERTAIN_SEND.format(why=str(error))
            await _db(outbox.whatsapp_send_failed)(message_id=message.pk, error=reason)
            return
        if error.retryable and attempts < MAX_SEND_ATTEMPTS:
            delay = min(SEND_RETRY_MAX_SECONDS, SEND_RETRY_BASE_SECONDS * 4**attempts)
            delay = max(delay * random.uniform(0.75, 1.0), error.retry_after or 0.0)
            logger.warning("whatsapp message %s: %s; sent again in %.0f s", message.pk, error, delay)
            await _db(outbox.whatsapp_send_failed)(
                message_id=message.pk,
                error=str(error),
                code=error.code,
                title=error.title,
                retry_at=timezone.now() + timedelta(seconds=delay),
            )
            return
        logger.warning("whatsapp message %s: not sent: %s", message.pk, error)
        await _db(outbox.whatsapp_send_failed)(
            message_id=message.pk, error=str(error), code=error.code, title=error.title
        )


# --- The answerer --------------------------------------------------------------------------


async def answerer_round() -> list[asyncio.Task[None]]:
    """Claim the threads with work owed that this process can take, and start answering them."""
    free = MAX_THREADS - len(_active)
    if free <= 0:
        return []
    claimed = await _db(whatsapp_threads_claim)(
        worker=WORKER_ID, lease=_lease(), limit=free, exclude=sorted(_active)
    )
    started = []
    for session_id in claimed:
        _active.add(session_id)
        task = asyncio.get_running_loop().create_task(
            _Thread(session_id).run(), name=f"parley-whatsapp-thread-{session_id}"
        )
        task.add_done_callback(lambda _, session_id=session_id: _thread_done(session_id))
        started.append(task)
    return started


def _thread_done(session_id: int) -> None:
    _active.discard(session_id)
    if _wake is not None:
        _wake.set()  # more may have come for it while it was held


async def _run() -> None:
    assert _wake is not None
    while True:
        _wake.clear()
        try:
            await answerer_round()
        except Exception:
            logger.exception("whatsapp: claiming threads to answer failed")
        try:
            await asyncio.wait_for(_wake.wait(), timeout=settings.PARLEY_WHATSAPP_POLL_SECONDS)
        except TimeoutError:
            pass


def answerer_start() -> None:
    """Start this process's answerer on the running loop (once)."""
    global _task, _wake, _loop, _executor
    if _task is None or _task.done():
        _loop = asyncio.get_event_loop()
        _wake = asyncio.Event()
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="parley-whatsapp-answer")
        _task = _loop.create_task(_run(), name="parley-whatsapp-answerer")


def answerer_stop() -> None:
    """Stop claiming threads; those being answered are left to their leases."""
    if _task is not None:
        _task.cancel()


def answerer_wake() -> None:
    """From any thread: look for owed work now (no-op where no answerer runs)."""
    loop, wake = _loop, _wake
    if loop is None or wake is None or loop.is_closed():
        return
    try:
        loop.call_soon_threadsafe(wake.set)
    except RuntimeError:  # the loop closed meanwhile
        pass
