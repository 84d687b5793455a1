"""The official Anam JS SDK (4.27.0, from npm, unmodified) talks to Parley from another origin.

A page served on a second port (so: another origin) loads the SDK's own UMD bundle, creates a
client with `api.baseUrl` pointing at Parley, streams the persona into a video element,
waits for the first frame, says "hello" with `sendUserMessage`, and collects the SDK's
events. `make test` installs the package into tests/browser/sdk/node_modules.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from calls.models import CallEvent, Message
from personas.models import KnowledgeEntry
from personas.services import api_key_create

SDK_BUNDLE = (
    Path(__file__).parent / "sdk" / "node_modules" / "@anam-ai" / "js-sdk" / "dist" / "umd" / "anam.js"
)
# A cold server loads the brain and the voice on the first session.
STEP_TIMEOUT_MS = 45_000

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>SDK on another origin</title></head>
<body>
<video id="persona" autoplay playsinline width="320" height="240"></video>
<script src="/anam.js"></script>
<script>
  window.sdkEvents = [];
  window.sdkHistory = [];
  window.startPersona = async (token, baseUrl) => {
    const client = anam.createClient(token, { api: { baseUrl } });
    window.sdkClient = client;
    const E = anam.AnamEvent;
    for (const name of ["CONNECTION_ESTABLISHED", "SESSION_READY", "VIDEO_PLAY_STARTED", "DATA_CHANNEL_OPEN",
                        "VIDEO_STREAM_STARTED", "AUDIO_STREAM_STARTED", "CONNECTION_CLOSED"]) {
      client.addListener(E[name], (...args) => window.sdkEvents.push(name));
    }
    client.addListener(E.CONNECTION_CLOSED, (code, details) => { window.sdkClosed = [code, details ?? null]; });
    client.addListener(E.MESSAGE_HISTORY_UPDATED, (messages) => { window.sdkHistory = messages; });
    window.personaEnds = 0;
    client.addListener(E.MESSAGE_STREAM_EVENT_RECEIVED, (event) => {
      if (event.role === "persona" && event.endOfSpeech) window.personaEnds += 1;
    });
    await client.streamToVideoElement("persona");
  };
</script>
</body></html>
"""


class _PageHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/anam.js"):
            body, kind = SDK_BUNDLE.read_bytes(), "text/javascript"
        else:
            body, kind = PAGE.encode(), "text/html"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def other_origin() -> Iterator[str]:
    """A page server on its own port: another origin than Parley's."""
    assert SDK_BUNDLE.exists(), (
        f"the Anam SDK is not installed at {SDK_BUNDLE}; run `make test` (it runs npm install)"
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_PageHandler))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_official_sdk_plays_the_persona_and_gets_its_reply(
    live_server_url, other_origin, page, make_organization, make_persona, screenshot_dir
):
    organization = make_organization("Bakery", slug="bakery")
    persona = make_persona(organization, "mara", greeting="Hi, I'm Mara from the bakery.")
    KnowledgeEntry.objects.create(persona=persona, question="When are you open?", answer="From seven to six.")
    key = api_key_create(organization=organization, name="sdk").raw_key
    # The developer's backend mints the token; the browser only ever sees the token.
    token = httpx.post(
        f"{live_server_url}/v1/auth/session-token",
        json={"personaConfig": {"personaId": "mara"}},
        headers={"Authorization": f"Bearer {key}"},
    ).json()["sessionToken"]

    page.goto(other_origin)
    page.evaluate("([token, base]) => { window.startPersona(token, base); }", [token, live_server_url])
    page.wait_for_function("window.sdkEvents.includes('VIDEO_PLAY_STARTED')", timeout=STEP_TIMEOUT_MS)
    page.wait_for_function(
        "document.getElementById('persona').videoWidth > 0 && document.getElementById('persona').currentTime > 0",
        timeout=STEP_TIMEOUT_MS,
    )
    # The greeting arrives first; then "hello" gets its own reply.
    page.wait_for_function("window.personaEnds >= 1", timeout=STEP_TIMEOUT_MS)
    page.evaluate("window.sdkClient.sendUserMessage('hello')")
    # The reply has been spoken to its end (history updates also fire mid-reply).
    page.wait_for_function("window.personaEnds >= 2", timeout=STEP_TIMEOUT_MS)
    page.screenshot(path=str(screenshot_dir / "anam-sdk-other-origin.png"))
    events = page.evaluate("window.sdkEvents")
    history = page.evaluate("window.sdkHistory")
    page.evaluate("window.sdkClient.stopStreaming()")

    for expected in (
        "CONNECTION_ESTABLISHED",
        "VIDEO_STREAM_STARTED",
        "AUDIO_STREAM_STARTED",
        "SESSION_READY",
    ):
        assert expected in events, events
    assert "CONNECTION_CLOSED" not in events[: events.index("VIDEO_PLAY_STARTED")]
    persona_lines = [m["content"] for m in history if m["role"] == "persona"]
    assert "Mara" in persona_lines[0]
    user_index = next(i for i, m in enumerate(history) if m["role"] == "user" and m["content"] == "hello")
    reply = " ".join(m["content"] for m in history[user_index + 1 :] if m["role"] == "persona")
    assert len(reply.split()) >= 3 and reply.strip().lower() != "hello", json.dumps(history)
    # The server saw the same conversation.
    messages = list(Message.objects.filter(call__persona=persona).values_list("role", "text"))
    assert ("user", "hello") in messages
    assert CallEvent.objects.filter(call__persona=persona, type="user.message", data__text="hello").exists()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_official_sdk_is_told_why_the_server_ended_an_idle_session(
    live_server_url, other_origin, page, make_organization, make_persona
):
    """At the idle timeout the server sends `endsession` with the reason; the SDK closes with
    SERVER_CLOSED_CONNECTION and that reason as the details."""
    organization = make_organization("Bakery", slug="bakery")
    make_persona(
        organization, "mara", greeting="Hi.", idle_timeout_seconds=2, idle_warning_seconds=1, idle_check_in=""
    )
    key = api_key_create(organization=organization, name="sdk").raw_key
    token = httpx.post(
        f"{live_server_url}/v1/auth/session-token",
        json={"personaConfig": {"personaId": "mara"}},
        headers={"Authorization": f"Bearer {key}"},
    ).json()["sessionToken"]

    page.goto(other_origin)
    page.evaluate("([token, base]) => { window.startPersona(token, base); }", [token, live_server_url])
    page.wait_for_function("window.sdkClosed !== undefined", timeout=STEP_TIMEOUT_MS)

    assert page.evaluate("window.sdkClosed") == [
        "CONNECTION_CLOSED_CODE_SERVER_CLOSED_CONNECTION",
        "idle_timeout",
    ]
    assert "SESSION_READY" in page.evaluate("window.sdkEvents")
