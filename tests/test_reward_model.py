"""Reward models: the Bradley-Terry loss, the two heads, our loop vs TRL's RewardTrainer, and the metrics.

Checked against hand computations, ``torch.nn.functional.logsigmoid``, a manual gather of hidden states,
TRL's ``RewardTrainer`` (same weights, batches and optimiser -> same losses) and ``scipy.stats``.
Models here are tiny (1-2 layers, width 32) and randomly initialised; the numbers they reach mean nothing
beyond what each test states.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification, GPT2ForSequenceClassification, TrainerCallback

from utils import review_world as rw
from utils import reward_model as rm
from utils.language_model import LMConfig, build_model
from utils.tokenizer import train_bpe

TINY_LM = LMConfig(n_layer=2, n_head=2, n_embd=32, n_positions=128)  # tiny: for speed, not quality
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # real slices, next to the repo


@pytest.fixture(scope="module")
def tokenizer():
    """A small BPE trained on review-world text (a second or less)."""
    texts = [r["text"] for r in rw.lm_corpus(1_000, seed=3)]
    return train_bpe(texts, vocab_size=400)


@pytest.fixture(scope="module")
def preference_rows():
    """48 labelled review-world pairs in TRL's explicit-prompt format."""
    return rw.preference_pairs(48, seed=5)


def tiny_gpt_rm(tokenizer, seed: int = 0) -> GPT2ForSequenceClassification:
    lm = build_model(TINY_LM, tokenizer, seed=seed)
    return rm.build_gpt_reward_model(lm, tokenizer.pad_token_id, seed=seed)


# ------------------------------------------------------------------------------------------------
# Bradley-Terry loss
# ------------------------------------------------------------------------------------------------
def test_bradley_terry_loss_matches_hand_computation_and_logsigmoid():
    r_chosen = torch.tensor([2.0, 0.0, -1.0, 30.0])
    r_rejected = torch.tensor([0.0, 0.0, 1.0, -20.0])
    by_hand = torch.tensor(
        [math.log(1 + math.exp(-2.0)), math.log(2.0), math.log(1 + math.exp(2.0)), math.log1p(math.exp(-50.0))]
    )
    torch.testing.assert_close(rm.bradley_terry_loss(r_chosen, r_rejected, reduction="none"), by_hand)
    torch.testing.assert_close(rm.bradley_terry_loss(r_chosen, r_rejected), by_hand.mean())
    torch.testing.assert_close(rm.bradley_terry_loss(r_chosen, r_rejected), -F.logsigmoid(r_chosen - r_rejected).mean())


def test_bradley_terry_loss_is_stable_and_has_the_right_gradient():
    diff = torch.tensor([-200.0, -5.0, -1e-3, 0.3, 200.0], requires_grad=True)
    ours = rm.bradley_terry_loss(diff, torch.zeros(5), reduction="none")
    torch.testing.assert_close(
        ours,
        torch.tensor([200.0, math.log1p(math.exp(5.0)), math.log1p(math.exp(1e-3)), math.log1p(math.exp(-0.3)), 0.0]),
    )
    (grad,) = torch.autograd.grad(ours.sum(), diff)
    torch.testing.assert_close(grad, -torch.sigmoid(-diff.detach()))  # d/dx log(1 + e^-x) = -sigmoid(-x)
    # At an exact tie the gradient is -sigmoid(0) = -1/2 (the kinked form max(-x, 0) + log1p(exp(-|x|)) gives -1).
    tie = torch.zeros(1, requires_grad=True)
    (tie_grad,) = torch.autograd.grad(rm.bradley_terry_loss(tie, torch.zeros(1)), tie)
    assert tie_grad.item() == -0.5 and rm.bradley_terry_loss(tie, torch.zeros(1)).item() == pytest.approx(math.log(2))
    assert torch.isinf(-torch.log(torch.sigmoid(torch.tensor(-200.0))))  # what the naive formula gives


def test_bradley_terry_loss_equals_torch_logsigmoid_with_its_gradient_over_a_wide_range():
    generator = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(2000, generator=generator) * 5, torch.linspace(-150.0, 150.0, 301)]).requires_grad_()
    ours = rm.bradley_terry_loss(x, torch.zeros_like(x), reduction="none")
    reference = -F.logsigmoid(x)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert torch.isfinite(ours).all()
    (grad,) = torch.autograd.grad(ours.sum(), x)
    (reference_grad,) = torch.autograd.grad(reference.sum(), x)
    torch.testing.assert_close(grad, reference_grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, -torch.sigmoid(-x.detach()), rtol=0, atol=1e-6)
    ties = torch.zeros(4, requires_grad=True)  # four tied pairs, per-pair gradient of the summed loss
    (tie_grad,) = torch.autograd.grad(rm.bradley_terry_loss(ties, torch.zeros(4), reduction="none").sum(), ties)
    assert tie_grad.tolist() == [-0.5] * 4


def test_margin_shifts_the_loss():
    r_chosen, r_rejected = torch.tensor([1.5, -0.5]), torch.tensor([0.5, 0.0])
    for margin in (0.0, 0.7, 2.0):
        torch.testing.assert_close(
            rm.bradley_terry_loss(r_chosen, r_rejected, margin), -F.logsigmoid(r_chosen - r_rejected - margin).mean()
        )
        torch.testing.assert_close(
            rm.bradley_terry_loss(r_chosen, r_rejected, margin), rm.bradley_terry_loss(r_chosen - margin, r_rejected)
        )
    assert rm.bradley_terry_loss(r_chosen, r_rejected, 1.0) > rm.bradley_terry_loss(r_chosen, r_rejected)
    per_pair_margin = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(
        rm.bradley_terry_loss(r_chosen, r_rejected, per_pair_margin, reduction="none"),
        -F.logsigmoid(r_chosen - r_rejected - per_pair_margin),
    )


# ------------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------------
def test_gpt_reward_model_starts_from_the_lm_weights(tokenizer):
    lm = build_model(TINY_LM, tokenizer, seed=1)
    model = rm.build_gpt_reward_model(lm, tokenizer.pad_token_id, seed=0)
    for name, tensor in lm.transformer.state_dict().items():
        torch.testing.assert_close(model.transformer.state_dict()[name], tensor)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    assert model.score.weight.shape == (1, TINY_LM.n_embd) and model.score.bias is None
    again = rm.build_gpt_reward_model(lm, tokenizer.pad_token_id, seed=0)
    torch.testing.assert_close(model.score.weight, again.score.weight)  # seeded head


def test_gpt_head_reads_the_last_non_pad_token(tokenizer):
    model = tiny_gpt_rm(tokenizer).eval()
    texts = ["the plot was great.", "i hated the acting and the music was dull. overall, a bad film.", "ok"]
    encoded = rm.encode_texts(texts, tokenizer)
    batch = rm.right_pad(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        scores = model(**batch).logits.squeeze(-1)  # (B,)
        hidden = model.transformer(**batch).last_hidden_state  # (B, T, C)
    last = torch.tensor([len(ids) - 1 for ids in encoded])  # the EOS we appended
    assert all(batch["input_ids"][i, last[i]] == tokenizer.eos_token_id for i in range(len(texts)))
    manual = hidden[torch.arange(len(texts)), last] @ model.score.weight.T  # (B, 1)
    torch.testing.assert_close(scores, manual.squeeze(-1))


def test_gpt_scores_do_not_depend_on_padding(tokenizer):
    model = tiny_gpt_rm(tokenizer).eval()
    texts = ["the plot was great.", "i hated the acting and the music was dull. overall, a bad film."]
    encoded = rm.encode_texts(texts, tokenizer)
    batch = rm.right_pad(encoded, tokenizer.pad_token_id)
    extra = 7  # more padding columns on the right
    padded = {
        k: F.pad(v, (0, extra), value=tokenizer.pad_token_id if k == "input_ids" else 0) for k, v in batch.items()
    }
    with torch.no_grad():
        batched = model(**batch).logits.squeeze(-1)
        more_padding = model(**padded).logits.squeeze(-1)
        alone = torch.cat([model(input_ids=torch.tensor([ids])).logits.squeeze(-1) for ids in encoded])
    torch.testing.assert_close(more_padding, batched)
    torch.testing.assert_close(alone, batched)
    torch.testing.assert_close(rm.raw_scores(model, tokenizer, texts, batch_size=1), batched)


def test_encoder_cls_head_reads_position_zero_and_ignores_padding(tokenizer):
    config = rm.RewardModelConfig(encoder_n_layer=1, encoder_n_embd=32, encoder_n_head=2)
    model = rm.build_encoder_reward_model(config, tokenizer, max_positions=128).eval()
    assert isinstance(model, BertForSequenceClassification)
    texts = ["the plot was great.", "i hated the acting and the music was dull."]
    encoded = rm.encode_texts(texts, tokenizer)
    assert all(ids[0] == tokenizer.bos_token_id for ids in encoded)  # BOS first: our CLS
    batch = rm.right_pad(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        scores = model(**batch).logits.squeeze(-1)
        hidden = model.bert(**batch).last_hidden_state  # (B, T, C)
        manual = model.classifier(model.bert.pooler(hidden)).squeeze(-1)  # pooler = tanh(W h[:, 0] + b)
        manual_cls = model.classifier(torch.tanh(model.bert.pooler.dense(hidden[:, 0]))).squeeze(-1)
        alone = torch.cat([model(input_ids=torch.tensor([ids])).logits.squeeze(-1) for ids in encoded])
    torch.testing.assert_close(scores, manual)
    torch.testing.assert_close(scores, manual_cls)
    torch.testing.assert_close(alone, scores)  # the mask hides the padding from every position


def test_pairs_are_encoded_like_trl(tokenizer, preference_rows):
    row = preference_rows[0]
    chosen, rejected = rm.encode_pairs([row], tokenizer)[0]
    assert chosen == tokenizer(row["prompt"] + row["chosen"] + tokenizer.eos_token)["input_ids"]
    assert chosen[0] == tokenizer.bos_token_id and chosen[-1] == tokenizer.eos_token_id
    assert chosen.count(tokenizer.eos_token_id) == 2  # BOS and EOS are the same token, once each
    batch = rm.collate_pairs([(chosen, rejected), (rejected, chosen)], tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 4  # chosen, chosen, rejected, rejected
    assert batch["input_ids"][0, : len(chosen)].tolist() == chosen
    assert batch["input_ids"][2, : len(rejected)].tolist() == rejected
    assert batch["attention_mask"].sum(1).tolist() == [len(chosen), len(rejected), len(rejected), len(chosen)]


# ------------------------------------------------------------------------------------------------
# Our loop vs TRL's RewardTrainer
# ------------------------------------------------------------------------------------------------
def test_batch_indices_are_epochs_of_permutations():
    batches = rm.batch_indices(10, 4, steps=6, shuffle=True, seed=0)
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(sum(batches[:3], [])) == list(range(10)) and sorted(sum(batches[3:], [])) == list(range(10))
    assert sum(batches[:3], []) != sum(batches[3:], [])  # reshuffled each epoch
    assert rm.batch_indices(10, 4, 3, shuffle=False, seed=0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert rm.batch_indices(10, 4, 6, shuffle=True, seed=0) == batches  # seeded


class FirstGradients(TrainerCallback):
    """Keeps a copy of the (clipped) gradients TRL's loop is about to apply at its first step."""

    def __init__(self):
        self.gradients: dict[str, torch.Tensor] | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.gradients is None:
            self.gradients = {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def test_our_loop_matches_trl_reward_trainer(tokenizer, preference_rows, tmp_path):
    """Same initial weights, same batches, same optimiser and schedule -> same gradients and losses.

    Parameters are not compared after the AdamW steps: our loss and TRL's ``F.logsigmoid`` round
    differently in the last bit, and Adam divides each gradient by its own running scale, which blows
    that rounding up into full-size steps on elements whose gradient is ~0 (e.g. the final LayerNorm
    bias, which shifts every reward equally and so cancels in r_chosen - r_rejected). The losses, which
    depend on all the weights, agree to 1e-5 for every step.
    """
    config = rm.RewardModelConfig(
        steps=5, batch_size=8, lr=3e-3, warmup_steps=2, shuffle=False, eval_every=5, eval_pairs=8, weight_decay=0.1
    )
    pairs = rm.encode_pairs(preference_rows, tokenizer)

    ours = tiny_gpt_rm(tokenizer, seed=0)
    log = rm.train_reward_model(ours, pairs, pairs, tokenizer.pad_token_id, config)
    our_losses = [loss for record in log for loss in record["step_losses"]]
    first_step = tiny_gpt_rm(tokenizer, seed=0)  # our first step by hand, to compare gradients
    loss = rm.bradley_terry_loss(*rm.pair_rewards(first_step, rm.collate_pairs(pairs[:8], tokenizer.pad_token_id)))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(first_step.parameters(), config.grad_clip)

    theirs = tiny_gpt_rm(tokenizer, seed=0)  # identical weights
    optimizer = rm.make_optimizer(theirs, config.lr, config.weight_decay, config.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: rm.lr_at(step, config) / config.lr)
    trainer = rm.build_trl_reward_trainer(
        theirs, tokenizer, preference_rows, config, tmp_path, optimizers=(optimizer, scheduler)
    )
    recorder = FirstGradients()
    trainer.add_callback(recorder)
    # The trainer trains on our encoding (the same as TRL's own: test_trl_preprocessing_gives_our_encoding)
    assert trainer.train_dataset[0]["chosen_ids"] == pairs[0][0]
    assert trainer.train_dataset[0]["rejected_ids"] == pairs[0][1]
    trainer.train()
    trl_losses = rm.trl_step_losses(trainer)

    for name, p in first_step.named_parameters():
        torch.testing.assert_close(
            p.grad, recorder.gradients[name], rtol=1e-4, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}"
        )
    assert len(our_losses) == len(trl_losses) == config.steps
    assert our_losses[0] == pytest.approx(math.log(2), abs=0.05)  # the head starts near 0: both rewards ~ 0
    np.testing.assert_allclose(our_losses, trl_losses, rtol=1e-5, atol=1e-6)
    assert our_losses[-1] != our_losses[0]  # the weights did move (the comparison is not of constants)


def test_reward_model_learns_review_sentiment(tokenizer):
    """Trained on 600 labelled pairs, a tiny RM ranks held-out pairs far better than chance.

    Cleaner annotators (temperature 0.1) than the course's, so 600 pairs suffice: Bayes-optimal accuracy
    is ~0.92 here; this RM reaches ~0.76. A broken RM (wrong token read, sign flipped, no gradient)
    scores ~0.5 or less.
    """
    annotator = rw.AnnotatorConfig(temperature=0.1, seed=5)
    texts = [r["text"] for r in rw.lm_corpus(1_800, seed=3)]
    labeller = rw.SimulatedAnnotator(annotator)
    rows = [labeller.label("", a, b) for a, b in zip(texts[0::2], texts[1::2])]
    train_rows, test_rows = rows[:600], rows[600:900]
    assert rw.bayes_optimal_accuracy(test_rows, annotator) > 0.88
    config = rm.RewardModelConfig(steps=60, batch_size=32, lr=3e-3, warmup_steps=10, eval_every=60, eval_pairs=300)
    lm = build_model(LMConfig(n_layer=1, n_head=2, n_embd=32, n_positions=128), tokenizer, seed=0)
    model = rm.build_gpt_reward_model(lm, tokenizer.pad_token_id, seed=0)
    pairs = rm.encode_pairs(train_rows, tokenizer)
    log = rm.train_reward_model(model, pairs, rm.encode_pairs(test_rows, tokenizer), tokenizer.pad_token_id, config)
    assert log[-1]["val_accuracy"] > 0.7
    assert log[-1]["val_loss"] < math.log(2) - 0.1


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------
def test_ece_on_hand_examples():
    # Confidences .95 .85 .75 .65 .55 (one per bin of width .1), right, right, wrong, right, right
    result = rm.calibration([0.95, 0.85, 0.25, 0.65, 0.55], n_bins=5)
    assert result["ece"] == pytest.approx((0.05 + 0.15 + 0.75 + 0.35 + 0.45) / 5)
    assert [b["count"] for b in result["bins"]] == [1, 1, 1, 1, 1]
    # Both say 82%: one right, one wrong -> accuracy 50% in that bin
    result = rm.calibration([0.82, 0.18], n_bins=5)
    assert result["ece"] == pytest.approx(0.32)
    assert result["bins"] == [
        {
            "lower": pytest.approx(0.8),
            "upper": pytest.approx(0.9),
            "count": 2,
            "confidence": pytest.approx(0.82),
            "accuracy": 0.5,
        }
    ]
    # Says 80% and is right 8 times out of 10: perfectly calibrated
    assert rm.calibration([0.8] * 8 + [0.2] * 2)["ece"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="probabilities"):
        rm.calibration([1.2])


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    y_tied = np.round(y)  # many ties
    for a, b in ((x, y), (x, y_tied), (np.round(x), y_tied)):
        assert rm.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
    np.testing.assert_array_equal(rm.rankdata(y_tied), scipy.stats.rankdata(y_tied))
    with pytest.raises(ValueError, match="same length"):
        rm.spearman([1, 2], [1, 2, 3])


def test_length_bias_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    gold, words = rng.uniform(-1, 1, 500), rng.integers(5, 40, 500)
    scores = 4.0 * gold + 0.15 * words - 2.0
    fit = rm.length_bias(scores, gold, words)
    assert fit == pytest.approx({"gold_coefficient": 4.0, "length_coefficient": 0.15, "intercept": -2.0})


def test_normalisation_gives_mean_zero_std_one_and_is_saved(tokenizer, tmp_path):
    model = tiny_gpt_rm(tokenizer)
    with torch.no_grad():
        model.score.weight.normal_(std=1.0)  # spread the scores
    texts = [r["text"] for r in rw.lm_corpus(64, seed=9)]
    mean, std = rm.set_normalisation(model, tokenizer, texts)
    normalised = rm.score_texts(model, tokenizer, texts, batch_size=16)
    assert normalised.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert normalised.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(normalised, (rm.raw_scores(model, tokenizer, texts) - mean) / std)
    model.save_pretrained(str(tmp_path))
    reloaded = GPT2ForSequenceClassification.from_pretrained(str(tmp_path))
    assert (reloaded.config.reward_mean, reloaded.config.reward_std) == (mean, std)
    torch.testing.assert_close(rm.score_texts(reloaded, tokenizer, texts), normalised)


def test_score_texts_rejects_texts_longer_than_the_model(tokenizer):
    model = tiny_gpt_rm(tokenizer)
    with pytest.raises(ValueError, match="128 positions"):
        rm.score_texts(model, tokenizer, ["the plot was great. " * 60])


def test_config_validation():
    with pytest.raises(ValueError, match="init"):
        rm.RewardModelConfig(init="random")
    with pytest.raises(ValueError, match="steps"):
        rm.RewardModelConfig(steps=0)
    with pytest.raises(ValueError, match="divisible"):
        rm.RewardModelConfig(encoder_n_embd=30, encoder_n_head=4)


# ------------------------------------------------------------------------------------------------
# Sequences longer than the model: cut to BOS + the end, and reported
# ------------------------------------------------------------------------------------------------
def test_trl_preprocessing_gives_our_encoding(tokenizer, preference_rows, tmp_path):
    """TRL's own RewardTrainer, given the text rows, tokenizes them as encode_pairs does."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(
        output_dir=str(tmp_path),
        max_length=None,
        report_to=[],
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
    )
    trainer = RewardTrainer(
        model=tiny_gpt_rm(tokenizer),
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(preference_rows[:8]),
    )
    ours = rm.encode_pairs(preference_rows[:8], tokenizer)
    assert [(r["chosen_ids"], r["rejected_ids"]) for r in trainer.train_dataset] == ours


def test_truncate_pairs_keeps_the_first_token_and_the_end():
    pairs = [([0, 1, 2, 3, 4, 5, 6], [0, 9]), ([0, 7, 8], [0, 1, 2, 3, 4])]
    cut, n_cut = rm.truncate_pairs(pairs, 4)
    assert cut == [([0, 4, 5, 6], [0, 9]), ([0, 7, 8], [0, 2, 3, 4])] and n_cut == 2
    assert rm.truncate_pairs(pairs, 7) == (pairs, 0)  # at the limit: nothing to cut
    assert rm.truncate_pairs(pairs, 6) == ([([0, 2, 3, 4, 5, 6], [0, 9]), pairs[1]], 1)
    for bad in (1, 0, 2.5, True, None):
        with pytest.raises(ValueError, match="max_length must be an int >= 2"):
            rm.truncate_pairs(pairs, bad)


def long_rows(rows, repeat: int = 30):
    """Review-world rows behind a long preamble (30 x 6 tokens): they overflow TINY_LM's 128 positions."""
    return [{**r, "prompt": "the plot was great. " * repeat + r["prompt"]} for r in rows]


def _cut_counts(records) -> list[tuple[int, int]]:
    """(cut, total) of each truncation warning in caplog's records."""
    import re

    found = [re.search(r"(\d+) of (\d+) pairs", r.getMessage()) for r in records if r.levelname == "WARNING"]
    return [(int(m.group(1)), int(m.group(2))) for m in found if m]


def test_training_and_evaluation_cut_long_pairs_and_report_it(tokenizer, preference_rows, caplog):
    rows = long_rows(preference_rows[:16]) + preference_rows[16:24]
    pairs = rm.encode_pairs(rows, tokenizer)
    n_long = sum(max(len(c), len(r)) > TINY_LM.n_positions for c, r in pairs)
    assert n_long == 16  # these pairs would end in "IndexError: index out of range in self" uncut

    model = tiny_gpt_rm(tokenizer)
    config = rm.RewardModelConfig(steps=3, batch_size=8, warmup_steps=1, eval_every=3, eval_pairs=24)
    with caplog.at_level("WARNING", logger="utils.reward_model"):
        log = rm.train_reward_model(model, pairs, pairs, tokenizer.pad_token_id, config)
    assert _cut_counts(caplog.records) == [(16, 24), (16, 24)]  # training pairs, held-out pairs
    assert all(math.isfinite(loss) for loss in log[-1]["step_losses"])

    caplog.clear()
    with caplog.at_level("WARNING", logger="utils.reward_model"):
        metrics = rm.evaluate_pairs(model, pairs, tokenizer.pad_token_id)
    assert _cut_counts(caplog.records) == [(16, 24)]
    # The score of a cut pair is the score of BOS + its last n_positions - 1 tokens.
    limit = TINY_LM.n_positions
    by_hand = [
        ([c[0], *c[-(limit - 1) :]] if len(c) > limit else c, [r[0], *r[-(limit - 1) :]] if len(r) > limit else r)
        for c, r in pairs
    ]
    assert metrics == rm.evaluate_pairs(model, by_hand, tokenizer.pad_token_id)
    assert metrics == rm.evaluate_pairs(
        model, rm.encode_pairs(rows, tokenizer, max_length=limit), tokenizer.pad_token_id
    )
    # Short data is untouched and nothing is reported.
    caplog.clear()
    with caplog.at_level("WARNING", logger="utils.reward_model"):
        rm.evaluate_pairs(model, rm.encode_pairs(preference_rows, tokenizer), tokenizer.pad_token_id)
    assert _cut_counts(caplog.records) == []


def test_encoder_reward_model_is_cut_to_its_positions(tokenizer, preference_rows):
    config = rm.RewardModelConfig(encoder_n_layer=1, encoder_n_embd=16, encoder_n_head=2)
    encoder = rm.build_encoder_reward_model(config, tokenizer, max_positions=64)
    pairs = rm.encode_pairs(long_rows(preference_rows[:8], repeat=12), tokenizer)
    assert max(len(c) for c, _ in pairs) > 64 and rm.model_positions(encoder) == 64
    assert 0 <= rm.evaluate_pairs(encoder, pairs, tokenizer.pad_token_id)["accuracy"] <= 1


def test_trl_wrapper_trains_on_the_same_cut_pairs(tokenizer, preference_rows, tmp_path):
    rows = long_rows(preference_rows[:16])
    config = rm.RewardModelConfig(steps=2, batch_size=8, warmup_steps=0, shuffle=False)
    trainer = rm.build_trl_reward_trainer(tiny_gpt_rm(tokenizer), tokenizer, rows, config, tmp_path)
    expected, n_cut = rm.truncate_pairs(rm.encode_pairs(rows, tokenizer), TINY_LM.n_positions)
    assert n_cut == 16 and len(trainer.train_dataset) == 16  # cut, not dropped as TRL's max_length would
    assert [(r["chosen_ids"], r["rejected_ids"]) for r in trainer.train_dataset] == expected
    trainer.train()
    assert len(rm.trl_step_losses(trainer)) == 2


class SumOfIdsModel(torch.nn.Module):
    """A stand-in reward model whose reward is known by hand: 0.1 x the sum of the unpadded token ids."""

    def __init__(self, positions: int):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(n_positions=positions)

    def forward(self, input_ids, attention_mask):
        from types import SimpleNamespace

        return SimpleNamespace(logits=0.1 * (input_ids * attention_mask).sum(1, keepdim=True).double())


def test_evaluate_preferences_on_hand_computed_rewards(tokenizer, preference_rows, caplog):
    rows = preference_rows[:10] + long_rows(preference_rows[10:12])
    model = SumOfIdsModel(positions=128)
    with caplog.at_level("WARNING", logger="utils.reward_model"):
        metrics, details = rm.evaluate_preferences(model, tokenizer, rows, n_bins=5)
    pairs, n_cut = rm.truncate_pairs(rm.encode_pairs(rows, tokenizer), 128)
    margins = np.array([0.1 * (sum(c) - sum(r)) for c, r in pairs])
    assert n_cut == 2 and metrics["truncated_pairs"] == 2 and metrics["pairs"] == 12
    assert _cut_counts(caplog.records) == [(2, 12)]
    assert metrics["accuracy"] == pytest.approx(np.mean(margins > 0))
    assert metrics["mean_margin"] == pytest.approx(margins.mean())
    assert metrics["loss"] == pytest.approx(np.mean(np.log1p(np.exp(-margins))))
    probs = 1 / (1 + np.exp(-margins))
    assert metrics["ece"] == pytest.approx(rm.calibration(probs, 5)["ece"])
    assert details["margins"] == pytest.approx(margins.tolist())
    assert 0 < metrics["accuracy"] < 1  # the hand-made rewards get some pairs right and some wrong
    with pytest.raises(ValueError, match="at least one row"):
        rm.evaluate_preferences(model, tokenizer, [])


# ------------------------------------------------------------------------------------------------
# Real preference data (HH-RLHF slice in ../shared/data): no crash, the cut reported
# ------------------------------------------------------------------------------------------------
def test_tiny_reward_model_trains_on_real_hh_rows(tokenizer, caplog, tmp_path):
    from utils.preference_data import load_hh_rlhf_jsonl

    path = SHARED_DATA / "hh_rlhf_harmless_base_test_first1000.jsonl"
    if not path.is_file():
        pytest.skip(f"real-data slice {path.name} not found in {SHARED_DATA} (only present next to the course repo)")
    rows = load_hh_rlhf_jsonl(path)[:32]
    pairs = rm.encode_pairs(rows, tokenizer)
    n_long = sum(max(len(c), len(r)) > TINY_LM.n_positions for c, r in pairs)
    assert 0 < n_long < len(rows)  # real dialogues: many longer than the model, some not

    model = tiny_gpt_rm(tokenizer)
    config = rm.RewardModelConfig(steps=3, batch_size=8, warmup_steps=1, eval_every=3, eval_pairs=32)
    with caplog.at_level("WARNING", logger="utils.reward_model"):
        log = rm.train_reward_model(model, pairs, pairs, tokenizer.pad_token_id, config)
        metrics, _ = rm.evaluate_preferences(model, tokenizer, rows)
    assert (n_long, len(rows)) in _cut_counts(caplog.records)
    assert all(math.isfinite(loss) for loss in log[-1]["step_losses"]) and log[-1]["step"] == 3
    assert metrics["truncated_pairs"] == n_long and metrics["pairs"] == len(rows)
    assert 0 <= metrics["accuracy"] <= 1 and math.isfinite(metrics["mean_margin"])

    trainer = rm.build_trl_reward_trainer(
        tiny_gpt_rm(tokenizer), tokenizer, rows, rm.RewardModelConfig(steps=2, batch_size=8, warmup_steps=0), tmp_path
    )
    trainer.train()
    assert len(trainer.train_dataset) == len(rows) and len(rm.trl_step_losses(trainer)) == 2
