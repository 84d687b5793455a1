"""Commands waiting for their answer: each has a requestId, and Parley answers `ack` or `error`."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from parley_agent.errors import AgentError

__all__ = ["PendingRequests"]


@dataclass
class _Pending:
    action: str
    future: asyncio.Future[dict[str, Any]]
    timer: asyncio.TimerHandle


class PendingRequests:
    """The open commands of one client, by requestId; each fails on its own after `timeout`."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def open(self, action: str) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        """A new requestId and the future of its answer (the `ack` frame, or AgentError)."""
        loop = asyncio.get_running_loop()
        request_id = f"rq_{uuid.uuid4().hex[:16]}"
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        timer = loop.call_later(self.timeout, self._expire, request_id)
        self._pending[request_id] = _Pending(action, future, timer)
        future.add_done_callback(lambda _: self._drop(request_id))
        return request_id, future

    def answer(self, frame: dict[str, Any]) -> bool:
        """Settle the request an `ack` or `error` frame answers; False when none is waiting."""
        request_id = frame.get("requestId")
        pending = self._pending.get(request_id) if isinstance(request_id, str) else None
        if pending is None:
            return False
        if pending.future.done():  # its caller was cancelled meanwhile
            return True
        if frame.get("event") == "error":
            code = str(frame.get("code") or "error")
            message = str(frame.get("message") or frame.get("detail") or "")
            pending.future.set_exception(AgentError(code, message))
        else:
            pending.future.set_result(frame)
        return True

    def fail_all(self, code: str, message: str) -> None:
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(AgentError(code, message))

    def _expire(self, request_id: str) -> None:
        pending = self._pending.get(request_id)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(
                AgentError("timeout", f"no answer to {pending.action} within {self.timeout:g} s")
            )

    def _drop(self, request_id: str) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is not None:
            pending.timer.cancel()
