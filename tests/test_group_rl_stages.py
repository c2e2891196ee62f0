"""Stages rloo, grpo, grpo_verifiable (utils.stages.group_rl) on the tiny profile: artifacts, keys, metrics."""

from __future__ import annotations

import json

import pytest
import torch

from utils.artifacts import read_jsonl, read_meta
from utils.profiles import get_profile
from utils.stages.group_rl import (
    GROUP_RL_STAGES,
    METRIC_KEYS,
    group_rl_dir,
    group_rl_key,
    group_rl_metrics,
    load_group_rl_policy,
)


def test_keys_differ_by_stage_and_follow_the_config():
    import dataclasses

    course = get_profile("course")
    keys = {stage: group_rl_key(stage, course) for stage in GROUP_RL_STAGES}
    assert keys["rloo"]["group_rl"]["method"] == "rloo" and keys["grpo"]["group_rl"]["method"] == "grpo"
    assert keys["grpo_verifiable"]["group_rl"]["reward"] == "verifiable"
    assert len({json.dumps(k, default=str, sort_keys=True) for k in keys.values()}) == 3
    changed = dataclasses.replace(course, grpo=dataclasses.replace(course.grpo, kl_coef=0.5))
    assert group_rl_key("grpo", changed) != keys["grpo"] and group_rl_key("rloo", changed) == keys["rloo"]
    assert "rm" in keys["grpo_verifiable"]  # its held-out proxy reward is the reward model's
    with pytest.raises(ValueError, match="stage must be one of"):
        group_rl_key("ppo", course)


@pytest.mark.parametrize("stage", ["rloo", "grpo_verifiable"])
def test_stage_builds_measures_and_loads(tiny_profile, stage):
    folder = group_rl_dir(stage, tiny_profile)
    meta = read_meta(folder)
    for key in (*METRIC_KEYS, "train_cpu_seconds", "kl_to_ref_k3", "gold_reward_se_after"):
        assert key in meta, key
    config = getattr(tiny_profile, stage)
    assert meta["completions_per_second"] == pytest.approx(config.total_completions / meta["train_seconds"])
    samples = read_jsonl(folder / "samples_after.jsonl")
    assert len(samples) == tiny_profile.data.rl_prompt_test_size  # every held-out prompt, as PPO's
    assert meta["gold_reward_after"] == pytest.approx(sum(s["gold_reward"] for s in samples) / len(samples))
    log = json.loads((folder / "train_log.json").read_text())
    assert sum("loss" in e for e in log) == config.optimizer_steps  # one entry per optimiser step
    assert sum("reward" in e for e in log) == config.generation_batches  # the reward: once per generation batch
    assert any("rewards/reward_model/mean" in e or "rewards/verifiable/mean" in e for e in log)
    metrics = group_rl_metrics(stage, tiny_profile)
    assert set(metrics) == {f"{stage}.{k}" for k in METRIC_KEYS}
    policy, tokenizer = load_group_rl_policy(stage, tiny_profile)
    from utils.stages import load_sft_model

    sft, _ = load_sft_model(tiny_profile)
    moved = max((p - q).abs().max().item() for p, q in zip(policy.parameters(), sft.parameters()))
    assert moved > 0  # trained: the weights left the SFT policy's
    assert tokenizer.eos_token_id is not None and tokenizer.eos_token_id != tokenizer.pad_token_id
    assert torch.isfinite(torch.tensor(meta["kl_to_ref"]))


def test_methods_stage_writes_the_table_and_the_figure(tiny_profile, tiny_results):
    """The ``methods`` stage on the tiny profile: one table row per method (SFT, PPO, DPO, RLOO, GRPO, GRPO
    verifiable, best-of-n), each number read from its stage's metadata, and the figure."""
    from utils.method_comparison import best_of_n_kl
    from utils.stages.methods import best_of_n_dir, methods_metrics
    from utils.stages.ppo import ppo_dir

    metrics = methods_metrics(tiny_profile)
    table = (tiny_results / "methods.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| method", "| ---"))]
    assert len(rows) == metrics["methods.compared"] == 7
    names = [row.split("|")[1].strip() for row in rows]
    assert names[:2] == ["SFT (start)", "PPO"] and names[-1].startswith("best-of-2")
    assert {"RLOO (RM)", "GRPO (RM)", "GRPO (verifiable reward)"} <= set(names)
    ppo = read_meta(ppo_dir(tiny_profile))
    assert rows[1].split("|")[2].strip() == f"{ppo['gold_reward_after']:.3f}"
    grpo = read_meta(group_rl_dir("grpo", tiny_profile))
    assert rows[names.index("GRPO (RM)")].split("|")[5].strip() == f"{grpo['kl_to_ref']:.2f}"
    assert metrics["methods.best_of_n.kl"] == pytest.approx(best_of_n_kl(2))
    bon = read_meta(best_of_n_dir(tiny_profile))
    draws = json.loads((best_of_n_dir(tiny_profile) / "draws.json").read_text())
    assert len(draws) == 2 and len(draws[0]) == tiny_profile.data.rl_prompt_test_size
    chosen = [max(a, b, key=lambda s: s["proxy_reward"]) for a, b in zip(*draws)]
    assert bon["best_of_2.gold_reward"] == pytest.approx(sum(s["gold_reward"] for s in chosen) / len(chosen))
    assert (tiny_results / "figures" / "methods_frontier.png").stat().st_size > 10_000
