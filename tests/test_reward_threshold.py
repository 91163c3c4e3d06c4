"""Threshold selection by best episode-level F1 (values computed by hand in the comments)."""

import numpy as np
import pytest
from wmpo_learner.reward.threshold import episode_metrics, midpoint_candidates, select_threshold
from wmpo_learner.reward.windows import first_detection

# Maximum window score of six held-out episodes.
SUCCESS_MAX = [0.9, 0.8, 0.35]
FAILURE_MAX = [0.6, 0.2, 0.1]
SCORES = SUCCESS_MAX + FAILURE_MAX
LABELS = [True] * 3 + [False] * 3


def test_metrics_by_hand():
    # t = 0.5: predicted 0.9, 0.8, 0.6 -> TP 2, FP 1, FN 1 -> P = R = 2/3, F1 = 2/3
    m = episode_metrics(SCORES, LABELS, 0.5)
    assert (m.true_positives, m.false_positives, m.false_negatives, m.true_negatives) == (2, 1, 1, 2)
    assert (
        m.precision == pytest.approx(2 / 3)
        and m.recall == pytest.approx(2 / 3)
        and m.f1 == pytest.approx(2 / 3)
    )
    # at the threshold itself the episode counts as detected (score >= threshold)
    assert episode_metrics(SCORES, LABELS, 0.35).true_positives == 3
    # nothing predicted: precision and F1 are 0, not NaN
    none = episode_metrics(SCORES, LABELS, 0.95)
    assert (none.precision, none.recall, none.f1) == (0.0, 0.0, 0.0)


def test_selects_the_f1_optimum():
    # F1 by threshold range:  (0.8, 0.9]: P 1, R 1/3 -> 0.5      (0.6, 0.8]: P 1, R 2/3 -> 0.8
    #                         (0.35, 0.6]: 2/3                    (0.2, 0.35]: P 3/4, R 1 -> 6/7 (best)
    #                         (0.1, 0.2]: P 3/5, R 1 -> 0.75      <= 0.1: P 1/2, R 1 -> 2/3      > 0.9: 0
    best, sweep = select_threshold(SCORES, LABELS)
    # one candidate per range, in its middle: 0.05 0.15 0.275 0.475 0.7 0.85 0.95
    assert [m.threshold for m in sweep] == pytest.approx([0.05, 0.15, 0.275, 0.475, 0.7, 0.85, 0.95])
    assert [m.f1 for m in sweep] == pytest.approx([2 / 3, 0.75, 6 / 7, 2 / 3, 0.8, 0.5, 0.0])
    assert best.threshold == pytest.approx(0.275) and best.f1 == pytest.approx(6 / 7)
    assert (best.precision, best.recall) == (pytest.approx(0.75), 1.0)


def test_selects_the_f1_optimum_on_a_grid_with_ties_to_the_median():
    grid = np.round(np.arange(0.01, 1.0, 0.01), 2)
    best, sweep = select_threshold(SCORES, LABELS, candidates=grid)
    # the optimum 6/7 holds for 0.21 .. 0.35 (15 candidates); ties go to the median one, 0.28
    assert [round(m.threshold, 2) for m in sweep if m.f1 == pytest.approx(6 / 7)] == list(
        np.round(np.arange(0.21, 0.355, 0.01), 2)
    )
    assert best.threshold == pytest.approx(0.28) and best.f1 == pytest.approx(6 / 7)
    best, sweep = select_threshold(SCORES, LABELS, candidates=[0.7, 0.5, 0.95])
    assert best.threshold == 0.7 and best.f1 == pytest.approx(0.8)
    assert [m.threshold for m in sweep] == [0.5, 0.7, 0.95]


def test_saturated_scores_are_still_separated():
    # a sigmoid near 1: a 0.01 grid has no candidate strictly between these two failures and successes
    best, _ = select_threshold([0.996, 0.9972, 0.985, 0.0021], [True, True, False, False])
    assert best.f1 == 1.0 and best.threshold == pytest.approx((0.985 + 0.996) / 2)
    assert midpoint_candidates([0.4, 0.4, 0.8]).tolist() == pytest.approx([0.2, 0.6, 0.9])


def test_needs_both_outcomes():
    with pytest.raises(ValueError, match="successful and failed"):
        select_threshold([0.9, 0.8], [True, True])
    with pytest.raises(ValueError, match="one score per labelled episode"):
        episode_metrics([0.9], [True, False], 0.5)
    with pytest.raises(ValueError, match="no scores"):
        midpoint_candidates([])


def test_episode_prediction_is_any_window_at_or_above_threshold():
    scores = np.array([0.1, 0.7, 0.3, 0.9])
    ends = np.array([7, 8, 9, 10])
    assert first_detection(scores, ends, 0.7) == (True, 8)  # first window at/above: ends at step 8
    assert first_detection(scores, ends, 0.8) == (True, 10)
    assert first_detection(scores, ends, 0.95) == (False, None)
    # the selection rule and the detection rule agree: max score >= t  <=>  some window fires
    for t in (0.05, 0.5, 0.85, 0.95):
        assert first_detection(scores, ends, t)[0] == (
            episode_metrics([scores.max()], [True], t).true_positives == 1
        )
