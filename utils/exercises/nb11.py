"""Checks of notebook 11's exercises (evaluation and reward hacking). Each tests the student's function on data
made here (review-world texts, synthetic curves, random scores) against the reference implementations in
``utils.evaluation``, ``utils.judge`` and ``utils.broken_reviews``, without saying what the answer is."""

from __future__ import annotations

import math
import random

import numpy as np

from utils import evaluation as ev
from utils import judge as jd
from utils import review_world as rw
from utils.broken_reviews import broken_form, broken_form_table
from utils.exercises import NotYet, exercise


def _texts(n: int = 120, seed: int = 7) -> tuple[list[str], list[str]]:
    """Pairs of review-world answers to the same prompt, some ungrammatical (gold -2), some tied."""
    rows = rw.preference_pairs(n, seed=seed)
    a = [r["prompt"] + r["chosen"] for r in rows]
    b = [r["prompt"] + r["rejected"] for r in rows]
    b[::9] = a[::9]  # identical answers: a tie under every judge
    a[1::11] = [r["prompt"] + " was was good." for r in rows[1::11]]  # broken: gold -2
    return a, b


def _positive(text: str) -> float:
    return float(rw.is_positive(text))


@exercise("11.1")
def _check_other_judges(win_rates):
    a, b = _texts()
    got = win_rates(a, b)
    if not isinstance(got, dict) or not {"gold", "positive", "longer"} <= set(got):
        raise NotYet("return a dict with the keys 'gold', 'positive' and 'longer'")
    for key, judge in (("gold", rw.gold_reward), ("positive", _positive), ("longer", rw.word_count)):
        if abs(float(got[key]) - ev.win_rate(a, b, judge)) > 1e-9:
            raise NotYet(f"the '{key}' win rate is off on test pairs; does a tie count half a win?")


@exercise("11.2a")
def _check_win_rate_se(win_rate_and_se):
    a, b = _texts()
    rate, se = win_rate_and_se(a, b)
    p, n = ev.win_rate(a, b), len(a)
    if abs(rate - p) > 1e-9:
        raise NotYet("the win rate is off (gold judge, a tie counts half)")
    outcomes = np.array([0.5 * (np.sign(rw.gold_reward(x) - rw.gold_reward(y)) + 1) for x, y in zip(a, b)])
    accepted = [math.sqrt(p * (1 - p) / n), outcomes.std(ddof=1) / math.sqrt(n), outcomes.std() / math.sqrt(n)]
    if min(abs(se - s) for s in accepted) > 1e-6:
        raise NotYet("the standard error is off: sqrt(p (1 - p) / n), or the SE of the mean of the outcomes")


@exercise("11.2b")
def _check_prompts_to_halve(prompts_to_halve):
    for n in (100, 256, 1000):
        if int(prompts_to_halve(n)) != 4 * n:
            raise NotYet(f"prompts_to_halve({n}) is off: how does the interval's width scale with n?")


def _reference_fit(kl: np.ndarray, gold: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.maximum(kl, 0.0))
    d_log_d = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    return np.linalg.lstsq(np.stack([np.ones_like(d), d, -d_log_d], 1), gold, rcond=None)[0]


@exercise("11.3a")
def _check_fit_gao(fit_gao):
    rng = np.random.default_rng(3)
    kl = np.concatenate([[0.0, 0.0], rng.uniform(0.1, 30, 20)])
    d = np.sqrt(kl)
    exact = -0.2 + d * (0.6 - 0.3 * np.log(np.where(d > 0, d, 1.0)))
    fitted = np.asarray(fit_gao(kl, exact), dtype=float)
    if fitted.shape != (3,):
        raise NotYet("return the three coefficients (R0, alpha, beta)")
    if np.abs(fitted - [-0.2, 0.6, 0.3]).max() > 1e-6:
        raise NotYet("on points that lie exactly on a curve R0 + d (alpha - beta log d), the fit misses them")
    noisy = exact + rng.normal(0, 0.1, len(kl))
    if np.abs(np.asarray(fit_gao(kl, noisy), dtype=float) - _reference_fit(kl, noisy)).max() > 1e-6:
        raise NotYet("on noisy points the coefficients are not the least-squares ones")


@exercise("11.3b")
def _check_gao_peak(gao_peak_kl):
    for alpha, beta in ((0.6, 0.3), (0.2, 0.32), (1.0, 0.2)):
        grid = np.linspace(1e-6, 200, 400_000)
        peak_d = grid[np.argmax(grid * (alpha - beta * np.log(grid)))]
        got = float(gao_peak_kl(alpha, beta))
        if abs(got - peak_d**2) > 1e-3 * max(1.0, peak_d**2):
            raise NotYet(f"for alpha = {alpha}, beta = {beta} the peak is elsewhere; answer in nats of KL (d^2)")


@exercise("11.4")
def _check_length_controlled(length_controlled_win_rate):
    a, b = _texts()
    for gap in (0, 2, 5):
        close = [(x, y) for x, y in zip(a, b) if abs(rw.word_count(x) - rw.word_count(y)) <= gap]
        expected = ev.win_rate([x for x, _ in close], [y for _, y in close])
        if abs(float(length_controlled_win_rate(a, b, gap)) - expected) > 1e-9:
            raise NotYet(f"with max_gap = {gap} the win rate is off: which pairs are kept (at most max_gap words)?")


@exercise("11.5")
def _check_best_of_n(best_of_n):
    rng = np.random.default_rng(5)
    values, scores = rng.normal(size=(12, 16)), rng.normal(size=(12, 16))
    for n in (1, 2, 4, 8, 16):
        groups = scores.reshape(12, 16 // n, n)
        pick = groups.argmax(-1)[..., None]
        expected = np.take_along_axis(values.reshape(groups.shape), pick, -1).mean()
        if abs(float(best_of_n(values, scores, n)) - expected) > 1e-9:
            raise NotYet(f"for n = {n} the mean is off: split each row into groups of n consecutive samples")
    if abs(float(best_of_n(values, values, 16)) - values.max(1).mean()) > 1e-9:
        raise NotYet("choosing by the values themselves, best of 16 should be each row's maximum")


@exercise("11.6")
def _check_flip_rate(flip_rate):
    rng = np.random.default_rng(6)
    p_ab, p_ba = rng.random(200), rng.random(200)
    p_ab[:10], p_ba[5:15] = 0.5, 0.5  # ties: a tie is a verdict of its own
    if abs(float(flip_rate(p_ab, p_ba)) - jd.flip_rate(p_ab, p_ba)) > 1e-9:
        raise NotYet("the flip rate is off; p_ba is P(b better) with b shown first, and a tie is a verdict too")


def _slip_samples(n: int = 90, seed: int = 11) -> list[dict]:
    """Review-world answers, a third of them broken in every way the review world knows, with random scores."""
    prompts = [r["prompt"] for r in rw.rl_prompts(n, seed=seed)]
    completions = [c for (c,) in rw.sample_completions(prompts, 1, seed=seed + 1)]
    rng, scores = random.Random(seed), np.random.default_rng(seed)
    samples = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        response = rw.break_completion(prompt, completion, rng) if i % 3 == 0 else completion
        samples.append({"prompt": prompt, "response": response, "proxy_reward": float(scores.normal())})
        samples[-1]["grammatical"] = broken_form(prompt + response) is None
    return samples


@exercise("11.7")
def _check_slip_prices(slip_prices):
    samples = _slip_samples()
    got = slip_prices(samples)
    table = broken_form_table(samples)
    intact = np.mean([s["proxy_reward"] for s in samples if s["grammatical"]])
    if not isinstance(got, dict) or set(got) != {row["form"] for row in table}:
        raise NotYet("return a dict with one key per broken form found among the samples (and no other)")
    for row in table:
        value = got[row["form"]]
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise NotYet("each value is a pair: (share of all samples, price)")
        share, price = (float(v) for v in value)
        if abs(share - row["share"]) > 1e-9:
            raise NotYet(f"the share of {row['form']!r} is off: out of how many samples?")
        if abs(price - (row["proxy_reward"] - intact)) > 1e-9:
            raise NotYet(f"the price of {row['form']!r} is off: its mean score against the grammatical answers'")
