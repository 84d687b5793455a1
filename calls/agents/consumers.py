"""`/ws/agent/`: the agent websocket (PROTOCOL §4). A thin edge: authorise, parse, deliver, relay.

An app connects with `Authorization: Bearer <API key>` and sees and drives only its
organization's personas. `subscribe` starts (or replaces) its event feed, replayed after a
cursor and then live; with `answer: true` the app is entered as answering those personas'
turns. Every command gets `ack` or `error`; bad input never closes the socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from calls.agents import presence
from calls.agents.commands import THREAD_ACTIONS, Command, CommandRefused, command_parse
from calls.agents.routing import command_deliver
from calls.streams import EventFeed, StreamEvent, StreamRequest
from calls.streams.authorisation import scope_headers
from calls.whatsapp.commands import whatsapp_command_run
from webapp.database import closing_connections
from webapp.errors import outage_detail

logger = logging.getLogger(__name__)

NO_CHANNEL_LAYER = "parley-event-streams-need-no-channel"
OUTAGE_CLOSE_CODE = 4503


def _organization_of_key(authorization: str) -> int:
    """The API key's organization; raise CommandRefused (code `unauthorized`) otherwise."""
    from personas.services import api_key_authenticate

    scheme, _, raw_key = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not raw_key.strip():
        raise CommandRefused("unauthorized", "Authorization header must be 'Bearer <API key>'")
    api_key = api_key_authenticate(raw_key=raw_key.strip())
    if api_key is None:
        raise CommandRefused("unauthorized", "the API key is invalid or revoked")
    return api_key.organization_id


def _unknown_agents(*, organization_id: int, agents: list[str]) -> list[str]:
    from personas.selectors import persona_list

    known = set(
        persona_list(organization_id=organization_id).filter(slug__in=agents).values_list("slug", flat=True)
    )
    return [slug for slug in agents if slug not in known]


class AgentConsumer(AsyncWebsocketConsumer):
    """One app's socket: its feed of events, its commands, its answers."""

    channel_layer_alias = NO_CHANNEL_LAYER

    organization_id: int | None = None
    feed: EventFeed | None = None
    answering: list[str] | None = None  # the personas it answers for (None: not answering)
    _answering_all = False
    _presence_task: asyncio.Task[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.app_id = "app_" + secrets.token_hex(8)
        try:
            await super().__call__(scope, receive, send)
        finally:  # also when cancelled (server shutdown): nothing outlives the socket
            await self._unsubscribe()

    async def connect(self) -> None:
        headers = scope_headers(self.scope)
        try:
            self.organization_id = await database_sync_to_async(closing_connections(_organization_of_key))(
                headers.get("authorization", "")
            )
        except CommandRefused as refusal:
            await self.accept()  # then refuse: a refused handshake tells a client nothing
            await self._send(refusal.frame())
            await self.close(code=4401)
            return
        except Exception as error:
            if outage_detail(error) is None:
                raise
            await self.accept()
            await self._send(
                {
                    "event": "error",
                    "requestId": None,
                    "code": "unavailable",
                    "message": str(outage_detail(error)),
                }
            )
            await self.close(code=OUTAGE_CLOSE_CODE)
            return
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.organization_id is None:
            return
        try:
            command = command_parse(text_data if text_data is not None else bytes_data)
        except CommandRefused as refusal:
            await self._send(refusal.frame())
            return
        try:
            if command.action == "subscribe":
                frame = await self._subscribe(command)
            elif command.action in THREAD_ACTIONS:
                frame = await whatsapp_command_run(organization_id=self.organization_id, command=command)
            else:
                frame = await command_deliver(organization_id=self.organization_id, command=command)
        except CommandRefused as refusal:
            refusal.request_id = command.request_id
            frame = refusal.frame()
        except Exception as error:
            detail = outage_detail(error)
            if detail is None:
                logger.exception("agent command %s failed", command.action)
                detail = "the command failed on the server; nothing was done"
            frame = CommandRefused("unavailable", str(detail), request_id=command.request_id).frame()
        await self._send(frame)

    async def disconnect(self, code: int) -> None:
        await self._unsubscribe()

    # --- subscribe ---------------------------------------------------------------------

    async def _subscribe(self, command: Command) -> dict[str, Any]:
        assert self.organization_id is not None
        agents: list[str] | None = command.fields["agents"]
        if agents is not None:
            unknown = await database_sync_to_async(closing_connections(_unknown_agents))(
                organization_id=self.organization_id, agents=agents
            )
            if unknown:
                raise CommandRefused(
                    "unknown_agent", f"agents: {unknown[0]!r} is not a persona of this organization"
                )
        await self._unsubscribe()
        request = StreamRequest(
            organization_id=self.organization_id,
            agents=None if agents is None else frozenset(agents),
            after=command.fields["after"],
        )
        feed = EventFeed(request=request, emit=self._send_events)
        await feed.open()
        self.feed = feed
        if command.fields["answer"]:
            self.answering, self._answering_all = list(agents or []), agents is None
            await presence.answerer_enter(
                organization_id=self.organization_id, agents=self._answer_slugs(), app_id=self.app_id
            )
            self._presence_task = asyncio.get_running_loop().create_task(self._keep_presence())
        ack = {"event": "ack", "requestId": command.request_id, "cursor": feed.last_cursor}
        await self._send(ack)
        feed.start()  # after the ack: the replay follows it
        return {}

    def _answer_slugs(self) -> list[str] | None:
        return None if self._answering_all else self.answering

    async def _keep_presence(self) -> None:
        assert self.organization_id is not None
        while True:
            await asyncio.sleep(presence.REFRESH_SECONDS)
            try:
                await presence.answerer_enter(
                    organization_id=self.organization_id, agents=self._answer_slugs(), app_id=self.app_id
                )
            except Exception:
                logger.warning("could not refresh an answering app's entry", exc_info=True)

    async def _unsubscribe(self) -> None:
        task, self._presence_task = self._presence_task, None
        if task is not None:
            task.cancel()
        feed, self.feed = self.feed, None
        try:
            if self.answering is not None and self.organization_id is not None:
                slugs, self.answering = self._answer_slugs(), None
                try:
                    await presence.answerer_leave(
                        organization_id=self.organization_id, agents=slugs, app_id=self.app_id
                    )
                except Exception:
                    logger.warning("could not remove an answering app's entry", exc_info=True)
        finally:
            # Even when the leave above is cancelled (a socket torn down under an anyio cancel
            # scope): `close()` leaves its hub before its first await.
            if feed is not None:
                await feed.close()

    # --- sending -----------------------------------------------------------------------

    async def _send(self, frame: dict[str, Any]) -> None:
        if frame:
            await self.send(text_data=json.dumps(frame, separators=(",", ":")))

    async def _send_events(self, events: list[StreamEvent]) -> None:
        for event in events:
            cursor = "null" if event.cursor is None else event.cursor
            await self.send(
                text_data=f'{{"event":{json.dumps(event.event)},"id":{cursor},"data":{event.data_json}}}'
            )
