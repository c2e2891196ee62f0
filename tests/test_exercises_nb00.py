"""Notebook 00's exercise checks: a right answer passes, a plausible wrong one does not."""

from __future__ import annotations

import math

from utils import review_world as rw
from utils.artifacts import get_or_build
from utils.exercises import check


def test_00_1_source_entropy():
    estimate, standard_error = rw.source_entropy(rw.lm_corpus(5000, seed=7))
    assert check("00.1", (estimate, standard_error))
    assert not check("00.1", (estimate, standard_error * math.sqrt(5000)))  # the standard deviation instead
    assert not check("00.1", rw.source_entropy(rw.lm_corpus(5000, seed=8)))  # another sample


def test_00_2_one_word_less_likely():
    changed = "i loved the acting and the plot was awful."
    agree = rw.GrammarConfig().connective_agreement_prob

    def adjective_log_prob(word, polarity):
        table = rw.ADJECTIVES[polarity]
        return math.log(next(w for name, w, _ in table if name == word) / sum(w for _, w, _ in table))

    delta = math.log((1 - agree) / agree) + adjective_log_prob("awful", -1) - adjective_log_prob("great", +1)
    assert check("00.2", (changed, delta))
    assert not check("00.2", (changed, delta - math.log((1 - agree) / agree)))  # forgot the connective
    assert not check("00.2", ("i loved the acting and the plot was good.", 0.0))  # barely less likely
    assert not check("00.2", ("i loved the music and the plot was awful.", delta))  # two words changed


def test_00_2b_one_word_ungrammatical():
    assert check("00.2b", "i loved the acting and the plot was very.")
    assert not check("00.2b", "i loved the acting and the plot was greatt.")  # not a lexicon word
    assert not check("00.2b", "i loved the acting and the plot was good.")  # still grammatical


def test_00_3_length_advantage():
    assert check("00.3", 15)
    assert not check("00.3", 14) and not check("00.3", 16) and not check("00.3", 15.0)


def test_00_4_ceilings():
    def ceilings(pairs, temperatures):
        return [rw.bayes_optimal_accuracy(pairs, rw.AnnotatorConfig(temperature=t)) for t in temperatures]

    def without_length_bias(pairs, temperatures):
        return [
            rw.bayes_optimal_accuracy(pairs, rw.AnnotatorConfig(temperature=t, length_bias_per_word=0.0))
            for t in temperatures
        ]

    assert check("00.4", ceilings)
    assert not check("00.4", without_length_bias)


def test_00_5_cache():
    def cache_entropy(n, seed):
        def build(folder):
            return {"entropy": rw.source_entropy(rw.lm_corpus(n, seed=seed))[0]}

        return get_or_build("entropy", {"n": n, "seed": seed}, build)

    def seed_left_out(n, seed):
        def build(folder):
            return {"entropy": rw.source_entropy(rw.lm_corpus(n, seed=seed))[0]}

        return get_or_build("entropy", {"n": n}, build)

    assert check("00.5", cache_entropy)
    assert not check("00.5", seed_left_out)
