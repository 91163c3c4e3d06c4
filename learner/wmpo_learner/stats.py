"""Statistics for reporting success rates: every evaluation and experiment report uses these.

Success rates from a few dozen episodes are noisy; a rate is always reported with its Wilson
score interval (well-behaved near 0 and 1 and for small n, unlike the normal approximation), and
two policies are compared with Newcombe's interval for the difference of two proportions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion successes/trials."""
    if trials <= 0:
        raise ValueError(f"need at least one trial, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    z = _z(confidence)
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # Clamp rounding noise at the ends (the exact interval touches 0 or 1 there).
    return (0.0 if successes == 0 else max(0.0, centre - half), 1.0 if successes == trials else min(1.0, centre + half))


def difference_interval(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval for rate_a - rate_b (independent samples)."""
    p_a, p_b = successes_a / trials_a, successes_b / trials_b
    lo_a, hi_a = wilson_interval(successes_a, trials_a, confidence)
    lo_b, hi_b = wilson_interval(successes_b, trials_b, confidence)
    diff = p_a - p_b
    lower = diff - math.sqrt((p_a - lo_a) ** 2 + (hi_b - p_b) ** 2)
    upper = diff + math.sqrt((hi_a - p_a) ** 2 + (p_b - lo_b) ** 2)
    return max(-1.0, lower), min(1.0, upper)


@dataclass(frozen=True)
class SuccessRate:
    successes: int
    trials: int
    confidence: float = 0.95

    @classmethod
    def from_outcomes(cls, outcomes: Iterable[bool], confidence: float = 0.95) -> SuccessRate:
        values = [bool(o) for o in outcomes]
        return cls(sum(values), len(values), confidence)

    @property
    def rate(self) -> float:
        return self.successes / self.trials

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.trials, self.confidence)

    def __str__(self) -> str:
        low, high = self.interval
        return (
            f"{100 * self.rate:.1f}% ({self.successes}/{self.trials}), "
            f"Wilson {100 * self.confidence:.0f}% CI [{100 * low:.1f}%, {100 * high:.1f}%]"
        )

    def to_dict(self) -> dict[str, float | int]:
        low, high = self.interval
        return {
            "successes": self.successes,
            "trials": self.trials,
            "rate": self.rate,
            "ci_low": low,
            "ci_high": high,
            "confidence": self.confidence,
        }
