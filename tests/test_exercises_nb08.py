"""Notebook 08's exercise checks (utils.exercises.nb08): a right answer passes, a plausible wrong one fails."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from utils import reward_model as rm
from utils.exercises import check


def _optimal_margin(p, steps=500):
    delta = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([delta], lr=1.0)
    for _ in range(steps):
        loss = p * rm.bradley_terry_loss(delta, torch.zeros(1)) + (1 - p) * rm.bradley_terry_loss(torch.zeros(1), delta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return delta.item()


def test_08_1_optimal_margin():
    assert check("08.1", _optimal_margin)
    assert not check("08.1", lambda p: _optimal_margin(p, steps=5))  # stopped far too early
    assert not check("08.1", lambda p: math.log(p))  # the wrong closed form


def _fit_temperature(margins):
    log_tau = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_tau], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -F.logsigmoid(margins.double() / log_tau.exp()).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_tau.exp().item()


def test_08_2_temperature():
    assert check("08.2", _fit_temperature)
    assert not check("08.2", lambda margins: 1.0 / _fit_temperature(margins))  # multiplied instead of divided
    assert not check("08.2", lambda margins: float(margins.abs().mean()))  # a scale, not a fit


def test_08_3_debias():
    def debias(score, gold, words):
        return score - rm.length_bias(score, gold, words)["length_coefficient"] * words

    def debias_on_words_alone(score, gold, words):  # regresses on length without gold: b absorbs quality
        slope = np.polyfit(words, score, 1)[0]
        return score - slope * words

    assert check("08.3", debias)
    assert check("08.3", lambda score, gold, words: debias(score, gold, words) + 7.0)  # an offset is fine
    assert not check("08.3", debias_on_words_alone)
    assert not check("08.3", lambda score, gold, words: score)


def test_08_4_bag_of_words():
    weights = {"superb": 0.8, "wonderful": 0.75, "great": 0.5, "awful": -0.9, "terrible": -0.8, "the": 0.1}
    assert check("08.4", (0.79, weights))
    assert not check("08.4", (0.79, {w: -v for w, v in weights.items()}))  # the columns swapped in training
    assert not check("08.4", (0.95, weights))  # above the ceiling: scored on the training pairs?
    assert not check("08.4", 0.79)


def test_08_5_auc_by_counting():
    def auc_by_counting(positive, negative):
        difference = positive[:, None] - negative[None, :]
        return float((difference > 0).mean() + 0.5 * (difference == 0).mean())

    assert check("08.5", auc_by_counting)
    assert not check("08.5", lambda positive, negative: float((positive[:, None] > negative[None, :]).mean()))
    assert not check("08.5", lambda positive, negative: 1 - auc_by_counting(positive, negative))
    assert not check("08.5", lambda positive, negative: float(np.mean(positive > np.median(negative))))
