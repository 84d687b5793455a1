"""TurnSettings: when a turn is over, from the persona's voice-detection settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TurnSettings:
    """When a turn is over, from the persona's voice-detection settings.

    `sensitivity` (0..1, higher ends the turn sooner) sets the SmartTurn probability for
    `turn.end` (`confident`) and for `eager.turn` (`eager`), and how long an eager turn waits
    in silence before it is confirmed; `silence_seconds` ends a turn whatever the model says.
    """

    sensitivity: float = 0.5
    silence_seconds: float = 1.5

    @classmethod
    def from_persona(cls, *, sensitivity: float, silence_seconds: float) -> TurnSettings:
        return cls(
            sensitivity=min(1.0, max(0.0, float(sensitivity))),
            silence_seconds=min(30.0, max(0.1, float(silence_seconds))),
        )

    @property
    def confident(self) -> float:
        return round(0.85 - 0.5 * self.sensitivity, 3)

    @property
    def eager(self) -> float:
        return round(max(0.1, self.confident - 0.3), 3)

    @property
    def eager_confirm_seconds(self) -> float:
        """Silence after an eager turn that confirms it, for a turn barely eager (the longest)."""
        return min(self.silence_seconds, round(EAGER_CONFIRM_MIN_SECONDS + 0.6 * (1.0 - self.sensitivity), 3))

    def eager_confirm_seconds_at(self, probability: float) -> float:
        """Silence that confirms an eager turn of this probability: the surer, the sooner.

        From `eager_confirm_seconds` at the eager threshold down to `EAGER_CONFIRM_MIN_SECONDS`
        at the confident one, in a straight line: a turn at 0.59 was nearly a turn end and
        waited as long as one at 0.31, then one at 0.60 waited nothing.
        """
        longest = self.eager_confirm_seconds
        shortest = min(longest, EAGER_CONFIRM_MIN_SECONDS)
        span = self.confident - self.eager
        if span <= 0:
            return shortest
        doubt = min(1.0, max(0.0, (self.confident - probability) / span))
        return round(shortest + (longest - shortest) * doubt, 3)


# The shortest silence that confirms an eager turn: time for a user pausing mid-sentence to go
# on (a pause inside a sentence ends the VAD's 0.2 s stop time, and this more, before the reply).
EAGER_CONFIRM_MIN_SECONDS = 0.15
