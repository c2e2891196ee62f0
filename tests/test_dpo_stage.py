"""DPO training with TRL (utils.dpo.train_dpo), its config, the implicit rewards of any pairs, and the ``dpo`` stage.

* ``encode_completions`` tokenises prompt/completion pairs exactly as TRL's DPOTrainer collates them;
* a learning check: a small GPT-2 trained with ``train_dpo`` on pairs whose chosen completion is a positive review
  and the rejected one a negative review ranks its training pairs right (implicit-reward accuracy >= 0.9, where
  chance is 0.5 and a loss with the wrong sign gives about 0);
* the stage on the tiny profile: metrics, files, the held-out pair views, the cache; the beta sweep's records.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from transformers import GPT2LMHeadModel

from utils import dpo
from utils import review_world as rw
from utils.language_model import gpt2_config
from utils.tokenizer import train_bpe


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe([r["text"] for r in rw.lm_corpus(500, seed=3)], vocab_size=300)


def small_gpt2(tokenizer, seed: int, n_embd: int = 32) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = gpt2_config(
        len(tokenizer),
        n_positions=256,
        n_embd=n_embd,
        n_layer=1,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config).eval()


ROWS = [
    {"prompt": "the acting", "chosen": " was great.", "rejected": " was dull. i hated the plot."},
    {"prompt": "i loved", "chosen": " the music. overall, a superb film.", "rejected": " the ending, but"},
    {"prompt": "the plot was", "chosen": " good.", "rejected": " very weak and the cast felt bland."},
]


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0, -0.5, math.nan, True])
def test_train_config_rejects_a_beta_of_zero_or_below(beta):
    with pytest.raises(ValueError, match=r"^DPOTrainConfig\.beta must be a finite number > 0, got "):
        dpo.DPOTrainConfig(beta=beta)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("pairs", 0, r"None or an int >= 1"),
        ("epochs", 0, r"a finite number > 0"),
        ("lr", -1e-4, r"a finite number > 0"),
        ("warmup_ratio", 1.0, r"a finite number in \[0, 1\)"),
        ("lr_scheduler", "sawtooth", r"one of"),
        ("batch_size", 0, r"an int >= 1"),
        ("max_completion_tokens", 0, r"None or an int >= 1"),
        ("sft_weight", -1.0, r"a finite number >= 0"),
        ("ld_alpha", 1.5, r"None or a finite number in \[0, 1\]"),
        ("seed", -1, r"an int >= 0"),
    ],
)
def test_train_config_names_the_bad_field(field, value, message):
    with pytest.raises(ValueError, match=rf"^DPOTrainConfig\.{field} must be {message}"):
        dpo.DPOTrainConfig(**{field: value})


def test_sweep_config_validation():
    with pytest.raises(
        ValueError, match=r"^DPOSweepConfig\.betas must be a non-empty tuple of finite numbers, each > 0"
    ):
        dpo.DPOSweepConfig(betas=(0.0, 0.1))
    with pytest.raises(ValueError, match=r"^DPOSweepConfig\.betas must be strictly increasing"):
        dpo.DPOSweepConfig(betas=(1.0, 0.1))
    with pytest.raises(ValueError, match=r"^DPOSweepConfig\.pairs must be an int >= 1"):
        dpo.DPOSweepConfig(pairs=0)


# ------------------------------------------------------------------------------------------------
# Rows and tokenisation
# ------------------------------------------------------------------------------------------------
def test_preference_rows_keep_the_pairs_that_fit_the_budget(tokenizer):
    lengths = [
        max(dpo.completion_tokens(tokenizer, r["chosen"]), dpo.completion_tokens(tokenizer, r["rejected"]))
        for r in ROWS
    ]
    # the completion's tokens + 1 for EOS, counted by hand for the first row
    assert (
        dpo.completion_tokens(tokenizer, " was great.")
        == len(tokenizer(" was great.", add_special_tokens=False)["input_ids"]) + 1
    )
    budget = sorted(lengths)[1]  # the two shortest pairs fit, the longest does not
    kept = dpo.preference_rows(ROWS, None, tokenizer, budget)
    assert kept == [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r, n in zip(ROWS, lengths) if n <= budget]
    assert len(kept) == 2
    assert dpo.preference_rows(ROWS, 1, tokenizer, budget) == kept[:1]  # ``pairs`` counts the rows that fit
    assert dpo.preference_rows([{**r, "extra": 1} for r in ROWS]) == [dict(r) for r in ROWS]  # columns dropped
    with pytest.raises(ValueError, match="no preference row"):
        dpo.preference_rows(ROWS, None, tokenizer, 1)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        dpo.preference_rows(ROWS, None, None, 10)


def test_encode_completions_is_trls_batch(tokenizer, tmp_path):
    trainer = dpo.build_dpo_trainer(
        small_gpt2(tokenizer, 0),
        small_gpt2(tokenizer, 1),
        tokenizer,
        ROWS,
        dpo.DPOTrainConfig(batch_size=len(ROWS), pairs=None, max_completion_tokens=None),
        tmp_path,
    )
    batch = next(iter(trainer.get_train_dataloader()))  # shuffled: match the rows by their text
    order = [r["prompt"] + r["chosen"] for r in ROWS]
    for key in ("chosen", "rejected"):
        ours = dpo.encode_completions(tokenizer, [r["prompt"] for r in ROWS], [r[key] for r in ROWS])
        half = slice(0, len(ROWS)) if key == "chosen" else slice(len(ROWS), 2 * len(ROWS))
        for i in range(len(ROWS)):
            ids = batch["input_ids"][half][i]
            length = int(batch["attention_mask"][half][i].sum())
            text = tokenizer.decode(ids[:length], skip_special_tokens=True)
            j = next(j for j, r in enumerate(ROWS) if (r["prompt"] + r[key]).strip() == text.strip())
            assert order  # rows are matched by their decoded text
            mine = ours[0][j][: int(ours[1][j].sum())]
            assert mine.tolist() == ids[:length].tolist()
            torch.testing.assert_close(ours[2][j][:length], batch["completion_mask"][half][i][:length])


# ------------------------------------------------------------------------------------------------
# Training learns the preferences
# ------------------------------------------------------------------------------------------------
def sentiment_pairs(n: int, seed: int) -> list[dict]:
    """Pairs whose chosen completion is a positive review and whose rejected one is a negative review."""
    rows, i = [], 0
    prompts = [r["prompt"] for r in rw.rl_prompts(4 * n, seed)]
    completions = rw.sample_completions(prompts, 4, seed + 1)
    for prompt, options in zip(prompts, completions):
        scored = sorted(options, key=lambda c: rw.gold_reward(prompt + c))
        short = all(rw.word_count(c) <= 15 for c in (scored[0], scored[-1]))
        if short and rw.gold_reward(prompt + scored[-1]) > 0.3 and rw.gold_reward(prompt + scored[0]) < -0.3:
            rows.append({"prompt": prompt, "chosen": scored[-1], "rejected": scored[0]})
            i += 1
        if i == n:
            break
    assert len(rows) == n
    return rows


def test_dpo_training_ranks_its_training_pairs(tokenizer):
    rows = sentiment_pairs(32, seed=11)
    policy = small_gpt2(tokenizer, 0, n_embd=48)
    reference = copy.deepcopy(policy)
    config = dpo.DPOTrainConfig(
        beta=0.5, pairs=None, epochs=12, lr=3e-3, batch_size=8, warmup_ratio=0.0, max_completion_tokens=None
    )
    chosen0, rejected0 = dpo.implicit_rewards(policy, reference, tokenizer, rows, config.beta)
    assert config.sft_weight > 0  # the default keeps RPO's NLL term; the test trains plain DPO
    config = dataclasses.replace(config, sft_weight=0.0)
    assert torch.all(chosen0 == 0) and torch.all(rejected0 == 0)  # the policy is the reference: no preference yet

    trained, report = dpo.train_dpo(policy, reference, tokenizer, rows, config)
    chosen, rejected = dpo.implicit_rewards(trained, reference, tokenizer, rows, config.beta)
    accuracy = float((chosen > rejected).float().mean())
    assert accuracy >= 0.9, accuracy  # chance: 0.5; the loss with its sign flipped: about 0
    assert float((chosen - rejected).mean()) > 1.0  # margins well above 0, in units of beta * nats
    losses = [entry["loss"] for entry in report["log"] if "loss" in entry]
    assert losses[-1] < 0.5 * math.log(2)  # from log 2 at the start
    assert report["pairs"] == 32 and report["steps"] == 12 * 32 // 8
    assert report["pairs_per_second"] == pytest.approx(32 * 12 / report["train_seconds"])
    # the reference is untouched: it stays the anchor of the implicit reward
    for p, q in zip(reference.parameters(), small_gpt2(tokenizer, 0, n_embd=48).parameters()):
        torch.testing.assert_close(p, q)


def test_implicit_rewards_are_beta_times_the_log_ratio(tokenizer):
    policy, reference = small_gpt2(tokenizer, 0), small_gpt2(tokenizer, 1)
    chosen, rejected = dpo.implicit_rewards(policy, reference, tokenizer, ROWS, beta=0.25, batch_size=2)
    for key, got in (("chosen", chosen), ("rejected", rejected)):
        for i, row in enumerate(ROWS):  # one row at a time, no padding: a hand computation of the sum
            ids = tokenizer(row["prompt"] + row[key] + tokenizer.eos_token)["input_ids"]
            start = len(tokenizer(row["prompt"])["input_ids"])
            x = torch.tensor([ids])
            with torch.no_grad():
                lp = torch.log_softmax(policy(x).logits[0], -1)
                lr = torch.log_softmax(reference(x).logits[0], -1)
            want = sum(lp[t - 1, ids[t]] - lr[t - 1, ids[t]] for t in range(start, len(ids)))
            torch.testing.assert_close(got[i], 0.25 * want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        dpo.implicit_rewards(policy, reference, tokenizer, ROWS, beta=0.0)


# ------------------------------------------------------------------------------------------------
# The stage on the tiny profile
# ------------------------------------------------------------------------------------------------
def test_dpo_stage_on_the_tiny_profile(tiny_profile):
    from utils.artifacts import read_jsonl, read_meta
    from utils.stages.dpo import METRIC_KEYS, dpo_dir, dpo_metrics, load_dpo_pairs, load_dpo_policy, pair_accuracies

    metrics = dpo_metrics(tiny_profile)
    assert set(metrics) == {f"dpo.{k}" for k in METRIC_KEYS}
    for key in ("gold_reward_after", "kl_to_ref", "positive_fraction_after", "grammatical_fraction_after"):
        assert math.isfinite(metrics[f"dpo.{key}"])
    assert 0 <= metrics["dpo.grammatical_fraction_after"] <= 1
    assert metrics["dpo.train_seconds"] > 0 and metrics["dpo.pairs_per_second"] > 0
    folder = dpo_dir(tiny_profile)
    meta = read_meta(folder)
    assert meta["pairs"] <= tiny_profile.dpo.pairs
    samples = read_jsonl(folder / "samples_after.jsonl")
    assert len(samples) == tiny_profile.data.rl_prompt_test_size
    log = json.loads((folder / "train_log.json").read_text())
    assert any("rewards/accuracies" in entry for entry in log)
    views = load_dpo_pairs(tiny_profile)
    assert len(views) == min(1_000, tiny_profile.data.preference_test_size)
    assert pair_accuracies(views)["implicit_accuracy"] == meta["implicit_accuracy_heldout"]
    assert all(v["gold_chosen"] == rw.gold_reward(v["prompt"] + v["chosen"]) for v in views)
    policy, _ = load_dpo_policy(tiny_profile)
    assert isinstance(policy, GPT2LMHeadModel)
    assert dpo_metrics(tiny_profile) == metrics  # cached: loaded, not retrained


def test_dpo_sweep_on_the_tiny_profile(tiny_profile):
    from utils.stages.dpo import dpo_sweep_dir

    records = json.loads((dpo_sweep_dir(tiny_profile) / "sweep.json").read_text())
    assert [r["beta"] for r in records] == list(tiny_profile.dpo_sweep.betas)
    for r in records:
        assert {"gold_reward_after", "kl_to_ref", "implicit_accuracy_heldout", "log"} <= set(r)
