"""Checks of notebook 08's exercises (the reward model).

The function answers are tried on synthetic data whose right result is known (or computed here with a
reference method), so that a check says whether the method is right, not whether a number was copied.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from utils import reward_model as rm
from utils.exercises import NotYet, exercise


@exercise("08.1")
def check_optimal_margin(optimal_margin: object) -> None:
    """``optimal_margin(p) -> delta``: the reward gap that minimises the expected Bradley-Terry loss of one pair
    labelled "A wins" with probability p (found by gradient descent)."""
    for p in (0.6, 0.75, 0.9):
        delta = float(optimal_margin(p))
        if not math.isfinite(delta):
            raise NotYet(f"optimal_margin({p}) is not a finite number")
        if abs(delta - math.log(p / (1 - p))) > 1e-3:
            raise NotYet(
                f"optimal_margin({p}) is not where the expected loss is smallest: is its gradient zero there "
                "(more steps, or a larger step size)?"
            )


def _overconfident_margins(n: int = 4000, overconfidence: float = 1.4, seed: int = 8) -> torch.Tensor:
    """r_c - r_r of a model whose gaps are ``overconfidence`` times the true logits, on sampled labels."""
    generator = torch.Generator().manual_seed(seed)
    logit = torch.randn(n, generator=generator, dtype=torch.float64) * 1.5  # the truth's logit for side A
    a_wins = torch.rand(n, generator=generator, dtype=torch.float64) < torch.sigmoid(logit)
    return torch.where(a_wins, logit, -logit) * overconfidence  # chosen minus rejected, as the model sees it


def _best_temperature(margins: torch.Tensor) -> float:
    """The tau minimising -mean log sigmoid(margins / tau), by a fine search over log tau (reference)."""
    taus = torch.exp(torch.linspace(math.log(0.2), math.log(5.0), 4001, dtype=torch.float64))
    nll = torch.stack([-F.logsigmoid(margins / t).mean() for t in taus])
    return float(taus[int(nll.argmin())])


@exercise("08.2")
def check_temperature(fit_temperature: object) -> None:
    """``fit_temperature(margins) -> tau``: the scalar tau minimising the NLL of sigmoid(margins / tau), where
    ``margins`` are r_chosen - r_rejected of labelled pairs (a tensor)."""
    for overconfidence in (1.4, 0.7):
        margins = _overconfident_margins(overconfidence=overconfidence)
        tau = float(fit_temperature(margins.clone()))
        best = _best_temperature(margins)
        if not math.isfinite(tau) or tau <= 0:
            raise NotYet("tau should be a positive number")
        if abs(tau / best - 1) > 0.01:
            direction = "overconfident" if overconfidence > 1 else "underconfident"
            raise NotYet(
                f"on the margins of an {direction} model tau does not minimise the held-out NLL "
                "-mean(log sigmoid(margin / tau)) (every label is 'chosen wins')"
            )


@exercise("08.3")
def check_debias(debias: object) -> None:
    """``debias(score, gold, words) -> r'``: the scores minus the fitted length term b * words of the least
    squares fit score ~ a * gold + b * words + c (numpy arrays in, array out)."""
    rng = np.random.default_rng(3)
    gold = rng.uniform(-1, 1, 3000)
    words = rng.integers(4, 30, 3000).astype(float)
    score = 3.0 * gold + 0.2 * words + rng.normal(0, 0.5, 3000) - 1.0
    debiased = np.asarray(debias(score.copy(), gold.copy(), words.copy()), dtype=float)
    if debiased.shape != score.shape:
        raise NotYet(f"r' should have one value per text, shape {score.shape}, got {debiased.shape}")
    b = rm.length_bias(score, gold, words)["length_coefficient"]
    offset = debiased - (score - b * words)
    if np.ptp(offset) > 1e-6:
        raise NotYet("r' should be the score minus b * words, with b from the joint fit on gold and words")
    if not abs(rm.spearman(debiased, words)) < abs(rm.spearman(score, words)):
        raise NotYet("r' should depend less on length than the score did")


@exercise("08.4")
def check_bag_of_words(result: object) -> None:
    """``result = (accuracy, weights)``: the bag-of-words RM's held-out accuracy, and its weights as a dict
    {word: weight}."""
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
        raise NotYet("answer with a pair (held-out accuracy, {word: weight})")
    accuracy, weights = float(result[0]), {w: float(v) for w, v in result[1].items()}
    if not 0.65 < accuracy < 0.87:  # chance is 0.5; the Bayes-optimal accuracy of these labels is about 0.83
        raise NotYet(f"a held-out accuracy of {accuracy:.3f} is not what a trained bag of words gets")
    positive = [w for w in ("superb", "wonderful", "great", "excellent") if w in weights]
    negative = [w for w in ("awful", "terrible", "dreadful", "hated") if w in weights]
    if len(positive) < 2 or len(negative) < 2:
        raise NotYet("the weights should cover the review world's vocabulary (one per word of the texts)")
    if not (min(weights[w] for w in positive) > 0 > max(weights[w] for w in negative)):
        raise NotYet("praise words should get positive weights and criticism negative ones: trained long enough?")


@exercise("08.5")
def check_auc_by_counting(auc_by_counting: object) -> None:
    """``auc_by_counting(positive, negative)``: the share of (positive, negative) pairs in which the positive
    scores higher, a tie counting one half (1-d numpy arrays in, a float out)."""
    rng = np.random.default_rng(85)
    cases = [(rng.normal(0.5, 1, 200), rng.normal(0, 1, 150))]
    cases.append((rng.integers(0, 6, 120).astype(float), rng.integers(0, 5, 90).astype(float)))  # many ties
    for positive, negative in cases:
        got = float(auc_by_counting(positive.copy(), negative.copy()))
        expected = rm.roc_auc(positive, negative)
        if abs(got - expected) < 1e-9:
            continue
        strict = float((positive[:, None] > negative[None, :]).mean())
        if abs(got - strict) < 1e-9:
            raise NotYet("a tie between a positive and a negative counts one half, not zero")
        if abs(got - (1 - expected)) < 1e-9:
            raise NotYet("that is the share of pairs where the NEGATIVE scores higher: swap the two")
        raise NotYet(f"expected {expected:.4f} on this input, got {got:.4f}")
