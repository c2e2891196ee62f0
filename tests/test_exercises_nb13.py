"""Notebook 13's exercise checks: a right answer passes, a plausible wrong one does not."""

import numpy as np

from utils import judge as jd
from utils import review_world as rw
from utils.exercises import check


def test_13_1_ngrams():
    def right(text):
        words = rw.split_words(text)
        padded = ["<s>", *words, "</s>"]
        return words + [f"{a} {b}" for a, b in zip(padded, padded[1:])]

    def no_markers(text):
        words = rw.split_words(text)
        return words + [f"{a} {b}" for a, b in zip(words, words[1:])]

    assert check("13.1", right)
    assert not check("13.1", no_markers)
    assert not check("13.1", rw.split_words)


def test_13_2_agreement():
    def right(verdict, gold_a, gold_b):
        strict = gold_a != gold_b
        return np.where(verdict == 0, 0.5, verdict == np.sign(gold_a - gold_b))[strict].mean()

    def ties_count_zero(verdict, gold_a, gold_b):
        strict = gold_a != gold_b
        return np.mean((verdict == np.sign(gold_a - gold_b))[strict])

    def keeps_gold_ties(verdict, gold_a, gold_b):
        return np.where(verdict == 0, 0.5, verdict == np.sign(gold_a - gold_b)).mean()

    assert check("13.2", right)
    assert check("13.2", jd.agreement_with_gold)
    assert not check("13.2", ties_count_zero)
    assert not check("13.2", keeps_gold_ties)


def test_13_3_picks_longer():
    def right(verdict, words_a, words_b):
        longer = np.sign(words_a - words_b)
        return np.where(verdict == 0, 0.5, verdict == longer)[longer != 0].mean()

    def keeps_equal_lengths(verdict, words_a, words_b):
        return np.where(verdict == 0, 0.5, verdict == np.sign(words_a - words_b)).mean()

    assert check("13.3", right)
    assert not check("13.3", keeps_equal_lengths)


def test_13_4_score():
    def right(grammar, sentiment, weight):
        return -weight * np.logaddexp(0.0, -grammar) + sentiment

    def unstable(grammar, sentiment, weight):
        with np.errstate(all="ignore"):
            return weight * np.log(1 / (1 + np.exp(-grammar))) + sentiment

    def logit_not_log_prob(grammar, sentiment, weight):
        return weight * grammar + sentiment

    def weights_sentiment(grammar, sentiment, weight):
        return -np.logaddexp(0.0, -grammar) + weight * sentiment

    assert check("13.4", right)
    assert not check("13.4", unstable)
    assert not check("13.4", logit_not_log_prob)
    assert not check("13.4", weights_sentiment)
