"""The call pages of the admin: the conversation, search, filters, export, its permission and audit."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from calls.models import Call, CallStatus, EndReason, Message, Transport
from calls.review.models import ReviewAction, ReviewAuditEntry
from calls.review.selectors import call_search
from calls.review.services import review_audit_record
from tests.calls.review.conftest import (
    CUT_OFF_MEANT,
    CUT_OFF_SPOKEN,
    SPOKEN_ANSWER_STAGES,
    SPOKEN_QUESTION,
    TYPED_ANSWER_STAGES,
    TYPED_LINE,
)

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:calls_call_changelist"


@pytest.fixture
def admin_client_(db) -> Client:
    user = get_user_model().objects.create_superuser("reviewer", "reviewer@example.com", "pw")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def staff_viewer(db):
    """Staff who may view calls, but not export them."""
    user = get_user_model().objects.create_user("viewer", "viewer@example.com", "pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_call", content_type__app_label="calls"))
    return user


@pytest.fixture
def other_call(make_call, persona_b) -> Call:
    """A short chat call of another persona, never interrupted, about something else."""
    started = timezone.now() - timedelta(days=3)
    call = make_call(
        persona_b,
        transport=Transport.CHAT,
        status=CallStatus.ENDED,
        started_at=started,
        duration_seconds=12.0,
        end_reason=EndReason.IDLE_TIMEOUT,
    )
    Message.objects.create(call=call, message_id="o1", role=Message.Role.USER, text="What time do you open?")
    Message.objects.create(call=call, message_id="o2", role=Message.Role.PERSONA, text="At eight.")
    return call


def changelist_ids(client: Client, **query: str) -> set[str]:
    response = client.get(reverse(CHANGELIST), query)
    assert response.status_code == 200
    return {call.pk for call in response.context["cl"].result_list}


def test_the_call_page_shows_the_conversation_as_bubbles(admin_client_, reviewed_call):
    response = admin_client_.get(reverse("admin:calls_call_change", args=[quote(reviewed_call.pk)]))

    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="conversation"' in page
    assert page.count('class="parley-turn visitor"') == 2
    assert page.count('class="parley-turn persona') == 3
    assert 'class="parley-turn persona interrupted parley-flagged"' in page
    assert CUT_OFF_SPOKEN in page and "and one sourdough, and the seeded one comes out at four." in page
    assert "⌨ typed" in page and "∿ spoken" in page
    assert "Tool call: hold_item" in page
    assert "Call ended: the visitor hung up" in page
    # The raw log is folded, with a link to the call's own event list.
    assert '<details class="parley-raw" id="raw-events">' in page
    assert f"?call__id__exact={reviewed_call.pk}" in page
    assert 'id="messages-group"' not in page and 'id="events-group"' not in page


def test_the_call_page_shows_a_latency_bar_per_answer_with_its_legend_median_and_p95(
    admin_client_, reviewed_call
):
    response = admin_client_.get(reverse("admin:calls_call_change", args=[quote(reviewed_call.pk)]))

    page = response.content.decode()
    assert response.status_code == 200
    assert page.count('class="parley-latency-row') == 2
    # The spoken answer's five stages, each a segment as wide as its share of the scale (the
    # typed answer's 2000 ms), in the order they happen.
    spoken_row = page.split('data-message-id="msg_cut" data-channel="spoken"')[1].split("</div>")[0]
    for (name, ms), width in zip(
        zip(("vad", "transcript", "turn", "brain", "audio"), SPOKEN_ANSWER_STAGES, strict=True),
        ("10.00", "20.00", "7.50", "19.00", "8.50"),
        strict=True,
    ):
        assert f'data-stage="{name}" data-ms="{ms}" style="width: {width}%"' in spoken_row
    typed_row = page.split('data-message-id="msg_held" data-channel="typed"')[1].split("parley-latency-row")[
        0
    ]
    assert 'data-stage="vad"' not in typed_row and f'data-ms="{TYPED_ANSWER_STAGES[3]}"' in typed_row
    assert "typed: no VAD stages" in typed_row and ">slow</span>" in typed_row
    assert "median 1300 ms" in page and "p95 1300 ms" in page
    for label in (
        "VAD end of speech",
        "final transcript",
        "turn decision",
        "brain first sentence",
        "first audio sent",
    ):
        assert label in page
    # Flagged: the slow answer, the cut-off answer, the turn taken while the visitor went on.
    assert "3 flagged" in page and 'id="flag-next"' in page
    assert "answered in 2000 ms: slow" in page


def test_a_tool_calls_result_and_a_tool_error_show_inline(admin_client_, reviewed_call):
    from calls.review.models import ToolResult

    response = admin_client_.get(reverse("admin:calls_call_change", args=[quote(reviewed_call.pk)]))
    assert (
        "Result: <code>{&quot;held&quot;: true, &quot;until&quot;: &quot;18:00&quot;}</code>"
        in response.content.decode()
    )

    ToolResult.objects.filter(call=reviewed_call).update(result=None, error="tool hold_item has no handler")
    page = admin_client_.get(
        reverse("admin:calls_call_change", args=[quote(reviewed_call.pk)])
    ).content.decode()
    assert "Error: <code>tool hold_item has no handler</code>" in page
    assert "4 flagged" in page


def test_the_slow_filter_uses_the_recorded_latency(admin_client_, reviewed_call, other_call, settings):
    assert changelist_ids(admin_client_, slow="yes") == {reviewed_call.pk}
    assert changelist_ids(admin_client_, slow="no") == {other_call.pk}
    settings.PARLEY_SLOW_TURN_MS = 2500  # no answer of either call is slower than that
    assert changelist_ids(admin_client_, slow="yes") == set()


def test_the_raw_log_link_lists_only_this_calls_events(
    admin_client_, reviewed_call, other_call, record_event
):
    record_event(
        other_call, timezone.now(), "call.started", direction="inbound", transport="chat", startedAt=""
    )
    response = admin_client_.get(
        reverse("admin:calls_callevent_changelist"), {"call__id__exact": reviewed_call.pk}
    )

    assert response.status_code == 200
    assert {event.call_id for event in response.context["cl"].result_list} == {reviewed_call.pk}


def test_search_finds_a_call_by_a_word_the_visitor_said(admin_client_, reviewed_call, other_call):
    assert changelist_ids(admin_client_, q="sourdough") == {reviewed_call.pk}
    assert changelist_ids(admin_client_, q="open") == {other_call.pk}
    assert changelist_ids(admin_client_, q="Ingrid hold") == {reviewed_call.pk}
    assert changelist_ids(admin_client_, q="croissant") == set()
    assert changelist_ids(admin_client_, q=reviewed_call.pk[:12]) == {reviewed_call.pk}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"interrupted": "yes"}, {"reviewed"}),
        ({"interrupted": "no"}, {"other"}),
        ({"duration": "under-30s"}, {"other"}),
        ({"duration": "30s-2m"}, {"reviewed"}),
        ({"duration": "over-10m"}, set()),
        ({"transport__exact": "chat"}, {"other"}),
        ({"end_reason__exact": "hangup"}, {"reviewed"}),
    ],
)
def test_filters_narrow_the_list(admin_client_, reviewed_call, other_call, query, expected):
    names = {reviewed_call.pk: "reviewed", other_call.pk: "other"}
    assert {names[pk] for pk in changelist_ids(admin_client_, **query)} == expected


def test_the_list_filters_by_persona_and_start_date(admin_client_, reviewed_call, other_call, persona_b):
    assert changelist_ids(admin_client_, persona__id__exact=str(persona_b.pk)) == {other_call.pk}
    yesterday = timezone.now() - timedelta(days=1)
    assert changelist_ids(admin_client_, started_at__gte=str(yesterday)) == {reviewed_call.pk}


def streamed(response) -> str:
    assert response.status_code == 200
    return b"".join(response.streaming_content).decode()


def test_csv_export_has_the_filtered_calls_with_their_transcripts(admin_client_, reviewed_call, other_call):
    response = admin_client_.get(reverse("admin:calls_call_export", args=["csv"]), {"q": "sourdough"})

    assert response["Content-Type"].startswith("text/csv")
    assert "attachment;" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(streamed(response))))
    assert [row["id"] for row in rows] == [reviewed_call.pk]
    (row,) = rows
    assert row["endReason"] == "hangup" and row["interrupted"] == "True"
    assert f"visitor: {SPOKEN_QUESTION}" in row["transcript"]
    assert f"visitor: {TYPED_LINE}" in row["transcript"]
    assert f"persona (interrupted, heard: {CUT_OFF_SPOKEN!r}): {CUT_OFF_MEANT}" in row["transcript"]


def test_json_export_has_every_call_of_the_list_with_its_transcript(admin_client_, reviewed_call, other_call):
    response = admin_client_.get(reverse("admin:calls_call_export", args=["json"]))

    exported = {call["id"]: call for call in json.loads(streamed(response))}
    assert set(exported) == {reviewed_call.pk, other_call.pk}
    transcript = exported[reviewed_call.pk]["transcript"]
    assert [line["role"] for line in transcript] == ["persona", "user", "persona", "user", "persona"]
    assert [line["channel"] for line in transcript if line["role"] == "user"] == ["spoken", "typed"]
    cut = transcript[2]
    assert (cut["text"], cut["spokenText"], cut["interrupted"]) == (CUT_OFF_MEANT, CUT_OFF_SPOKEN, True)
    assert exported[other_call.pk]["transcript"][0]["text"] == "What time do you open?"


def test_the_list_offers_export_with_its_filters_to_those_allowed(admin_client_, reviewed_call):
    page = admin_client_.get(reverse(CHANGELIST), {"q": "sourdough"}).content.decode()
    assert f'href="{reverse("admin:calls_call_export", args=["csv"])}?q=sourdough"' in page


def test_staff_without_the_export_permission_are_refused_and_not_offered_export(staff_viewer, reviewed_call):
    client = Client()
    client.force_login(staff_viewer)

    assert client.get(reverse(CHANGELIST)).status_code == 200
    assert 'id="export-csv"' not in client.get(reverse(CHANGELIST)).content.decode()
    for file_format in ("csv", "json"):
        assert client.get(reverse("admin:calls_call_export", args=[file_format])).status_code == 403
    assert not ReviewAuditEntry.objects.exists()


def test_staff_with_the_export_permission_may_export(staff_viewer, reviewed_call):
    staff_viewer.user_permissions.add(Permission.objects.get(codename="export_call"))
    client = Client()
    client.force_login(staff_viewer)

    assert reviewed_call.pk in streamed(client.get(reverse("admin:calls_call_export", args=["json"])))


def test_an_export_is_recorded_in_the_audit_log(admin_client_, reviewed_call, other_call):
    streamed(
        admin_client_.get(reverse("admin:calls_call_export", args=["csv"]), {"transport__exact": "webrtc"})
    )

    (entry,) = ReviewAuditEntry.objects.all()
    assert (entry.username, entry.action, entry.call) == ("reviewer", ReviewAction.EXPORTED, None)
    assert entry.detail == {"format": "csv", "filters": {"transport__exact": "webrtc"}, "calls": 1}
    page = admin_client_.get(reverse("admin:calls_reviewauditentry_changelist")).content.decode()
    assert "reviewer" in page and "Exported calls" in page


def test_the_audit_log_is_read_only(admin_client_):
    entry = review_audit_record(user=get_user_model().objects.get(), action="listened")
    assert admin_client_.get(reverse("admin:calls_reviewauditentry_add")).status_code == 403
    assert (
        admin_client_.post(reverse("admin:calls_reviewauditentry_delete", args=[entry.pk])).status_code == 403
    )


def test_the_audit_service_records_a_call_action_and_outlives_the_call(reviewed_call):
    user = get_user_model().objects.create_user("ops", is_staff=True)
    entry = review_audit_record(
        user=user, action=ReviewAction.ENDED, call=reviewed_call, detail={"why": "abuse"}
    )
    call_id = reviewed_call.pk

    reviewed_call.delete()
    entry.refresh_from_db()
    assert (entry.call, entry.call_ref, entry.detail) == (None, call_id, {"why": "abuse"})
    with pytest.raises(ValueError):
        review_audit_record(user=user, action="peeked")


def test_transcript_search_uses_the_gin_index_on_postgresql(reviewed_call):
    if connection.vendor != "postgresql":
        pytest.skip("the GIN index exists on PostgreSQL only (SQLite searches with LIKE)")
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a tiny table would be scanned anyway
        sql, params = call_search(Call.objects.all(), "sourdough").query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "calls_message_text_search" in plan
