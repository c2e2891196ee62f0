"""Checks of notebook 07's exercises (preference data and human feedback).

Each check tests the student's answer against properties that any correct answer has, computed with the
review world's own functions, never against a stored solution.
"""

from __future__ import annotations

import math

import numpy as np

from utils import review_world as rw
from utils.exercises import NotYet, exercise
from utils.preference_data import PreferenceDataError, validate_preference_rows

CHECK_PAIRS_SEED = 70  # the fresh pairs the function answers are tried on (not the course's data)


def _check_pairs(n: int) -> list[dict]:
    return rw.preference_pairs(n, seed=CHECK_PAIRS_SEED)


@exercise("07.1")
def check_rankings(pairs: object) -> None:
    """``pairs``: the preference rows made from a ranking of 5 reviews (best first) by ``ranking_to_pairwise``,
    each with a non-empty ``prompt``."""
    if not isinstance(pairs, list) or not all(isinstance(p, dict) for p in pairs):
        raise NotYet("answer with the list of preference rows (dicts) that ranking_to_pairwise returned")
    texts = {p[k] for p in pairs for k in ("chosen", "rejected") if k in p}
    if len(texts) != 5:
        raise NotYet(f"the rows should use exactly 5 distinct reviews, they use {len(texts)}")
    if len(pairs) != math.comb(5, 2):
        raise NotYet(f"{len(pairs)} rows: how many unordered pairs does a ranking of K answers hold?")
    if len({frozenset((p["chosen"], p["rejected"])) for p in pairs}) != len(pairs):
        raise NotYet("some pair of reviews appears twice")
    if not all(rw.gold_reward(p["chosen"]) >= rw.gold_reward(p["rejected"]) for p in pairs):
        raise NotYet("in some row 'chosen' has the lower gold reward: was the ranking sorted best first?")
    try:
        problems = validate_preference_rows(pairs)
    except PreferenceDataError as error:
        raise NotYet(f"the rows do not pass validate_preference_rows: {str(error).splitlines()[1].strip()}") from None
    if problems:
        raise NotYet("validate_preference_rows reports texts that are too long")


@exercise("07.2")
def check_agreement(agreement: object) -> None:
    """``agreement(rows, temperature) -> (measured, predicted)``: the measured agreement of two independent
    annotators of that temperature on ``rows``, and the prediction E[p^2 + (1-p)^2]."""
    rows = _check_pairs(1500)
    results = {}
    for temperature in (0.1, 1.0):
        measured, predicted = agreement(rows, temperature)
        config = rw.AnnotatorConfig(temperature=temperature)
        p = np.array([rw.preference_probability(r["prompt"], r["chosen"], r["rejected"], config) for r in rows])
        expected = float(np.mean(p**2 + (1 - p) ** 2))
        if not math.isclose(float(predicted), expected, abs_tol=1e-6):
            raise NotYet(f"at T = {temperature} the prediction should average p^2 + (1-p)^2 over the pairs")
        # 1,500 pairs: the standard error of a measured agreement is at most 0.013; 0.05 is four of them.
        if abs(float(measured) - expected) > 0.05:
            raise NotYet(
                f"at T = {temperature} the measured agreement is far from the prediction: two annotators "
                "with different seeds, each labelling every pair once?"
            )
        results[temperature] = float(measured)
    if not results[0.1] > results[1.0]:
        raise NotYet("the sharper annotators (T = 0.1) should agree more often than those at T = 1.0")


@exercise("07.3")
def check_unbiased_ceiling(unbiased_ceiling: object) -> None:
    """``unbiased_ceiling(rows) -> (bayes, gold_accuracy)``: relabel ``rows`` with an annotator without length
    bias; its Bayes-optimal accuracy, and the accuracy of the gold reward alone on the new labels."""
    rows = _check_pairs(1500)
    bayes, gold_accuracy = unbiased_ceiling(rows)
    expected = rw.bayes_optimal_accuracy(rows, rw.AnnotatorConfig(length_bias_per_word=0.0))
    if not math.isclose(float(bayes), expected, abs_tol=1e-6):
        raise NotYet("the Bayes-optimal accuracy should be that of an annotator with length_bias_per_word=0")
    # 1,500 pairs: the gold reward's accuracy on one draw of labels has a standard error of about 0.01.
    if abs(float(gold_accuracy) - expected) > 0.04:
        raise NotYet(
            "the gold reward's accuracy on the unbiased labels should land near that ceiling: "
            "score it on the relabelled pairs (a tie in gold is a coin flip)"
        )


@exercise("07.4")
def check_bias_intervals(intervals: object) -> None:
    """``intervals``: {n: (low, high)}, 90% bootstrap intervals of the fitted bias per word from the first n
    training pairs, for n = 100, 400 and 1600."""
    if not isinstance(intervals, dict) or not {100, 400, 1600} <= set(intervals):
        raise NotYet("answer with a dict {100: (low, high), 400: (...), 1600: (...)}")
    bounds = {n: tuple(float(v) for v in intervals[n]) for n in (100, 400, 1600)}
    if not all(low < high for low, high in bounds.values()):
        raise NotYet("each interval should be (low, high) with low < high")
    widths = [high - low for low, high in bounds.values()]
    if not widths[0] > widths[1] > widths[2]:
        raise NotYet("the intervals should narrow as n grows (more labels, less spread)")
    planted = rw.AnnotatorConfig().length_bias_per_word
    low, high = bounds[1600]
    if not (low - 0.03 <= planted <= high + 0.03):
        raise NotYet(f"at n = 1600 the interval should lie near the planted bias per word ({planted})")
    if not bounds[400][0] > 0:
        raise NotYet("at n = 400 the interval should already exclude 0")


@exercise("07.5")
def check_top_m_plackett_luce(loss_fn: object) -> None:
    """``loss_fn(scores, m)``: the Plackett-Luce NLL of the first ``m`` choices of rankings ``scores`` (B, K), best
    first, averaged over the rankings. Checked by its two limits and one middle case, computed stage by stage."""
    import torch
    import torch.nn.functional as F

    from utils import listwise as lw

    if not callable(loss_fn):
        raise NotYet("answer with the function top_m_plackett_luce_loss(scores, m)")
    scores = torch.randn(64, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)  # (B, K)
    first = torch.zeros(64, dtype=torch.long)
    if not torch.allclose(torch.as_tensor(loss_fn(scores, 1), dtype=torch.float64), F.cross_entropy(scores, first)):
        raise NotYet("m = 1 should be the winner's softmax cross-entropy over all K answers")
    if not torch.allclose(torch.as_tensor(loss_fn(scores, 3), dtype=torch.float64), lw.plackett_luce_loss(scores)):
        raise NotYet("m = K - 1 should be the whole ranking's Plackett-Luce loss (the last choice is forced)")
    two_stages = F.cross_entropy(scores, first) + F.cross_entropy(scores[:, 1:], first)  # stage 2: among the rest
    if not torch.allclose(torch.as_tensor(loss_fn(scores, 2), dtype=torch.float64), two_stages):
        raise NotYet("m = 2: the first choice among all K, plus the second among the K - 1 left")
