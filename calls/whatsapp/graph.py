"""Meta's Graph API for one WhatsApp channel: send text, mark read (typing), download media.

`GraphClient(base_url, phone_number_id, access_token)` speaks the WhatsApp Cloud API over
`httpx` (`../shared/research/whatsapp.md` §3, §4): `send_text` returns the sent message's wamid,
`mark_read` also shows the typing indicator, `media_download` fetches a media id's metadata
and then its bytes, within a size limit and checked against its SHA-256.

A refusal is a `GraphError` built from Meta's error shape (`graph_error`), classified by its
code as the research's table says: outside the 24-hour window (`GraphOutsideWindowError`,
permanent), throttled (`GraphRateLimitError`), Meta unavailable (`GraphUnavailableError`, also
HTTP 5xx, timeouts and lost connections), the token refused (`GraphAuthError`), anything else
permanent. `retrying(call, ...)` retries only the retryable ones, with exponential backoff and
jitter, honouring Retry-After. The access token never appears in a log line or an error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A send or a metadata request answers in well under a second; this bounds a stuck one
# (httpx applies it to connecting and to each read, not to the whole exchange).
GRAPH_TIMEOUT_SECONDS = 10.0
# Meta's limit on a text message's body (research §3, "body ≤ 4096 chars").
TEXT_MAX_CHARACTERS = 4096
# Media bytes are read in pieces of this size, so an oversize body is refused early.
MEDIA_CHUNK_BYTES = 64 * 1024
# Meta's error messages are short; a proxy's HTML error page is cut to this in an error.
ERROR_TEXT_MAX_CHARACTERS = 300
REDACTED = "[access token]"

# Meta's error codes (research/whatsapp.md §3, the table of codes, and §6).
OUTSIDE_WINDOW_CODE = 131047  # re-engagement: more than 24 h since the customer's last message
# The pair rate limit (one business number to one user): Meta says retry after 4**X seconds,
# X counting the failures from 0 (research §6).
PAIR_RATE_LIMIT_CODE = 131056
# Throttling that passes: app (4), WABA (80007), throughput (130429), pair rate limit (131056).
RATE_LIMIT_RETRYABLE_CODES = frozenset({4, 80007, 130429, PAIR_RATE_LIMIT_CODE})
# Spam rate limit (131048): "stop bulk, check quality"; retrying makes it worse.
RATE_LIMIT_PERMANENT_CODES = frozenset({131048})
# Something went wrong (131000), service unavailable (131016), API unknown (1), API service (2),
# account in maintenance during a throughput upgrade (131057): "retry with backoff".
UNAVAILABLE_CODES = frozenset({1, 2, 131000, 131016, 131057})
# Token expired or invalid (190), auth exception (0), permission denied (10, 200-299).
AUTH_CODES = frozenset({0, 10, 190, *range(200, 300)})


@dataclass(frozen=True)
class Media:
    """A downloaded media file; `sha256` and `file_size` as Meta's metadata gave them."""

    data: bytes
    mime_type: str
    sha256: str
    file_size: int | None


class GraphError(Exception):
    """Meta refused a request, or it could not be made; `retryable` says whether to try again."""

    retryable_by_default = False

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        title: str = "",
        details: str = "",
        http_status: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        fbtrace_id: str = "",
        uncertain: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.subcode = subcode
        self.title = title or message
        self.details = details
        self.http_status = http_status
        self.retryable = self.retryable_by_default if retryable is None else retryable
        self.retry_after = retry_after
        self.fbtrace_id = fbtrace_id
        # The request may have reached Meta (it timed out or lost its connection after it was
        # sent): a send that fails so may still be delivered; sending it again may duplicate it.
        self.uncertain = uncertain

    def __str__(self) -> str:
        parts = [self.message]
        if self.details and self.details not in self.message:
            parts.append(self.details)
        facts = [
            f"{name} {value}"
            for name, value in (
                ("code", self.code),
                ("subcode", self.subcode),
                ("HTTP", self.http_status),
                ("fbtrace_id", self.fbtrace_id or None),
            )
            if value is not None
        ]
        return ": ".join(parts) + (f" ({', '.join(facts)})" if facts else "")


class GraphOutsideWindowError(GraphError):
    """131047: the customer last wrote more than 24 hours ago; only a template may be sent."""


class GraphRateLimitError(GraphError):
    """Throttled (4, 80007, 130429, 131056 pass with time; 131048, spam, does not)."""

    retryable_by_default = True


class GraphUnavailableError(GraphError):
    """Meta could not answer (131000, 131016, 1, 2, 131057, HTTP 5xx) or was not reached."""

    retryable_by_default = True


class GraphAuthError(GraphError):
    """The access token was refused (190, 0, 10, 200-299): an operator must renew it."""


class MediaTooLargeError(GraphError):
    """The media file is larger than the caller accepts; it was not (wholly) downloaded."""


class MediaChecksumError(GraphError):
    """The downloaded bytes do not match the SHA-256 Meta gave for them."""


def graph_error(
    error: Mapping[str, Any],
    *,
    http_status: int | None = None,
    retry_after: float | None = None,
) -> GraphError:
    """The error for Meta's error object: a response's `error`, or a failed status's `errors[i]`."""
    code = _int_or_none(error.get("code"))
    subcode = _int_or_none(error.get("error_subcode"))
    error_data = error.get("error_data")
    details = str(error_data.get("details", "")) if isinstance(error_data, Mapping) else ""
    message = str(error.get("message") or error.get("title") or "the Graph API refused the request")
    fields: dict[str, Any] = {
        "code": code,
        "subcode": subcode,
        "title": str(error.get("title") or error.get("error_user_title") or ""),
        "details": details,
        "http_status": http_status,
        "retry_after": retry_after,
        "fbtrace_id": str(error.get("fbtrace_id") or ""),
    }
    if code == OUTSIDE_WINDOW_CODE:
        return GraphOutsideWindowError(message, **fields)
    if code in RATE_LIMIT_RETRYABLE_CODES:
        return GraphRateLimitError(message, **fields)
    if code in RATE_LIMIT_PERMANENT_CODES:
        return GraphRateLimitError(message, retryable=False, **fields)
    if code in UNAVAILABLE_CODES:
        return GraphUnavailableError(message, **fields)
    if code in AUTH_CODES:
        return GraphAuthError(f"the access token was refused: {message}", **fields)
    if http_status == 429:
        return GraphRateLimitError(message, **fields)
    if http_status is not None and http_status >= 500:
        return GraphUnavailableError(message, **fields)
    if http_status == 401:
        return GraphAuthError(f"the access token was refused: {message}", **fields)
    # Graph's error-handling guide: `is_transient` errors pass when retried.
    return GraphError(message, retryable=error.get("is_transient") is True, **fields)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header's wait: seconds, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class GraphClient:
    """The Cloud API for one phone number. Use `async with`, or call `aclose()` when done."""

    def __init__(
        self,
        base_url: str,
        phone_number_id: str,
        access_token: str,
        *,
        timeout: float = GRAPH_TIMEOUT_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not phone_number_id:
            raise ValueError("phone_number_id is required: the WhatsApp number's id in Meta's dashboard")
        if not access_token:
            raise ValueError("access_token is required: the system user's token for the WhatsApp account")
        self.base_url = base_url.rstrip("/")
        self.phone_number_id = phone_number_id
        self._access_token = access_token
        self._http = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {access_token}"},
            follow_redirects=True,  # media URLs may redirect (research §4)
        )

    def __repr__(self) -> str:
        return f"GraphClient({self.base_url!r}, phone_number_id={self.phone_number_id!r})"

    async def __aenter__(self) -> GraphClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- messages --------------------------------------------------------------------------

    async def send_text(
        self, to: str, text: str, *, reply_to: str | None = None, callback_data: str = ""
    ) -> str:
        """Send `text` to `to` (a phone number with its country code); the sent message's wamid.

        `reply_to` (an inbound wamid) shows the reply quoting that message; `callback_data`
        (at most 512 characters) comes back in the message's status webhooks.
        """
        if not text.strip():
            raise ValueError("a WhatsApp text message cannot be empty")
        if len(text) > TEXT_MAX_CHARACTERS:
            raise ValueError(
                f"a WhatsApp text message holds at most {TEXT_MAX_CHARACTERS} characters, this one has "
                f"{len(text)}: split it into several messages"
            )
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": {"body": text, "preview_url": False},
        }
        if reply_to:
            body["context"] = {"message_id": reply_to}
        if callback_data:
            body["biz_opaque_callback_data"] = callback_data[:512]
        answer = await self._request("POST", self._messages_url, json=body)
        try:
            return str(answer["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise GraphError(
                "the Graph API accepted the message but its answer names no message id",
                http_status=200,
            ) from None

    async def mark_read(self, message_id: str, *, typing: bool = True) -> None:
        """Mark an inbound message (and those before it) read; `typing` also shows the typing
        indicator, which stays until the reply or for 25 seconds (research §3)."""
        body: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": message_id}
        if typing:
            body["typing_indicator"] = {"type": "text"}
        await self._request("POST", self._messages_url, json=body)

    @property
    def _messages_url(self) -> str:
        return f"{self.base_url}/{self.phone_number_id}/messages"

    # --- media -----------------------------------------------------------------------------

    async def media_download(self, media_id: str, *, max_bytes: int) -> Media:
        """The media file's bytes and what Meta says of it; refused when over `max_bytes`.

        Its metadata's `file_size` and the download's Content-Length are checked before any
        byte is read, and the bytes counted as they come: an oversize file is never held whole.
        A media URL expires after five minutes: a 404 on it fetches a fresh one, once.
        """
        for attempt in range(2):
            metadata = await self._request(
                "GET", f"{self.base_url}/{media_id}", params={"phone_number_id": self.phone_number_id}
            )
            url = str(metadata.get("url") or "")
            if not url:
                raise GraphError(f"the Graph API gave no download URL for media {media_id}", http_status=200)
            file_size = _int_or_none(metadata.get("file_size"))
            if file_size is not None and file_size > max_bytes:
                raise MediaTooLargeError(
                    f"media {media_id} is {file_size} bytes, over the {max_bytes} accepted; not downloaded"
                )
            try:
                data = await self._download(url, media_id=media_id, max_bytes=max_bytes)
            except GraphError as error:
                if error.http_status == 404 and attempt == 0:
                    logger.info("media %s: its URL had expired; asking for a fresh one", media_id)
                    continue
                raise
            break
        sha256 = str(metadata.get("sha256") or "")
        if sha256 and not _sha256_matches(data, sha256):
            raise MediaChecksumError(
                f"media {media_id}: the downloaded bytes do not match the SHA-256 the Graph API gave"
            )
        return Media(
            data=data,
            mime_type=str(metadata.get("mime_type") or ""),
            sha256=sha256,
            file_size=file_size,
        )

    async def _download(self, url: str, *, media_id: str, max_bytes: int) -> bytes:
        try:
            async with self._http.stream("GET", url) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._error_of(response)
                declared = _int_or_none(response.headers.get("Content-Length"))
                if declared is not None and declared > max_bytes:
                    raise MediaTooLargeError(
                        f"media {media_id} is {declared} bytes, over the {max_bytes} accepted; not downloaded"
                    )
                received = bytearray()
                async for chunk in response.aiter_bytes(MEDIA_CHUNK_BYTES):
                    received += chunk
                    if len(received) > max_bytes:
                        raise MediaTooLargeError(
                            f"media {media_id} is over the {max_bytes} bytes accepted; download stopped"
                        )
                return bytes(received)
        except httpx.HTTPError as error:
            raise self._transport_error(error) from None

    # --- the wire --------------------------------------------------------------------------

    async def _request(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as error:
            raise self._transport_error(error) from None
        if response.status_code >= 400:
            raise self._error_of(response)
        try:
            answer = response.json()
        except ValueError:
            raise GraphError(
                f"the Graph API answered {method} with something that is not JSON",
                http_status=response.status_code,
            ) from None
        if not isinstance(answer, dict):
            raise GraphError("the Graph API's answer is not a JSON object", http_status=response.status_code)
        return answer

    def _error_of(self, response: httpx.Response) -> GraphError:
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        try:
            payload = response.json()
        except ValueError:
            payload = None
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            error = {
                key: self._redacted(value) if isinstance(value, str) else value
                for key, value in error.items()
            }
            if isinstance(error.get("error_data"), dict):
                error["error_data"] = {
                    key: self._redacted(value) if isinstance(value, str) else value
                    for key, value in error["error_data"].items()
                }
            return graph_error(error, http_status=response.status_code, retry_after=retry_after)
        text = self._redacted(response.text.strip()[:ERROR_TEXT_MAX_CHARACTERS])
        message = f"the Graph API answered HTTP {response.status_code}" + (f": {text}" if text else "")
        return graph_error({"message": message}, http_status=response.status_code, retry_after=retry_after)

    def _transport_error(self, error: httpx.HTTPError) -> GraphError:
        kind = "timed out" if isinstance(error, httpx.TimeoutException) else "failed"
        # The request's URL, never its headers: the token is in the Authorization header only.
        where = ""
        try:
            where = f" ({error.request.method} {error.request.url.copy_with(query=None)})"
        except RuntimeError:  # an error raised before a request existed
            pass
        detail = self._redacted(str(error) or type(error).__name__)
        # Connecting failed (or no connection was free): nothing was sent. Anything later may
        # have reached Meta.
        unsent = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        return GraphUnavailableError(
            f"the request to the Graph API {kind}{where}: {detail}", uncertain=not unsent
        )

    def _redacted(self, text: str) -> str:
        return text.replace(self._access_token, REDACTED)


def _sha256_matches(data: bytes, expected: str) -> bool:
    """Meta gives SHA-256 as base64 in webhooks; the media endpoint's form is not documented,
    so base64 and hex are both accepted (research §4)."""
    digest = hashlib.sha256(data).digest()
    expected = expected.strip()
    if expected.lower() == digest.hex():
        return True
    try:
        return base64.b64decode(expected, validate=True) == digest
    except (binascii.Error, ValueError):
        return False


# --- retrying ----------------------------------------------------------------------------------

# The defaults: three tries within about half a minute, for a reply a user is waiting for.
RETRY_ATTEMPTS = 3
RETRY_BASE_DELAY_SECONDS = 1.0
RETRY_MAX_DELAY_SECONDS = 30.0


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int = RETRY_ATTEMPTS,
    base_delay: float = RETRY_BASE_DELAY_SECONDS,
    max_delay: float = RETRY_MAX_DELAY_SECONDS,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> T:
    """`await call()`, again after a retryable `GraphError`, at most `attempts` times in all.

    The n-th wait (n from 0) is `base_delay * 2**n` capped at `max_delay`, half of it random
    (jitter, so retries of many senders do not arrive together), at least `4**n` seconds after
    the pair rate limit (131056, as Meta asks; within `max_delay`), and at least the error's
    Retry-After. A Retry-After longer than `max_delay` is not waited for: the error is raised,
    with `retry_after` set, for the caller to try later. Other errors are raised at once.

    A send that timed out or lost its connection may have reached Meta, and the Cloud API takes
    no idempotency key: retrying it can deliver the message twice. Pass `attempts=1` where a
    duplicate is worse than a lost message.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(attempts):
        try:
            return await call()
        except GraphError as error:
            if not error.retryable or attempt == attempts - 1:
                raise
            if error.retry_after is not None and error.retry_after > max_delay:
                raise
            backoff = min(max_delay, base_delay * 2**attempt)
            delay = backoff / 2 + random.uniform(0, backoff / 2)
            if error.code == PAIR_RATE_LIMIT_CODE:
                delay = max(delay, min(max_delay, 4.0**attempt))
            delay = max(delay, error.retry_after or 0.0)
            logger.warning("Graph API: %s; try %d of %d in %.1f s", error, attempt + 2, attempts, delay)
            await sleep(delay)
    raise AssertionError("unreachable")  # the last attempt returns or raises
