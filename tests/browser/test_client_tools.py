"""Client tools in a real browser: Parley's JS client and the official Anam SDK both run the page's handler.

A page on another origin registers a handler for the persona's client tool
(`registerToolCallHandler`), asks a question that makes the LLM (the local fake) call it,
and the handler's return value goes back as the tool's result: the persona speaks an answer
built on it. The page collects the `TOOL_CALL_*` events the client emits.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from calls.models import CallEvent
from personas.services import api_key_create
from tests.browser.test_anam_sdk import SDK_BUNDLE
from tests.browser.test_tools_aiortc import WEATHER_TOOL

PARLEY_STATIC = Path(settings.BASE_DIR) / "static" / "parley"
# A cold server loads the brain and the voice on the first session.
STEP_TIMEOUT_MS = 45_000

PAGE_SCRIPT = """
  window.toolEvents = [];
  window.handled = [];
  window.chatHistory = [];
  window.ready = false;
  window.setUpClient = (client, E) => {
    window.client = client;
    for (const name of ["TOOL_CALL_STARTED", "TOOL_CALL_COMPLETED", "TOOL_CALL_FAILED"]) {
      client.addListener(E[name], (payload) => window.toolEvents.push([name, payload]));
    }
    client.addListener(E.MESSAGE_HISTORY_UPDATED, (messages) => { window.chatHistory = messages; });
    client.addListener(E.SESSION_READY, () => { window.ready = true; });
    client.registerToolCallHandler("get_weather", {
      onStart: async (payload) => {
        window.handled.push(["start", payload.toolName, payload.arguments]);
        return `sunny in ${payload.arguments.city}`;
      },
      onComplete: async (payload) => { window.handled.push(["complete", payload.result]); },
    });
  };
"""

PAGES = {
    "parley": f"""<!doctype html><html><head><meta charset="utf-8"></head><body>
<video id="persona" autoplay playsinline muted width="160" height="120"></video>
<script type="module">
  import {{ createClient, AnamEvent }} from "/parley/client.js";
  {PAGE_SCRIPT}
  window.startPersona = async (token, baseUrl) => {{
    window.setUpClient(createClient(token, {{ api: {{ baseUrl }} }}), AnamEvent);
    await window.client.streamToVideoElement("persona");
  }};
  window.pageLoaded = true;
</script></body></html>""",
    "anam-sdk": f"""<!doctype html><html><head><meta charset="utf-8"></head><body>
<video id="persona" autoplay playsinline muted width="160" height="120"></video>
<script src="/anam.js"></script>
<script>
  {PAGE_SCRIPT}
  window.startPersona = async (token, baseUrl) => {{
    window.setUpClient(anam.createClient(token, {{ api: {{ baseUrl }} }}), anam.AnamEvent);
    await window.client.streamToVideoElement("persona");
  }};
  window.pageLoaded = true;
</script></body></html>""",
}


class _PageHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/anam.js":
            body, kind = SDK_BUNDLE.read_bytes(), "text/javascript"
        elif path.startswith("/parley/") and (PARLEY_STATIC / Path(path).name).is_file():
            body, kind = (PARLEY_STATIC / Path(path).name).read_bytes(), "text/javascript"
        elif path.lstrip("/") in PAGES:
            body, kind = PAGES[path.lstrip("/")].encode(), "text/html"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def page_origin() -> Iterator[str]:
    """The app's pages on their own port: another origin than Parley's."""
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
@pytest.mark.parametrize("client_kind", ["parley", "anam-sdk"])
def test_a_page_handler_answers_a_client_tool_and_the_persona_speaks_its_result(
    client_kind, live_server_url, page_origin, page, make_organization, make_persona, fake_openai
):
    if client_kind == "anam-sdk" and not SDK_BUNDLE.exists():
        pytest.fail(f"the Anam SDK is not installed at {SDK_BUNDLE}; run `make test` (it runs npm install)")
    organization = make_organization("Bakery", slug="bakery")
    persona = make_persona(
        organization,
        "mara",
        greeting="",
        skip_greeting=True,
        brain_provider="openai",
        llm_base_url=fake_openai.base_url,
        llm_model="fake-model",
        llm_api_key="sk-test-tools",
        tools=[WEATHER_TOOL],
    )
    key = api_key_create(organization=organization, name="page").raw_key
    token = httpx.post(
        f"{live_server_url}/v1/auth/session-token",
        json={"personaConfig": {"personaId": "mara"}},
        headers={"Authorization": f"Bearer {key}"},
    ).json()["sessionToken"]

    page.goto(f"{page_origin}/{client_kind}")
    page.wait_for_function("window.pageLoaded === true")
    page.evaluate("([token, base]) => { window.startPersona(token, base); }", [token, live_server_url])
    page.wait_for_function("window.ready === true", timeout=STEP_TIMEOUT_MS)
    page.evaluate("window.client.sendUserMessage('Is it warm? Ask get_weather city=Lisbon')")
    page.wait_for_function(
        "window.chatHistory.some((m) => m.role === 'persona' && m.content.includes('sunny in Lisbon'))",
        timeout=STEP_TIMEOUT_MS,
    )
    events = page.evaluate("window.toolEvents")
    handled = page.evaluate("window.handled")
    history = page.evaluate("window.chatHistory")
    page.evaluate("window.client.stopStreaming()")

    assert handled[0] == ["start", "get_weather", {"city": "Lisbon"}]
    assert ["complete", "sunny in Lisbon"] in handled
    names = [name for name, _ in events]
    assert names[0] == "TOOL_CALL_STARTED" and "TOOL_CALL_COMPLETED" in names
    assert "TOOL_CALL_FAILED" not in names
    started = events[0][1]
    assert (started["toolName"], started["toolType"], started["arguments"]) == (
        "get_weather",
        "client",
        {"city": "Lisbon"},
    )
    completed = next(payload for name, payload in events if name == "TOOL_CALL_COMPLETED")
    assert completed["toolCallId"] == started["toolCallId"] and completed["result"] == "sunny in Lisbon"
    assert completed["executionTime"] >= 0
    reply = next(m["content"] for m in history if m["role"] == "persona")
    assert reply == "The get weather result is sunny in Lisbon."
    assert CallEvent.objects.filter(call__persona=persona, type="llm.tool_call").count() == 1
