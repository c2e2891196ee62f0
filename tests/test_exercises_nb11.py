"""Notebook 11's exercise checks: a right answer passes, a plausible wrong one does not."""

import math

import numpy as np

from utils import evaluation as ev
from utils import review_world as rw
from utils.exercises import check


def test_11_1_other_judges():
    def right(a, b):
        return {
            "gold": ev.win_rate(a, b),
            "positive": ev.win_rate(a, b, lambda t: float(rw.is_positive(t))),
            "longer": ev.win_rate(a, b, rw.word_count),
        }

    def ties_count_zero(a, b):  # wins / n, forgetting the half for a tie
        rates = {}
        for key, judge in (("gold", rw.gold_reward), ("positive", rw.is_positive), ("longer", rw.word_count)):
            rates[key] = np.mean([judge(x) > judge(y) for x, y in zip(a, b)])
        return rates

    assert check("11.1", right)
    assert not check("11.1", ties_count_zero)


def test_11_2_standard_error_and_prompts():
    def right(a, b):
        p = ev.win_rate(a, b)
        return p, math.sqrt(p * (1 - p) / len(a))

    def forgot_sqrt(a, b):
        p = ev.win_rate(a, b)
        return p, p * (1 - p) / len(a)

    assert check("11.2a", right)
    assert not check("11.2a", forgot_sqrt)
    assert check("11.2b", lambda n: 4 * n)
    assert not check("11.2b", lambda n: 2 * n)


def fit(kl, gold):
    d = np.sqrt(np.maximum(kl, 0.0))
    d_log_d = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    return np.linalg.lstsq(np.stack([np.ones_like(d), d, -d_log_d], 1), gold, rcond=None)[0]


def test_11_3_fit_and_peak():
    def fit_in_kl(kl, gold):  # uses KL instead of d = sqrt(KL)
        return fit(np.asarray(kl) ** 2, gold)

    assert check("11.3a", fit)
    assert not check("11.3a", fit_in_kl)
    assert check("11.3b", lambda alpha, beta: math.exp(2 * (alpha / beta - 1)))
    assert not check("11.3b", lambda alpha, beta: math.exp(alpha / beta - 1))  # the peak in d, not in KL


def test_11_4_length_controlled():
    def right(a, b, max_gap=2):
        close = [(x, y) for x, y in zip(a, b) if abs(rw.word_count(x) - rw.word_count(y)) <= max_gap]
        return ev.win_rate([x for x, _ in close], [y for _, y in close])

    def strict_gap(a, b, max_gap=2):  # "< max_gap" instead of "<= max_gap"
        return right(a, b, max_gap - 1) if max_gap > 0 else right(a, b, 0)

    assert check("11.4", right)
    assert not check("11.4", strict_gap)


def test_11_5_best_of_n():
    def right(values, scores, n):
        groups = scores.reshape(len(scores), scores.shape[1] // n, n)
        pick = groups.argmax(-1)[..., None]
        return np.take_along_axis(values.reshape(groups.shape), pick, -1).mean()

    def best_of_first_n(values, scores, n):  # one group per prompt: only the first n samples
        return values[np.arange(len(values)), scores[:, :n].argmax(1)].mean()

    assert check("11.5", right)
    assert not check("11.5", best_of_first_n)


def test_11_6_flip_rate():
    def right(p_ab, p_ba):
        return np.mean(np.sign(np.asarray(p_ab) - 0.5) != -np.sign(np.asarray(p_ba) - 0.5))

    def same_first_answer(p_ab, p_ba):  # compares "first wins" in both orders: the opposite of a flip
        return np.mean((np.asarray(p_ab) > 0.5) != (np.asarray(p_ba) > 0.5))

    assert check("11.6", right)
    assert not check("11.6", same_first_answer)


def test_stubs_are_not_done(capsys):
    def win_rates(a, b): ...  # your code here

    assert not check("11.1", win_rates)
    assert not check("11.3b", None)
    assert capsys.readouterr().out.count("not done yet") == 2
