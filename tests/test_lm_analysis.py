"""LM measurement helpers against hand computations and transformers' own loss and generate."""

from __future__ import annotations

import math

import pytest
import torch

from utils import review_world as rw
from utils.language_model import encode_reviews, nll_per_review
from utils.lm_analysis import (
    compute_budget,
    decoding_sweep,
    distinct_n,
    next_token_table,
    ngrams,
    per_review_nll,
    sample_stats,
    sample_texts,
    token_label,
    word_entropy,
)

REVIEWS = ["the acting was superb.", "i loved the plot. the music was dull.", "the cast felt weak."]


def test_ngrams_and_distinct_n_by_hand():
    assert ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert ngrams(["a"], 2) == []
    same = ["the acting was great.", "the acting was great."]  # words: the acting was great .
    assert distinct_n(same, 1) == pytest.approx(5 / 10)
    assert distinct_n(same, 2) == pytest.approx(4 / 8)
    # "the plot was dull." shares "the" "was" "." and the bigram ("the", ...) only partly.
    mixed = ["the acting was great.", "the plot was dull."]
    assert distinct_n(mixed, 1) == pytest.approx(7 / 10)  # the acting was great . plot dull
    assert distinct_n(mixed, 2) == pytest.approx(8 / 8)
    assert distinct_n(["great"], 2) == 0.0  # no bigram at all
    assert distinct_n(["a b a b"], 1, tokenize=str.split) == pytest.approx(2 / 4)


def test_word_entropy_by_hand():
    # "a b a b": two words, each with probability 1/2 -> ln 2.
    assert word_entropy(["a b", "a b"], tokenize=str.split) == pytest.approx(math.log(2))
    # the acting was great . -> five words once each -> ln 5.
    assert word_entropy(["the acting was great."]) == pytest.approx(math.log(5))
    probs = [3 / 6, 2 / 6, 1 / 6]
    assert word_entropy(["x x x y y z"], tokenize=str.split) == pytest.approx(-sum(p * math.log(p) for p in probs))
    assert word_entropy([""]) == 0.0


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_distinct_n_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        distinct_n(["the acting was great."], n)


def test_sample_stats_by_hand():
    texts = ["the acting was great.", "the acting was great.", "the acting was"]
    stats = sample_stats(texts, finished_fraction=2 / 3)
    assert stats.grammatical_fraction == pytest.approx(2 / 3)
    assert stats.unique_fraction == pytest.approx(2 / 3)
    assert stats.mean_words == pytest.approx((4 + 4 + 3) / 3)
    assert stats.distinct_1 == pytest.approx(distinct_n(texts, 1))
    assert stats.distinct_3 == pytest.approx(distinct_n(texts, 3))
    assert stats.word_entropy == pytest.approx(word_entropy(texts))
    assert stats.finished_fraction == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="at least one text"):
        sample_stats([])


def test_per_review_nll_matches_transformers_loss(tiny_base_lm):
    model, tokenizer = tiny_base_lm
    sequences = encode_reviews(REVIEWS, tokenizer)
    nll = per_review_nll(model, sequences, tokenizer.pad_token_id, batch_size=2)  # 2 batches, padding inside
    assert nll.shape == (len(REVIEWS),)
    for i, seq in enumerate(sequences):
        ids = torch.tensor([seq])
        with torch.no_grad():
            mean_loss = model(input_ids=ids, labels=ids).loss.item()  # transformers' shifted mean NLL
        assert nll[i].item() == pytest.approx(mean_loss * (len(seq) - 1), rel=1e-5)
    assert nll.mean().item() == pytest.approx(nll_per_review(model, sequences, tokenizer.pad_token_id), rel=1e-6)
    with pytest.raises(ValueError, match="at least one sequence"):
        per_review_nll(model, [], tokenizer.pad_token_id)


def test_sample_texts_seeded_and_greedy_matches_transformers(tiny_base_lm):
    model, tokenizer = tiny_base_lm
    texts, finished = sample_texts(model, tokenizer, 6, prompt="the acting was", max_new_tokens=20, seed=3)
    again, _ = sample_texts(model, tokenizer, 6, prompt="the acting was", max_new_tokens=20, seed=3)
    assert texts == again
    assert all(t.startswith("the acting was") for t in texts)
    assert 0.0 <= finished <= 1.0

    greedy, _ = sample_texts(model, tokenizer, 2, do_sample=False, prompt="the acting was", max_new_tokens=20)
    ids = torch.tensor([tokenizer("the acting was")["input_ids"]])
    reference = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=20,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    expected = tokenizer.decode(reference[0], skip_special_tokens=True)
    assert greedy == [expected, expected]
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        sample_texts(model, tokenizer, 0)


def test_sample_texts_finished_fraction_counts_eos(tiny_base_lm):
    model, tokenizer = tiny_base_lm
    # One new token: finished only for rows whose single sampled token is EOS.
    texts, finished = sample_texts(model, tokenizer, 50, prompt="the acting was great.", max_new_tokens=1, seed=0)
    ended = sum(t == "the acting was great." for t in texts)  # EOS decodes to nothing
    assert finished == pytest.approx(ended / 50)


def test_decoding_sweep_rows(tiny_base_lm):
    model, tokenizer = tiny_base_lm
    rows = decoding_sweep(model, tokenizer, [{"temperature": 1.0}, {"do_sample": False}], n=8, max_new_tokens=24)
    assert rows[0]["temperature"] == 1.0 and rows[1]["do_sample"] is False
    assert rows[1]["unique_fraction"] == pytest.approx(1 / 8)  # greedy: eight copies of one text
    texts, finished = sample_texts(model, tokenizer, 8, temperature=1.0, max_new_tokens=24, seed=0)
    assert rows[0]["grammatical_fraction"] == pytest.approx(sum(map(rw.is_grammatical, texts)) / 8)
    assert rows[0]["finished_fraction"] == pytest.approx(finished)
    with pytest.raises(ValueError, match="unknown setting key"):
        decoding_sweep(model, tokenizer, [{"temp": 1.0}], n=2)


def test_next_token_table_against_softmax(tiny_base_lm):
    model, tokenizer = tiny_base_lm
    prompt = "the acting was"
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        probs = model(ids).logits[0, -1].softmax(-1)
    table = next_token_table(model, tokenizer, prompt, top_n=5)
    top = torch.topk(probs, 5)
    assert [row[0] for row in table] == [token_label(tokenizer, i) for i in top.indices.tolist()]
    torch.testing.assert_close(torch.tensor([row[1] for row in table]), top.values)
    torch.testing.assert_close(torch.tensor([row[2] for row in table]), top.values)  # no knobs: unchanged
    # top-k 1 puts all the mass on the first row; temperature sharpens the ratio of the first two rows.
    assert [row[2] for row in next_token_table(model, tokenizer, prompt, top_k=1, top_n=3)] == [1.0, 0.0, 0.0]
    cold = next_token_table(model, tokenizer, prompt, temperature=0.5, top_n=2)
    expected_ratio = (top.values[0] / top.values[1]).item() ** 2  # p ∝ exp(logit / T) = p^(1/T) up to a constant
    assert cold[0][2] / cold[1][2] == pytest.approx(expected_ratio, rel=1e-4)


def test_token_label(tiny_base_lm):
    _, tokenizer = tiny_base_lm
    space_word = tokenizer(" acting", add_special_tokens=False)["input_ids"]
    assert len(space_word) == 1 and token_label(tokenizer, space_word[0]) == "␣acting"
    assert token_label(tokenizer, tokenizer.eos_token_id) == "<|endoftext|>"


def test_compute_budget_by_hand():
    budget = compute_budget(params=1_000_000, tokens=2_000_000)
    assert budget.flops == pytest.approx(6 * 1e6 * 2e6)
    assert budget.chinchilla_tokens == 20_000_000
    assert budget.chinchilla_flops == pytest.approx(6 * 1e6 * 2e7)
    assert budget.tokens_vs_chinchilla == pytest.approx(0.1)
    # Chinchilla's own example: 70B parameters, 1.4T tokens, about 5.9e23 FLOPs.
    chinchilla = compute_budget(params=70_000_000_000, tokens=1_400_000_000_000)
    assert chinchilla.tokens_vs_chinchilla == pytest.approx(1.0)
    assert math.isclose(chinchilla.flops, 5.88e23, rel_tol=1e-3)
    for bad in ({"params": 0, "tokens": 1}, {"params": 10, "tokens": -1}, {"params": 1.5, "tokens": 1}):
        with pytest.raises(ValueError, match="must be an int >= 1"):
            compute_budget(**bad)
    with pytest.raises(ValueError, match="tokens_per_param"):
        compute_budget(10, 10, tokens_per_param=0)
