"""The pipeline's stages (``utils.stages``) end to end on the tiny profile: each builds its artifact once,
reports its metrics, loads what it saved, and is cached on the second call.

The tiny models are too small to learn the review world, so only the mechanics are checked here; what the
models compute is tested in each concept module's own test file.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

from utils import review_world as rw
from utils.artifacts import config_key
from utils.evaluation import evaluate_policy, sampling_config
from utils.pipeline import run
from utils.ppo import reward_model_fn
from utils.ppo_logs import read_log
from utils.reward_model import score_texts
from utils.stages import (
    annotator_config,
    data_dir,
    load_dataset_rows,
    load_ppo_policy,
    load_reward_model,
    load_sft_model,
    load_sweep,
    ppo_dir,
)
from utils.stages.evaluation import eval_metrics, sweep_key
from utils.stages.ppo import ppo_metrics
from utils.stages.rm import rm_metrics
from utils.stages.sft import sft_metrics


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def test_unknown_dataset_name(tiny_profile):
    with pytest.raises(ValueError, match="unknown dataset 'reviews'"):
        load_dataset_rows("reviews", tiny_profile)


def test_data_stage_formats_and_determinism(tiny_profile):
    folder = data_dir(tiny_profile)
    assert data_dir(tiny_profile) == folder  # cached: same folder, not rebuilt
    prefs = load_dataset_rows("preferences_train", tiny_profile)
    assert len(prefs) == tiny_profile.data.preference_train_size
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in prefs)
    instructions = load_dataset_rows("instructions_train", tiny_profile)
    assert all(set(r) == {"prompt", "completion", "task"} for r in instructions)
    # A stage run twice reports the same figures: the second run loads the cached artifact.
    assert (
        run(["data"], "tiny")["data.source_entropy_per_review"]
        == run(["data"], "tiny")["data.source_entropy_per_review"]
    )


def test_annotator_config_is_the_one_that_labelled_the_test_pairs(tiny_profile):
    """Relabelling the test pairs' generation with the stage's annotator gives the stored labels exactly."""
    d = tiny_profile.data
    stored = load_dataset_rows("preferences_test", tiny_profile)
    relabelled = rw.preference_pairs(
        d.preference_test_size, seed=d.seed + 6, annotator=annotator_config(tiny_profile), config=tiny_profile.grammar
    )
    assert relabelled == stored


# ------------------------------------------------------------------------------------------------
# sft, rm
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sft_stage_on_tiny_profile(tiny_profile):
    metrics = sft_metrics(tiny_profile)
    for key in (
        "sft.rouge1_f",
        "sft.rougeL_f",
        "sft.bleu",
        "sft.forgetting_nll_delta",
        "sft.train_seconds",
        "sft.lora_trainable_share",
        "sft.lora_rouge1_f",
        "sft.write.sentiment_ok",
        "sft.completion_nll",
        "sft.base_completion_nll",
    ):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["sft.completion_nll"] < metrics["sft.base_completion_nll"]
    delta_first = metrics["sft.first_token_nll"] - metrics["sft.base_first_token_nll"]
    assert metrics["sft.forgetting_nll_delta_after_first_token"] == pytest.approx(
        metrics["sft.forgetting_nll_delta"] - delta_first
    )
    assert 0 < metrics["sft.lora_trainable_share"] < 1
    model, tokenizer = load_sft_model(tiny_profile)
    assert isinstance(model, GPT2LMHeadModel) and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert sft_metrics(tiny_profile) == metrics  # cached: loaded, not retrained


@pytest.mark.slow
def test_rm_stage_on_tiny_profile(tiny_profile):
    metrics = rm_metrics(tiny_profile)
    for key in (
        "rm.heldout_accuracy",
        "rm.bayes_optimal_accuracy",
        "rm.spearman_vs_gold",
        "rm.ece",
        "rm.train_seconds",
        "rm.length_coefficient",
        "rm.trl_heldout_accuracy",
        "rm.encoder_heldout_accuracy",
        "rm.norm_mean",
        "rm.norm_std",
    ):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert 0.5 < metrics["rm.bayes_optimal_accuracy"] < 1
    model, tokenizer = load_reward_model(tiny_profile)
    assert isinstance(model, GPT2ForSequenceClassification)
    assert model.config.reward_std == pytest.approx(metrics["rm.norm_std"])
    scores = score_texts(model, tokenizer, ["the acting was superb.", "the acting was awful."])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert rm_metrics(tiny_profile) == metrics  # cached: loaded, not retrained


# ------------------------------------------------------------------------------------------------
# ppo, eval
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ppo_stage_on_the_tiny_profile(tiny_profile):
    """The pipeline stage end to end (tiny SFT policy and reward model, a few updates): its metrics and its
    cached artifact. The tiny models are too small to write reviews, so only the mechanics are checked."""
    metrics = ppo_metrics(tiny_profile)
    expected = {
        f"ppo.{k}"
        for k in (
            "gold_reward_before",
            "gold_reward_after",
            "proxy_reward_before",
            "proxy_reward_after",
            "kl_to_ref",
            "grammatical_fraction_after",
            "train_seconds",
            "episodes_per_second",
            "positive_fraction_before",
            "positive_fraction_after",
        )
    }
    assert expected <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    assert 0 <= metrics["ppo.positive_fraction_after"] <= 1 and metrics["ppo.episodes_per_second"] > 0
    folder = ppo_dir(tiny_profile)
    log = read_log(folder)
    assert len(log) == tiny_profile.ppo.num_updates and "objective/gold_reward" in log[0]
    policy, tokenizer = load_ppo_policy(tiny_profile)
    assert policy.config.vocab_size == len(tokenizer)
    assert ppo_metrics(tiny_profile) == metrics  # cached: the second call loads, it does not retrain

    # The stage measures with the evaluation module's evaluate_policy (one implementation), at the PPO
    # temperature, on its own sampling seed: re-measuring the saved policy gives the stage's numbers.
    sft, _ = load_sft_model(tiny_profile)
    reward_model, _ = load_reward_model(tiny_profile)
    sampling = sampling_config(tiny_profile.evaluation, tiny_profile.ppo, tokenizer)
    assert sampling.temperature == tiny_profile.ppo.temperature
    prompts = [r["prompt"] for r in load_dataset_rows("rl_prompts_test", tiny_profile)]
    again, _ = evaluate_policy(
        policy,
        sft,
        reward_model_fn(reward_model.requires_grad_(False)),
        tokenizer,
        prompts,
        sampling,
        seed=tiny_profile.ppo.seed + 1,
    )
    for key in ("gold_reward", "proxy_reward", "positive_fraction", "grammatical_fraction"):
        assert metrics[f"ppo.{key}_after"] == pytest.approx(again[key], abs=1e-6), key
    assert metrics["ppo.kl_to_ref"] == pytest.approx(again["kl"], abs=1e-4)


@pytest.mark.slow
def test_eval_stage_tiny(tiny_profile, tiny_results):
    metrics = eval_metrics(tiny_profile)
    assert 0.0 <= metrics["eval.win_rate_vs_sft"] <= 1.0
    assert metrics["eval.wins"] + metrics["eval.ties"] + metrics["eval.losses"] == tiny_profile.evaluation.num_prompts
    assert metrics["eval.sft.kl"] == 0.0
    assert metrics["eval.sweep.lowest_beta"] == 0.0
    assert (tiny_results / "samples.md").is_file()
    assert (tiny_results / "figures" / "11_overoptimisation.png").is_file()
    records = load_sweep(tiny_profile)
    assert len(records) == len(tiny_profile.evaluation.sweep.betas)
    for record in records:  # every run's end point, beta by beta, for the seed study to average
        assert metrics[f"eval.sweep.beta={record['beta']:g}/gold_reward"] == record["gold_reward"]
        assert metrics[f"eval.sweep.beta={record['beta']:g}/kl"] == record["kl"]
    assert eval_metrics(tiny_profile) == metrics  # cached: the second call recomputes nothing


def test_sweep_cache_ignores_what_the_sweep_overrides(tiny_profile):
    """The sweep sets beta and the run length itself: retuning the main run's beta must reuse the cached
    sweep, while a hyperparameter the sweep's runs do use (the learning rate) must invalidate it."""

    def key(**ppo_changes):
        profile = dataclasses.replace(tiny_profile, ppo=dataclasses.replace(tiny_profile.ppo, **ppo_changes))
        return config_key(sweep_key(profile))

    assert key(kl_coef=0.5, total_episodes=128, adaptive_kl=True) == key()
    assert key(lr=1e-5) != key()
