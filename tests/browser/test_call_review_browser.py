"""In headless Chromium: staff read a call as a conversation, find it by a word said, and export it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.urls import reverse
from playwright.sync_api import Page, expect

from tests.browser.test_admin_browser import log_in
from tests.calls.review.conftest import (
    CUT_OFF_SPOKEN,
    GREETING,
    HELD_REPLY,
    SPOKEN_QUESTION,
    TYPED_LINE,
    reviewed_call_create,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOT = Path(settings.BASE_DIR) / "docs" / "screenshots" / "call-review.png"


def test_staff_read_a_call_as_a_conversation_and_find_and_export_it(live_server_url, persona_a, page: Page):
    call = reviewed_call_create(persona_a)
    get_user_model().objects.create_superuser("reviewer", "reviewer@example.com", "a-review-password")
    log_in(page, live_server_url, "reviewer", "a-review-password")

    page.goto(live_server_url + reverse("admin:calls_call_change", args=[quote(call.pk)]))

    conversation = page.locator("#conversation")
    expect(conversation).to_be_visible()
    assert conversation.locator(".parley-turn .parley-bubble").all_inner_texts()[:2] == [
        GREETING,
        SPOKEN_QUESTION,
    ]
    expect(conversation.locator(".parley-turn.persona.interrupted .parley-bubble")).to_contain_text(
        CUT_OFF_SPOKEN
    )
    expect(conversation.locator(".parley-turn.visitor[data-channel=typed]")).to_contain_text(TYPED_LINE)
    expect(conversation.locator(".parley-tool")).to_contain_text("hold_item")
    expect(conversation.locator(".parley-tool")).to_contain_text('"until": "18:00"')  # its result
    expect(conversation.locator(".parley-turn.persona").last).to_contain_text(HELD_REPLY)
    expect(conversation.locator(".parley-note").last).to_contain_text("Call ended: the visitor hung up")
    # Each answer's latency as a stacked bar, drawn: the spoken one has five stages, the typed
    # one only the brain's and the voice's; the call's median and p95 above them.
    latency = page.locator("#latency")
    expect(latency.locator(".parley-latency-row")).to_have_count(2)
    spoken_bar = latency.locator('.parley-latency-row[data-channel="spoken"] .parley-stage')
    expect(spoken_bar).to_have_count(5)
    widths = [box["width"] for box in (segment.bounding_box() for segment in spoken_bar.all()) if box]
    assert len(widths) == 5 and all(width > 0 for width in widths)
    typed_row = latency.locator('.parley-latency-row[data-channel="typed"]')
    expect(typed_row.locator(".parley-stage")).to_have_count(2)
    expect(typed_row).to_contain_text("typed: no VAD stages")
    expect(typed_row).to_contain_text("slow")
    expect(page.locator("#latency-median")).to_have_text("median 1300 ms")
    expect(page.locator("#latency-legend")).to_contain_text("brain first sentence")
    # "next flagged" walks the flagged items in order: the cut-off answer first.
    page.click("#flag-next")
    expect(conversation.locator(".parley-current")).to_have_attribute("data-message-id", "msg_cut")
    page.click("#flag-next")
    page.click("#flag-next")
    expect(conversation.locator(".parley-current")).to_have_attribute("data-message-id", "msg_held")
    page.click("#flag-previous")
    expect(page.locator("#flag-position")).to_contain_text("2 of 3")
    page.evaluate("window.scrollTo(0, 0)")
    # The raw log is one click away, folded until then.
    raw = page.locator("#raw-events")
    expect(raw.locator("table")).to_be_hidden()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    raw.locator("summary").click()
    expect(raw.locator("table")).to_be_visible()
    expect(raw.locator("tbody tr").first).to_contain_text("call.started")

    # The list finds it by a word the visitor said, and exports what it shows (streamed by Daphne).
    page.goto(live_server_url + reverse("admin:calls_call_changelist"))
    page.fill("#searchbar", "sourdough")
    page.press("#searchbar", "Enter")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list")).to_contain_text(call.pk)
    export_url = page.locator("#export-json").get_attribute("href")
    assert export_url is not None and export_url.endswith("?q=sourdough")
    exported = json.loads(page.request.get(live_server_url + export_url).text())
    assert [row["id"] for row in exported] == [call.pk]
    assert SPOKEN_QUESTION in [line["text"] for line in exported[0]["transcript"]]
