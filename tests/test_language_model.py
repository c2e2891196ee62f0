"""Base LM training pieces: the schedule, the NLL bookkeeping, and the tiny pipeline end to end."""

from __future__ import annotations

import math

import pytest
import torch

from utils import review_world as rw
from utils.language_model import (
    LMConfig,
    LMTrainConfig,
    build_model,
    collate,
    encode_reviews,
    get_lr,
    nll_per_review,
    sequence_nll,
)


def test_lr_schedule_warmup_then_cosine():
    config = LMTrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert get_lr(0, config) == pytest.approx(0.1)
    assert get_lr(9, config) == pytest.approx(1.0)
    assert get_lr(10, config) == pytest.approx(1.0)
    assert get_lr(60, config) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert get_lr(110, config) == pytest.approx(0.1)


def test_collate_masks_padding():
    batch = collate([[5, 6, 7], [5]], pad_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [5, -100, -100]]


def test_sequence_nll_equals_hand_sum(tiny_base_lm):
    model, tokenizer = tiny_base_lm
    sequences = encode_reviews(["the acting was superb.", "i loved the plot. the music was dull."], tokenizer)
    nll = sequence_nll(model, collate(sequences, tokenizer.pad_token_id))
    for i, seq in enumerate(sequences):
        logprobs = torch.log_softmax(model(torch.tensor([seq])).logits[0], dim=-1)
        expected = -sum(logprobs[t, seq[t + 1]].item() for t in range(len(seq) - 1))
        assert nll[i].item() == pytest.approx(expected, rel=1e-5)
    # Padding a short sequence with more pads changes nothing.
    padded = collate(sequences + [sequences[0] + [0] * 5], tokenizer.pad_token_id)
    assert sequence_nll(model, padded)[0].item() == pytest.approx(nll[0].item(), rel=1e-5)


def test_untrained_model_is_near_uniform(tiny_profile):
    from utils.stages import load_course_tokenizer

    tokenizer = load_course_tokenizer(tiny_profile)
    model = build_model(LMConfig(n_layer=1, n_head=2, n_embd=16), tokenizer).eval()
    sequences = encode_reviews([r["text"] for r in rw.lm_corpus(20, seed=1)], tokenizer)
    tokens = sum(len(s) - 1 for s in sequences) / len(sequences)
    # A random init predicts roughly uniformly: NLL per review ~ tokens * log(V).
    assert nll_per_review(model, sequences, tokenizer.pad_token_id) == pytest.approx(
        tokens * math.log(len(tokenizer)), rel=0.05
    )


def test_tiny_pipeline_trains_and_reports(tiny_profile, tiny_base_lm):
    from utils.pipeline import run

    metrics = run(["data", "tokenizer", "lm"], "tiny")
    for key in (
        "lm.params",
        "lm.train_seconds",
        "lm.val_nll_per_review",
        "lm.source_entropy_per_review",
        "lm.grammatical_fraction",
    ):
        assert key in metrics
    model, tokenizer = tiny_base_lm
    assert metrics["lm.params"] == sum(p.numel() for p in model.parameters())
    # Thirty steps of training must already beat the uniform baseline by a wide margin.
    from utils.stages import load_dataset_rows

    val = encode_reviews([r["text"] for r in load_dataset_rows("lm_val", tiny_profile)], tokenizer)
    uniform = sum(len(s) - 1 for s in val) / len(val) * math.log(len(tokenizer))
    assert metrics["lm.val_nll_per_review"] < 0.8 * uniform
    assert metrics["lm.val_nll_per_review"] > metrics["lm.source_entropy_per_review"]


def test_bad_lm_configs():
    with pytest.raises(ValueError, match="divisible"):
        LMConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="lr"):
        LMTrainConfig(lr=0.0)
