"""Stage ``rlaif`` end to end on the tiny profile: builds once, reports its keys, saves the AI labels it trained
on (relabelled pairs of the training rows, nothing else changed) and the policy, and is cached on a second call.
What the labeller computes is tested in tests/test_constitution.py."""

from __future__ import annotations

import math

from transformers import GPT2LMHeadModel

from utils.artifacts import read_jsonl
from utils.pipeline import STAGES, run
from utils.stages.rlaif import load_rlaif_policy, rlaif_dir, rlaif_metrics, training_rows

REQUIRED_KEYS = (
    "rlaif.label_agreement_gold",
    "rlaif.label_agreement_human",
    "rlaif.label_picks_longer",
    "rlaif.label_picks_intact",
    "rlaif.human_agreement_gold",
    "rlaif.human_picks_longer",
    "rlaif.human_picks_intact",
    "rlaif.gold_reward_after",
    "rlaif.kl_to_ref",
    "rlaif.train_seconds",
    "rlaif.human.gold_reward_after",
    "rlaif.human.kl_to_ref",
)


def test_rlaif_stage_builds_reports_and_caches(tiny_profile):
    assert list(STAGES)[-1] in ("rlaif", "limits") and "rlaif" in STAGES
    folder = rlaif_dir(tiny_profile)
    metrics = rlaif_metrics(tiny_profile)
    assert set(REQUIRED_KEYS) <= set(metrics)
    for key in REQUIRED_KEYS:
        assert math.isfinite(metrics[key]), key
    for key in ("label_agreement_gold", "label_agreement_human", "label_picks_intact", "human_picks_intact"):
        assert 0.0 <= metrics[f"rlaif.{key}"] <= 1.0
    assert metrics["rlaif.labelled_pairs"] == tiny_profile.rlaif.label_pairs
    config = tiny_profile.rlaif
    assert metrics["rlaif.train_pairs"] == config.train_pairs + config.train_defective_pairs

    human_rows = training_rows(tiny_profile)
    ai_rows = read_jsonl(folder / "ai_labels.jsonl")
    assert len(ai_rows) == len(human_rows)
    for ai, human in zip(ai_rows, human_rows):
        assert ai["prompt"] == human["prompt"]
        assert {ai["chosen"], ai["rejected"]} == {human["chosen"], human["rejected"]}
    same = sum(a["chosen"] == h["chosen"] for a, h in zip(ai_rows, human_rows)) / len(ai_rows)
    assert abs(same - metrics["rlaif.train_label_agreement_human"]) < 1e-12

    policy, tokenizer = load_rlaif_policy(tiny_profile)
    assert isinstance(policy, GPT2LMHeadModel) and tokenizer.eos_token_id is not None
    assert rlaif_dir(tiny_profile) == folder  # cached: the same folder, not rebuilt
    assert run(["rlaif"], "tiny")["rlaif.gold_reward_after"] == metrics["rlaif.gold_reward_after"]
