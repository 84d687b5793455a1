"""The live calls page's websocket: the ongoing calls as they start and end, one watched call's
captions and lines as they happen, and staff actions on it.

Admin session auth (`AuthMiddlewareStack` in `calls.routing`): staff with `calls.view_call` only;
others are told why and closed with 4401/4403. The consumer hears every organization's event
stream through its process's hubs (`calls.streams`), so calls held by any Daphne process appear
and leave; it reads through `calls.review.live` and acts through `calls.review.services`.

Wire, server → page: `hello {calls, mayTakeOver}`, `call.started {call}`, `call.ended {callId,
reason}`, `watching {call}`, `event {event, data}` (the watched call's), `done {action, callId}`,
`error {field?, detail}`. Page → server: `{type: watch|say|end, callId, text?}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from calls.consumers import NO_CHANNEL_LAYER, OUTAGE_CLOSE_CODE
from calls.review import live
from calls.review.services import LiveActionRefused, live_call_act
from calls.streams import EventFeed, StreamEvent, StreamRequest
from webapp.database import closing_connections
from webapp.errors import outage_detail
from webapp.inputs import InputRefused, json_parse

logger = logging.getLogger(__name__)


# How often a page looks for organizations created since it opened, in seconds: their calls are
# heard from then on (a new organization's first call is rarely seconds after its creation).
ORGANIZATIONS_REFRESH_SECONDS = 30.0


def _db(func: Any) -> Any:
    return database_sync_to_async(closing_connections(func))


class LiveCallsConsumer(AsyncJsonWebsocketConsumer):
    """`/ws/admin/calls/live/`: one staff member's live calls page."""

    # Events come through the process's hubs, not a channel of the consumer's own.
    channel_layer_alias = NO_CHANNEL_LAYER

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.feeds: list[EventFeed] = []
        self.organizations: set[int] = set()
        self.refresh: asyncio.Task[None] | None = None
        self.watching: str | None = None
        # The watched call's events that came while its transcript was read: sent after it.
        self.held: list[StreamEvent] | None = None
        try:
            await super().__call__(scope, receive, send)
        finally:  # also when cancelled (server shutdown): no task outlives the connection
            await self._close_feeds()

    async def connect(self) -> None:
        user = self.scope.get("user")
        try:
            await _db(live.live_access_check)(user)
        except live.LiveAccessRefused as refusal:
            # Accepted first: a refused handshake reaches a browser as a bare 403 with no reason.
            await self.accept()
            await self.send_json({"type": "error", "status": refusal.status, "detail": refusal.detail})
            await self.close(code=refusal.close_code)
            return
        try:
            await self._feeds_open(await _db(live.live_organization_ids)())
        except Exception as error:
            await self._close_feeds()
            if outage_detail(error) is None:
                raise
            await self.accept()
            await self.send_json({"type": "error", "status": 503, "detail": outage_detail(error)})
            await self.close(code=OUTAGE_CLOSE_CODE)
            return
        # Joined first, then read: a call starting meanwhile is in both, and the page keeps one.
        calls = await _db(live.live_calls)()
        take_over = await _db(live.may_take_over)(user)
        await self.accept()
        await self.send_json({"type": "hello", "calls": calls, "mayTakeOver": take_over})
        for feed in self.feeds:
            feed.start()
        self.refresh = asyncio.create_task(self._organizations_refresh(), name="live-calls-organizations")

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            if text_data is None:
                raise InputRefused("message", "must be JSON text, not binary")
            message = live.page_message_parse(
                json_parse(text_data, field="message", max_bytes=live.MAX_FRAME_BYTES)
            )
        except InputRefused as refusal:  # said on the socket, which stays open
            await self.send_json({"type": "error", "field": refusal.field, "detail": refusal.detail})
            return
        if message.action == "watch":
            await self._watch(message.call_id)
            return
        try:
            done = await live_call_act(
                user=self.scope["user"], call_id=message.call_id, action=message.action, text=message.text
            )
        except LiveActionRefused as refusal:
            await self.send_json(
                {
                    "type": "error",
                    "action": message.action,
                    "callId": message.call_id,
                    "code": refusal.code,
                    "detail": refusal.detail,
                }
            )
            return
        await self.send_json({"type": "done", **done})

    async def disconnect(self, code: int) -> None:
        await self._close_feeds()

    # --- inside ----------------------------------------------------------------------------

    async def _watch(self, call_id: str) -> None:
        self.watching, self.held = call_id, []
        try:
            call = await _db(live.live_call_transcript)(call_id)
        except BaseException:
            self.held = None
            raise
        held, self.held = self.held, None
        if self.watching != call_id:  # another call was chosen meanwhile
            return
        if call is None:
            self.watching = None
            await self.send_json(
                {"type": "error", "field": "callId", "detail": f"callId: no call {call_id!r}"}
            )
            return
        await self.send_json({"type": "watching", "call": call})
        for event in held:
            await self._send_event(event)

    async def _relay(self, events: list[StreamEvent]) -> None:
        for event in events:
            if event.event == "call.started":
                row = None
                if event.data.get("transport") in live.LIVE_TRANSPORTS:
                    row = await _db(live.live_call_row)(str(event.data.get("callId", "")))
                if row is not None:
                    await self.send_json({"type": "call.started", "call": row})
            elif event.event == "call.ended":
                await self.send_json(
                    {
                        "type": "call.ended",
                        "callId": event.data.get("callId"),
                        "reason": event.data.get("reason"),
                    }
                )
            if event.event in live.WATCHED_EVENTS and event.data.get("callId") == self.watching:
                if self.held is not None:
                    self.held.append(event)
                else:
                    await self._send_event(event)

    async def _send_event(self, event: StreamEvent) -> None:
        await self.send_json({"type": "event", "event": event.event, "data": event.data})

    async def _feeds_open(self, organization_ids: list[int]) -> list[EventFeed]:
        opened = []
        for organization_id in organization_ids:
            if organization_id in self.organizations:
                continue
            feed = EventFeed(
                request=StreamRequest(organization_id=organization_id, agents=None, after=None),
                emit=self._relay,
            )
            await feed.open()  # a feed that cannot open has left its hub already
            self.feeds.append(feed)
            self.organizations.add(organization_id)
            opened.append(feed)
        return opened

    async def _organizations_refresh(self) -> None:
        while True:
            await asyncio.sleep(ORGANIZATIONS_REFRESH_SECONDS)
            try:
                for feed in await self._feeds_open(await _db(live.live_organization_ids)()):
                    feed.start()
            except Exception:  # a database or layer hiccup: the next round tries again
                logger.warning("live calls: could not look for new organizations", exc_info=True)

    async def _close_feeds(self) -> None:
        refresh, self.refresh = getattr(self, "refresh", None), None
        if refresh is not None:
            refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresh
        feeds, self.feeds = getattr(self, "feeds", []), []
        for feed in feeds:
            await feed.close()
