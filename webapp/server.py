"""Daphne's limits answered, not dropped: oversized websocket messages and request header lines.

Daphne (4.2) leaves two limits to its libraries, which cut the connection without a word:
- autobahn fails a websocket whose message passes `--websocket-max-message-size` (1 MiB by
  default) by dropping TCP (`failByDrop`, on by default for servers, and Daphne has no option
  for it), so the client sees 1006 and no reason;
- Twisted drops an HTTP connection (a websocket handshake too) whose request line or one
  header line passes 16 KB (`LineReceiver.lineLengthExceeded`, whose docstring says to
  override it). Headers over 16 KB in all, over several lines, already get Twisted's 400.

`daphne_limits_answer()` makes the first close with 1009 and autobahn's reason, and the second
answer 431. The ASGI module calls it: Daphne's command line imports the application before it
builds its server. It can go when Daphne exposes autobahn's `failByDrop` and answers long lines.
"""

from __future__ import annotations

import json
from typing import Any

# The status a request gets whose request line or one header line is too long to read.
LINE_TOO_LONG_STATUS = b"431 Request Header Fields Too Large"
LINE_TOO_LONG_BODY = json.dumps(
    {"detail": "a request line or header field is longer than the server reads (16 KB)"}
).encode()


def _answer_line_too_long(channel: Any, line: bytes) -> None:
    head = (
        b"HTTP/1.1 " + LINE_TOO_LONG_STATUS + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(LINE_TOO_LONG_BODY)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n"
    )
    channel.transport.write(head + LINE_TOO_LONG_BODY)
    channel.loseConnection()


def daphne_limits_answer() -> None:
    """Make this process's Daphne close oversized websockets with 1009 and answer long lines with 431."""
    from daphne import server as daphne_server
    from daphne.ws_protocol import WebSocketFactory
    from twisted.web.http import HTTPChannel

    if not getattr(daphne_server.WebSocketFactory, "parley_closes_with_a_frame", False):

        class ClosingWebSocketFactory(WebSocketFactory):
            """Daphne's factory, failing a connection with a close frame (code and reason)."""

            parley_closes_with_a_frame = True

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.setProtocolOptions(failByDrop=False)

        daphne_server.WebSocketFactory = ClosingWebSocketFactory
    HTTPChannel.lineLengthExceeded = _answer_line_too_long
