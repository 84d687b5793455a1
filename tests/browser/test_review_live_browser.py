"""In headless Chromium against a real Daphne process: staff watch a live call and act on it, and
review a WhatsApp thread (ticks, a voice note that plays, a human reply).

The live call is a real one, made by the aiortc client (`bench.webrtc_client`) in a thread of
this process: it appears in the live list while it runs, its lines come as they are said, a line
typed by staff is spoken by the persona (the client hears it), and ending it hangs the client up.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse
from playwright.sync_api import Page, expect

from bench.webrtc_client import ParleyWebRTCClient
from calls.models import WhatsAppChannel, WhatsAppMessage, WhatsAppSession
from calls.review.models import ReviewAction, ReviewAuditEntry
from calls.whatsapp.answering import whatsapp_media_keep
from calls.whatsapp.processing import whatsapp_processing_round
from calls.whatsapp.services import whatsapp_delivery_store
from tests.browser.conftest import LiveServer, calls_settle, daphne_start, free_port
from tests.browser.test_admin_browser import log_in
from tests.browser.test_engine_hosts import two_processes  # noqa: F401  (a fixture)
from tests.browser.test_session_aiortc import bakery, mint  # noqa: F401  (bakery: a fixture)
from tests.fakes.graph_api import graph_api_in_thread
from tests.fakes.sounds import ogg_opus
from tests.fakes.spoken import ScriptedMicrophone, spoken_pcm

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path(settings.BASE_DIR) / "docs" / "screenshots"
# Long enough for the recogniser to send interim transcripts before its final one.
SPOKEN_QUESTION = "Good morning, I was wondering when you are open today?"
STAFF_LINE = "A colleague of mine will call you back this afternoon."
# Each step of the visitor's call may wait for staff in the browser: generous, a safety net.
VISITOR_STEP_SECONDS = 90.0
VISITOR_JOIN_SECONDS = 120.0
PASSWORD = "a-live-review-password"
# The answer then the staff line, spoken at the pace of speech on a loaded machine.
SPOKEN_TIMEOUT_MILLISECONDS = 60_000


def _staff(username: str, *codenames: str) -> Any:
    user = get_user_model().objects.create_user(username, f"{username}@example.com", PASSWORD, is_staff=True)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="calls"))
    return user


# --- The visitor: a real WebRTC call from another thread ----------------------------------


class Visitor:
    """A call made by the aiortc client on its own loop; the test waits for its steps."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url, self.token = base_url, token
        self.greeted = threading.Event()
        self.watched = threading.Event()  # staff are watching: ask the question now
        self.session_id = ""
        self.heard: list[str] = []
        self.interims: list[dict[str, Any]] = []  # the captions the server sent the visitor
        self.ended_by_server = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="visitor-call", daemon=True)

    def start(self) -> Visitor:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._call())
        except BaseException as error:  # told to the test by `join`
            self.error = error
            self.greeted.set()

    async def _call(self) -> None:
        microphone = ScriptedMicrophone()
        client = ParleyWebRTCClient(
            base_url=self.base_url,
            session_token=self.token,
            step_timeout_seconds=VISITOR_STEP_SECONDS,
            microphone=microphone,
        )
        async with client:
            record = self.record = client.record
            self.session_id = record.session_id
            await client.wait_for(lambda: record.persona_finished_count() >= 1, "the greeting")
            self.greeted.set()
            if not await asyncio.to_thread(self.watched.wait, VISITOR_STEP_SECONDS):
                raise AssertionError("staff never watched the call")
            microphone.say(await spoken_pcm(SPOKEN_QUESTION))  # said out loud: captioned as it is heard
            await client.wait_for(
                lambda: any(STAFF_LINE in text for text in record.persona_messages()), "the staff line"
            )
            await client.wait_for(
                lambda: any(signal["actionType"] == "endsession" for signal in record.signals),
                "the call to be ended by staff",
            )
            self.heard = record.persona_messages()
            self.interims = record.data_of("userSpeechInterim")
            self.ended_by_server = True

    def join(self) -> None:
        self.thread.join(VISITOR_JOIN_SECONDS)
        if self.error is not None:
            raise self.error
        assert not self.thread.is_alive(), "the visitor's call never finished"


def watch_speak_and_end(page: Page, page_url: str, call_url: str, key: str) -> str:
    """Staff on `page_url`'s live page follow a call started through `call_url`, make its
    persona say a line and end it; the call's id."""
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()  # the client gathers loopback candidates too
    _staff("operator", "view_call", "take_over_call")
    log_in(page, page_url, "operator", PASSWORD)
    page.goto(page_url + reverse("admin:calls_call_changelist"))
    page.click("#live-calls-link")
    expect(page.locator("#live-state")).to_contain_text("Live")
    expect(page.locator("#live-calls tbody tr.empty")).to_be_visible()

    visitor = Visitor(call_url, mint(call_url, key)).start()
    assert visitor.greeted.wait(VISITOR_STEP_SECONDS) and visitor.error is None, visitor.error
    row = page.locator(f'#live-calls tr.live-call[data-call-id="{visitor.session_id}"]')
    expect(row).to_be_visible()  # it appeared while it runs, without a reload
    expect(row).to_contain_text("webrtc")

    row.click()
    transcript = page.locator("#live-transcript")
    expect(transcript.locator(".parley-turn.persona").first).to_contain_text("Mara")  # the greeting so far
    visitor.watched.set()
    # The visitor's words are captioned as they are heard, then the line and the persona's
    # answer come as they happen.
    expect(transcript.locator(".parley-turn.visitor:not(.caption)").last).to_contain_text(
        "open", ignore_case=True, timeout=SPOKEN_TIMEOUT_MILLISECONDS
    )
    expect(transcript.locator(".parley-turn.visitor .parley-tag.channel").last).to_have_text("∿ spoken")
    expect(transcript.locator(".parley-turn.persona", has_text="seven")).to_have_count(
        1, timeout=SPOKEN_TIMEOUT_MILLISECONDS
    )

    page.fill("#live-say-text", STAFF_LINE)
    page.click("#live-say-submit")
    expect(page.locator("#live-feedback")).to_contain_text("The persona says your line now")
    staff_line = transcript.locator(".parley-turn.persona.human")
    expect(staff_line).to_contain_text(STAFF_LINE)
    # Spoken after the answer it follows, word by word as the visitor hears it.
    expect(staff_line).to_have_attribute("data-state", "spoken", timeout=SPOKEN_TIMEOUT_MILLISECONDS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "live-calls.png"), full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#live-end")
    expect(row).to_have_count(0)  # it left the list as it ended
    expect(page.locator("#live-call-state")).to_contain_text("ended")
    visitor.join()
    assert visitor.ended_by_server and any(STAFF_LINE in text for text in visitor.heard)
    # Interim transcripts are best effort (a decode still queued when the final one is ready is
    # skipped): when the server sent the visitor some, the page showed them as captions too.
    if visitor.interims:
        captions = transcript.get_attribute("data-captions")
        assert captions is not None and int(captions) > 0, visitor.interims

    audit = list(
        ReviewAuditEntry.objects.filter(call_id=visitor.session_id)
        .order_by("id")
        .values_list("username", "action", "detail")
    )
    assert [(user, action) for user, action, _ in audit] == [
        ("operator", ReviewAction.TOOK_OVER),
        ("operator", ReviewAction.ENDED),
    ]
    assert audit[0][2]["line"] == STAFF_LINE
    return visitor.session_id


def test_staff_watch_a_live_call_make_the_persona_speak_and_end_it(
    live_server_url,
    bakery,  # noqa: F811
    page: Page,
):
    watch_speak_and_end(page, live_server_url, live_server_url, bakery)


@pytest.mark.skipif(
    not settings.CHANNEL_LAYERS["default"]["BACKEND"].startswith("channels_redis"),
    reason="processes hear each other's calls through a shared channel layer (REDIS_URL)",
)
def test_a_call_held_by_another_process_is_followed_and_driven_from_the_live_page(
    two_processes,  # noqa: F811
    transactional_db,
    bakery,  # noqa: F811
    page: Page,
):
    front, worker = two_processes
    call_id = watch_speak_and_end(page, front.url, front.url, bakery)
    from calls.models import Call

    assert Call.objects.get(pk=call_id).engine_host == worker.url.removeprefix("http://")
    calls_settle()


def test_staff_without_take_over_watch_but_cannot_act(live_server_url, page: Page):
    _staff("watcher", "view_call")
    log_in(page, live_server_url, "watcher", PASSWORD)
    page.goto(live_server_url + reverse("admin:calls_call_live"))
    expect(page.locator("#live-state")).to_contain_text("Live")
    expect(page.locator("#live-say")).to_have_count(0)
    expect(page.locator("#live-end")).to_have_count(0)


# --- WhatsApp -------------------------------------------------------------------------------

APP_SECRET = "app-secret-review-5d1e"
ACCESS_TOKEN = "EAAG-review-access-token"
PHONE_NUMBER_ID = "106540352249777"
CONTACT = "447700900777"
HUMAN_REPLY = "Hi, this is Ana from the bakery. Your cake is ready."


def _envelope(value: dict[str, Any]) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783777", "phone_number_id": PHONE_NUMBER_ID},
        **value,
    }
    return json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}],
        }
    ).encode()


def _signature(body: bytes) -> str:
    return "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()


def _post(server: LiveServer, body: bytes) -> None:
    request = urllib.request.Request(
        server.url + "/v1/whatsapp/webhook",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": _signature(body)},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


@pytest.fixture
def graph() -> Iterator[Any]:
    with graph_api_in_thread(access_token=ACCESS_TOKEN) as fake:
        yield fake


@pytest.fixture
def whatsapp_server(transactional_db, graph, tmp_path, settings) -> Iterator[LiveServer]:
    """A server of its own: its Graph API is the fake, its media folder the test's."""
    settings.MEDIA_ROOT = tmp_path / "media"
    server = daphne_start(
        free_port(),
        tmp_path / "whatsapp.log",
        extra_environment={
            "PARLEY_WHATSAPP_GRAPH_URL": graph.base_url,
            "PARLEY_MEDIA_ROOT": str(settings.MEDIA_ROOT),
        },
    )
    yield server
    server.stop()


@pytest.fixture
def thread(persona_a) -> WhatsAppSession:
    """A contact's thread, processed here (the server's answerer is not woken, so the persona
    does not answer): a text, a voice note kept with its transcript, a persona reply Meta
    delivered and one it refused."""
    WhatsAppChannel.objects.create(
        persona=persona_a,
        phone_number_id=PHONE_NUMBER_ID,
        display_phone_number="15550783777",
        access_token=ACCESS_TOKEN,
        app_secret=APP_SECRET,
        verify_token="verify-review",
    )
    body = _envelope(
        {
            "contacts": [{"profile": {"name": "Ingrid"}, "wa_id": CONTACT}],
            "messages": [
                {
                    "from": CONTACT,
                    "id": "wamid.IN1",
                    "timestamp": str(int(time.time())),
                    "type": "text",
                    "text": {"body": "Is my birthday cake ready?"},
                }
            ],
        }
    )
    # Stored as the webhook stores a delivery (the webhook has its own tests), then processed here.
    whatsapp_delivery_store(body=body, signature=_signature(body))
    whatsapp_processing_round()
    session = WhatsAppSession.objects.select_related("persona", "call").get(contact_phone=CONTACT)
    WhatsAppMessage.objects.filter(session=session).update(needs_answer=False)
    WhatsAppMessage.objects.create(
        session=session,
        meta_message_id="wamid.OUT1",
        direction="outbound",
        author="persona",
        text="Let me check with the kitchen.",
        status=WhatsAppMessage.Status.DELIVERED,
    )
    tone = (np.sin(np.linspace(0, 2 * np.pi * 440 * 1.5, 24_000)) * 8000).astype(np.int16)
    voice = WhatsAppMessage.objects.create(
        session=session,
        meta_message_id="wamid.VN1",
        direction="inbound",
        type="audio",
        media_id="MEDIA-VN1",
        mime_type="audio/ogg",
        text="Also, can you write Happy Birthday Lotte on it?",
        status=WhatsAppMessage.Status.RECEIVED,
    )
    whatsapp_media_keep(message_id=voice.pk, data=ogg_opus(tone, rate=16_000), mime_type="audio/ogg")
    WhatsAppMessage.objects.create(
        session=session,
        meta_message_id="wamid.OUT2",
        direction="outbound",
        author="persona",
        text="Of course! Anything else?",
        status=WhatsAppMessage.Status.FAILED,
        error_code=131047,
        error_title="Re-engagement message",
        error="More than 24 hours have passed since the recipient last replied.",
    )
    return session


def test_a_whatsapp_thread_shows_ticks_plays_a_voice_note_and_takes_a_human_reply(
    whatsapp_server, graph, thread, page: Page
):
    _staff("ana", "view_whatsappsession", "take_over_call", "listen_call")
    log_in(page, whatsapp_server.url, "ana", PASSWORD)
    page.goto(whatsapp_server.url + reverse("admin:calls_whatsappsession_change", args=[thread.pk]))
    bubbles = page.locator("#wa-thread .parley-turn")
    expect(bubbles.nth(0)).to_contain_text("Is my birthday cake ready?")
    expect(page.locator('.parley-turn[data-status="delivered"] .parley-ticks')).to_have_text("✓✓")
    expect(page.locator('.parley-turn[data-status="failed"] .parley-reason')).to_contain_text(
        "131047: Re-engagement message"
    )
    # The voice note plays beside its transcript (its audio as the server stored it).
    voice = page.locator('.parley-turn[data-kind="audio"]')
    expect(voice).to_contain_text("Happy Birthday Lotte")
    played = page.evaluate(
        """async () => {
            const audio = document.querySelector('.parley-turn[data-kind="audio"] audio');
            await audio.play();
            await new Promise((done) => setTimeout(done, 600));
            audio.pause();
            return {duration: audio.duration, at: audio.currentTime};
        }"""
    )
    assert played["duration"] > 1.0 and played["at"] > 0, played

    # Take over, answer as a human; Meta (the fake) is sent it, then reports it delivered and read.
    page.click("input[value='Take over (pause the persona)']")
    expect(page.locator("#wa-state")).to_contain_text("Taken over")
    page.fill("#id_text", HUMAN_REPLY)
    page.click("#wa-send input[type=submit]")
    expect(page.locator(".messagelist")).to_contain_text("Your message is on its way")
    deadline = time.monotonic() + 30
    while not [m for m in graph.sent if m.text == HUMAN_REPLY] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [m.text for m in graph.sent] == [HUMAN_REPLY]  # the human's reply, and nothing else
    human = WhatsAppMessage.objects.get(author="human")
    deadline = time.monotonic() + 30
    while not human.meta_message_id.startswith("wamid.") or human.status == "pending":
        assert time.monotonic() < deadline, "the human reply was never accepted by Meta"
        time.sleep(0.1)
        human.refresh_from_db()
    page.reload()
    mine = page.locator('.parley-turn[data-author="human"]')
    expect(mine).to_contain_text(HUMAN_REPLY)
    expect(mine.locator(".parley-ticks")).to_have_text("✓")
    for status in ("delivered", "read"):
        _post(
            whatsapp_server,
            _envelope(
                {
                    "statuses": [
                        {
                            "id": human.meta_message_id,
                            "status": status,
                            "timestamp": str(int(time.time())),
                            "recipient_id": CONTACT,
                        }
                    ]
                }
            ),
        )
    deadline = time.monotonic() + 30
    while human.status != "read":
        assert time.monotonic() < deadline, f"the read status never arrived ({human.status})"
        time.sleep(0.1)
        human.refresh_from_db()
    page.reload()
    expect(mine.locator(".parley-ticks.read")).to_have_text("✓✓")
    expect(mine).to_contain_text("read")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#wa-thread").scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "whatsapp-thread.png"), full_page=True)

    actions = list(ReviewAuditEntry.objects.order_by("id").values_list("action", "detail"))
    assert [action for action, _ in actions] == [
        ReviewAction.LISTENED,
        ReviewAction.TOOK_OVER,
        ReviewAction.TOOK_OVER,
    ]
    assert actions[2][1]["text"] == HUMAN_REPLY


def test_staff_without_take_over_cannot_act_on_a_thread(whatsapp_server, thread, page: Page):
    _staff("clerk", "view_whatsappsession", "change_whatsappsession")
    log_in(page, whatsapp_server.url, "clerk", PASSWORD)
    page.goto(whatsapp_server.url + reverse("admin:calls_whatsappsession_change", args=[thread.pk]))
    expect(page.locator("#wa-thread")).to_contain_text("Is my birthday cake ready?")
    expect(page.locator("#wa-send")).to_have_count(0)
    expect(page.locator("#wa-no-takeover")).to_contain_text("Can take over a call")
    expect(page.locator('.parley-turn[data-kind="audio"] audio')).to_have_count(0)  # nor listen
    status = page.evaluate(
        """async (url) => {
            const token = document.cookie.split('; ').find((c) => c.startsWith('csrftoken=')).split('=')[1];
            const response = await fetch(url, {method: 'POST', headers: {'X-CSRFToken': token},
                body: new URLSearchParams({paused: '1'})});
            return response.status;
        }""",
        reverse("admin:calls_whatsappsession_takeover", args=[thread.pk]),
    )
    assert status == 403
    thread.refresh_from_db()
    assert thread.human_takeover is False
    assert not ReviewAuditEntry.objects.exists()
