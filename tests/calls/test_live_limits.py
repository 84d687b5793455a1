"""Session limits (calls/live/limits.py): the idle clock, its warning and timeout, the maximum duration.

Most tests move a fake clock and call `check()`, so they do not depend on the machine's speed;
one runs the real loop on short limits and asserts only what happened and in which order.
"""

from __future__ import annotations

import asyncio

import pytest

from calls.live.limits import SessionLimits

# A safety net so a loop that never ends fails the test instead of hanging it (not a speed check).
LOOP_END_TIMEOUT_SECONDS = 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """What the limits told the session, in order."""

    def __init__(self) -> None:
        self.told: list[tuple[str, object]] = []

    async def on_idle_warning(self, remaining_seconds: float) -> None:
        self.told.append(("idle_warning", remaining_seconds))

    async def on_limit(self, reason: str) -> None:
        self.told.append(("limit", reason))


def limits_make(
    clock: FakeClock | None = None,
    *,
    max_duration: float = 600.0,
    idle_timeout: float = 60.0,
    idle_warning: float = 15.0,
) -> tuple[SessionLimits, Recorder]:
    recorder = Recorder()
    limits = SessionLimits(
        max_duration_seconds=max_duration,
        idle_timeout_seconds=idle_timeout,
        idle_warning_seconds=idle_warning,
        on_idle_warning=recorder.on_idle_warning,
        on_limit=recorder.on_limit,
        **({"clock": clock} if clock is not None else {}),
    )
    return limits, recorder


async def test_the_warning_comes_at_the_timeout_less_the_warning_then_the_idle_timeout():
    clock = FakeClock()
    limits, recorder = limits_make(clock)
    limits.idle_clock_start()

    clock.advance(44.0)
    assert await limits.check() == pytest.approx(1.0)  # the warning is due in a second
    assert recorder.told == []
    clock.advance(1.0)
    await limits.check()
    assert recorder.told == [("idle_warning", 15.0)]

    clock.advance(14.0)
    assert await limits.check() == pytest.approx(1.0)  # the timeout next, no second warning
    clock.advance(1.0)
    assert await limits.check() is None
    assert recorder.told == [("idle_warning", 15.0), ("limit", "idle_timeout")]
    assert limits.reached == "idle_timeout"


async def test_the_idle_clock_does_not_run_before_the_persona_can_be_heard():
    clock = FakeClock()
    limits, recorder = limits_make(clock)
    clock.advance(120.0)
    await limits.check()
    assert recorder.told == []
    assert limits.idle_seconds() == 0.0


async def test_with_a_greeting_queued_the_idle_clock_starts_once_it_has_been_said():
    clock = FakeClock()
    limits, recorder = limits_make(clock)
    limits.idle_clock_start(after_persona_speaks=True)
    clock.advance(120.0)  # the greeting's voice is slow to come
    await limits.check()
    assert limits.idle_seconds() == 0.0
    limits.persona_speaking(True)
    clock.advance(5.0)
    limits.persona_speaking(False)
    clock.advance(45.0)
    await limits.check()
    assert recorder.told == [("idle_warning", 15.0)]


async def test_with_a_greeting_queued_the_user_heard_first_starts_the_idle_clock():
    clock = FakeClock()
    limits, _recorder = limits_make(clock)
    limits.idle_clock_start(after_persona_speaks=True)
    limits.user_active()  # typed before the greeting played
    clock.advance(10.0)
    assert limits.idle_seconds() == pytest.approx(10.0)


async def test_the_personas_voice_pauses_the_idle_clock_without_resetting_it():
    clock = FakeClock()
    limits, recorder = limits_make(clock)
    limits.idle_clock_start()
    clock.advance(30.0)

    limits.persona_speaking(True)
    clock.advance(100.0)  # a long answer: not the user's silence
    assert await limits.check() is not None  # only the maximum duration can be due now
    assert limits.idle_seconds() == pytest.approx(30.0)
    assert recorder.told == []

    limits.persona_speaking(False)
    clock.advance(15.0)  # 30 + 15: the warning, counting the silence before the answer
    await limits.check()
    assert recorder.told == [("idle_warning", 15.0)]


async def test_the_users_speech_resets_the_clock_and_holds_it_while_they_speak():
    clock = FakeClock()
    limits, recorder = limits_make(clock)
    limits.idle_clock_start()
    clock.advance(50.0)
    await limits.check()
    assert recorder.told == [("idle_warning", 10.0)]

    limits.user_speaking(True)
    assert limits.idle_seconds() == 0.0
    clock.advance(90.0)  # a long monologue
    await limits.check()
    assert limits.idle_seconds() == 0.0

    limits.user_speaking(False)
    clock.advance(44.0)
    await limits.check()
    assert recorder.told == [("idle_warning", 10.0)]  # the silence starts again from the end of speech
    clock.advance(1.0)
    await limits.check()
    assert recorder.told == [("idle_warning", 10.0), ("idle_warning", 15.0)]  # warned again


async def test_typed_text_resets_the_clock():
    clock = FakeClock()
    limits, recorder = limits_make(clock)
    limits.idle_clock_start()
    clock.advance(59.0)
    await limits.check()
    limits.user_active()
    clock.advance(59.0)
    await limits.check()
    assert [told for told, _ in recorder.told] == ["idle_warning", "idle_warning"]
    assert limits.reached is None


async def test_the_user_speaking_over_the_persona_resumes_the_clock_only_when_both_have_stopped():
    clock = FakeClock()
    limits, _recorder = limits_make(clock)
    limits.idle_clock_start()
    limits.persona_speaking(True)
    limits.user_speaking(True)
    limits.persona_speaking(False)  # interrupted: the user is still speaking
    clock.advance(100.0)
    assert limits.idle_seconds() == 0.0
    limits.user_speaking(False)
    clock.advance(5.0)
    assert limits.idle_seconds() == pytest.approx(5.0)


async def test_the_maximum_duration_ends_the_session_even_while_someone_speaks():
    clock = FakeClock()
    limits, recorder = limits_make(clock, max_duration=30.0)
    limits.idle_clock_start()
    limits.persona_speaking(True)
    clock.advance(29.0)
    assert await limits.check() == pytest.approx(1.0)
    clock.advance(1.0)
    assert await limits.check() is None
    assert recorder.told == [("limit", "max_duration")]
    clock.advance(100.0)
    await limits.check()
    assert recorder.told == [("limit", "max_duration")]  # told once


async def test_the_maximum_duration_counts_from_the_session_start_not_the_idle_clock():
    clock = FakeClock()
    limits, recorder = limits_make(clock, max_duration=30.0, idle_timeout=60.0)
    clock.advance(30.0)  # never connected
    await limits.check()
    assert recorder.told == [("limit", "max_duration")]


@pytest.mark.parametrize(("idle_timeout", "idle_warning"), [(60.0, 0.0), (10.0, 10.0), (10.0, 15.0)])
async def test_a_warning_of_zero_or_not_shorter_than_the_timeout_is_not_given(idle_timeout, idle_warning):
    clock = FakeClock()
    limits, recorder = limits_make(clock, idle_timeout=idle_timeout, idle_warning=idle_warning)
    limits.idle_clock_start()
    clock.advance(idle_timeout)
    await limits.check()
    assert recorder.told == [("limit", "idle_timeout")]


async def test_limits_of_zero_are_no_limits():
    clock = FakeClock()
    limits, recorder = limits_make(clock, max_duration=0.0, idle_timeout=0.0)
    limits.idle_clock_start()
    clock.advance(10_000.0)
    assert await limits.check() is None
    assert recorder.told == []


async def test_the_loop_warns_then_ends_and_a_paused_clock_waits_for_the_persona_to_finish():
    """The real loop on short limits (idle timeout 3 s, warning 2 s): it wakes for each step."""
    limits, recorder = limits_make(idle_timeout=3.0, idle_warning=2.0)
    loop = asyncio.ensure_future(limits.run())
    try:
        limits.persona_speaking(True)  # the greeting plays as the clock starts
        limits.idle_clock_start()
        await asyncio.sleep(3.5)  # longer than the idle timeout, all of it persona's voice
        assert recorder.told == []
        limits.persona_speaking(False)
        await asyncio.wait_for(asyncio.shield(loop), LOOP_END_TIMEOUT_SECONDS)
    finally:
        loop.cancel()
    assert [told for told, _ in recorder.told] == ["idle_warning", "limit"]
    assert recorder.told[1] == ("limit", "idle_timeout")
    assert 0.0 < recorder.told[0][1] <= 2.0
