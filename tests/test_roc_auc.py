"""ROC AUC of reward scores (utils.reward_model.roc_auc) against a brute-force count over every
(positive, negative) pair and scipy's Mann-Whitney U (scikit-learn, the usual reference, is not installed)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from utils import reward_model as rm


def _count_pairs(positive, negative) -> float:
    """P(random positive > random negative) + P(tie) / 2, by looking at every pair."""
    difference = np.asarray(positive, float)[:, None] - np.asarray(negative, float)[None, :]
    return float((difference > 0).mean() + 0.5 * (difference == 0).mean())


def test_roc_auc_by_hand():
    assert rm.roc_auc([3.0, 4.0], [1.0, 2.0]) == 1.0  # perfectly ranked
    assert rm.roc_auc([1.0, 2.0], [3.0, 4.0]) == 0.0  # perfectly reversed
    # pairs (2>1) (2<3) (5>1) (5>3): 3 of 4; a tie (1 vs 1) counts half
    assert rm.roc_auc([2.0, 5.0], [1.0, 3.0]) == 0.75
    assert rm.roc_auc([1.0], [1.0]) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_equals_pair_counting_and_mann_whitney_with_ties(seed):
    rng = np.random.default_rng(seed)
    positive = rng.integers(0, 12, 300) + 0.5  # few distinct values: many ties
    negative = rng.integers(0, 10, 250).astype(float)
    negative[:40] = positive[:40]  # ties across the classes too
    auc = rm.roc_auc(positive, negative)
    assert auc == pytest.approx(_count_pairs(positive, negative), abs=1e-12)
    u = scipy.stats.mannwhitneyu(positive, negative, alternative="two-sided").statistic  # U of the first sample
    assert auc == pytest.approx(u / (len(positive) * len(negative)), abs=1e-12)
    assert rm.roc_auc(negative, positive) == pytest.approx(1 - auc, abs=1e-12)  # swapping the classes


def test_roc_auc_rejects_empty_input():
    with pytest.raises(ValueError, match="non-empty"):
        rm.roc_auc([], [1.0])
