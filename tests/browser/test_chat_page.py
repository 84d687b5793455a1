"""In headless Chromium: a visitor talks to Mara on her chat page, through Parley's own JS client.

A real Daphne server, the seeded demo persona, a silent fake microphone. The visitor presses
Start, sees and hears Mara greet them, types a question from her knowledge, reads the answer
in the conversation, and stops; the call and its transcript are in the database.
"""

from __future__ import annotations

import time
import wave
from collections.abc import Callable
from pathlib import Path

import pytest
from django.core.management import call_command
from playwright.sync_api import Page, expect

from calls.models import Call, CallStatus, Message

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

QUESTION = "What are your opening hours?"
# Mara's knowledge answers it with "We're open Tuesday to Friday from 7 am to 6 pm, ...".
ANSWER_WORD = "Tuesday"
# Generous: a cold server loads its speech and face code on the first session.
STEP_TIMEOUT_MILLISECONDS = 60_000
# How long the database may take to record the end of the call after Stop (the server
# waits out the client's reconnection grace period first).
CALL_END_TIMEOUT_SECONDS = 30.0
# A peak above this (full scale 1.0) is a voice, not digital silence or dither.
AUDIBLE_PEAK = 0.02

# Installed before the test sends the question: keeps the loudest sample of the persona's
# voice, from the same MediaStream the page plays. Remote WebRTC audio reaches WebAudio only
# if an <audio> element also plays it (shared/NOTES.md), muted is enough.
LISTEN_TO_PERSONA = """
() => {
  const stream = document.getElementById("persona-video").srcObject;
  if (!stream || !stream.getAudioTracks().length) return "no audio track in the video element's stream";
  const audio = document.createElement("audio");
  audio.muted = true;
  audio.srcObject = stream;
  audio.play().catch(() => {});
  const context = new AudioContext();
  context.resume();
  const analyser = context.createAnalyser();
  analyser.fftSize = 2048;
  context.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  window.__personaPeak = 0;
  setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    for (const sample of samples) window.__personaPeak = Math.max(window.__personaPeak, Math.abs(sample));
  }, 20);
  return "listening";
}
"""


def write_silence(path: Path, seconds: float = 5.0, rate: int = 48_000) -> Path:
    """A silent WAV for the fake microphone: Chromium's default beep would be heard as speech."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * int(seconds * rate))
    return path


@pytest.fixture
def chromium_args(chromium_args, tmp_path_factory) -> list[str]:
    silence = write_silence(tmp_path_factory.mktemp("microphone") / "silence.wav")
    return [
        *chromium_args,
        f"--use-file-for-fake-audio-capture={silence}",
        "--autoplay-policy=no-user-gesture-required",
    ]


@pytest.fixture
def mara(settings, tmp_path) -> str:
    """Seed the demo (persona Mara and her knowledge) the way the README says; its files stay in tmp."""
    settings.PARLEY_DATA_DIR = tmp_path
    settings.PARLEY_DEMO_API_KEY = ""
    call_command("seed_demo", "--quiet")
    return "mara"


@pytest.fixture
def page_log(page: Page) -> list[str]:
    """The page's console errors and warnings, and its uncaught exceptions."""
    lines: list[str] = []
    page.on(
        "console",
        lambda message: (
            lines.append(f"console.{message.type}: {message.text}")
            if message.type in {"error", "warning"}
            else None
        ),
    )
    page.on("pageerror", lambda error: lines.append(f"pageerror: {error}"))
    return lines


@pytest.fixture
def step(page: Page, page_log: list[str], daphne_server, screenshot_dir: Path) -> Callable[..., None]:
    """Run one step; on failure, say which, with a screenshot, the page's log and the server's."""

    def run(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as error:  # AssertionError, and Playwright's TimeoutError
            page.screenshot(path=str(screenshot_dir / "chat-page-failure.png"))
            state = page.evaluate(
                "() => ({state: document.getElementById('state-pill').dataset.state,"
                " video: document.getElementById('screen').dataset.video,"
                " banner: document.getElementById('error-banner').hidden ? '' :"
                " document.getElementById('error-text').textContent})"
            )
            raise AssertionError(
                f"step failed: {what}\n{type(error).__name__}: {error}\npage: {state}\n"
                f"page log:\n" + "\n".join(page_log[-30:]) + f"\n\nserver log (tail):\n{daphne_server.log()}"
            ) from None

    return run


# The persona's messages once spoken (while speaking, its message is marked `message-live`).
FINISHED_PERSONA_MESSAGES = "#history li.message-persona:not(.message-live)"


def history_texts(page: Page, role: str) -> list[str]:
    return page.locator(f"#history li.message-{role}:not(.message-live) .message-bubble").all_inner_texts()


def test_a_visitor_sees_hears_and_types_to_mara_then_stops(
    live_server_url: str, mara: str, page: Page, step, screenshot_dir: Path
):
    timeout = STEP_TIMEOUT_MILLISECONDS
    page.goto(f"{live_server_url}/p/{mara}/")
    expect(page.locator("h1")).to_have_text("Mara")
    expect(page.locator("#state-pill")).to_have_attribute("data-state", "idle")
    page.screenshot(path=str(screenshot_dir / "chat-page-1-ready.png"))

    page.click("#start-button")
    step(
        "the state becomes live",
        lambda: expect(page.locator("#state-pill")).to_have_attribute("data-state", "live", timeout=timeout),
    )
    step(
        "VIDEO_PLAY_STARTED: the first frame is shown",
        lambda: expect(page.locator("#screen")).to_have_attribute("data-video", "playing", timeout=timeout),
    )

    def video_advances() -> None:
        first = page.evaluate(
            "() => { const v = document.getElementById('persona-video');"
            " return {width: v.videoWidth, height: v.videoHeight, time: v.currentTime}; }"
        )
        assert first["width"] > 0 and first["height"] > 0, f"the video has no frames: {first}"
        page.wait_for_timeout(1000)
        later = page.evaluate("() => document.getElementById('persona-video').currentTime")
        assert later > first["time"], f"the video does not play: currentTime {first['time']} then {later}"

    step("the video has frames and plays", video_advances)
    step("a listener on the persona's audio", lambda: _assert_listening(page.evaluate(LISTEN_TO_PERSONA)))

    step(
        "the greeting is captioned",
        lambda: expect(page.locator("#caption-text")).to_contain_text("Mara", timeout=timeout),
    )
    step(
        "the greeting shows in the history while it is spoken",
        lambda: expect(page.locator("#history li.message-persona.message-live")).to_contain_text(
            "Mara", timeout=timeout
        ),
    )
    step(
        "the greeting is in the history",
        lambda: expect(page.locator(FINISHED_PERSONA_MESSAGES)).to_have_count(1, timeout=timeout),
    )
    assert "Linden Street" in history_texts(page, "persona")[0]
    page.screenshot(path=str(screenshot_dir / "chat-page-2-greeting.png"))

    step(
        "the text box is enabled",
        lambda: expect(page.locator("#message-input")).to_be_enabled(timeout=timeout),
    )
    page.fill("#message-input", QUESTION)
    page.press("#message-input", "Enter")
    expect(page.locator("#message-input")).to_have_value("")
    step(
        "the question is in the history",
        lambda: expect(page.locator("#history li.message-user .message-bubble")).to_have_text(
            QUESTION, timeout=timeout
        ),
    )
    step(
        "the answer is in the history",
        lambda: expect(page.locator(FINISHED_PERSONA_MESSAGES).nth(1)).to_contain_text(
            ANSWER_WORD, timeout=timeout
        ),
    )
    peak = page.evaluate("() => window.__personaPeak")
    assert peak > AUDIBLE_PEAK, f"the persona's voice was silent (peak {peak})"
    page.screenshot(path=str(screenshot_dir / "chat-page-3-answer.png"))

    page.click("#stop-button")
    step(
        "the state becomes ended",
        lambda: expect(page.locator("#state-pill")).to_have_attribute("data-state", "ended", timeout=timeout),
    )
    expect(page.locator("#start-button")).to_be_visible()
    expect(page.locator("#message-input")).to_be_disabled()
    page.screenshot(path=str(screenshot_dir / "chat-page-4-ended.png"))
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the panels stack
    page.screenshot(path=str(screenshot_dir / "chat-page-6-phone.png"))

    call = Call.objects.filter(persona__slug=mara).order_by("-created_at").first()
    assert call is not None, "no Call was created"
    assert call.transport == "webrtc"
    messages = list(Message.objects.filter(call=call).order_by("created_at").values_list("role", "text"))
    assert (Message.Role.USER, QUESTION) in messages, messages
    assert any(role == Message.Role.PERSONA and ANSWER_WORD in text for role, text in messages), messages

    deadline = time.monotonic() + CALL_END_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        call.refresh_from_db()
        if call.status == CallStatus.ENDED:
            break
        time.sleep(0.25)
    assert call.status == CallStatus.ENDED, f"the call is still {call.status!r} after Stop"


def _assert_listening(result: str) -> None:
    assert result == "listening", result


def test_a_second_start_gets_a_fresh_token_and_a_new_call(live_server_url: str, mara: str, page: Page, step):
    timeout = STEP_TIMEOUT_MILLISECONDS
    page.goto(f"{live_server_url}/p/{mara}/")
    for attempt in (1, 2):
        page.click("#start-button")
        step(
            f"start {attempt}: live with video",
            lambda: expect(page.locator("#screen")).to_have_attribute(
                "data-video", "playing", timeout=timeout
            ),
        )
        page.click("#stop-button")
        step(
            f"stop {attempt}: ended",
            lambda: expect(page.locator("#state-pill")).to_have_attribute(
                "data-state", "ended", timeout=timeout
            ),
        )
    assert Call.objects.filter(persona__slug=mara).count() == 2


def test_a_denied_microphone_is_shown_and_typing_still_works(
    live_server_url: str, mara: str, page: Page, step, screenshot_dir: Path
):
    timeout = STEP_TIMEOUT_MILLISECONDS
    page.add_init_script(
        "navigator.mediaDevices.getUserMedia = () =>"
        " Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));"
    )
    page.goto(f"{live_server_url}/p/{mara}/")
    page.click("#start-button")
    step(
        "the microphone shows as blocked",
        lambda: expect(page.locator("#mic-button")).to_have_attribute("data-mic", "denied", timeout=timeout),
    )
    expect(page.locator("#error-banner")).to_be_visible()
    expect(page.locator("#error-text")).to_contain_text("Microphone")
    step(
        "the session goes on: live with video",
        lambda: expect(page.locator("#screen")).to_have_attribute("data-video", "playing", timeout=timeout),
    )
    step(
        "the greeting is in the history",
        lambda: expect(page.locator(FINISHED_PERSONA_MESSAGES)).to_have_count(1, timeout=timeout),
    )
    step(
        "the text box is enabled",
        lambda: expect(page.locator("#message-input")).to_be_enabled(timeout=timeout),
    )
    page.fill("#message-input", QUESTION)
    page.press("#message-input", "Enter")
    step(
        "the answer arrives without a microphone, as a message of its own",
        lambda: expect(page.locator(FINISHED_PERSONA_MESSAGES).nth(1)).to_contain_text(
            ANSWER_WORD, timeout=timeout
        ),
    )
    page.screenshot(path=str(screenshot_dir / "chat-page-5-mic-denied.png"))
    page.click("#stop-button")


def test_a_silent_visitor_hears_the_check_in_and_is_told_why_the_session_ended(
    live_server_url: str, mara: str, page: Page, step
):
    from personas.models import Persona

    Persona.objects.filter(slug=mara).update(
        idle_timeout_seconds=4, idle_warning_seconds=2, idle_check_in="Are you still there?"
    )
    timeout = STEP_TIMEOUT_MILLISECONDS
    page.goto(f"{live_server_url}/p/{mara}/")
    page.click("#start-button")
    step(
        "the session ends by itself",
        lambda: expect(page.locator("#state-pill")).to_have_attribute("data-state", "ended", timeout=timeout),
    )
    expect(page.locator("#error-text")).to_have_text("The session ended: nobody spoke for a while.")
    # Told plainly, not as a warning or an error: the server ended it as calls end.
    expect(page.locator("#error-banner")).to_have_attribute("data-tone", "info")
    assert history_texts(page, "persona")[-1] == "Are you still there?"
    deadline = time.monotonic() + CALL_END_TIMEOUT_SECONDS  # the server stores the end after endsession
    while not Call.objects.get(persona__slug=mara).end_reason and time.monotonic() < deadline:
        time.sleep(0.1)
    assert Call.objects.get(persona__slug=mara).end_reason == "idle_timeout"
