"""Notebook 14's exercise checks: a right answer passes, a plausible wrong one does not."""

import math

import numpy as np

from utils import limits as lim
from utils import reasoning as rs
from utils.exercises import check
from utils.retrieval import BM25


def test_14_1_bm25():
    def right(docs, query, k1, b):
        n, avgdl = len(docs), sum(map(len, docs)) / len(docs)
        idf = {w: math.log((n - sum(w in d for d in docs) + 0.5) / (sum(w in d for d in docs) + 0.5)) for w in query}
        return [
            sum(idf[q] * d.count(q) * (k1 + 1) / (d.count(q) + k1 * (1 - b + b * len(d) / avgdl)) for q in query)
            for d in docs
        ]

    def no_length_norm(docs, query, k1, b):
        return BM25(docs, k1=k1, b=0.0).scores(query)

    def plain_tf(docs, query, k1, b):  # no saturation: idf x tf
        bm = BM25(docs, k1=k1, b=b)
        return [sum(bm.idf.get(q, 0.0) * d.count(q) for q in query) for d in docs]

    assert check("14.1", right)
    assert check("14.1", lambda docs, query, k1, b: BM25(docs, k1=k1, b=b).scores(query))
    assert not check("14.1", no_length_norm)
    assert not check("14.1", plain_tf)


def test_14_2_ece():
    def unweighted(confidence, correct, bins):  # mean gap over non-empty bins, not weighted by their size
        rows = [r for r in lim.calibration_bins(confidence, correct, bins) if r["count"]]
        return np.mean([abs(r["accuracy"] - r["confidence"]) for r in rows])

    def overall_gap(confidence, correct, bins):  # one bin: |mean confidence - accuracy|
        return abs(np.mean(confidence) - np.mean(correct))

    assert check("14.2", lim.expected_calibration_error)
    assert not check("14.2", unweighted)
    assert not check("14.2", overall_gap)


def test_14_3_scratchpad():
    def right(start, steps):
        return rs.Puzzle(start, tuple(steps)).scratchpad()

    def totals_only(start, steps):
        return "so " + " ".join(str(t) for t in rs.Puzzle(start, tuple(steps)).totals)

    assert check("14.3", right)
    assert not check("14.3", totals_only)


def test_14_4_calculator():
    def with_eval(text):  # the unsafe way: eval() runs anything
        try:
            value = float(eval(text))  # noqa: S307
        except Exception:
            return "error"
        return str(int(value)) if value.is_integer() else f"{value:g}"

    assert check("14.4", rs.calculator)
    assert not check("14.4", with_eval)
