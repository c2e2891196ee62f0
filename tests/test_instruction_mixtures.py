"""Instruction mixtures: exact task counts, nested data sizes, pretraining replay (its share, and the labels TRL
trains on for an empty prompt), and a fixed number of optimiser steps whatever the data size. The trained model is
tiny (1 layer, width 32): for speed, not quality."""

from __future__ import annotations

from collections import Counter

import pytest

from utils import instruction_mixtures as mix
from utils import review_world as rw
from utils import sft
from utils.language_model import LMConfig, build_model
from utils.tokenizer import train_bpe

TASKS = rw.INSTRUCTION_TASKS


@pytest.fixture(scope="module")
def pool():
    return rw.instruction_pairs(900, seed=6)


def test_task_mixture_has_exact_counts(pool):
    counts = {"summarise": 40, "write": 7, "continue": 0}
    mixture = mix.task_mixture(pool, counts, seed=1)
    assert Counter(r["task"] for r in mixture) == {"summarise": 40, "write": 7}
    assert len({id(r) for r in mixture}) == 47 and all(r in pool for r in mixture)  # drawn without replacement
    assert mixture == mix.task_mixture(pool, counts, seed=1) != mix.task_mixture(pool, counts, seed=2)
    with pytest.raises(ValueError, match="asked for"):
        mix.task_mixture(pool, {"write": 10_000}, seed=0)


def test_even_counts():
    assert mix.even_counts(250, TASKS) == {"summarise": 84, "write": 83, "continue": 83}
    assert mix.even_counts(6, ["a", "b"]) == {"a": 3, "b": 3}


def test_nested_mixtures_only_add_examples(pool):
    mixtures = mix.nested_mixtures(pool, [30, 90, 240], TASKS, seed=3)
    for size, rows in mixtures.items():
        assert Counter(r["task"] for r in rows) == mix.even_counts(size, TASKS)
    assert all(r in mixtures[90] for r in mixtures[30]) and all(r in mixtures[240] for r in mixtures[90])


def test_with_pretraining_share(pool):
    reviews = [r["text"] for r in rw.lm_corpus(400, seed=7)]
    rows = pool[:300]
    mixed = mix.with_pretraining(rows, reviews, share=0.25, seed=0)
    replayed = [r for r in mixed if r["task"] == mix.PRETRAIN_TASK]
    assert len(replayed) == 100 and len(mixed) == 400  # 100 / 400 = 0.25
    assert all(r["prompt"] == "" for r in replayed) and [r["completion"] for r in replayed] != reviews[:100]
    assert sorted(r["completion"] for r in replayed) == sorted(reviews[:100])
    assert mix.with_pretraining(rows, reviews, share=0.0, seed=0) != rows  # shuffled, nothing added
    assert len(mix.with_pretraining(rows, reviews, share=0.0, seed=0)) == 300
    with pytest.raises(ValueError):
        mix.with_pretraining(rows, reviews[:10], share=0.5, seed=0)


@pytest.fixture(scope="module")
def tokenizer(pool):
    texts = [r["text"] for r in rw.lm_corpus(400, seed=4)] + [r["prompt"] + r["completion"] for r in pool]
    return train_bpe(texts, vocab_size=300)


TINY_LM = LMConfig(n_layer=1, n_head=2, n_embd=32, n_positions=256)
TINY_SFT = sft.SFTConfig(epochs=1.0, batch_size=16, lr=3e-3)


def test_a_pretraining_row_trains_every_token_of_the_review(tokenizer, tmp_path):
    review = "the plot was good. i would recommend it."
    trainer = sft.build_sft_trainer(
        build_model(TINY_LM, tokenizer), tokenizer, mix.pretraining_rows([review]), TINY_SFT, tmp_path
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids = tokenizer(review + tokenizer.eos_token)["input_ids"]  # [BOS] review [EOS], as in pretraining
    assert batch["input_ids"][0].tolist() == ids
    assert batch["labels"][0].tolist() == [-100] + ids[1:]  # only BOS is masked: the first word is trained too


@pytest.mark.parametrize(("n_rows", "steps"), [(40, 5), (40, 3), (100, 7), (16, 4)])
def test_fixed_steps_takes_exactly_that_many_steps(tokenizer, pool, n_rows, steps):
    config = mix.fixed_steps(TINY_SFT, n_rows, steps)
    _, report = sft.train_sft(build_model(TINY_LM, tokenizer), tokenizer, pool[:n_rows], config)
    assert report["steps"] == steps


def test_per_task_nll(tokenizer, pool):
    model = build_model(TINY_LM, tokenizer)
    rows = pool[:60]
    nll = mix.per_task_nll(model, tokenizer, rows)
    assert set(nll) == set(TASKS)
    summarise = [r for r in rows if r["task"] == "summarise"]
    assert nll["summarise"] == pytest.approx(sft.completion_nll(model, tokenizer, summarise))
