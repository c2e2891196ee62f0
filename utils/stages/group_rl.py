"""Stages ``rloo``, ``grpo`` and ``grpo_verifiable``: the SFT policy trained with TRL's RLOO / GRPO, measured after.

* ``rloo``: TRL's ``RLOOTrainer`` against the reward model (read as PPO reads it), config ``profile.rloo``;
* ``grpo``: TRL's ``GRPOTrainer`` against the reward model, config ``profile.grpo``;
* ``grpo_verifiable``: GRPO against the rule-based verifiable reward (no reward model in training), config
  ``profile.grpo_verifiable``.

Each trained policy is measured by :func:`utils.stages.policy_eval.evaluate_against_sft`, as PPO's is (same
held-out prompts, sampling, seed, proxy and KL estimator), so the methods compare (stage ``methods``).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from transformers import GPT2LMHeadModel

from utils import review_world as rw
from utils.artifacts import atomic_write_json, get_or_build, read_meta, write_jsonl
from utils.group_rl import GroupRLConfig, reward_model_reward, train_group_rl, verifiable_reward_fn
from utils.profiles import Profile
from utils.seed import set_seed
from utils.stages.data import load_dataset_rows
from utils.stages.policy_eval import (
    POLICY_METRIC_KEYS,
    after_metrics,
    evaluate_against_sft,
    heldout_evaluation_seed,
)
from utils.stages.profile import resolve_profile
from utils.stages.rm import load_reward_model, rm_key
from utils.stages.sft import load_sft_model, sft_key
from utils.tokenizer import load_tokenizer
from utils.verifiable_reward import VerifiableRewardConfig

# Stage -> (TRL trainer, reward it trains on). The stage's config is the profile field of the same name.
GROUP_RL_STAGES: dict[str, tuple[str, str]] = {
    "rloo": ("rloo", "reward_model"),
    "grpo": ("grpo", "reward_model"),
    "grpo_verifiable": ("grpo", "verifiable"),
}

# The <stage>.* metrics the pipeline reports (the artifact's manifest holds more).
METRIC_KEYS = (
    *POLICY_METRIC_KEYS,
    "train_seconds",
    "completions_per_second",
)


def _check_stage(stage: str) -> tuple[str, str]:
    if stage not in GROUP_RL_STAGES:
        raise ValueError(f"stage must be one of {tuple(GROUP_RL_STAGES)}, got {stage!r}")
    return GROUP_RL_STAGES[stage]


def group_rl_config(stage: str, profile: Profile) -> GroupRLConfig:
    """The profile's config of ``stage`` (``profile.rloo``, ``profile.grpo`` or ``profile.grpo_verifiable``)."""
    _check_stage(stage)
    return getattr(profile, stage)


def group_rl_key(stage: str, profile: Profile) -> dict:
    """What the artifact depends on: the SFT policy, the reward model (trained on, or only measured with, for
    the verifiable run), the run's config and reward, and the held-out measurement's sampling."""
    method, reward = _check_stage(stage)
    evaluation, ppo = profile.evaluation, profile.ppo
    sampling = {
        "temperature": evaluation.temperature or ppo.temperature,
        "max_new_tokens": evaluation.max_new_tokens or ppo.response_length,
        "seed": heldout_evaluation_seed(profile),
    }
    run = {"method": method, "reward": reward, "config": group_rl_config(stage, profile)}
    if reward == "verifiable":
        run["verifiable_reward"] = VerifiableRewardConfig()
    return {**sft_key(profile), **rm_key(profile), "group_rl": run, "evaluation_sampling": sampling}


def group_rl_dir(stage: str, profile: Profile | None = None) -> Path:
    """Folder of the policy ``stage`` trained, TRL's log (``train_log.json``) and its held-out samples
    (``samples_after.jsonl``); meta: the held-out means (``after_metrics``), ``train_seconds`` (wall clock),
    ``train_cpu_seconds`` and ``completions_per_second``. Built on first use."""
    profile = resolve_profile(profile)
    method, reward = _check_stage(stage)
    config = group_rl_config(stage, profile)

    def build(folder: Path) -> dict:
        policy, tokenizer = load_sft_model(profile)
        reference, _ = load_sft_model(profile)
        reward_model, _ = load_reward_model(profile)
        if reward == "reward_model":
            reward_fn = reward_model_reward(reward_model, tokenizer, config.missing_eos_penalty, gold_fn=rw.gold_reward)
        else:
            reward_fn = verifiable_reward_fn(tokenizer, None, config.missing_eos_penalty, gold_fn=rw.gold_reward)
        prompts = [r["prompt"] for r in load_dataset_rows("rl_prompts_train", profile)]
        set_seed(config.seed)
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer = train_group_rl(method, policy, tokenizer, reward_fn, prompts, config)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        trainer.model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        atomic_write_json(folder / "train_log.json", trainer.state.log_history)
        trained = GPT2LMHeadModel.from_pretrained(str(folder)).eval()  # as loaders see it: no TRL patches
        evaluate = functools.partial(
            evaluate_against_sft, profile=profile, reference=reference, reward_model=reward_model
        )
        after, samples = evaluate(trained)
        write_jsonl(folder / "samples_after.jsonl", samples)
        meta = after_metrics(after)
        meta.update(
            train_seconds=seconds,
            train_cpu_seconds=cpu_seconds,
            completions_per_second=config.total_completions / seconds,
        )
        return meta

    return get_or_build(stage, group_rl_key(stage, profile), build)


def load_group_rl_policy(stage: str, profile: Profile | None = None):
    """(model, tokenizer) of the policy ``stage`` (``"rloo"``, ``"grpo"``, ``"grpo_verifiable"``) trained,
    training it first if needed."""
    folder = group_rl_dir(stage, profile)
    return GPT2LMHeadModel.from_pretrained(str(folder)).eval(), load_tokenizer(folder)


def group_rl_metrics(stage: str, profile: Profile) -> dict:
    """Builds (or loads) ``stage``'s policy; its headline numbers, as ``<stage>.*``."""
    meta = read_meta(group_rl_dir(stage, profile))
    return {f"{stage}.{k}": meta[k] for k in METRIC_KEYS}


def rloo_dir(profile: Profile | None = None) -> Path:
    """Folder of the RLOO-trained policy (see :func:`group_rl_dir`)."""
    return group_rl_dir("rloo", profile)


def grpo_dir(profile: Profile | None = None) -> Path:
    """Folder of the GRPO-trained policy, reward model (see :func:`group_rl_dir`)."""
    return group_rl_dir("grpo", profile)


def grpo_verifiable_dir(profile: Profile | None = None) -> Path:
    """Folder of the GRPO-trained policy, verifiable reward (see :func:`group_rl_dir`)."""
    return group_rl_dir("grpo_verifiable", profile)


def rloo_metrics(profile: Profile) -> dict:
    """Stage ``rloo``: ``rloo.*``."""
    return group_rl_metrics("rloo", profile)


def grpo_metrics(profile: Profile) -> dict:
    """Stage ``grpo``: ``grpo.*``."""
    return group_rl_metrics("grpo", profile)


def grpo_verifiable_metrics(profile: Profile) -> dict:
    """Stage ``grpo_verifiable``: ``grpo_verifiable.*``."""
    return group_rl_metrics("grpo_verifiable", profile)
