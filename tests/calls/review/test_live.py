"""The live calls page and its websocket: who may watch, calls appearing and leaving as they start
and end, a watched call's transcript and events, and staff saying a line or ending the call.

Calls are real live sessions without media (`tests.fakes.live_call`): what staff ask reaches the
conversation through the agent API's path, and the audit log records it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from calls import events
from calls.models import Call, CallStatus, Transport
from calls.publishing import call_event_publish
from calls.review import live
from calls.review.models import ReviewAction, ReviewAuditEntry
from tests.fakes.live_call import call_ended, live_call_start
from webapp.asgi import application
from webapp.inputs import InputRefused

pytestmark = pytest.mark.django_db(transaction=True)

# Generous: only a broken consumer takes this long.
RECEIVE_TIMEOUT_SECONDS = 10.0
SOCKET_PATH = "/ws/admin/calls/live/"
STAFF_LINE = "One moment please, a colleague is joining us."


def _user(username: str, *, staff: bool = True, permissions: tuple[str, ...] = ()) -> Any:
    user = get_user_model().objects.create_user(username, f"{username}@example.com", "pw", is_staff=staff)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="calls"))
    return user


def _session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


class LivePage:
    """The page's socket: messages read as they come, some kept aside for later assertions."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.seen: list[dict[str, Any]] = []

    async def next(self, type_: str, **match: Any) -> dict[str, Any]:
        """The first message of this type (and these fields), among those read and kept aside in
        `seen`, or the next to come; others read meanwhile are kept in `seen`."""
        for index, message in enumerate(self.seen):
            if message.get("type") == type_ and all(message.get(k) == v for k, v in match.items()):
                return self.seen.pop(index)
        async with asyncio.timeout(RECEIVE_TIMEOUT_SECONDS):
            while True:
                message = await self.communicator.receive_json_from(RECEIVE_TIMEOUT_SECONDS)
                if message.get("type") == type_ and all(message.get(k) == v for k, v in match.items()):
                    return message
                self.seen.append(message)

    async def send(self, **message: Any) -> None:
        await self.communicator.send_json_to(message)


async def _page(cookie: str | None) -> tuple[WebsocketCommunicator, bool]:
    headers = [(b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode())] if cookie else []
    communicator = WebsocketCommunicator(application, SOCKET_PATH, headers=headers)
    connected, _ = await communicator.connect(RECEIVE_TIMEOUT_SECONDS)
    return communicator, connected


async def _open_page(user: Any) -> LivePage:
    cookie = await database_sync_to_async(_session_cookie)(user)
    communicator, connected = await _page(cookie)
    assert connected
    return LivePage(communicator)


@pytest.fixture
def quiet_limits(settings):
    # No heartbeats here: nothing but the test may end a call.
    settings.PARLEY_SESSION_STALE_SECONDS = 120.0


@pytest.fixture
async def watcher(db):
    return await database_sync_to_async(_user)("watcher", permissions=("view_call",))


@pytest.fixture
async def operator(db):
    return await database_sync_to_async(_user)("operator", permissions=("view_call", "take_over_call"))


@database_sync_to_async
def _audit(action: str) -> list[ReviewAuditEntry]:
    return list(ReviewAuditEntry.objects.filter(action=action).order_by("id"))


# --- Who may watch ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "code", "says"),
    [
        ("anonymous", 4401, "log in"),
        ("not staff", 4403, "for staff"),
        ("staff without view_call", 4403, "calls.view_call"),
    ],
)
async def test_only_staff_who_may_view_calls_are_let_in(who, code, says):
    cookie = None
    if who == "not staff":
        user = await database_sync_to_async(_user)("visitor", staff=False, permissions=("view_call",))
        cookie = await database_sync_to_async(_session_cookie)(user)
    elif who != "anonymous":
        user = await database_sync_to_async(_user)("clerk")
        cookie = await database_sync_to_async(_session_cookie)(user)
    communicator, connected = await _page(cookie)
    assert connected  # accepted, so that the page hears why
    error = await communicator.receive_json_from(RECEIVE_TIMEOUT_SECONDS)
    assert error["type"] == "error" and says in error["detail"]
    assert (await communicator.receive_output(RECEIVE_TIMEOUT_SECONDS)) == {
        "type": "websocket.close",
        "code": code,
    }


# --- Watching -----------------------------------------------------------------------------


async def test_staff_see_a_call_start_its_lines_and_its_end(watcher, client_a, persona_a, quiet_limits):
    page = await _open_page(watcher)
    hello = await page.next("hello")
    assert hello["calls"] == [] and hello["mayTakeOver"] is False

    call = await live_call_start(client_a, "mara")
    started = await page.next("call.started")
    assert started["call"]["callId"] == call.id
    assert started["call"]["agent"] == "mara" and started["call"]["transport"] == "webrtc"
    assert started["call"]["persona"] == persona_a.name

    await page.send(type="watch", callId=call.id)
    watching = await page.next("watching")
    assert watching["call"]["callId"] == call.id and watching["call"]["ended"] is False

    # A caption and a final line of the visitor, as the pipeline publishes them.
    stored = await database_sync_to_async(Call.objects.select_related("persona").get)(pk=call.id)
    await database_sync_to_async(call_event_publish)(
        call=stored, event=events.UserSpeaking(text="do you have sour")
    )
    caption = await page.next("event", event="user.speaking")
    assert caption["data"]["text"] == "do you have sour"
    await database_sync_to_async(call_event_publish)(
        call=stored, event=events.UserMessage(text="Do you have sourdough?", message_id="msg_u1")
    )
    line = await page.next("event", event="user.message")
    assert line["data"]["text"] == "Do you have sourdough?"
    # An event of the page's other calls' or another call is not relayed as the watched call's.
    assert all(m.get("event") != "audio.metrics" for m in page.seen)

    await call.close()
    ended = await page.next("call.ended")
    assert ended["callId"] == call.id and ended["reason"] == "hangup"
    await page.communicator.disconnect()


async def test_a_call_going_on_when_the_page_opens_is_listed(watcher, client_a, persona_a, quiet_limits):
    call = await live_call_start(client_a, "mara")
    page = await _open_page(watcher)
    hello = await page.next("hello")
    assert [row["callId"] for row in hello["calls"]] == [call.id]
    assert hello["calls"][0]["persona"] == persona_a.name
    await call.close()
    await page.communicator.disconnect()


async def test_calls_of_an_organization_created_after_the_page_opened_appear(
    watcher, make_organization, make_persona, make_call, monkeypatch
):
    from calls.review import consumers

    monkeypatch.setattr(consumers, "ORGANIZATIONS_REFRESH_SECONDS", 0.1)
    page = await _open_page(watcher)
    await page.next("hello")
    organization = await database_sync_to_async(make_organization)("Newcomer")
    persona = await database_sync_to_async(make_persona)(organization, "nova")
    await asyncio.sleep(0.5)  # a few refreshes
    call = await database_sync_to_async(make_call)(
        persona, status=CallStatus.IN_PROGRESS, transport=Transport.WEBRTC
    )
    await database_sync_to_async(call_event_publish)(
        call=call,
        event=events.CallStarted(direction="inbound", transport="webrtc", started_at="2026-01-01T00:00:00Z"),
    )
    started = await page.next("call.started")
    assert started["call"]["callId"] == call.pk and started["call"]["agent"] == "nova"
    await page.communicator.disconnect()


async def test_watching_an_unknown_call_or_sending_nonsense_is_an_error_naming_the_field(watcher):
    page = await _open_page(watcher)
    await page.next("hello")
    await page.send(type="watch", callId="call_nobody")
    assert (await page.next("error"))["field"] == "callId"
    await page.send(type="dance", callId="x")
    assert (await page.next("error"))["field"] == "type"
    await page.communicator.send_to(text_data="{not json")
    assert (await page.next("error"))["field"] == "message"
    await page.communicator.disconnect()


# --- Acting -------------------------------------------------------------------------------


async def test_staff_without_take_over_cannot_speak_or_end(watcher, client_a, persona_a, quiet_limits):
    call = await live_call_start(client_a, "mara")
    page = await _open_page(watcher)
    await page.next("hello")
    await page.send(type="say", callId=call.id, text=STAFF_LINE)
    refused = await page.next("error")
    assert refused["code"] == "forbidden" and "take_over_call" in refused["detail"]
    await page.send(type="end", callId=call.id)
    assert (await page.next("error"))["code"] == "forbidden"
    assert len(call.conversation.said) == 1  # the greeting only
    status = await database_sync_to_async(lambda: Call.objects.get(pk=call.id).status)()
    assert status == CallStatus.IN_PROGRESS
    assert await _audit(ReviewAction.TOOK_OVER) == [] and await _audit(ReviewAction.ENDED) == []
    await call.close()
    await page.communicator.disconnect()


async def test_staff_make_the_persona_say_a_line_and_end_the_call(
    operator, client_a, persona_a, quiet_limits
):
    call = await live_call_start(client_a, "mara")
    page = await _open_page(operator)
    assert (await page.next("hello"))["mayTakeOver"] is True
    await page.send(type="watch", callId=call.id)
    await page.next("watching")

    await page.send(type="say", callId=call.id, text=f"  {STAFF_LINE} ")
    done = await page.next("done", action="say")
    assert done["callId"] == call.id and done["text"] == STAFF_LINE
    assert (STAFF_LINE, done["messageId"]) in call.conversation.said
    confirmed = await page.next("event", event="message.confirmed")
    assert confirmed["data"]["messageId"] == done["messageId"]
    [took_over] = await _audit(ReviewAction.TOOK_OVER)
    assert took_over.username == "operator" and took_over.call_ref == call.id
    assert took_over.detail["line"] == STAFF_LINE

    await page.send(type="end", callId=call.id)
    await page.next("done", action="end")
    ended = await call_ended(call.id)
    assert ended.end_reason == "hangup"
    await page.next("call.ended", callId=call.id)
    [ended_entry] = await _audit(ReviewAction.ENDED)
    assert ended_entry.username == "operator" and ended_entry.call_ref == call.id

    # The call is over: a line or an end now is refused, and says so.
    await page.send(type="say", callId=call.id, text=STAFF_LINE)
    assert (await page.next("error"))["code"] == "call_ended"
    await page.send(type="end", callId=call.id)
    assert (await page.next("error"))["code"] == "call_ended"
    assert len(await _audit(ReviewAction.ENDED)) == 1
    await call.signalling.disconnect()
    await page.communicator.disconnect()


async def test_an_empty_line_or_an_unknown_call_is_refused_clearly(
    operator, client_a, persona_a, quiet_limits
):
    call = await live_call_start(client_a, "mara")
    page = await _open_page(operator)
    await page.next("hello")
    await page.send(type="say", callId=call.id, text="   ")
    empty = await page.next("error")
    assert empty["field"] == "text" and "type the line" in empty["detail"]
    await page.send(type="end", callId="call_nobody")
    unknown = await page.next("error")
    assert unknown["code"] == "unknown_call" and "call_nobody" in unknown["detail"]
    assert len(call.conversation.said) == 1  # the greeting only
    assert await _audit(ReviewAction.TOOK_OVER) == [] and await _audit(ReviewAction.ENDED) == []
    await call.close()
    await page.communicator.disconnect()


# --- Selectors and the page ---------------------------------------------------------------


def test_the_live_list_holds_ongoing_voice_and_chat_calls_only(make_call, persona_a):
    ongoing = make_call(persona_a, status=CallStatus.IN_PROGRESS, transport=Transport.WEBRTC)
    make_call(persona_a, status=CallStatus.ENDED, transport=Transport.WEBRTC)
    make_call(persona_a, status=CallStatus.CONNECTING, transport=Transport.WEBRTC)
    make_call(persona_a, status=CallStatus.IN_PROGRESS, transport=Transport.WHATSAPP)
    assert [row["callId"] for row in live.live_calls()] == [ongoing.pk]
    assert live.live_call_row(ongoing.pk)["persona"] == persona_a.name
    whatsapp = Call.objects.get(transport=Transport.WHATSAPP)
    assert live.live_call_row(whatsapp.pk) is None


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ([], "message"),
        ({"type": "say", "callId": "c1"}, "text"),
        ({"type": "say", "callId": "c1", "text": "a\x00b"}, "text"),
        ({"type": "say", "callId": "c1", "text": "x" * (live.MAX_LINE_CHARS + 1)}, "text"),
        ({"type": "end", "callId": "../etc"}, "callId"),
        ({"type": "end"}, "callId"),
    ],
)
def test_page_messages_that_do_not_fit_name_their_field(content, field):
    with pytest.raises(InputRefused) as refused:
        live.page_message_parse(content)
    assert refused.value.field == field


def test_the_live_page_is_for_staff_who_may_view_calls(client, db):
    url = reverse("admin:calls_call_live")
    viewer = _user("viewer", permissions=("view_call",))
    operator = _user("operator2", permissions=("view_call", "take_over_call"))
    clerk = _user("clerk2")
    client.force_login(clerk)
    assert client.get(url).status_code == 403
    client.force_login(viewer)
    page = client.get(url)
    assert page.status_code == 200
    assert b'data-may-take-over="0"' in page.content and b'id="live-say"' not in page.content
    client.force_login(operator)
    page = client.get(url)
    assert b'data-may-take-over="1"' in page.content and b'id="live-say"' in page.content
    listing = client.get(reverse("admin:calls_call_changelist"))
    assert url.encode() in listing.content


def test_watching_mid_sentence_gets_the_message_being_spoken_whole(persona_a, make_call):
    call = make_call(persona_a)
    assert live.live_call_transcript(call.pk)["speaking"] is None
    call_event_publish(call=call, event=events.BotSpeaking(message_id="msg_now", text="We open at eight."))
    assert live.live_call_transcript(call.pk)["speaking"] == {
        "messageId": "msg_now",
        "text": "We open at eight.",
    }
    call_event_publish(call=call, event=events.BotFinished(message_id="msg_now"))
    assert live.live_call_transcript(call.pk)["speaking"] is None
