"""Checks of notebook 14's exercises (what alignment does not fix). Each tests the student's function on inputs made
here against the reference implementations in ``utils.retrieval``, ``utils.limits`` and ``utils.reasoning``,
without saying what the answer is."""

from __future__ import annotations

import math
import random

import numpy as np

from utils import limits as lim
from utils import reasoning as rs
from utils.exercises import NotYet, exercise
from utils.retrieval import BM25


def _corpus(seed: int = 0) -> list[list[str]]:
    """Documents in which no word is in more than half of them (so no idf is negative or floored)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(60)]
    return [rng.sample(words, rng.randint(2, 9)) + rng.sample(words[:5], 1) * rng.randint(0, 2) for _ in range(30)]


@exercise("14.1")
def _check_bm25(bm25_scores):
    docs = _corpus()
    rng = random.Random(1)
    vocab = sorted({w for d in docs for w in d})
    for query in ([rng.choice(vocab)], rng.sample(vocab, 3), ["w0", "w0", "w1"], ["nothing"]):
        for k1, b in ((1.5, 0.75), (1.2, 0.0), (2.0, 1.0)):
            got = np.asarray(bm25_scores(docs, query, k1, b), dtype=float)
            if got.shape != (len(docs),):
                raise NotYet("return one score per document")
            want = BM25(docs, k1=k1, b=b).scores(query)
            if np.abs(got - want).max() > 1e-9:
                if b == 0.0 and k1 == 1.2:
                    raise NotYet("with b = 0 the scores are off: the length normalisation should vanish")
                raise NotYet(f"scores are off for query {query} (k1={k1}, b={b}): check idf, saturation and |D|/avgdl")


@exercise("14.2")
def _check_ece(ece):
    rng = np.random.default_rng(0)
    for bins in (2, 5, 10):
        confidence = rng.uniform(0, 1, 200)
        correct = rng.uniform(0, 1, 200) < 0.3 + 0.4 * confidence  # under-confident low, over-confident high
        got = float(ece(confidence, correct, bins))
        if not math.isfinite(got) or abs(got - lim.expected_calibration_error(confidence, correct, bins)) > 1e-9:
            raise NotYet(f"off with {bins} bins: weight each bin by its share of the answers; empty bins add nothing")
    if abs(float(ece(np.array([1.0, 1.0]), np.array([True, True]), 5))) > 1e-12:
        raise NotYet("confidence 1.0 belongs in the last bin (and a right answer at confidence 1 is calibrated)")


@exercise("14.3")
def _check_scratchpad(scratchpad):
    rng = random.Random(3)
    for _ in range(50):
        p = rs.random_puzzle(rng, rng.randint(1, 6))
        got = scratchpad(p.start, list(p.steps))
        if got != p.scratchpad():
            raise NotYet(f"for score {p.start} with steps {list(p.steps)} the scratchpad differs from the format shown")


@exercise("14.4")
def _check_calculator(calculator):
    cases = ["2025 - 2011", "3 * (4 + 5)", "7 / 2", "-3 + 1", "10 / 4 * 2"]
    refused = ["__import__('os').getcwd()", "2 ** 8", "x - 1", "1 / 0", "len('abc')", "(1).real", "1 if 1 else 0"]
    for text in cases + refused:
        got = calculator(text)
        if got != rs.calculator(text):
            kind = "refuse it with 'error'" if text in refused else "compute it"
            raise NotYet(f"calculator({text!r}) returned {got!r}: it should {kind}")
