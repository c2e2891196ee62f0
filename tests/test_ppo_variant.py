"""``utils.stages.ppo.ppo_variant``: the pipeline's PPO stage run with another PPO config (notebook 11, section 8:
PPO at temperature 1), from the same SFT policy and reward model, cached beside the pipeline's run."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from utils.artifacts import artifact_dir, read_meta
from utils.evaluation import sampling_config
from utils.profiles import get_profile
from utils.stages import load_ppo_policy, ppo_dir
from utils.stages.policy_eval import evaluate_against_sft
from utils.stages.ppo import ppo_key, ppo_metrics, ppo_variant
from utils.stages.rm import rm_dir, rm_key
from utils.stages.sft import sft_dir, sft_key

TOKENS = SimpleNamespace(eos_token_id=0, pad_token_id=1)  # all sampling_config reads of a tokenizer


@pytest.mark.parametrize("seed", [0, 1])
def test_only_the_ppo_config_changes(seed):
    profile = get_profile("course", seed=seed)
    variant = ppo_variant(profile, temperature=1.0)
    assert profile.ppo.temperature == 0.7  # the pipeline's default is untouched
    assert variant.ppo == dataclasses.replace(profile.ppo, temperature=1.0)  # the run seed's shift is kept
    assert dataclasses.replace(variant, ppo=profile.ppo) == profile  # nothing else changed
    # Same SFT policy and reward model (nothing upstream is retrained), a PPO artifact of its own
    assert sft_key(variant) == sft_key(profile) and rm_key(variant) == rm_key(profile)
    assert artifact_dir("ppo", ppo_key(variant)) != artifact_dir("ppo", ppo_key(profile))
    # The stage measures the variant at the temperature it trained at, the pipeline's run at its own
    assert sampling_config(variant.evaluation, variant.ppo, TOKENS).temperature == 1.0
    assert sampling_config(profile.evaluation, profile.ppo, TOKENS).temperature == 0.7


def test_defaults_to_the_environment_profile(monkeypatch):
    monkeypatch.setenv("RLHF_SEED", "1")
    assert ppo_variant(kl_coef=0.1) == ppo_variant(get_profile(seed=1), kl_coef=0.1)


def test_a_bad_value_is_refused_by_the_ppo_config():
    with pytest.raises(ValueError, match="temperature"):
        ppo_variant(get_profile("course"), temperature=0.0)
    with pytest.raises(TypeError):
        ppo_variant(get_profile("course"), temprature=1.0)  # a misspelt field


@pytest.mark.slow
def test_the_variant_trains_and_measures_with_the_stage(tiny_profile, tiny_results):
    """On the tiny profile (its models are too small to write reviews: mechanics only): the variant's artifact
    is built next to the pipeline's from the same SFT and RM folders, and its stored numbers are a measurement
    of its policy at temperature 1, not at the pipeline's 0.7."""
    variant = ppo_variant(tiny_profile, temperature=1.0)
    pipeline_run = ppo_dir(tiny_profile, progress=False)

    def upstream():  # every SFT and reward-model artifact of the session
        return {p.name for p in (tiny_results / "artifacts").iterdir() if p.name.startswith(("sft-", "rm-"))}

    before = upstream()
    folder = ppo_dir(variant, progress=False)
    assert folder != pipeline_run and upstream() == before  # nothing upstream was trained for the variant
    assert sft_dir(variant) == sft_dir(tiny_profile) and rm_dir(variant) == rm_dir(tiny_profile)

    policy, _ = load_ppo_policy(variant)

    def measure(temperature):  # the stage's measurement of the saved policy, at a temperature of our choosing
        means, _ = evaluate_against_sft(policy, ppo_variant(variant, temperature=temperature))
        return means

    meta, hot, cold = read_meta(folder), measure(1.0), measure(0.7)
    assert meta["proxy_reward_after"] == pytest.approx(hot["proxy_reward"], abs=1e-6)
    assert meta["kl_to_ref"] == pytest.approx(hot["kl"], abs=1e-4)
    assert meta["entropy_after"] == pytest.approx(hot["entropy"], abs=1e-4)
    assert abs(meta["entropy_after"] - cold["entropy"]) > 1e-3  # a 0.7 measurement would differ
    assert ppo_metrics(variant)["ppo.kl_to_ref"] == meta["kl_to_ref"]
