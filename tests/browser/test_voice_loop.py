"""The full voice loop in headless Chromium: a visitor *speaks* to Mara on her chat page.

Chromium's fake microphone plays a WAV spoken by espeak-ng (a male voice, with a quiet noise
floor); the page is Parley's own. The question is heard (VAD, SmartTurn, the offline
recogniser), answered from Mara's knowledge in voice, face and captions, and the events
arrive in the agent seed's order both in the SSE stream (read by the page's own
EventSource) and in the database. The second test speaks over Mara mid-answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from playwright.sync_api import Page, expect

from calls.models import Call, CallEvent, Message
from calls.review.models import TurnLatency
from personas.models import Persona
from personas.services import stream_token_issue
from tests.fakes.spoken import RATE, noise, spoken_pcm, wav_write

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]

STEP_TIMEOUT_MILLISECONDS = 60_000
# espeak speaks at -3.5 dBFS peak, far hotter than a voice in a microphone; Chromium's automatic
# gain control then drives it into clipping. At -15 dBFS it is a plausible close-talking level.
MICROPHONE_SPEECH_GAIN = 0.25
MICROPHONE_OVER_TALK_GAIN = 0.8
KEPT_ORDER = ["speech.started", "speech.ended", "user.message", "turn.end", "bot.speaking", "bot.finished"]
EVENT_NAMES = [
    "speech.started", "user.speaking", "speech.ended", "user.message", "eager.turn", "turn.end",
    "turn.continued", "bot.speaking", "bot.word", "bot.finished", "bot.interrupted",
]  # fmt: skip

# The fake microphone without Chromium's echo cancellation, noise suppression and gain control.
# Headless, the persona's voice goes to a null sink that the echo canceller still takes as its
# far end, and while it plays the canceller holds back the fake microphone's speech entirely
# (no speech reaches the server: there is no VAD start at all). Parley's page asks for the
# browser's processing; this test of the interruption path does without it.
WITHOUT_AUDIO_PROCESSING = """
(() => {
  const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (constraints) => {
    if (constraints && constraints.audio) {
      const audio = typeof constraints.audio === "object" ? constraints.audio : {};
      constraints = {...constraints, audio: {...audio, echoCancellation: false,
        noiseSuppression: false, autoGainControl: false}};
    }
    return original(constraints);
  };
})();
"""

# The page's own EventSource on the live event stream, and a record of the captions.
WATCH = """
(token) => {
  window.__events = [];
  const source = new EventSource(`/v1/events/stream?token=${encodeURIComponent(token)}`);
  for (const name of EVENT_NAMES_JSON) {
    source.addEventListener(name, (event) => window.__events.push({name, data: JSON.parse(event.data)}));
  }
  window.__captions = [];
  const caption = document.getElementById("caption");
  new MutationObserver(() => {
    window.__captions.push({speaker: caption.dataset.speaker, text: document.getElementById("caption-text").textContent});
  }).observe(caption, {subtree: true, childList: true, characterData: true, attributes: true});
  return new Promise((resolve) => { source.onopen = () => resolve("open"); });
}
""".replace("EVENT_NAMES_JSON", json.dumps(EVENT_NAMES))


def microphone_script(parts: list[tuple[str, float]], path: Path) -> Path:
    """A WAV of room noise with each (text, start second) spoken at its time, and a long tail."""
    # Its own loop on its own thread: the test session may already be running one here.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as thread:
        spoken = thread.submit(asyncio.run, _speak_all([text for text, _ in parts])).result()
    end = max(start + speech.size / RATE for (_, start), speech in zip(parts, spoken, strict=True)) + 30.0
    samples = noise(end)
    for index, ((_, start), speech) in enumerate(zip(parts, spoken, strict=True)):
        offset = int(start * RATE)
        # Speaking over the persona, people raise their voice (and Chromium's echo canceller
        # holds back quiet speech while the far end talks).
        gain = MICROPHONE_SPEECH_GAIN if index == 0 else MICROPHONE_OVER_TALK_GAIN
        samples[offset : offset + speech.size] += speech * gain
    return wav_write(path, samples)


async def _speak_all(texts: list[str]) -> list[np.ndarray]:
    return [await spoken_pcm(text) for text in texts]


@pytest.fixture
def microphone_parts(request) -> list[tuple[str, float]]:
    marker = request.node.get_closest_marker("microphone")
    assert marker is not None, "a voice-loop test says what the microphone plays"
    return marker.args[0]


@pytest.fixture
def chromium_args(chromium_args, microphone_parts, tmp_path_factory) -> list[str]:
    wav = microphone_script(microphone_parts, tmp_path_factory.mktemp("microphone") / "voice.wav")
    return [
        *chromium_args,
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ]


@pytest.fixture
def mara(settings, tmp_path) -> Persona:
    settings.PARLEY_DATA_DIR = tmp_path
    settings.PARLEY_DEMO_API_KEY = ""
    call_command("seed_demo", "--quiet")
    # No greeting: the microphone script starts talking as soon as the call is up.
    Persona.objects.filter(slug="mara").update(skip_greeting=True)
    return Persona.objects.get(slug="mara")


@pytest.fixture
def step(page: Page, daphne_server, screenshot_dir: Path) -> Callable[..., None]:
    def run(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as error:
            page.screenshot(path=str(screenshot_dir / "voice-loop-failure.png"))
            events = page.evaluate("() => (window.__events || []).map((e) => e.name)")
            raise AssertionError(
                f"step failed: {what}\n{type(error).__name__}: {error}\nevents: {events}\n"
                f"server log (tail):\n{daphne_server.log()}"
            ) from None

    return run


def start_call(page: Page, live_server_url: str, mara: Persona, step) -> None:
    token, _ = stream_token_issue(organization=mara.organization, agents=["mara"])
    page.goto(f"{live_server_url}/p/mara/")
    assert page.evaluate(WATCH, token) == "open"
    page.click("#start-button")
    step(
        "the call is live",
        lambda: expect(page.locator("#state-pill")).to_have_attribute(
            "data-state", "live", timeout=STEP_TIMEOUT_MILLISECONDS
        ),
    )


def sse_names(page: Page, *, skip: tuple[str, ...] = ()) -> list[str]:
    return [name for name in page.evaluate("() => window.__events.map((e) => e.name)") if name not in skip]


def in_order(names: list[str], expected: list[str]) -> bool:
    """True when `expected` appears in `names` as a subsequence."""
    position = 0
    for name in names:
        if position < len(expected) and name == expected[position]:
            position += 1
    return position == len(expected)


@pytest.mark.microphone([("Are you open on Monday?", 3.5)])
def test_a_visitor_asks_mara_aloud_and_hears_the_answer(
    live_server_url: str, mara: Persona, page: Page, step, screenshot_dir: Path
):
    start_call(page, live_server_url, mara, step)
    step(
        "the spoken question is in the history",
        lambda: expect(page.locator("#history li.message-user .message-bubble")).to_contain_text(
            "open on monday", ignore_case=True, timeout=STEP_TIMEOUT_MILLISECONDS
        ),
    )
    step(
        "the answer is in the history",
        lambda: expect(page.locator("#history li.message-persona:not(.message-live)").first).to_contain_text(
            "closed on Mondays", timeout=STEP_TIMEOUT_MILLISECONDS
        ),
    )
    page.screenshot(path=str(screenshot_dir / "voice-loop-answer.png"))
    step(
        "bot.finished reached the page's event stream",
        lambda: page.wait_for_function(
            "() => window.__events.some((e) => e.name === 'bot.finished')", timeout=STEP_TIMEOUT_MILLISECONDS
        ),
    )

    # The user's words were shown live, as captions, before the final text.
    captions = page.evaluate("() => window.__captions.filter((c) => c.speaker === 'user').map((c) => c.text)")
    assert any("open" in text.lower() for text in captions), captions

    # The seed's real-time order, in the SSE stream...
    names = sse_names(page)
    assert in_order(names, ["speech.started", "user.speaking", "speech.ended", "user.message"]), names
    assert in_order(names, KEPT_ORDER), names
    first_speaking, finished = names.index("bot.speaking"), names.index("bot.finished")
    assert "bot.word" in names[first_speaking:finished], names
    events = page.evaluate("() => window.__events")
    turn = next(event["data"] for event in events if event["name"] == "turn.end")
    assert 0.0 <= turn["probability"] <= 1.0 and "monday" in turn["text"].lower()

    # ...and in the database, with both sides of the transcript.
    call = Call.objects.get(persona=mara)
    stored = list(CallEvent.objects.filter(call=call).order_by("cursor").values_list("type", flat=True))
    assert in_order(stored, KEPT_ORDER), stored
    roles = list(Message.objects.filter(call=call).order_by("created_at").values_list("role", flat=True))
    assert roles[:2] == ["user", "persona"], roles

    # The answer's latency was recorded as it happened: every stage set, adding up to the total,
    # and the question recorded as spoken.
    question, answer = Message.objects.filter(call=call).order_by("created_at")[:2]
    assert question.channel == Message.Channel.SPOKEN
    latency = TurnLatency.objects.get(call=call, message_id=answer.message_id)
    assert latency.channel == "spoken" and latency.user_message_id == question.message_id
    stages = [latency.vad_ms, latency.transcript_ms, latency.turn_ms, latency.brain_ms, latency.audio_ms]
    assert all(stage is not None for stage in stages), stages
    assert sum(stages) == latency.total_ms > 0, stages


@pytest.mark.microphone([("What is on the menu?", 3.5), ("Sorry, where are you located?", 8.5)])
def test_a_visitor_interrupts_mara_by_speaking_over_her(
    live_server_url: str, mara: Persona, page: Page, step, screenshot_dir: Path
):
    page.add_init_script(WITHOUT_AUDIO_PROCESSING)
    start_call(page, live_server_url, mara, step)
    step(
        "Mara is interrupted",
        lambda: page.wait_for_function(
            "() => window.__events.some((e) => e.name === 'bot.interrupted')",
            timeout=STEP_TIMEOUT_MILLISECONDS,
        ),
    )
    # What was said over her gets its own answer (its words depend on the recogniser).
    step(
        "the interruption is answered",
        lambda: page.wait_for_function(
            """() => {
                const cut = window.__events.findIndex((e) => e.name === 'bot.interrupted');
                return window.__events.slice(cut).some((e) => e.name === 'bot.finished');
            }""",
            timeout=STEP_TIMEOUT_MILLISECONDS,
        ),
    )
    page.screenshot(path=str(screenshot_dir / "voice-loop-interrupted.png"))
    events = page.evaluate("() => window.__events")
    interrupted = next(event["data"] for event in events if event["name"] == "bot.interrupted")
    assert interrupted["playedMs"] > 0 and interrupted["wordsSpoken"] > 0 and interrupted["lastWord"]
    names = [event["name"] for event in events]
    assert in_order(names, ["bot.speaking", "speech.started", "bot.interrupted", "turn.continued"]), names

    call = Call.objects.get(persona=mara)
    cut = Message.objects.get(call=call, message_id=interrupted["messageId"])
    assert cut.interrupted
    assert len(cut.spoken_text.split()) == interrupted["wordsSpoken"]
    assert len(cut.spoken_text) < len(cut.text)
    assert cut.spoken_text.split()[-1].strip(".,!?").lower() == interrupted["lastWord"].strip(".,!?").lower()
    # The history shows the cut message as interrupted, with only what was heard.
    first_answer = page.locator("#history li.message-persona").first
    assert "croissants" not in first_answer.inner_text().lower() or "croissants" in cut.spoken_text.lower()
