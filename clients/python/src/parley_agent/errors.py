"""The one exception of the client: a command the server refused, or one that never got an answer."""

from __future__ import annotations

__all__ = ["AgentError"]


class AgentError(Exception):
    """A refused or unanswered command, or a connection that cannot go on.

    `code` is the server's error code (`unknown_call`, `bad_request`, ...) or one of the
    client's own: `timeout` (no answer in time), `disconnected` (no connection, and none came
    back in time), `unauthorized` / `forbidden` (the server refused the API key: the client
    stops instead of retrying).
    """

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
