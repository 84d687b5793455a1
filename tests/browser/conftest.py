"""Browser-test fixtures: a real Daphne process on the test database, and headless Chromium via Playwright.

A test that uses `live_server_url` needs `@pytest.mark.django_db(transaction=True)`: the
server is another process, so it only sees rows the test has committed.

Chromium's flags are the `chromium_args` fixture; a module that needs more (a WAV file as
the fake microphone, say) overrides it and extends the default:

    @pytest.fixture
    def chromium_args(chromium_args, tmp_path):
        return [*chromium_args, f"--use-file-for-fake-audio-capture={wav_path}"]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.conf import settings
from django.db import connection, connections
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright

from tests.fakes.openai_server import FakeOpenAIServer, fake_openai_server_in_thread

CHROMIUM_PATH = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
)
SCREENSHOT_DIR = Path(settings.BASE_DIR) / "var" / "screenshots"

# A cold Daphne start imports Django, Channels and the pipeline: a few seconds, more on CI.
SERVER_START_TIMEOUT_SECONDS = 60.0
SERVER_HEALTH_POLL_SECONDS = 0.1
# Daphne closes open connections on SIGTERM; after this it is killed.
SERVER_STOP_TIMEOUT_SECONDS = 10.0
# Playwright's default of 30 s hides a hung page for too long in a test run.
BROWSER_DEFAULT_TIMEOUT_MILLISECONDS = 15_000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_database_environment(settings_dict: dict[str, Any]) -> dict[str, str]:
    """The environment that points `webapp.settings` at the test database now in use."""
    engine = settings_dict["ENGINE"]
    name = str(settings_dict["NAME"])
    if engine.endswith("sqlite3"):
        if name == ":memory:" or name.startswith("file:") or "mode=memory" in name:
            raise RuntimeError(
                "browser tests need the SQLite test database in a file (webapp.settings_test sets one); "
                f"got {name!r}"
            )
        return {"PARLEY_SQLITE_PATH": name}
    if engine.endswith(("postgresql", "postgis")):
        user = quote(settings_dict.get("USER") or "", safe="")
        password = quote(settings_dict.get("PASSWORD") or "", safe="")
        credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = settings_dict.get("HOST") or "localhost"
        port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
        options = {
            key: value
            for key, value in (settings_dict.get("OPTIONS") or {}).items()
            if isinstance(value, str | int)
        }
        query = f"?{urlencode(options)}" if options else ""
        return {"DATABASE_URL": f"postgres://{credentials}{host}{port}/{quote(name, safe='')}{query}"}
    raise RuntimeError(f"browser tests do not know how to share a {engine} test database")


# What a failing browser test shows of the server's log (written during that test).
SERVER_LOG_REPORT_CHARS = 20_000


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int, limit: int = SERVER_LOG_REPORT_CHARS) -> str:
        """What the server wrote from byte `offset` on (its last `limit` characters)."""
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(offset)
                text = log_file.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return text if len(text) <= limit else f"[... {len(text) - limit} characters before]\n{text[-limit:]}"

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=SERVER_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_until_healthy(server: LiveServer) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the Daphne test server exited with code {server.process.returncode} before answering "
                f"/healthz. Its output:\n{server.log()}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/healthz", timeout=2) as response:
                # Up, and done loading models (as a balancer would wait): a test talking to a
                # server still warming up shares the 2 cores with its loading.
                if response.status == 200 and json.loads(response.read()).get("warmUp") != "running":
                    return
                last_error = f"HTTP {response.status}, warming up"
        except urllib.error.HTTPError as error:
            last_error = f"HTTP {error.code}"
        except (urllib.error.URLError, OSError) as error:
            last_error = str(error)
        time.sleep(SERVER_HEALTH_POLL_SECONDS)
    raise RuntimeError(
        f"the Daphne test server did not answer {server.url}/healthz within "
        f"{SERVER_START_TIMEOUT_SECONDS:.0f} s (last: {last_error}). Its output:\n{server.log()}"
    )


def daphne_start(port: int, log_path: Path, extra_environment: dict[str, str] | None = None) -> LiveServer:
    """A Daphne process of the app on 127.0.0.1:`port`, on the test database, once it answers."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "PARLEY_SQLITE_PATH", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    }
    environment.update(
        {
            "DJANGO_SETTINGS_MODULE": "webapp.settings_test",
            "PYTHONUNBUFFERED": "1",
            "PARLEY_WARM_UP": "1",  # as a server runs it
            # The shared server's WhatsApp processor and answerer act only when its own webhook
            # wakes them: polling, they would claim the threads of tests that answer in-process
            # on the same database (tests/calls/whatsapp). The WhatsApp server tests set theirs.
            "PARLEY_WHATSAPP_POLL_SECONDS": "3600",
            **server_database_environment(connection.settings_dict),
            **(extra_environment or {}),
        }
    )
    command = [
        sys.executable,
        "-m",
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "--access-log",
        "/dev/null",
        "webapp.asgi:application",
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        wait_until_healthy(server)
    except RuntimeError as error:
        server.stop()
        pytest.fail(str(error), pytrace=False)
    return server


@pytest.fixture(scope="session")
def daphne_server(django_db_setup, tmp_path_factory) -> Iterator[LiveServer]:
    """One Daphne process for the session, started once the test database exists.

    Not named `live_server`: pytest-django's autouse helper would treat it as its own
    in-process server.

    It depends on `django_db_setup`, so it stops before the test database is dropped (a
    PostgreSQL database cannot be dropped while the server still holds a connection to it).
    """
    server = daphne_start(free_port(), tmp_path_factory.mktemp("live-server") / "daphne.log")
    yield server
    server.stop()


@pytest.fixture
def live_server_url(daphne_server: LiveServer, transactional_db, request) -> Iterator[str]:
    """The base URL of the running server (no trailing slash); the test's rows are committed."""
    if daphne_server.process.poll() is not None:
        pytest.fail(
            f"the Daphne test server died (exit code {daphne_server.process.returncode}). "
            f"Its output:\n{daphne_server.log()}",
            pytrace=False,
        )
    request.node.server_log_start = (daphne_server, daphne_server.log_size())
    yield daphne_server.url
    calls_settle()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed browser test's report carries what the shared server logged during it."""
    outcome = yield
    report = outcome.get_result()
    start = getattr(item, "server_log_start", None)
    if start is None or not report.failed or report.when == "teardown":
        return
    server, offset = start
    report.sections.append(("server log during the test", server.log_since(offset) or "(nothing)"))


def calls_settle(timeout: float = 10.0) -> None:
    """Wait for the server to finish the test's calls before the database is flushed.

    A call ends shortly after its browser goes (the server then closes the peer connection and
    writes the last rows); flushing while it writes can deadlock on PostgreSQL (TRUNCATE's
    exclusive lock against the insert's foreign-key lock).
    """
    from calls.models import Call, CallStatus

    deadline = time.monotonic() + timeout
    live = Call.objects.filter(status=CallStatus.IN_PROGRESS)
    while live.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # the rows written right after the end (its events, the last message)


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """The fake OpenAI-compatible server (tests/fakes), reachable by the server process."""
    with fake_openai_server_in_thread() as server:
        yield server


# --- Chromium ------------------------------------------------------------------------------


@pytest.fixture
def chromium_args() -> list[str]:
    """Chromium's command-line flags; override in a module to add some."""
    return list(CHROMIUM_ARGS)


@pytest.fixture
def playwright(monkeypatch) -> Iterator[Playwright]:
    if not CHROMIUM_PATH.exists():
        pytest.fail(
            f"{CHROMIUM_PATH} is missing: browser tests need Chromium. Run `bash scripts/ensure-chromium` "
            "(as root) to install it.",
            pytrace=False,
        )
    # Playwright's sync API runs an asyncio loop in this thread, so Django's ORM believes it is
    # called from async code and refuses. Only this thread uses those connections, so that is
    # safe (microsoft/playwright-python#439; goes when Playwright stops running a loop here).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as instance:
        try:
            yield instance
        finally:
            # While that loop runs, asgiref keeps Django's connections in a separate, context-local
            # slot that the test teardown never sees: close them here, or they outlive the test
            # (and keep PostgreSQL from dropping the test database).
            connections.close_all()


@pytest.fixture
def launch_browser(
    playwright: Playwright, chromium_args: list[str], tmp_path_factory
) -> Iterator[Callable[..., BrowserContext]]:
    """Start a Chromium with a fresh profile; `extra_args` adds flags to `chromium_args`."""
    contexts: list[BrowserContext] = []

    def launch(extra_args: list[str] | tuple[str, ...] = (), **context_options: Any) -> BrowserContext:
        context_options.setdefault("viewport", {"width": 1280, "height": 900})
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=tmp_path_factory.mktemp("chromium-profile"),
            executable_path=str(CHROMIUM_PATH),
            # The headless mode is one of the flags (--headless=new), not Playwright's choice.
            headless=False,
            args=[*chromium_args, *extra_args],
            **context_options,
        )
        context.set_default_timeout(BROWSER_DEFAULT_TIMEOUT_MILLISECONDS)
        contexts.append(context)
        return context

    yield launch
    for context in contexts:
        context.close()


@pytest.fixture
def browser(launch_browser: Callable[..., BrowserContext]) -> BrowserContext:
    """A headless Chromium (its persistent context) with the default flags and a fresh profile."""
    return launch_browser()


@pytest.fixture
def page(browser: BrowserContext) -> Page:
    return browser.pages[0] if browser.pages else browser.new_page()


@pytest.fixture
def screenshot_dir() -> Path:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    return SCREENSHOT_DIR
