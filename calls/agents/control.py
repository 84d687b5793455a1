"""One live call as apps drive it: the agent API's commands carried out on a `LiveSession`.

Each command comes checked (`calls.agents.commands`) and authorised (its call belongs to
the app's organization); `CallControl.run` carries it out on this process's session and
returns the answer frame (`ack`, or `error` with a code). The rules of PROTOCOL §4:

- `say` speaks verbatim; `reply` answers the latest user message (or `inReplyTo`), and a
  reply to a message a newer one has replaced is refused (`reply.rejected`);
- `replyStream` speaks each sentence as soon as it is complete. During an eager turn (the
  user has probably, not certainly, finished) its text waits for `turn.end`; `turn.continued`
  and an interruption abort it (`reply.aborted`), and nothing of it is heard after that;
- `toolResult` answers the brain's server tools, `cancel` stops a message, `context` adds to
  the brain's context, `hangup` ends the call;
- every message an app makes is confirmed (`message.confirmed`) once accepted: at once for
  `say` and `reply`, at its end for a stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from calls import events
from calls.agents import presence
from calls.agents.commands import Command, CommandRefused
from calls.agents.hooks import hooks_answer
from calls.agents.routing import mailbox

if TYPE_CHECKING:
    from calls.live.session import LiveSession

logger = logging.getLogger(__name__)

# A call remembers this many of its user messages' ids (for `inReplyTo`).
MAX_REMEMBERED_MESSAGES = 200
# How often a call checks whether an app answers its turns (seconds).
PRESENCE_CHECK_SECONDS = 1.0
# A stream's text waits for the turn's confirmation after an eager turn, at most this long
# (seconds): the verdict (turn.end or turn.continued) comes well within it.
UNCONFIRMED_TURN_SECONDS = 5.0


@dataclass
class ReplyStream:
    """An app's streamed reply: open until its end, its abort, or the call's end."""

    message_id: str
    in_reply_to: str | None
    text: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # text held until the turn is confirmed
    ended: bool = False
    aborted: str | None = None  # the reason, once aborted

    @property
    def open(self) -> bool:
        return not self.ended and self.aborted is None


class CallControl:
    """The agent API's side of one live session: commands in, `reply.*` events out."""

    def __init__(self, session: LiveSession) -> None:
        self.session = session
        self._user_messages: list[str] = []  # ids, oldest first
        self._streams: dict[str, ReplyStream] = {}
        self._app_messages: set[str] = set()  # message ids apps made (theirs are confirmed already)
        self._turn_confirmed = True  # False between eager.turn and turn.end
        self.answering = False  # an app answers this call's turns (kept up to date by `watch`)
        self._app_spoke = asyncio.Event()  # set by every message an app makes
        self._eager_at: float | None = None

    # --- what the session tells it ---------------------------------------------------------

    def user_message(self, message_id: str) -> None:
        self._user_messages.append(message_id)
        del self._user_messages[:-MAX_REMEMBERED_MESSAGES]

    def turn_eager(self) -> None:
        self._turn_confirmed = False
        self._eager_at = time.monotonic()

    async def turn_end(self) -> None:
        """The turn is confirmed: what streams said meanwhile is spoken now."""
        self._turn_confirmed = True
        for stream in list(self._streams.values()):
            if stream.aborted is None and stream.waiting:
                waiting, stream.waiting = "".join(stream.waiting), []
                await self._stream_speak(stream, waiting, end=stream.ended)

    async def turn_continued(self) -> None:
        self._turn_confirmed = True
        for stream in list(self._streams.values()):
            # A stream that ended while the turn was unconfirmed still holds its text: it
            # answered words the user went on from, so it is aborted too, not said later.
            if stream.open or (stream.aborted is None and stream.waiting):
                await self._stream_abort(stream, "turn.continued")

    async def message_interrupted(self, message_id: str) -> None:
        stream = self._streams.get(message_id)
        if stream is not None and stream.aborted is None:
            await self._stream_abort(stream, "interrupted", stop_voice=False)

    async def watch(self) -> None:
        """While the call lasts: reachable by apps in other processes, and knowing whether an
        app answers its turns (checked every `PRESENCE_CHECK_SECONDS`)."""
        session = self.session
        slug, organization_id = session.config.agent, session.call.organization_id
        await mailbox().call_join(session.session_id)
        failures = 0
        try:
            while not session.ended:
                try:
                    self.answering = hooks_answer(slug) or (
                        await presence.answering_apps(organization_id=organization_id, slug=slug) > 0
                    )
                    failures = 0
                except Exception:  # the cache is down: keep the last answer
                    if not failures:
                        logger.warning("call %s: could not read the answering apps", session.session_id)
                    failures += 1
                await asyncio.sleep(PRESENCE_CHECK_SECONDS)
        finally:
            await mailbox().call_leave(session.session_id)

    async def answers_idle_warning(self) -> bool:
        """At the idle warning: whether an answering app spoke (within its answer time)."""
        if not self.answering:
            return False
        self._app_spoke.clear()
        try:
            await asyncio.wait_for(self._app_spoke.wait(), self.session.config.app_answer_timeout_seconds)
        except TimeoutError:
            return False
        return True

    def owns(self, message_id: str | None) -> bool:
        """Whether this message (a talk stream's id) is an app's."""
        return message_id is not None and message_id in self._app_messages

    async def call_ending(self) -> None:
        """The call ends: streams still open are aborted (`reply.aborted` call_ended)."""
        for stream in list(self._streams.values()):
            if stream.open:
                stream.aborted = "call_ended"
                await self.session.publish(
                    events.ReplyAborted(message_id=stream.message_id, reason="call_ended")
                )
        self._streams.clear()

    # --- commands --------------------------------------------------------------------------

    async def run(self, command: Command) -> dict[str, Any]:
        """Carry out one command on this call; the answer frame (ack, or error with a code)."""
        try:
            if self.session.ended:
                raise CommandRefused("call_ended", f"callId: the call {command.call_id} has ended")
            handler = getattr(self, "_" + _SNAKE[command.action])
            await handler(**command.fields)
        except CommandRefused as refusal:
            refusal.request_id = command.request_id
            return refusal.frame()
        return {"event": "ack", "requestId": command.request_id}

    async def _conversation(self) -> Any:
        conversation = self.session.conversation
        if conversation is None or not self.session.speech_ready:
            raise CommandRefused("not_ready", "callId: the call is not connected yet; nothing was done")
        return conversation

    async def _say(self, *, text: str, message_id: str) -> None:
        conversation = await self._conversation()
        self._message_new(message_id)
        await conversation.say(text, message_id=message_id)
        await self.session.publish(events.MessageConfirmed(message_id=message_id, text=text))

    async def _reply(self, *, text: str, in_reply_to: str | None, message_id: str) -> None:
        conversation = await self._conversation()
        await self._reply_check(message_id=message_id, in_reply_to=in_reply_to)
        self._message_new(message_id)
        conversation.app_answered()
        await conversation.say(text, message_id=message_id)
        await self.session.publish(events.MessageConfirmed(message_id=message_id, text=text))

    async def _reply_stream(
        self, *, op: str, message_id: str, text: str, in_reply_to: str | None = None
    ) -> None:
        conversation = await self._conversation()
        stream = self._streams.get(message_id)
        if op == "start":
            if stream is not None or message_id in self._app_messages:
                raise CommandRefused("duplicate_message", f"messageId: {message_id!r} was used already")
            await self._reply_check(message_id=message_id, in_reply_to=in_reply_to)
            for other in list(self._streams.values()):  # one stream speaks at a time
                if other.open:
                    await self._stream_end(other)
            self._message_new(message_id)
            stream = self._streams[message_id] = ReplyStream(message_id=message_id, in_reply_to=in_reply_to)
            conversation.app_answered()
            if text:
                await self._stream_text(stream, text)
            return
        if stream is None:
            raise CommandRefused(
                "unknown_stream", f"messageId: no stream {message_id!r} was started on this call (op start)"
            )
        if stream.aborted is not None:
            raise CommandRefused(
                "stream_aborted", f"messageId: the stream was aborted ({stream.aborted}); its text is ignored"
            )
        if stream.ended:
            raise CommandRefused("stream_ended", f"messageId: the stream {message_id!r} has ended")
        if text:
            await self._stream_text(stream, text)
        if op == "end":
            await self._stream_end(stream)

    async def _tool_result(self, *, msg_id: str, results: list[dict[str, Any]]) -> None:
        conversation = await self._conversation()
        pending = {call.tool_call_id: call for call in conversation.tool_calls.pending}
        for item in results:  # all checked first: a bad batch changes nothing
            call = pending.get(item["tool_call_id"])
            if call is None or call.kind != "server":
                raise CommandRefused(
                    "unknown_tool_call",
                    f"results.toolCallId: {item['tool_call_id']!r} is not a server tool call waiting"
                    " on this call (unknown, answered already, timed out, or a client tool)",
                )
            if call.message_id and call.message_id != msg_id:
                raise CommandRefused(
                    "unknown_tool_call", f"msgId: {item['tool_call_id']!r} belongs to {call.message_id!r}"
                )
        for item in results:
            await conversation.tool_result(
                tool_call_id=item["tool_call_id"], result=item["result"], error=item["error"], kind="server"
            )

    async def _cancel(self, *, message_id: str | None) -> None:
        """Stop a message (a stream is aborted too), or whatever the persona is saying."""
        conversation = await self._conversation()
        if message_id is not None:
            stream = self._streams.get(message_id)
            if stream is not None and stream.open:
                await self._stream_abort(stream, "cancelled")
                return
            if message_id not in self._app_messages and message_id != conversation.current_message_id:
                raise CommandRefused(
                    "unknown_message", f"messageId: {message_id!r} is not a message of this call"
                )
        if conversation.reply_active:
            await conversation.interrupt()

    async def _context(self, *, text: str) -> None:
        conversation = await self._conversation()
        await conversation.add_context(text)

    async def _hangup(self) -> None:
        from calls.models import EndReason

        self.session.end_soon(reason=EndReason.HANGUP, message="the call was ended by the app")

    # --- inside ----------------------------------------------------------------------------

    def _message_new(self, message_id: str) -> None:
        if message_id in self._app_messages:
            raise CommandRefused("duplicate_message", f"messageId: {message_id!r} was used already")
        self._app_messages.add(message_id)
        self._app_spoke.set()

    async def _reply_check(self, *, message_id: str, in_reply_to: str | None) -> None:
        """A reply answers the latest user message; one to an older message is refused."""
        if in_reply_to is None or not self._user_messages:
            if in_reply_to is not None:
                raise CommandRefused(
                    "unknown_message", f"inReplyTo: no user message {in_reply_to!r} on this call"
                )
            return
        if in_reply_to not in self._user_messages:
            raise CommandRefused(
                "unknown_message", f"inReplyTo: no user message {in_reply_to!r} on this call"
            )
        latest = self._user_messages[-1]
        if in_reply_to != latest:
            reason = "a newer user message came after the one it answers"
            await self.session.publish(
                events.ReplyRejected(message_id=message_id, in_reply_to=in_reply_to, reason=reason)
            )
            raise CommandRefused("reply_rejected", f"inReplyTo: {reason} ({latest})")

    async def _stream_text(self, stream: ReplyStream, text: str) -> None:
        stream.text.append(text)
        if not self._turn_confirmed and self._eager_at is not None:
            if time.monotonic() - self._eager_at > UNCONFIRMED_TURN_SECONDS:
                await self.turn_end()  # no verdict came: the turn is taken as over
        if not self._turn_confirmed:
            stream.waiting.append(text)
            return
        await self._stream_speak(stream, text, end=False)

    async def _stream_speak(self, stream: ReplyStream, text: str, *, end: bool) -> None:
        conversation = await self._conversation()
        await conversation.talk_stream_chunk(
            content=text, end_of_speech=end, correlation_id=stream.message_id, message_id=stream.message_id
        )

    async def _stream_end(self, stream: ReplyStream) -> None:
        stream.ended = True
        if not stream.waiting:  # else the turn is not confirmed yet: it all goes out at turn.end
            await self._stream_speak(stream, "", end=True)
        await self.session.publish(
            events.MessageConfirmed(message_id=stream.message_id, text="".join(stream.text).strip())
        )

    async def _stream_abort(self, stream: ReplyStream, reason: str, *, stop_voice: bool = True) -> None:
        if stream.aborted is not None:
            return
        stream.aborted = reason
        stream.waiting = []
        conversation = self.session.conversation
        if stop_voice and conversation is not None:
            await conversation.talk_stream_abort(stream.message_id)
        await self.session.publish(events.ReplyAborted(message_id=stream.message_id, reason=reason))


_SNAKE = {
    "say": "say",
    "reply": "reply",
    "replyStream": "reply_stream",
    "toolResult": "tool_result",
    "cancel": "cancel",
    "context": "context",
    "hangup": "hangup",
}
