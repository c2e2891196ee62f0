"""Checks of notebook 13's exercises (RLAIF and Constitutional AI). Each tests the student's function on data made
here (review-world texts, random verdicts and logits) against the reference implementations in
``utils.constitution`` and ``utils.judge``, without saying what the answer is."""

from __future__ import annotations

import numpy as np

from utils import judge as jd
from utils import review_world as rw
from utils.constitution import label_report, ngrams
from utils.exercises import NotYet, exercise


@exercise("13.1")
def _check_ngrams(features):
    texts = ["i liked it.", "the plot was was good.", *(r["text"] for r in rw.lm_corpus(20, seed=5))]
    for text in texts:
        got = features(text)
        if not isinstance(got, (list, tuple)):
            raise NotYet("return a list of strings: the words, then the word pairs")
        if sorted(got) != sorted(ngrams(text)):
            want_words = rw.split_words(text)
            if sorted(got) == sorted(ngrams(text, bigrams=False)) or set(got) <= set(want_words):
                raise NotYet("the word pairs are missing")
            if len(got) == len(ngrams(text)) - 2:
                raise NotYet(f"{text!r}: did you pair the first and last words with the markers <s> and </s>?")
            raise NotYet(f"the features of {text!r} are not the words and neighbouring pairs")


def _verdicts_and_gold(seed: int = 3, n: int = 400):
    rng = np.random.default_rng(seed)
    gold_a = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], n)
    gold_b = np.where(rng.random(n) < 0.1, gold_a, rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], n))
    verdict = rng.choice([-1, 0, 1], n, p=[0.4, 0.1, 0.5])
    return verdict, gold_a, gold_b


@exercise("13.2")
def _check_agreement(agreement):
    verdict, gold_a, gold_b = _verdicts_and_gold()
    want = jd.agreement_with_gold(verdict, gold_a, gold_b)
    got = agreement(verdict, gold_a, gold_b)
    if got is None or not np.isfinite(float(got)):
        raise NotYet("return one number, the share of agreeing verdicts")
    if abs(float(got) - want) > 1e-9:
        strict = gold_a != gold_b
        if abs(float(got) - np.mean((verdict == np.sign(gold_a - gold_b))[strict])) < 1e-9:
            raise NotYet("a tie of the labeller should count half")
        raise NotYet("not the agreement we expect: leave out the pairs where gold ties, count a labeller's tie half")


@exercise("13.3")
def _check_picks_longer(picks_longer):
    rows = rw.preference_pairs(60, seed=9)
    verdict = np.random.default_rng(1).choice([-1, 0, 1], len(rows), p=[0.45, 0.1, 0.45])
    words_a = np.array([rw.word_count(r["chosen"]) for r in rows])
    words_b = np.array([rw.word_count(r["rejected"]) for r in rows])
    want = label_report(verdict, rows)["picks_longer"]
    got = picks_longer(verdict, words_a, words_b)
    if got is None or not np.isfinite(float(got)):
        raise NotYet("return one number, a share")
    if abs(float(got) - want) > 1e-9:
        longer = np.sign(words_a - words_b)
        if abs(float(got) - np.mean(np.where(verdict == 0, 0.5, verdict == longer))) < 1e-9:
            raise NotYet("pairs of equal length have no longer answer: leave them out")
        raise NotYet("not the share we expect; does a tie count half?")


@exercise("13.4")
def _check_score(score):
    rng = np.random.default_rng(4)
    grammar, sentiment = rng.normal(0, 3, 50), rng.normal(0, 2, 50)
    grammar[:3] = [-800.0, 800.0, 0.0]
    for weight in (1.0, 8.0):
        want = -weight * np.logaddexp(0.0, -grammar) + sentiment
        got = np.asarray(score(grammar, sentiment, weight), dtype=float)
        if got.shape != want.shape:
            raise NotYet("return one score per text, an array like the logits")
        if not np.all(np.isfinite(got)):
            raise NotYet("a very sure critic (logit -800) gives inf or nan: compute log sigmoid stably")
        if np.max(np.abs(got - want)) > 1e-6:
            if np.max(np.abs(got - (weight * grammar + sentiment))) < 1e-6:
                raise NotYet("the grammar term is log P(intact), not the logit: an intact review should cost ~0")
            raise NotYet("not the constitution's score; which term does the weight multiply?")
