"""Episode-level metrics and the choice of the decision threshold by best F1.

An episode is predicted successful when any of its windows scores at or above the threshold,
i.e. when its *maximum* window score does (`windows.first_detection`). Thresholds are chosen on
episodes held out from training (the public WMPO code chose them on data overlapping training).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict


class EpisodeMetrics(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float
    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int

    @property
    def num_episodes(self) -> int:
        return self.true_positives + self.false_positives + self.false_negatives + self.true_negatives


def episode_metrics(
    max_scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray, threshold: float
) -> EpisodeMetrics:
    """Precision, recall and F1 of 'max window score >= threshold' against true labels.

    Undefined ratios (no predicted or no true positives) count as 0, like scikit-learn's
    `zero_division=0`.
    """
    scores = np.asarray(max_scores, dtype=np.float64)
    truth = np.asarray(labels, dtype=bool)
    if scores.shape != truth.shape or scores.ndim != 1:
        raise ValueError(
            f"need one score per labelled episode, got {scores.shape} scores and {truth.shape} labels"
        )
    predicted = scores >= threshold
    tp = int(np.sum(predicted & truth))
    fp = int(np.sum(predicted & ~truth))
    fn = int(np.sum(~predicted & truth))
    tn = int(np.sum(~predicted & ~truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return EpisodeMetrics(
        threshold=float(threshold),
        precision=precision,
        recall=recall,
        f1=f1,
        true_positives=tp,
        false_positives=fp,
        false_negatives=fn,
        true_negatives=tn,
    )


def midpoint_candidates(max_scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """One threshold per distinct outcome: midpoints between consecutive distinct scores, plus
    one below the lowest and one above the highest.

    Episode-level F1 only changes where the threshold crosses an episode's score, so this sweep
    is exhaustive, and each candidate sits as far as possible from the scores on either side. A
    fixed grid (the paper's 0.3..1.0) cannot separate scores that a saturated sigmoid puts
    within one grid step of each other, such as 0.985 vs 0.996.
    """
    scores = np.unique(np.asarray(max_scores, dtype=np.float64))
    if scores.size == 0:
        raise ValueError("no scores to choose a threshold from")
    inner = (scores[:-1] + scores[1:]) / 2
    return np.concatenate([[scores[0] / 2], inner, [(scores[-1] + 1.0) / 2]])


def select_threshold(
    max_scores: Sequence[float] | np.ndarray,
    labels: Sequence[bool] | np.ndarray,
    candidates: Sequence[float] | np.ndarray | None = None,
) -> tuple[EpisodeMetrics, list[EpisodeMetrics]]:
    """The candidate threshold with the best episode-level F1, and the whole sweep.

    `candidates` default to `midpoint_candidates(max_scores)`. Ties (several candidates with the
    same best F1) go to the median tied candidate, the one farthest inside the optimal range.
    """
    truth = np.asarray(labels, dtype=bool)
    if not truth.any() or truth.all():
        raise ValueError(
            f"choosing a threshold needs successful and failed episodes; got {int(truth.sum())} successes "
            f"among {truth.size} episodes"
        )
    grid = (
        midpoint_candidates(max_scores)
        if candidates is None
        else np.sort(np.asarray(candidates, dtype=np.float64))
    )
    sweep = [episode_metrics(max_scores, truth, float(t)) for t in grid]
    best_f1 = max(m.f1 for m in sweep)
    tied = [m for m in sweep if m.f1 >= best_f1 - 1e-12]
    return tied[(len(tied) - 1) // 2], sweep
