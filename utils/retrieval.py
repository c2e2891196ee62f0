"""Retrieval from scratch: BM25 (Okapi) over a list of documents, the "R" of retrieval-augmented generation.

For a query with words :math:`q_1 \\dots q_n` and a document :math:`D` of :math:`|D|` words,

.. math::

    \\mathrm{score}(D, Q) = \\sum_i \\mathrm{idf}(q_i)\\,
        \\frac{f(q_i, D)\\,(k_1 + 1)}{f(q_i, D) + k_1\\,(1 - b + b\\,|D| / \\mathrm{avgdl})},
    \\qquad \\mathrm{idf}(q) = \\ln \\frac{N - n(q) + 0.5}{n(q) + 0.5},

where :math:`f(q, D)` counts ``q`` in ``D``, :math:`n(q)` is the number of documents holding ``q`` and
:math:`N` the number of documents. A word in more than half the documents would get a negative idf; as in the
reference implementation ``rank_bm25.BM25Okapi`` (which ``tests/test_retrieval.py`` checks us against), such an
idf is replaced by ``epsilon`` times the mean idf. Term frequency saturates (``k1``) and long documents are
discounted (``b``): the two ideas BM25 adds to plain TF-IDF.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


class BM25:
    """Okapi BM25 over pre-tokenised documents (lists of words)."""

    def __init__(self, documents: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        if not documents:
            raise ValueError("BM25 needs at least one document")
        if not (k1 >= 0 and 0 <= b <= 1):
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b, self.epsilon = k1, b, epsilon
        self.counts = [Counter(doc) for doc in documents]
        self.lengths = [len(doc) for doc in documents]
        self.avgdl = sum(self.lengths) / len(documents)
        holding = Counter(word for counts in self.counts for word in counts)  # n(q)
        n = len(documents)
        self.idf = {w: math.log(n - k + 0.5) - math.log(k + 0.5) for w, k in holding.items()}
        floor = epsilon * sum(self.idf.values()) / len(self.idf)
        self.idf = {w: (v if v >= 0 else floor) for w, v in self.idf.items()}

    def scores(self, query: Sequence[str]) -> list[float]:
        """The BM25 score of every document for ``query`` (a list of words; unknown words add nothing)."""
        out = []
        for counts, length in zip(self.counts, self.lengths):
            norm = self.k1 * (1 - self.b + self.b * length / self.avgdl)
            out.append(
                sum(self.idf.get(q, 0.0) * counts[q] * (self.k1 + 1) / (counts[q] + norm) for q in query if counts[q])
            )
        return out

    def top(self, query: Sequence[str], k: int = 1) -> list[int]:
        """Indices of the ``k`` best documents, best first (ties: the earlier document first)."""
        scores = self.scores(query)
        return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


class CardIndex:
    """A BM25 index over text documents split on spaces: ``search(query)`` returns the best document's text."""

    def __init__(self, documents: Sequence[str], **bm25):
        self.documents = list(documents)
        self.bm25 = BM25([d.split() for d in self.documents], **bm25)

    def search(self, query: str) -> str:
        return self.documents[self.bm25.top(query.split(), 1)[0]]
