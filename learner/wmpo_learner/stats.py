"""Statistics for reporting success rates: every evaluation and experiment report uses these.

Success rates from a few dozen episodes are noisy; a rate is always reported with its Wilson
score interval (well-behaved near 0 and 1 and for small n, unlike the normal approximation), and
two policies are compared with Newcombe's interval for the difference of two proportions, or
with a one-sided two-proportion z-test when the question is "is the new one worse?". Two policies
evaluated on the same seeds are compared episode by episode (`PairedComparison`: exact McNemar),
which sees a smaller change than the unpaired test, since most seeds succeed or fail for both.
The imagination diagnostics use balanced accuracy, a rank AUC and Spearman's rank correlation;
they are a few lines of numpy here because scipy/scikit-learn are not otherwise dependencies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


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
    return (
        0.0 if successes == 0 else max(0.0, centre - half),
        1.0 if successes == trials else min(1.0, centre + half),
    )


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


def one_sided_worse_p_value(
    successes_new: int, trials_new: int, successes_old: int, trials_old: int
) -> float:
    """p-value of H0 "new >= old" against H1 "new < old" (pooled two-proportion z-test)."""
    if trials_new <= 0 or trials_old <= 0:
        raise ValueError("both samples need at least one trial")
    p_new, p_old = successes_new / trials_new, successes_old / trials_old
    pooled = (successes_new + successes_old) / (trials_new + trials_old)
    se = math.sqrt(pooled * (1 - pooled) * (1 / trials_new + 1 / trials_old))
    if se == 0.0:
        return 1.0 if p_new >= p_old else 0.0
    return NormalDist().cdf((p_new - p_old) / se)


@dataclass(frozen=True)
class PairedComparison:
    """Two policies on the same evaluation seeds: the seeds only the new one solved (`gained`) and
    only the old one solved (`lost`). Seeds both solve or both fail say nothing about which is better."""

    gained: int
    lost: int
    both: int
    neither: int

    @classmethod
    def from_outcomes(cls, old: dict[int, bool], new: dict[int, bool]) -> PairedComparison:
        """`old`, `new`: success by evaluation seed; the seeds must be the same."""
        if set(old) != set(new):
            raise ValueError("a paired comparison needs both policies evaluated on the same seeds")
        pairs = [(bool(old[seed]), bool(new[seed])) for seed in old]
        return cls(
            gained=sum(n and not o for o, n in pairs),
            lost=sum(o and not n for o, n in pairs),
            both=sum(o and n for o, n in pairs),
            neither=sum(not o and not n for o, n in pairs),
        )

    @property
    def better_p_value(self) -> float:
        """Exact one-sided McNemar p-value of H1 "new is better": P(X >= gained), X ~ Bin(gained +
        lost, 1/2), the chance of at least this many gains among the discordant seeds if neither
        policy were better."""
        n = self.gained + self.lost
        return sum(math.comb(n, k) for k in range(self.gained, n + 1)) / 2**n

    def to_dict(self) -> dict[str, float | int]:
        return {
            "gained": self.gained,
            "lost": self.lost,
            "both": self.both,
            "neither": self.neither,
            "one_sided_mcnemar_p": self.better_p_value,
        }


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with ties averaged."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def rank_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U / n_pos n_neg); None when one class is absent."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation; None when either side is constant or shorter than 2."""
    if len(a) != len(b):
        raise ValueError(f"need paired values, got {len(a)} and {len(b)}")
    if len(a) < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass(frozen=True)
class Confusion:
    """Predicted vs true binary outcomes (here: imagined vs real success)."""

    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int

    @classmethod
    def from_outcomes(cls, predicted: Iterable[bool], actual: Iterable[bool]) -> Confusion:
        pairs = [(bool(p), bool(a)) for p, a in zip(predicted, actual, strict=True)]
        return cls(
            sum(p and a for p, a in pairs),
            sum(p and not a for p, a in pairs),
            sum(not p and not a for p, a in pairs),
            sum(not p and a for p, a in pairs),
        )

    @property
    def balanced_accuracy(self) -> float | None:
        """Mean of the true-positive and true-negative rates; None when one class is absent."""
        pos = self.true_positive + self.false_negative
        neg = self.true_negative + self.false_positive
        if pos == 0 or neg == 0:
            return None
        return 0.5 * (self.true_positive / pos + self.true_negative / neg)

    def to_dict(self) -> dict[str, int]:
        return {
            "true_positive": self.true_positive,
            "false_positive": self.false_positive,
            "true_negative": self.true_negative,
            "false_negative": self.false_negative,
        }
