"""Database calls from async code that leave no connection open behind them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import close_old_connections

P = ParamSpec("P")
R = TypeVar("R")


def closing_connections(func: Callable[P, R]) -> Callable[P, R]:
    """`func`, then the closing of its thread's stale connections, in the same call.

    channels' `database_sync_to_async` closes them around the call, but with channels 4.3.2 and
    asgiref 3.13 a stream's authorisation left its PostgreSQL connection open until the
    consumer's next message (one idle session per process while a stream was open; a test
    database that could not be dropped; with the pool, a connection never handed back). Closing
    from inside the call closes it (returns it to the pool). It can go once
    `test_open_streams_hold_no_database_connection` passes without it.
    """

    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    return call
