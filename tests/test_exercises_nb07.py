"""Notebook 07's exercise checks (utils.exercises.nb07): a right answer passes, a plausible wrong one fails."""

import numpy as np
import torch
import torch.nn.functional as F

from utils import review_world as rw
from utils.exercises import check
from utils.preference_data import ranking_to_pairwise


def test_07_1_rankings():
    reviews = [r["text"] for r in rw.lm_corpus(5, seed=3)]
    ranked = sorted(reviews, key=rw.gold_reward, reverse=True)
    assert check("07.1", ranking_to_pairwise({"prompt": "Review:", "completions": ranked}))
    worst_first = ranking_to_pairwise({"prompt": "Review:", "completions": ranked[::-1]})
    assert not check("07.1", worst_first)
    assert not check("07.1", ranking_to_pairwise({"prompt": "Review:", "completions": ranked[:4]}))
    assert not check("07.1", ranking_to_pairwise({"prompt": "", "completions": ranked}))  # the validator flags it


def _agreement(rows, temperature, second_seed=2):
    first = rw.SimulatedAnnotator(rw.AnnotatorConfig(temperature=temperature, seed=1))
    second = rw.SimulatedAnnotator(rw.AnnotatorConfig(temperature=temperature, seed=second_seed))
    measured = np.mean(
        [
            first.prefers_first(r["prompt"], r["chosen"], r["rejected"])
            == second.prefers_first(r["prompt"], r["chosen"], r["rejected"])
            for r in rows
        ]
    )
    config = rw.AnnotatorConfig(temperature=temperature)
    p = np.array([rw.preference_probability(r["prompt"], r["chosen"], r["rejected"], config) for r in rows])
    return measured, np.mean(p**2 + (1 - p) ** 2)


def test_07_2_agreement():
    assert check("07.2", _agreement)

    def same_coins(rows, temperature):  # one annotator twice: always agrees with itself
        return _agreement(rows, temperature, second_seed=1)

    def predicted_from_default_annotator(rows, temperature):
        measured, _ = _agreement(rows, temperature)
        default = rw.AnnotatorConfig()
        p = np.array([rw.preference_probability(r["prompt"], r["chosen"], r["rejected"], default) for r in rows])
        return measured, np.mean(p**2 + (1 - p) ** 2)

    assert not check("07.2", same_coins)
    assert not check("07.2", predicted_from_default_annotator)


def _unbiased_ceiling(rows, bias=0.0):
    config = rw.AnnotatorConfig(length_bias_per_word=bias, seed=5)
    annotator = rw.SimulatedAnnotator(config)
    relabelled = [annotator.label(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    gold_gap = np.array(
        [rw.gold_reward(r["prompt"] + r["chosen"]) - rw.gold_reward(r["prompt"] + r["rejected"]) for r in relabelled]
    )
    return rw.bayes_optimal_accuracy(relabelled, config), np.mean(gold_gap > 0) + 0.5 * np.mean(gold_gap == 0)


def test_07_3_unbiased_ceiling():
    assert check("07.3", _unbiased_ceiling)
    assert not check("07.3", lambda rows: _unbiased_ceiling(rows, bias=0.15))  # forgot to remove the bias

    def gold_on_the_old_labels(rows):
        bayes, _ = _unbiased_ceiling(rows)
        gold_gap = np.array(
            [rw.gold_reward(r["prompt"] + r["chosen"]) - rw.gold_reward(r["prompt"] + r["rejected"]) for r in rows]
        )
        return bayes, np.mean(gold_gap < 0)  # and counted the wrong side

    assert not check("07.3", gold_on_the_old_labels)


def _fit_bias(gold_gap, word_gap, seed):
    flip = torch.from_numpy(np.random.default_rng(seed).random(len(gold_gap)) < 0.5)
    sign = 1.0 - 2.0 * flip.double()
    features = torch.tensor(np.stack([gold_gap, word_gap], 1)) * sign[:, None]
    target = (~flip).double()
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(features @ w, target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w[1].item()


def test_07_4_bias_intervals():
    rows = rw.preference_pairs(1600, seed=11)
    gold_gap = np.array(
        [rw.gold_reward(r["prompt"] + r["chosen"]) - rw.gold_reward(r["prompt"] + r["rejected"]) for r in rows]
    )
    word_gap = np.array([rw.word_count(r["chosen"]) - rw.word_count(r["rejected"]) for r in rows], float)
    rng = np.random.default_rng(0)
    intervals = {}
    for n in (100, 400, 1600):
        estimates = []
        for b in range(30):
            index = rng.integers(0, n, n)
            estimates.append(_fit_bias(gold_gap[index], word_gap[index], seed=b))
        intervals[n] = tuple(np.percentile(estimates, [5, 95]))
    assert check("07.4", intervals)
    assert not check("07.4", {n: (high, low) for n, (low, high) in intervals.items()})  # bounds swapped
    assert not check("07.4", {n: (low - 0.2, high - 0.2) for n, (low, high) in intervals.items()})  # off target
    assert not check("07.4", {100: intervals[1600], 400: intervals[400], 1600: intervals[100]})  # widths grow


def test_07_5_top_m_plackett_luce():
    def top_m(scores, m):  # the solution notebook's answer
        suffix_logsumexp = torch.logcumsumexp(scores.flip(1), dim=1).flip(1)  # (B, K)
        return (suffix_logsumexp - scores)[:, :m].sum(dim=1).mean()

    assert check("07.5", top_m)
    assert not check("07.5", lambda s, m: top_m(s, m + 1))  # one stage too many
    assert not check("07.5", lambda s, m: (torch.logcumsumexp(s, dim=1) - s)[:, :m].sum(dim=1).mean())  # prefix lse
    assert not check("07.5", lambda s, m: top_m(s, m) * s.shape[0])  # summed, not averaged
    assert not check("07.5", 3)
