"""A server process's start and its graceful stop, under Daphne.

At start (Daphne's reactor running): this process is registered, its housekeeper starts, and
SIGTERM and SIGINT are taken over from Twisted, whose own handler stops the reactor at once and
leaves live calls cut (the browser's sockets closed with 1006, no `endsession`, the calls never
ended) and Python waiting on their threads.

On the first SIGTERM (or SIGINT) the process drains, within `PARLEY_DRAIN_SECONDS`:
1. it takes no new sessions: `/healthz` answers 503 "draining", session starts go to other
   processes (or get 503), and a signalling socket for a new call is refused;
2. every live call ends: `endsession` to the browser ("the server is restarting"), the pipeline
   and the peer connection closed, `call.ended` stored with reason `failed` (neither party
   ended it; the seed's reasons have no other for a cut by the service);
3. the reactor stops and the process exits. Should anything still hold it (a thread that does
   not end), it exits anyway when the drain time is up.
A second signal stops at once (unless it comes within 2 s of the first: the same request).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from calls.lifecycle import housekeeper, services
from calls.models import EndReason

logger = logging.getLogger(__name__)

# What the browser is told when its call ends because its server process is stopping.
DRAIN_MESSAGE = "the server is restarting; please start again"
# Of the drain time, what is kept for the process to exit once its calls have ended (seconds).
EXIT_MARGIN_SECONDS = 1.5

# A second signal within this many seconds of the first is the same request (see below).
REPEAT_SIGNAL_SECONDS = 2.0

_draining_task: asyncio.Task[None] | None = None
_signalled_at = 0.0


def install_under_daphne() -> None:
    """Called as the ASGI application loads: hooks the process's start when Daphne runs it.

    Daphne installs Twisted's reactor before it loads the application; anything else (tests,
    management commands) has none, and nothing is hooked.
    """
    if "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import reactor

    reactor.callWhenRunning(_server_started)
    reactor.callWhenRunning(_whatsapp_processor_start)


def _whatsapp_processor_start() -> None:
    # Also under a test harness that keeps signals to itself: deliveries are processed anyway.
    from calls.whatsapp import answering, processing

    try:
        processing.processor_start()
        answering.answerer_start()
    except Exception:  # Twisted would swallow it
        logger.exception("the WhatsApp processor did not start")


def _server_started() -> None:
    from twisted.internet import reactor

    if not getattr(reactor, "_installSignalHandlers", True):
        return  # embedded in a test harness that handles signals itself
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _signalled)
        housekeeper.housekeeper_start()  # its first round registers this process
        logger.info("server started: SIGTERM drains it within %.0f s", drain_seconds())
    except Exception:  # Twisted would swallow it: said here, and the server runs on as before
        logger.exception("server start hooks failed")


def drain_seconds() -> float:
    return max(1.0, settings.PARLEY_DRAIN_SECONDS)


def _signalled(signum: int, frame: Any) -> None:
    # A signal handler runs between any two bytecodes of the main thread, inside whatever context
    # it interrupted (asgiref marks its sync calls in context variables: a drain started there
    # could not use the database thread). The drain starts on the loop, in a context of its own.
    loop = asyncio.get_event_loop()
    loop.call_soon_threadsafe(_drain_or_stop, signal.Signals(signum).name, context=contextvars.Context())


def _drain_or_stop(signal_name: str) -> None:
    global _draining_task, _signalled_at
    from twisted.internet import reactor

    if _draining_task is not None:
        # The same stop told twice (Ctrl-C reaches every process of the terminal, and then
        # `scripts/serve` passes it on) is one request; a signal given later stops at once.
        if time.monotonic() - _signalled_at > REPEAT_SIGNAL_SECONDS:
            logger.warning("%s again while draining: stopping now", signal_name)
            reactor.stop()
        return
    _signalled_at = time.monotonic()
    logger.info("%s: draining (at most %.0f s)", signal_name, drain_seconds())
    _exit_watchdog_start(drain_seconds())
    _draining_task = asyncio.get_event_loop().create_task(
        _drain(), name="parley-drain", context=contextvars.Context()
    )


async def drain_live_sessions(*, within: float) -> int:
    """Take no new sessions and end every live call of this process; the calls still live after
    `within` seconds (0 when all ended)."""
    from calls.live import live_sessions, live_sessions_end

    await database_sync_to_async(services.process_drain_begin)()
    if live_sessions():
        logger.info("ending %d live call(s)", len(live_sessions()))
    left = await live_sessions_end(reason=EndReason.FAILED, message=DRAIN_MESSAGE, within=within)
    if not left:
        await database_sync_to_async(services.process_stopped)()
    return left


async def _drain() -> None:
    from twisted.internet import reactor

    started = time.monotonic()
    left = 0
    try:
        left = await drain_live_sessions(within=drain_seconds() - EXIT_MARGIN_SECONDS)
    except Exception:
        logger.exception("draining failed")
    housekeeper.housekeeper_stop()
    from calls.whatsapp import processing

    processing.processor_stop()
    from calls.whatsapp import answering

    answering.answerer_stop()
    logger.info(
        "drained in %.1f s%s; stopping",
        time.monotonic() - started,
        f" ({left} call(s) still live)" if left else "",
    )
    reactor.stop()


def _exit_watchdog_start(seconds: float) -> None:
    def watch() -> None:
        time.sleep(seconds)
        # Still here: a thread or a child holds the interpreter's exit. The calls were ended (or
        # given their time); the process goes now, as promised.
        logger.error("still running %.0f s after the signal: exiting now", seconds)
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=watch, name="parley-exit-watchdog", daemon=True).start()
