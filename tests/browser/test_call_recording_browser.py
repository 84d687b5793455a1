"""A real call recorded, then played in headless Chromium from the call's admin page.

An aiortc client (as the Anam SDK would) talks to a real Daphne server while its microphone
plays a tone; the call's recording must hold both sides, each on its own channel. Staff then
open the call page: the player has the recording, and clicking a transcript line moves it there.
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
from django.conf import settings
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.urls import reverse
from playwright.sync_api import Page, expect

from bench.webrtc_client import ParleyWebRTCClient
from calls.models import Call
from calls.review.models import CallRecording, ReviewAction, ReviewAuditEntry, recordings_storage
from calls.review.recordings import recording_offset_seconds
from personas.models import KnowledgeEntry
from personas.services import api_key_create
from tests.browser.test_admin_browser import log_in
from tests.browser.test_session_aiortc import mint, wait_for_call_end
from tests.fakes.spoken import RATE, ScriptedMicrophone

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The visitor's tone: high in speech's band, where the persona's own voice is weak (at 330 Hz its
# voice alone reached 25-37 dB below the tone, so the tone's trace could not be told from it) and
# where joint stereo coding had leaked most (`bench/recording.py`).
VISITOR_TONE_HZ = 3_000.0
# How far below the visitor's side its tone must be on the persona's (dB): a reviewer listening
# to one side does not hear the other (measured 44-45 dB in real calls, the persona's voice
# included; 20 with the recorder's old 32 kb/s voip coding; mixed sides give ~0).
SIDES_APART_DB = 30.0
# The recording is stored after call.ended (the last batch encoded, the file saved), in seconds.
RECORDING_STORED_TIMEOUT_SECONDS = 15.0
SCREENSHOT = Path(settings.BASE_DIR) / "docs" / "screenshots" / "call-review-recording.png"


def visitor_tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * VISITOR_TONE_HZ * t) * 6_000).astype(np.float32)


async def call_with_a_tone(base_url: str, token: str) -> str:
    """Greeting, a typed question and its answer, while the microphone plays a tone throughout."""
    microphone = ScriptedMicrophone()
    microphone.say(visitor_tone(30.0))
    async with ParleyWebRTCClient(base_url=base_url, session_token=token, microphone=microphone) as client:
        record = client.record
        await client.wait_for(lambda: record.persona_finished_count() >= 1, "the greeting")
        client.ask("What are your opening hours?")
        await client.wait_for(lambda: record.persona_finished_count() >= 2, "the answer")
    return record.session_id


def recording_wait(call_id: str) -> CallRecording:
    deadline = time.monotonic() + RECORDING_STORED_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        recording = CallRecording.objects.filter(call_id=call_id).first()
        if recording is not None:
            return recording
        time.sleep(0.2)
    raise AssertionError("the call's recording was never stored")


def channels_decoded(recording: CallRecording) -> np.ndarray:
    with recordings_storage().open(recording.file.name, "rb") as stored, av.open(stored) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.channels) == ("opus", 2)
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
    planar = frames[0].shape[0] == 2
    return np.concatenate([f.T if planar else f.reshape(-1, 2) for f in frames]).astype(np.float64)


def conversation_offsets(call: Call) -> list[float]:
    """The persona's lines' times since the call started, as the call page shows them."""
    from calls.review.selectors import call_conversation

    return [
        item.offset_seconds
        for item in call_conversation(call)
        if getattr(item, "speaker", "") == "persona" and item.offset_seconds is not None
    ]


def tone_level(samples: np.ndarray) -> float:
    """The visitor's tone in these samples, in dB (its frequency, ±3 Hz)."""
    spectrum = np.abs(np.fft.rfft(samples))
    near = np.abs(np.fft.rfftfreq(samples.size, 1 / RATE) - VISITOR_TONE_HZ) <= 3
    return float(20 * np.log10(spectrum[near].max() + 1e-9))


def strongest_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / RATE)[spectrum.argmax()])


@pytest.fixture
def recording_bakery(make_organization, make_persona) -> str:
    """A persona that records its calls, and an API key of its organization."""
    organization = make_organization("Bakery", slug="bakery")
    persona = make_persona(organization, "mara", greeting="Hello, I am Mara from the bakery.")
    persona.recording_enabled = True
    persona.save()
    KnowledgeEntry.objects.create(
        persona=persona,
        question="When are you open?",
        answer="We are open from seven in the morning to six in the evening, every day.",
    )
    return api_key_create(organization=organization, name="e2e").raw_key


def test_a_real_call_is_recorded_in_stereo_and_plays_from_a_transcript_line(
    live_server_url, recording_bakery: str, page: Page
):
    from calls.live import ice_address_policy_apply

    ice_address_policy_apply()  # the client gathers loopback candidates too
    token = mint(live_server_url, recording_bakery)
    # Playwright's sync API holds this thread's event loop: the client runs on its own thread.
    with ThreadPoolExecutor(max_workers=1) as thread:
        call_id = thread.submit(asyncio.run, call_with_a_tone(live_server_url, token)).result()
    wait_for_call_end(call_id)
    recording = recording_wait(call_id)
    call = Call.objects.get(pk=call_id)

    # Both sides, each on its own channel: the visitor's tone left, the persona's voice right.
    samples = channels_decoded(recording)
    assert samples.shape[0] / RATE == pytest.approx(recording.duration_seconds, abs=0.1)
    assert recording.duration_seconds > 3
    visitor, persona = samples[:, 0], samples[:, 1]
    assert np.sqrt((visitor**2).mean()) > 0.05
    assert np.sqrt((persona**2).mean()) > 0.01
    assert strongest_hz(visitor) == pytest.approx(VISITOR_TONE_HZ, abs=3)
    # The tone stays on its side: a pure tone sums over the whole call in one frequency, so the
    # persona's side is judged by how far below the visitor's the tone's frequency is there.
    assert tone_level(visitor) - tone_level(persona) > SIDES_APART_DB
    # Its 0:00 is the call's start, within the time it takes to store that start.
    assert abs(recording_offset_seconds(call=call, recording=recording)) < 1.0

    # Transcript times land on the audio: the persona's voice starts where its greeting's line says.
    offset = recording_offset_seconds(call=call, recording=recording)
    greeting_at = offset + conversation_offsets(call)[0]
    loud = np.flatnonzero(np.abs(persona) > 0.05)
    assert loud.size and loud[0] / RATE == pytest.approx(greeting_at, abs=0.3)

    get_user_model().objects.create_superuser("listener", "listener@example.com", "a-listening-password")
    log_in(page, live_server_url, "listener", "a-listening-password")
    page.goto(live_server_url + reverse("admin:calls_call_change", args=[quote(call_id)]))
    audio = page.locator("#recording-audio")
    expect(audio).to_be_visible()

    answer = page.locator(".parley-turn.persona[data-offset]").last
    line_at = float(answer.get_attribute("data-offset")) + float(
        page.locator("#recording-player").get_attribute("data-offset")
    )
    assert 0 < line_at < recording.duration_seconds
    answer.click()
    page.wait_for_function(
        "() => { const a = document.querySelector('#recording-audio');"
        " return a.readyState >= 1 && a.duration > 0 && !a.seeking; }"
    )
    position = page.evaluate("() => document.querySelector('#recording-audio').currentTime")
    assert position == pytest.approx(line_at, abs=1.0)
    assert page.evaluate("() => document.querySelector('#recording-audio').duration") == pytest.approx(
        recording.duration_seconds, abs=0.5
    )
    expect(answer).to_have_class(re.compile(r"\bparley-playing\b"))
    # However many range requests the player made, the audit log says "listened" once.
    listened = ReviewAuditEntry.objects.filter(action=ReviewAction.LISTENED, call_id=call_id)
    assert list(listened.values_list("username", flat=True)) == ["listener"]
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_staff_without_the_listen_permission_get_no_player_and_no_audio(
    live_server_url, persona_a, page: Page
):
    from django.contrib.auth.models import Permission

    from tests.calls.review.conftest import reviewed_call_create
    from tests.fakes.recordings import recording_generate

    call = reviewed_call_create(persona_a)
    recording_generate(call, seconds=2)
    viewer = get_user_model().objects.create_user(
        "viewer", "viewer@example.com", "a-viewing-password", is_staff=True
    )
    viewer.user_permissions.add(Permission.objects.get(codename="view_call", content_type__app_label="calls"))
    log_in(page, live_server_url, "viewer", "a-viewing-password")
    page.goto(live_server_url + reverse("admin:calls_call_change", args=[quote(call.pk)]))
    expect(page.locator("#conversation")).to_be_visible()
    expect(page.locator("#recording-player")).to_have_count(0)
    audio = page.request.get(
        live_server_url + reverse("admin:calls_call_recording", args=[quote(call.pk)]),
        headers={"Range": "bytes=0-"},
    )
    assert audio.status == 403
