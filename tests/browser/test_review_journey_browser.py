"""Issue 17 end to end, in headless Chromium against a real Daphne process: one real voice call
from the live list to its review.

The aiortc client calls the persona and asks a question out loud; staff follow it in the live
list while it runs, make the persona say a line and end it. Then the same call's page shows the
conversation, its latency bars and its recording, which plays from a transcript line; the list
finds it by a word the visitor said and exports it; a staff member without the permissions can
neither listen nor export; and the review audit log holds what was done, by whom.
"""

from __future__ import annotations

import json

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.urls import reverse
from playwright.sync_api import Page, expect

from calls.models import Call
from calls.review.models import ReviewAction, ReviewAuditEntry, TurnLatency
from personas.models import Persona
from tests.browser.test_admin_browser import log_in
from tests.browser.test_call_recording_browser import recording_wait
from tests.browser.test_review_live_browser import PASSWORD, _staff, watch_speak_and_end
from tests.browser.test_session_aiortc import bakery  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# A word of the visitor's spoken question (tests.browser.test_review_live_browser.SPOKEN_QUESTION).
SAID_WORD = "wondering"


def test_a_voice_call_followed_live_is_then_reviewed_played_found_and_exported(
    live_server_url,
    bakery,  # noqa: F811
    page: Page,
):
    Persona.objects.filter(slug="mara").update(recording_enabled=True)
    call_id = watch_speak_and_end(page, live_server_url, live_server_url, bakery)
    recording = recording_wait(call_id)
    call = Call.objects.get(pk=call_id)
    spoken = TurnLatency.objects.filter(call=call, channel="spoken")
    assert spoken.exists(), "the spoken question's answer has its stages recorded"

    # The reviewer may view, listen and export.
    reviewer = _staff("reviewer", "view_call", "listen_call", "export_call")
    page.context.clear_cookies()
    log_in(page, live_server_url, reviewer.username, PASSWORD)
    page.goto(live_server_url + reverse("admin:calls_call_change", args=[quote(call_id)]))
    conversation = page.locator("#conversation")
    # The question may be heard as one line or two (a pause in it can end a turn), and each may
    # be answered: once, in CI on PostgreSQL, two answers named the hours.
    expect(conversation.locator(".parley-turn.visitor", has_text=SAID_WORD)).not_to_have_count(0)
    expect(conversation.locator(".parley-turn.persona", has_text="seven")).not_to_have_count(0)
    assert (
        conversation.locator(".parley-turn.persona", has_text="seven").count()
        <= conversation.locator(".parley-turn.visitor").count()
    )
    # A bar per answer with its stages, and the call's median.
    bars = page.locator(".parley-latency-row")
    assert bars.count() >= 1
    expect(bars.first.locator(".parley-stage").first).to_be_visible()
    expect(page.locator("#latency-median")).to_contain_text("median")

    # The recording plays, and a transcript line moves the player to where it was said.
    audio = page.locator("#recording-audio")
    expect(audio).to_be_visible()
    answer = conversation.locator(".parley-turn.persona[data-offset]", has_text="seven").first
    line_at = float(answer.get_attribute("data-offset")) + float(
        page.locator("#recording-player").get_attribute("data-offset")
    )
    answer.click()
    page.wait_for_function(
        "() => { const a = document.querySelector('#recording-audio');"
        " return a.readyState >= 1 && a.duration > 0 && !a.seeking && a.currentTime > 0; }"
    )
    player = page.evaluate(
        "() => { const a = document.querySelector('#recording-audio');"
        " return {duration: a.duration, position: a.currentTime}; }"
    )
    assert player["duration"] == pytest.approx(recording.duration_seconds, abs=0.5)
    assert player["position"] == pytest.approx(line_at, abs=1.0)

    # The list finds it by a word the visitor said; the export holds it, with that line.
    page.goto(live_server_url + reverse("admin:calls_call_changelist"))
    page.fill("#searchbar", SAID_WORD)
    page.press("#searchbar", "Enter")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list")).to_contain_text(call_id)
    export_url = page.locator("#export-json").get_attribute("href")
    assert export_url is not None
    exported = json.loads(page.request.get(live_server_url + export_url).text())
    assert [row["id"] for row in exported] == [call_id]
    assert any(SAID_WORD in line["text"] for line in exported[0]["transcript"])

    # A staff member who may only view the call: no player, and neither audio nor export.
    _staff("viewer", "view_call")
    page.context.clear_cookies()
    log_in(page, live_server_url, "viewer", PASSWORD)
    page.goto(live_server_url + reverse("admin:calls_call_change", args=[quote(call_id)]))
    expect(page.locator("#conversation")).to_be_visible()
    expect(page.locator("#recording-audio")).to_have_count(0)
    audio_url = reverse("admin:calls_call_recording", args=[quote(call_id)])
    assert page.request.get(live_server_url + audio_url).status == 403
    page.goto(live_server_url + reverse("admin:calls_call_changelist"))
    expect(page.locator("#export-json")).to_have_count(0)
    assert page.request.get(live_server_url + export_url).status == 403

    # The audit log: who took over and ended the call, who listened to it and who exported it.
    audit = list(
        ReviewAuditEntry.objects.filter(call_id=call_id).order_by("id").values_list("username", "action")
    )
    assert audit == [
        ("operator", ReviewAction.TOOK_OVER),
        ("operator", ReviewAction.ENDED),
        ("reviewer", ReviewAction.LISTENED),
    ]
    exports = ReviewAuditEntry.objects.filter(action=ReviewAction.EXPORTED)
    assert list(exports.values_list("username", flat=True)) == ["reviewer"]
    # An administrator reads it in the admin.
    get_user_model().objects.create_superuser("auditor", "auditor@example.com", PASSWORD)
    page.context.clear_cookies()
    log_in(page, live_server_url, "auditor", PASSWORD)
    page.goto(live_server_url + reverse("admin:calls_reviewauditentry_changelist"))
    log = page.locator("#result_list")
    for label in ("Took over a call", "Ended a call", "Listened to a recording", "Exported calls"):
        expect(log).to_contain_text(label)
    expect(log).to_contain_text(call_id)
