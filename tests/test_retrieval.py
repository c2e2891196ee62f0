"""BM25 from scratch (utils.retrieval) against the reference implementation rank_bm25.BM25Okapi, and by hand."""

from __future__ import annotations

import math
import random

import pytest
import torch
from rank_bm25 import BM25Okapi

from utils import knowledge_world as kw
from utils.retrieval import BM25, CardIndex


def corpus_and_queries():
    before, after = kw.make_world(kw.KnowledgeWorldConfig(), seed=3)
    films = before + after
    docs = [kw.card(f).split() for f in films]
    docs += [s.split() for f in films[:30] for s in kw.fact_sentences(f)]  # documents of other lengths
    rng = random.Random(0)
    vocab = sorted({w for d in docs for w in d})
    queries = [kw.question(f, a).split() for f in films[:40] for a in kw.ATTRIBUTES]
    queries += [rng.sample(vocab, 4) for _ in range(40)]
    queries += [["genre", "genre", "silver", "nosuchword"], ["director"]]  # repeated words, unknown words
    return docs, queries


@pytest.mark.parametrize("k1, b, epsilon", [(1.5, 0.75, 0.25), (1.2, 0.5, 0.1), (2.0, 1.0, 0.5)])
def test_scores_equal_rank_bm25(k1, b, epsilon):
    docs, queries = corpus_and_queries()
    ours, reference = BM25(docs, k1=k1, b=b, epsilon=epsilon), BM25Okapi(docs, k1=k1, b=b, epsilon=epsilon)
    assert min(ours.idf.values()) > 0  # words in more than half the documents took the epsilon floor
    for query in queries:
        torch.testing.assert_close(
            torch.tensor(ours.scores(query), dtype=torch.float64),
            torch.tensor(reference.get_scores(query), dtype=torch.float64),
            rtol=1e-12,
            atol=1e-12,
        )


def test_negative_idf_takes_the_epsilon_floor_as_in_the_reference():
    docs, _ = corpus_and_queries()
    reference = BM25Okapi(docs)
    ours = BM25(docs)
    n = len(docs)
    holding = sum("director" in d for d in docs)
    assert math.log((n - holding + 0.5) / (holding + 0.5)) < 0  # the raw idf would be negative
    assert ours.idf["director"] == pytest.approx(reference.idf["director"], abs=1e-12) and ours.idf["director"] > 0


def test_bm25_by_hand():
    docs = [["a", "b"], ["a", "a", "c"], ["d"]]
    bm25 = BM25(docs, k1=1.5, b=0.75)
    avgdl = 2.0
    idf_c = math.log((3 - 1 + 0.5) / (1 + 0.5))
    expected = idf_c * 1 * 2.5 / (1 + 1.5 * (1 - 0.75 + 0.75 * 3 / avgdl))
    assert bm25.scores(["c"]) == pytest.approx([0.0, expected, 0.0], abs=1e-12)
    assert bm25.top(["c"]) == [1]
    assert bm25.top(["zzz"], k=3) == [0, 1, 2]  # all tied at 0: document order
    with pytest.raises(ValueError):
        BM25([])


def test_card_index_finds_every_films_own_card():
    before, after = kw.make_world(kw.KnowledgeWorldConfig(), seed=0)
    films = before + after
    index = CardIndex([kw.card(f) for f in films])
    for film in films:
        for attribute in kw.ATTRIBUTES:
            assert index.search(kw.question(film, attribute)) == kw.card(film)
