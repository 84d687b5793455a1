"""Session limits as the agent seed defines them: a maximum duration, and an idle clock that warns, then ends.

The idle clock counts the user's silence. The persona's own voice pauses it (a long answer is
not the user's silence) without resetting it; the user's speech and typed text reset it, and
it stays paused while the user speaks. When the silence reaches `idle timeout - idle warning`
the session is warned once (until the user is heard again); when it reaches the idle timeout,
or the call reaches its maximum duration, the session is told which limit was hit.

Plain asyncio and no ORM: the live session owns one `SessionLimits`, runs `run()` as one of its
tasks, reports what it hears, and does the speaking, publishing and ending itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

logger = logging.getLogger(__name__)

LimitReason = Literal["max_duration", "idle_timeout"]
OnIdleWarning = Callable[[float], Awaitable[None]]
OnLimit = Callable[[LimitReason], Awaitable[None]]

# What pauses the idle clock: the persona speaking, or the user speaking.
PAUSED_BY_PERSONA = "persona"
PAUSED_BY_USER = "user"


class SessionLimits:
    """One session's maximum duration and idle clock.

    A limit of 0 (or less) is no limit. A warning of 0, or one not shorter than the idle
    timeout, is not given. The maximum duration counts from the creation of this object (the
    session's start); the idle clock from `idle_clock_start()` (the persona can be heard).
    """

    def __init__(
        self,
        *,
        max_duration_seconds: float,
        idle_timeout_seconds: float,
        idle_warning_seconds: float,
        on_idle_warning: OnIdleWarning,
        on_limit: OnLimit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._on_idle_warning = on_idle_warning
        self._on_limit = on_limit
        self.max_duration_seconds = max(0.0, max_duration_seconds)
        self._max_duration_at = clock() + max_duration_seconds if max_duration_seconds > 0 else None
        self.idle_timeout_seconds = max(0.0, idle_timeout_seconds)
        warned_before = idle_warning_seconds if 0 < idle_warning_seconds < idle_timeout_seconds else 0.0
        # The silence after which the warning comes (None: no warning).
        self._warn_after = idle_timeout_seconds - warned_before if warned_before else None
        self._idle_started = False
        self._idle_starts_after_persona = False  # starts when the persona's first words end
        self._idle_counted = 0.0  # silence counted before the stretch now running
        self._idle_since: float | None = None  # when the running stretch began; None while paused
        self._paused_by: set[str] = set()
        self._warned = False
        self._changed = asyncio.Event()  # wakes `run()` when something it waits for moved
        self.reached: LimitReason | None = None

    # --- what the session hears ------------------------------------------------------------

    def idle_clock_start(self, *, after_persona_speaks: bool = False) -> None:
        """The persona can be heard: the user's silence counts from now, or, with a greeting
        queued, from when it has been said (or the user is heard first). A greeting's voice
        comes some time after it is queued, and that time is not the user's silence either."""
        if after_persona_speaks and not self._idle_started:
            self._idle_starts_after_persona = True
        elif not self._idle_started:
            self._idle_started = True
            self._idle_starts_after_persona = False
            self._resume(None)

    def user_active(self) -> None:
        """The user was heard (typed text, speech): the silence starts again from zero."""
        if self._idle_starts_after_persona:
            self.idle_clock_start()
        self._idle_counted = 0.0
        if self._idle_since is not None:
            self._idle_since = self._clock()
        self._warned = False
        self._changed.set()

    def user_speaking(self, speaking: bool) -> None:
        """Voice activity: the user's speech resets the clock and holds it until it ends."""
        self.user_active()
        if speaking:
            self._pause(PAUSED_BY_USER)
        else:
            self._resume(PAUSED_BY_USER)

    def persona_speaking(self, speaking: bool) -> None:
        """The persona's voice pauses the clock (its silence so far still counts)."""
        if speaking:
            self._pause(PAUSED_BY_PERSONA)
        else:
            if self._idle_starts_after_persona:
                self.idle_clock_start()
            self._resume(PAUSED_BY_PERSONA)

    def idle_seconds(self) -> float:
        """How long the user has been silent, not counting while someone spoke."""
        running = self._clock() - self._idle_since if self._idle_since is not None else 0.0
        return self._idle_counted + running

    def _pause(self, reason: str) -> None:
        if self._idle_since is not None:
            self._idle_counted += self._clock() - self._idle_since
            self._idle_since = None
        self._paused_by.add(reason)
        self._changed.set()

    def _resume(self, reason: str | None) -> None:
        if reason is not None:
            self._paused_by.discard(reason)
        if self._idle_started and not self._paused_by and self._idle_since is None:
            self._idle_since = self._clock()
        self._changed.set()

    # --- acting on them ------------------------------------------------------------------------

    async def check(self) -> float | None:
        """Act on what is due now. Returns the seconds until something may next be due, or None
        if nothing can be until the clock moves again (paused) or a limit was reached."""
        if self.reached is not None:
            return None
        now = self._clock()
        if self._max_duration_at is not None and now >= self._max_duration_at:
            await self._reach("max_duration")
            return None
        waits = [self._max_duration_at - now] if self._max_duration_at is not None else []
        if self.idle_timeout_seconds and self._idle_started:
            idle = self.idle_seconds()
            if idle >= self.idle_timeout_seconds:
                await self._reach("idle_timeout")
                return None
            if self._warn_after is not None and not self._warned and idle >= self._warn_after:
                self._warned = True
                try:
                    await self._on_idle_warning(self.idle_timeout_seconds - idle)
                except Exception:  # the clock goes on even if the warning could not be given
                    logger.exception("the idle warning failed")
                return 0.0  # the warning took time: look again at once
            if self._idle_since is not None:
                warn_after = self._warn_after if self._warn_after is not None and not self._warned else None
                waits.append((warn_after if warn_after is not None else self.idle_timeout_seconds) - idle)
        return min(waits) if waits else None

    async def _reach(self, reason: LimitReason) -> None:
        self.reached = reason
        await self._on_limit(reason)

    async def run(self) -> None:
        """Watch the limits until one is reached (the session cancels it when the call ends)."""
        while self.reached is None:
            self._changed.clear()
            delay = await self.check()
            if self.reached is not None:
                return
            if delay is not None and delay <= 0:
                continue
            try:
                await asyncio.wait_for(self._changed.wait(), delay)
            except TimeoutError:
                pass
