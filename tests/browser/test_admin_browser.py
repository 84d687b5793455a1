"""In headless Chromium: an admin logs in and reads a call's transcript and event log.

The conversation view itself (bubbles, cut-offs, tool calls, search, export) is
`test_call_review_browser.py`.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import Page, expect

from calls.models import Call, CallEvent, CallStatus, EndReason, Message, Transport

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TRANSCRIPT = [
    (Message.Role.PERSONA, "Hi, I'm Mara at Linden Street Bakery. What can I do for you?"),
    (Message.Role.USER, "Do you have anything gluten-free today?"),
    (Message.Role.PERSONA, "Yes, the flourless chocolate cake and the almond macarons."),
]
EVENT_TYPES = ["call.started", "user.message", "bot.word", "bot.finished", "call.ended"]


@pytest.fixture
def call_with_transcript(persona_a) -> Call:
    started = timezone.now() - timedelta(minutes=2)
    call = Call.objects.create(
        organization=persona_a.organization,
        persona=persona_a,
        transport=Transport.WEBRTC,
        status=CallStatus.ENDED,
        started_at=started,
        ended_at=started + timedelta(seconds=47),
        duration_seconds=47.0,
        end_reason=EndReason.HANGUP,
    )
    for offset, (role, text) in enumerate(TRANSCRIPT):
        Message.objects.create(
            call=call,
            role=role,
            text=text,
            spoken_text=text,
            started_at=started + timedelta(seconds=5 * offset),
            ended_at=started + timedelta(seconds=5 * offset + 4),
        )
    for event_type in EVENT_TYPES:
        CallEvent.objects.create(
            organization=call.organization,
            persona=call.persona,
            call=call,
            type=event_type,
            data={"callId": call.id},
        )
    return call


def log_in(page: Page, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    expect(page.locator("#site-name")).to_contain_text("Parley admin")


def test_an_admin_reads_a_calls_transcript_and_events(
    live_server_url, call_with_transcript, page: Page, screenshot_dir
):
    get_user_model().objects.create_superuser("browser-admin", "admin@example.com", "a-browser-password")

    log_in(page, live_server_url, "browser-admin", "a-browser-password")
    page.goto(live_server_url + reverse("admin:calls_call_change", args=[quote(call_with_transcript.pk)]))

    expect(page.locator("#content h2").first).to_contain_text(call_with_transcript.pk)
    transcript = page.locator("#conversation")
    for _, text in TRANSCRIPT:
        expect(transcript).to_contain_text(text)
    lines = transcript.locator(".parley-turn .parley-bubble").all_inner_texts()
    assert lines == [text for _, text in TRANSCRIPT]
    events = page.locator("#raw-events")
    events.locator("summary").click()
    assert events.locator("tbody tr td:nth-child(3)").all_inner_texts() == EVENT_TYPES
    expect(page.locator(".field-duration")).to_contain_text("0:47")

    page.screenshot(path=str(screenshot_dir / "admin-call.png"), full_page=True)
