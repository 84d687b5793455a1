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
        """Silence after an eager turn that confirms it."""
        return min(self.silence_seconds, round(0.15 + 0.6 * (1.0 - self.sensitivity), 3))
