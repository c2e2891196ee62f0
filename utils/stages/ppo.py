"""Stage ``ppo``: the SFT policy trained with PPO against the reward model, measured before and after."""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from pathlib import Path

from transformers import GPT2LMHeadModel

from utils import review_world as rw
from utils.artifacts import get_or_build, read_meta, write_jsonl
from utils.ppo import PPOConfig, PPOTrainer, reward_model_fn, text_reward_fn
from utils.ppo_logs import write_log
from utils.profiles import Profile
from utils.seed import set_seed
from utils.stages.data import load_dataset_rows
from utils.stages.policy_eval import after_metrics, evaluate_against_sft
from utils.stages.profile import resolve_profile
from utils.stages.rm import load_reward_model, rm_key
from utils.stages.sft import load_sft_model, sft_key
from utils.tokenizer import load_tokenizer

# The ppo.* metrics the pipeline reports (the artifact's manifest holds more).
METRIC_KEYS = (
    "gold_reward_before",
    "gold_reward_after",
    "proxy_reward_before",
    "proxy_reward_after",
    "kl_to_ref",
    "grammatical_fraction_before",
    "grammatical_fraction_after",
    "positive_fraction_before",
    "positive_fraction_after",
    "length_tokens_before",
    "length_tokens_after",
    "train_seconds",
    "episodes_per_second",
)


def ppo_training_key(profile: Profile) -> dict:
    """What a PPO run from the course models depends on: the SFT policy, the reward model, the PPO config."""
    return {**sft_key(profile), **rm_key(profile), "ppo": profile.ppo}


def ppo_key(profile: Profile) -> dict:
    """The ``ppo`` artifact: the run, and its before/after measurement, which samples as the eval stage does."""
    evaluation = profile.evaluation
    sampling = {"temperature": evaluation.temperature, "max_new_tokens": evaluation.max_new_tokens}
    return {**ppo_training_key(profile), "evaluation_sampling": sampling}


def ppo_variant(profile: Profile | None = None, **changes) -> Profile:
    """``profile`` (default: the environment's) with its PPO config changed, e.g. ``ppo_variant(temperature=1.0)``.

    ``ppo_dir`` of the variant is the pipeline's own ``ppo`` stage run with that config: from the same SFT policy,
    against the same reward model (their keys do not read the PPO config, so neither is retrained), measured the
    same way, and cached under a key of its own, so the pipeline's run and its default stay as they are. The
    measurement samples at the variant's temperature when ``EvalConfig.temperature`` is None (the course's
    setting), as the pipeline's samples at its own. A bad value raises PPOConfig's ValueError.
    """
    profile = resolve_profile(profile)
    return dataclasses.replace(profile, ppo=dataclasses.replace(profile.ppo, **changes))


def ppo_dir(profile: Profile | None = None, progress: bool = True) -> Path:
    """Folder of the PPO-trained policy, its log and its before/after evaluation, built on first use."""
    profile = resolve_profile(profile)
    config: PPOConfig = profile.ppo

    def build(folder: Path) -> dict:
        policy, tokenizer = load_sft_model(profile)
        reference = copy.deepcopy(policy)
        reward_model, _ = load_reward_model(profile)
        reward_fn = reward_model_fn(reward_model.requires_grad_(False))
        gold_fn = text_reward_fn(rw.gold_reward, tokenizer)
        value_model = copy.deepcopy(reward_model).requires_grad_(True) if config.value_model == "model" else None
        train_prompts = [r["prompt"] for r in load_dataset_rows("rl_prompts_train", profile)]

        # A sample independent of the eval stage's (seed config.seed + 1, not EvalConfig.seed), measured by
        # the same function: two estimates of every number, so the reader sees the sampling noise. Every
        # policy stage (dpo, rloo, grpo, ...) is measured the same way, so the methods compare.
        evaluate = functools.partial(
            evaluate_against_sft, profile=profile, reference=reference, reward_model=reward_model
        )
        before, before_samples = evaluate(policy)
        set_seed(config.seed)
        trainer = PPOTrainer(
            config,
            policy,
            None if config.use_lora else reference,
            reward_fn,
            tokenizer(train_prompts)["input_ids"],
            tokenizer.pad_token_id,
            tokenizer.eos_token_id,
            value_model=value_model,
            gold_fn=gold_fn,
        )
        start = time.perf_counter()
        log = trainer.train(progress=progress)
        seconds = time.perf_counter() - start
        trained = trainer.trained_policy()
        after, after_samples = evaluate(trained)
        trained.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        write_log(log, folder)
        write_jsonl(folder / "samples_before.jsonl", before_samples)
        write_jsonl(folder / "samples_after.jsonl", after_samples)
        meta = {f"{k}_before": v for k, v in before.items()}
        meta.update(after_metrics(after))
        meta.update(
            train_seconds=seconds,
            episodes_per_second=config.num_updates * config.batch_size / seconds,
        )
        return meta

    return get_or_build("ppo", ppo_key(profile), build)


def load_ppo_policy(profile: Profile | None = None):
    """(model, tokenizer) of the PPO-trained policy, training it first if needed."""
    folder = ppo_dir(profile)
    return GPT2LMHeadModel.from_pretrained(str(folder)).eval(), load_tokenizer(folder)


def ppo_metrics(profile: Profile) -> dict:
    """Stage ``ppo``: builds (or loads) the PPO policy; the before/after headline numbers, as ``ppo.*``."""
    meta = read_meta(ppo_dir(profile))
    return {f"ppo.{k}": meta[k] for k in METRIC_KEYS}
