"""The Graph API client against the fake Graph API over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import socket
import sys
from pathlib import Path

import pytest

from calls.whatsapp.graph import (
    GraphAuthError,
    GraphClient,
    GraphError,
    GraphOutsideWindowError,
    GraphRateLimitError,
    GraphUnavailableError,
    MediaChecksumError,
    MediaTooLargeError,
    graph_error,
    retry_after_seconds,
    retrying,
)
from tests.fakes.graph_api import DEFAULT_ACCESS_TOKEN, FakeGraphAPI

PHONE_NUMBER_ID = "106540352242922"
CUSTOMER = "+16505551234"
FAKE_SCRIPT = str(Path(__file__).resolve().parents[2] / "fakes" / "graph_api.py")


@pytest.fixture
async def graph():
    async with FakeGraphAPI() as fake:
        yield fake


@pytest.fixture
async def client(graph):
    async with GraphClient(graph.base_url, PHONE_NUMBER_ID, DEFAULT_ACCESS_TOKEN) as graph_client:
        yield graph_client


class Sleeps:
    """`retrying`'s sleep, recorded instead of waited."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


# Sending -------------------------------------------------------------------------------------


async def test_a_text_is_sent_as_meta_documents_and_its_wamid_returned(graph, client):
    wamid = await client.send_text(CUSTOMER, "Your cake is ready.")

    assert wamid.startswith("wamid.")
    assert [message.wamid for message in graph.sent] == [wamid]
    request = graph.requests[-1]
    assert request.method == "POST"
    assert request.path == f"/v25.0/{PHONE_NUMBER_ID}/messages"
    assert request.headers["Authorization"] == f"Bearer {DEFAULT_ACCESS_TOKEN}"
    assert request.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CUSTOMER,
        "type": "text",
        "text": {"body": "Your cake is ready.", "preview_url": False},
    }


async def test_a_reply_quotes_the_message_it_answers(graph, client):
    first = await client.send_text(CUSTOMER, "One.")
    second = await client.send_text(CUSTOMER, "Two.", reply_to="wamid.INBOUND")

    assert first != second
    assert graph.requests[-1].body["context"] == {"message_id": "wamid.INBOUND"}
    assert "context" not in graph.requests[-2].body


async def test_a_text_over_4096_characters_is_refused_before_sending(graph, client):
    await client.send_text(CUSTOMER, "x" * 4096)
    with pytest.raises(ValueError, match=r"at most 4096 characters.*4097"):
        await client.send_text(CUSTOMER, "x" * 4097)
    assert len(graph.requests) == 1


async def test_reading_a_message_shows_the_typing_indicator_unless_told_not_to(graph, client):
    await client.mark_read("wamid.IN1")
    await client.mark_read("wamid.IN2", typing=False)

    assert graph.reads == [
        {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": "wamid.IN1",
            "typing_indicator": {"type": "text"},
        },
        {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN2"},
    ]
    assert graph.sent == []


# Errors and their classification -------------------------------------------------------------


async def test_outside_the_24_hour_window_is_a_permanent_error_with_metas_details(graph, client):
    graph.fail_next(code=131047)
    with pytest.raises(GraphOutsideWindowError) as caught:
        await client.send_text(CUSTOMER, "Hello again.")
    error = caught.value
    assert (error.code, error.http_status, error.retryable) == (131047, 400, False)
    assert "24 hours" in error.details
    assert error.fbtrace_id == "AFakeTrace131047"
    assert "131047" in str(error)


@pytest.mark.parametrize(
    ("code", "http_status"),
    [(130429, 429), (131056, 400), (4, 400), (80007, 400)],
)
async def test_throttling_is_retryable(graph, client, code, http_status):
    graph.fail_next(code=code, http_status=http_status)
    with pytest.raises(GraphRateLimitError) as caught:
        await client.send_text(CUSTOMER, "Hi.")
    assert (caught.value.code, caught.value.http_status, caught.value.retryable) == (code, http_status, True)


async def test_the_spam_rate_limit_is_not_retried(graph, client):
    graph.fail_next(code=131048)
    with pytest.raises(GraphRateLimitError) as caught:
        await client.send_text(CUSTOMER, "Hi.")
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    ("code", "http_status"), [(131000, 500), (131016, 503), (1, 400), (2, 400), (131057, 400), (999, 502)]
)
async def test_meta_being_unavailable_is_retryable(graph, client, code, http_status):
    graph.fail_next(code=code, http_status=http_status)
    with pytest.raises(GraphUnavailableError) as caught:
        await client.mark_read("wamid.IN")
    assert caught.value.retryable is True
    assert caught.value.http_status == http_status


async def test_an_expired_token_is_an_auth_error_that_names_the_problem_not_the_token(graph, client):
    graph.fail_next(code=190, subcode=463)
    with pytest.raises(GraphAuthError) as caught:
        await client.send_text(CUSTOMER, "Hi.")
    error = caught.value
    assert (error.code, error.subcode, error.http_status, error.retryable) == (190, 463, 401, False)
    assert "access token was refused" in str(error)
    assert DEFAULT_ACCESS_TOKEN not in str(error)


async def test_a_wrong_token_is_refused_by_the_fake_as_meta_does(graph):
    async with GraphClient(graph.base_url, PHONE_NUMBER_ID, "not-the-token") as wrong:
        with pytest.raises(GraphAuthError) as caught:
            await wrong.send_text(CUSTOMER, "Hi.")
    assert caught.value.code == 190
    assert "not-the-token" not in str(caught.value)


@pytest.mark.parametrize("code", [100, 131026, 131009, 132001])
async def test_other_refusals_are_permanent(graph, client, code):
    graph.fail_next(code=code)
    with pytest.raises(GraphError) as caught:
        await client.send_text(CUSTOMER, "Hi.")
    assert type(caught.value) is GraphError
    assert (caught.value.code, caught.value.retryable) == (code, False)


def test_an_error_from_a_failed_status_webhook_is_classified_the_same_way():
    """`statuses[].errors[]` carries the same shape without an HTTP status (research §1.4)."""
    error = graph_error(
        {
            "code": 131047,
            "title": "Re-engagement message",
            "message": "Re-engagement message",
            "error_data": {"details": "more than 24 hours have passed"},
        }
    )
    assert isinstance(error, GraphOutsideWindowError)
    assert error.details == "more than 24 hours have passed"
    assert graph_error({"code": 131049, "title": "healthy ecosystem"}).retryable is False
    assert graph_error({"code": 100, "message": "x", "is_transient": True}).retryable is True


async def test_a_refused_connection_is_retryable_and_names_no_token():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with GraphClient(f"http://127.0.0.1:{port}/v25.0", PHONE_NUMBER_ID, "secret-token-123") as client:
        with pytest.raises(GraphUnavailableError) as caught:
            await client.send_text(CUSTOMER, "Hi.")
    assert caught.value.retryable is True
    assert "secret-token-123" not in str(caught.value)
    assert f"/v25.0/{PHONE_NUMBER_ID}/messages" in str(caught.value)


async def test_a_timeout_is_retryable(graph):
    server = socket.socket()  # accepts connections, never answers
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        base = f"http://127.0.0.1:{server.getsockname()[1]}/v25.0"
        async with GraphClient(base, PHONE_NUMBER_ID, DEFAULT_ACCESS_TOKEN, timeout=0.2) as client:
            with pytest.raises(GraphUnavailableError, match="timed out") as caught:
                await client.mark_read("wamid.IN")
        assert caught.value.retryable is True
    finally:
        server.close()


def test_retry_after_is_read_as_seconds_or_a_date():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


# Retrying ------------------------------------------------------------------------------------


async def test_a_rate_limit_then_success_is_retried_with_growing_waits(graph, client):
    graph.fail_next(2, code=130429)
    sleeps = Sleeps()

    wamid = await retrying(
        lambda: client.send_text(CUSTOMER, "Sorry for the wait."), attempts=3, base_delay=1.0, sleep=sleeps
    )

    assert wamid == graph.sent[0].wamid
    assert len(graph.requests) == 3
    assert len(sleeps.delays) == 2
    assert 0.5 <= sleeps.delays[0] <= 1.0  # half of 1 s fixed, half random
    assert 1.0 <= sleeps.delays[1] <= 2.0


async def test_the_pair_rate_limit_is_retried_after_4_to_the_x_seconds(graph, client):
    """Meta: "retry same user after 4^X s" (research §3, §6)."""
    graph.fail_next(3, code=131056)
    sleeps = Sleeps()
    await retrying(
        lambda: client.send_text(CUSTOMER, "Hi."), attempts=4, base_delay=0.1, max_delay=10, sleep=sleeps
    )
    assert sleeps.delays == [1.0, 4.0, 10.0]  # the last 16 s within the caller's maximum


async def test_retry_after_is_honoured(graph, client):
    graph.fail_next(code=130429, retry_after=5)
    sleeps = Sleeps()
    await retrying(lambda: client.send_text(CUSTOMER, "Hi."), base_delay=0.1, max_delay=10, sleep=sleeps)
    assert sleeps.delays == [5.0]


async def test_a_retry_after_longer_than_the_caller_waits_is_handed_back(graph, client):
    graph.fail_next(code=130429, retry_after=120)
    sleeps = Sleeps()
    with pytest.raises(GraphRateLimitError) as caught:
        await retrying(lambda: client.send_text(CUSTOMER, "Hi."), max_delay=30, sleep=sleeps)
    assert caught.value.retry_after == 120.0
    assert sleeps.delays == []


async def test_permanent_errors_are_not_retried(graph, client):
    graph.fail_next(code=131047)
    sleeps = Sleeps()
    with pytest.raises(GraphOutsideWindowError):
        await retrying(lambda: client.send_text(CUSTOMER, "Hi."), attempts=5, sleep=sleeps)
    assert len(graph.requests) == 1
    assert sleeps.delays == []


async def test_retries_stop_after_the_attempts_given(graph, client):
    graph.fail_next(5, code=131000)
    sleeps = Sleeps()
    with pytest.raises(GraphUnavailableError):
        await retrying(lambda: client.mark_read("wamid.IN"), attempts=3, base_delay=0.01, sleep=sleeps)
    assert len(graph.requests) == 3
    assert len(sleeps.delays) == 2


async def test_waits_never_pass_the_maximum(graph, client):
    graph.fail_next(5, code=130429)
    sleeps = Sleeps()
    await retrying(
        lambda: client.mark_read("wamid.IN"), attempts=6, base_delay=1.0, max_delay=3.0, sleep=sleeps
    )
    assert max(sleeps.delays) <= 3.0


# The token stays secret ------------------------------------------------------------------------


async def test_the_token_is_in_no_log_line_nor_error(graph, client, caplog):
    caplog.set_level(logging.DEBUG)
    graph.fail_next(code=130429, message=f"(#130429) echoing {DEFAULT_ACCESS_TOKEN} back")
    graph.fail_next(code=190)
    errors = []
    for _ in range(2):
        try:
            await retrying(lambda: client.send_text(CUSTOMER, "Hi."), attempts=2, base_delay=0.01)
        except GraphError as error:
            errors.append(error)
    graph.media_add("m1", b"abc", "audio/ogg")
    await client.media_download("m1", max_bytes=10)

    assert len(errors) == 1 and isinstance(errors[0], GraphAuthError)
    assert caplog.records, "httpx and the retry helper log requests"
    everything = caplog.text + "".join(f"{error!s}{error!r}{error.args}{vars(error)}" for error in errors)
    assert DEFAULT_ACCESS_TOKEN not in everything
    assert DEFAULT_ACCESS_TOKEN not in repr(client)
    assert "[access token]" in caplog.text  # Meta's echo was redacted in the retry's log line


# Media -------------------------------------------------------------------------------------------


async def test_media_is_downloaded_with_its_metadata_and_the_token(graph, client):
    voice = b"OggS" + bytes(range(256)) * 300
    graph.media_add("1234567890987654321", voice, "audio/ogg; codecs=opus")

    media = await client.media_download("1234567890987654321", max_bytes=1_000_000)

    assert media.data == voice
    assert media.mime_type == "audio/ogg; codecs=opus"
    assert media.file_size == len(voice)
    assert media.sha256 == base64.b64encode(hashlib.sha256(voice).digest()).decode()
    metadata, download = graph.requests
    assert metadata.path == "/v25.0/1234567890987654321"
    assert metadata.query == {"phone_number_id": PHONE_NUMBER_ID}
    assert download.path == "/media/1234567890987654321"
    assert download.headers["Authorization"] == f"Bearer {DEFAULT_ACCESS_TOKEN}"


async def test_a_hex_sha256_is_accepted_too(graph, client):
    graph.media_add("m", b"hello", "text/plain", sha256=hashlib.sha256(b"hello").hexdigest())
    assert (await client.media_download("m", max_bytes=100)).data == b"hello"


async def test_media_whose_bytes_do_not_match_its_sha256_is_refused(graph, client):
    graph.media_add(
        "m", b"hello", "text/plain", sha256=base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    )
    with pytest.raises(MediaChecksumError, match="SHA-256") as caught:
        await client.media_download("m", max_bytes=100)
    assert caught.value.retryable is False


async def test_media_declared_too_large_is_not_downloaded_at_all(graph, client):
    graph.media_add("big", b"x" * 2000, "audio/ogg")
    with pytest.raises(MediaTooLargeError, match="2000 bytes, over the 1000 accepted") as caught:
        await client.media_download("big", max_bytes=1000)
    assert caught.value.retryable is False
    assert [request.path for request in graph.requests] == ["/v25.0/big"]


async def test_media_whose_content_length_is_too_large_is_refused_before_its_body(graph, client):
    graph.media_add("big", b"x" * 2_000_000, "audio/ogg", file_size=None)
    with pytest.raises(MediaTooLargeError, match="2000000 bytes"):
        await client.media_download("big", max_bytes=1000)


async def test_media_that_turns_out_too_large_while_streaming_is_cut_off(graph, client):
    """No size in the metadata, no Content-Length: the bytes are counted as they come."""
    size = 32 * 1024 * 1024
    graph.media_add("huge", bytes(size), "audio/ogg", file_size=100, content_length=False)
    with pytest.raises(MediaTooLargeError, match="download stopped"):
        await client.media_download("huge", max_bytes=256 * 1024)
    assert graph.media_bytes_sent["huge"] < size  # the fake was stopped before the end


async def test_an_unknown_media_id_is_metas_permanent_error(graph, client):
    with pytest.raises(GraphError) as caught:
        await client.media_download("nope", max_bytes=100)
    assert (caught.value.code, caught.value.retryable) == (100, False)


async def test_an_expired_media_url_is_fetched_again_once(graph, client):
    graph.media_add("m", b"voice", "audio/ogg")
    graph.media_urls_expire(1)
    media = await client.media_download("m", max_bytes=100)
    assert media.data == b"voice"
    assert [request.path for request in graph.requests] == ["/v25.0/m", "/media/m", "/v25.0/m", "/media/m"]


async def test_a_media_url_expired_twice_is_an_error(graph, client):
    graph.media_add("m", b"voice", "audio/ogg")
    graph.media_urls_expire(2)
    with pytest.raises(GraphError) as caught:
        await client.media_download("m", max_bytes=100)
    assert caught.value.http_status == 404


# The fake by hand ------------------------------------------------------------------------------


async def test_the_fake_run_by_hand_prints_its_address_and_logs_each_send(tmp_path):
    """`python tests/fakes/graph_api.py --port N`, as `make run` uses it: replies show in its log."""
    voice = tmp_path / "note.ogg"
    voice.write_bytes(b"OggS fake")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        FAKE_SCRIPT,
        "--port",
        "0",
        "--media",
        f"55={voice}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None

        async def line() -> str:
            return (await asyncio.wait_for(process.stdout.readline(), 30)).decode()

        media, started = await line(), await line()
        assert media.startswith("media 55: 9 bytes of audio/ogg"), media
        base_url = started.split()[4]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v25.0"), started
        async with GraphClient(base_url, PHONE_NUMBER_ID, DEFAULT_ACCESS_TOKEN) as client:
            await client.send_text(CUSTOMER, "Fresh bread at eight.")
            assert (await client.media_download("55", max_bytes=100)).data == b"OggS fake"
        logged = await line()
        assert f"to {CUSTOMER}: Fresh bread at eight." in logged, logged
    finally:
        process.terminate()
        await process.wait()
