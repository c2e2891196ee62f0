"""Checks for the exercises of notebook 00 (setup and the review world). Each compares the student's answer
with the review world's own functions (``utils.review_world``, ``utils.artifacts``) without printing them."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from utils import review_world as rw
from utils.artifacts import MANIFEST, read_meta
from utils.exercises import NotYet, exercise

ORIGINAL_REVIEW = "i loved the acting and the plot was great."
TEMPERATURES = (0.1, 0.25, 0.5, 1.0)


def _lexicon_words() -> set[str]:
    """Every word the grammar can write (content words and the fixed words of its rules)."""
    tables = [rw.ASPECTS, rw.DEGREES, *rw.ADJECTIVES.values(), *rw.VERBS.values()]
    words = {word for table in tables for phrase, *_ in table for word in phrase.split()}
    return words | set("the was felt i and but although overall a film would not recommend it".split())


def _one_word_changed(text: str) -> list[str]:
    """The new words of ``text`` if it differs from the original review in exactly one word position."""
    old, new = rw.split_words(ORIGINAL_REVIEW), rw.split_words(text)
    if len(old) != len(new):
        raise NotYet(f"change one word and keep the others: the review had {len(old)} words, yours has {len(new)}")
    changed = [b for a, b in zip(old, new) if a != b]
    if len(changed) != 1:
        raise NotYet(f"exactly one word should differ from {ORIGINAL_REVIEW!r}; {len(changed)} do")
    return changed


@exercise("00.1")
def check_source_entropy(answer):
    estimate, standard_error = answer
    reference, reference_se = rw.source_entropy(rw.lm_corpus(5000, seed=7))
    if abs(estimate - reference) > 1e-6:
        raise NotYet(f"the estimate {estimate:.3f} is not the mean of -log p over rw.lm_corpus(5000, seed=7)")
    if abs(standard_error - reference_se * math.sqrt(5000)) < 0.05 * reference_se * math.sqrt(5000):
        raise NotYet("that is the standard deviation of one review's -log p; the error of a mean is smaller")
    if abs(standard_error - reference_se) > 1e-6:
        raise NotYet(f"the standard error {standard_error:.4f} does not match the sample's (s / sqrt(n))")


@exercise("00.2")
def check_one_word_less_likely(answer):
    changed, predicted_change = answer
    _one_word_changed(changed)
    if not rw.is_grammatical(changed):
        raise NotYet(f"{changed!r} is rejected: {rw.rejection_reason(changed)}")
    measured = rw.log_prob(changed) - rw.log_prob(ORIGINAL_REVIEW)
    if measured > -2.0:
        raise NotYet(f"the change costs {-measured:.2f} nats; find one that makes it much less likely (> 2 nats)")
    if abs(predicted_change - measured) > 1e-6:
        raise NotYet(f"your accounting gives {predicted_change:.4f} nats; sum the log-ratio of each changed choice")


@exercise("00.2b")
def check_one_word_ungrammatical(broken):
    (new_word,) = _one_word_changed(broken)
    if new_word not in _lexicon_words():
        raise NotYet(f"{new_word!r} is not a word of the grammar; use only words the generator can write")
    if rw.is_grammatical(broken):
        raise NotYet(f"{broken!r} is still grammatical; which rule could one lexicon word break?")


@exercise("00.3")
def check_length_advantage(k):
    beta = rw.AnnotatorConfig().length_bias_per_word
    if not isinstance(k, int) or isinstance(k, bool):
        raise NotYet(f"k is a whole number of words, got {k!r}")
    if 1 / (1 + math.exp(-beta * k)) <= 0.9:
        raise NotYet(f"with a {k}-word advantage the longer answer wins with probability <= 0.9")
    if 1 / (1 + math.exp(-beta * (k - 1))) > 0.9:
        raise NotYet(f"{k} words is enough, but it is not the smallest advantage that is")


@exercise("00.4")
def check_ceilings(ceilings):
    pairs = rw.preference_pairs(200, seed=11)
    yours = list(ceilings(pairs, TEMPERATURES))
    if len(yours) != len(TEMPERATURES):
        raise NotYet(f"return one ceiling per temperature ({len(TEMPERATURES)}), got {len(yours)}")
    for t, value in zip(TEMPERATURES, yours):
        expected = rw.bayes_optimal_accuracy(pairs, rw.AnnotatorConfig(temperature=t))
        if abs(value - expected) > 1e-9:
            raise NotYet(f"at temperature {t} your ceiling {value:.4f} is off; keep the default length bias")


@exercise("00.5")
def check_cache(cache_entropy):
    previous = os.environ.get("RLHF_RESULTS_DIR")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            os.environ["RLHF_RESULTS_DIR"] = scratch  # the check's own throw-away results folder
            first = Path(cache_entropy(400, 3))
            stamp = (first / MANIFEST).stat().st_mtime_ns
            again, other = Path(cache_entropy(400, 3)), Path(cache_entropy(400, 4))
            if not (first / MANIFEST).is_file() or Path(scratch) not in first.parents:
                raise NotYet("return the folder get_or_build gives back (under the results folder)")
            if again != first or (first / MANIFEST).stat().st_mtime_ns != stamp:
                raise NotYet("the same configuration was built again; it should be found in the cache")
            if other == first:
                raise NotYet("a different seed gave the same folder: put the seed in the configuration")
            expected = rw.source_entropy(rw.lm_corpus(400, seed=3))[0]
            if abs(read_meta(first).get("entropy", math.nan) - expected) > 1e-9:
                raise NotYet("the artifact's meta should hold the estimate under the key 'entropy'")
    finally:
        if previous is None:
            os.environ.pop("RLHF_RESULTS_DIR", None)
        else:
            os.environ["RLHF_RESULTS_DIR"] = previous
