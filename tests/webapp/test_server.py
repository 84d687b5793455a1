"""Daphne's limits are answered, not dropped: 1009 with a reason for big messages, 431 for long headers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

# Daphne's own default for websocket messages (and frames).
MAX_MESSAGE_BYTES = 1024 * 1024
SERVER_START_TIMEOUT_SECONDS = 30.0
RECEIVE_TIMEOUT_SECONDS = 10.0
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def daphne_url() -> Iterator[str]:
    """A real Daphne serving the echo app, with Parley's limits applied as `webapp.asgi` does."""
    port = free_port()
    daphne = Path(sys.executable).with_name("daphne")
    process = subprocess.Popen(
        [str(daphne), "-b", "127.0.0.1", "-p", str(port), "tests.fakes.echo_asgi:application"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("Daphne did not start") from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_a_websocket_message_over_1_mib_is_closed_with_1009_and_a_reason(daphne_url):
    async with websockets.connect(f"ws://{daphne_url}/", max_size=None) as client:
        await client.send("small")
        assert await client.recv() == "small"
        await client.send("x" * (MAX_MESSAGE_BYTES + 1))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.recv()
    assert closed.value.rcvd is not None, "the server dropped the connection without a close frame"
    assert closed.value.rcvd.code == 1009
    assert "exceeds payload limit" in closed.value.rcvd.reason


def test_a_header_line_over_16_kb_is_answered_431(daphne_url):
    host, port = daphne_url.split(":")
    request = b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\nX-Big: " + b"a" * 17_000 + b"\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=RECEIVE_TIMEOUT_SECONDS) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"header field" in answer


def test_parleys_asgi_module_applies_the_limits():
    import daphne.server
    from twisted.web.http import HTTPChannel

    import webapp.asgi  # noqa: F401

    assert daphne.server.WebSocketFactory.parley_closes_with_a_frame
    assert HTTPChannel.lineLengthExceeded.__module__ == "webapp.server"
