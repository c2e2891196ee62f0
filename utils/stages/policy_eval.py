"""The held-out measurement every policy stage reports (ppo, dpo, rloo, grpo, ...), so their numbers compare.

Each trained policy is measured by :func:`utils.evaluation.evaluate_policy` on the same held-out prompts, with
the same sampling (PPO's temperature and response budget), the same sampling seed, the same proxy (the
normalised reward model) and the same reference (the SFT policy) for the KL: one estimator, computed the same
way for every method, on common random numbers.
"""

from __future__ import annotations

from torch import nn

from utils import review_world as rw
from utils.evaluation import evaluate_policy, sampling_config
from utils.ppo import reward_model_fn
from utils.profiles import Profile
from utils.stages.data import load_dataset_rows
from utils.stages.rm import load_reward_model
from utils.stages.sft import load_sft_model

# The headline numbers every policy stage reports as ``<stage>.<key>`` (its artifact's manifest holds more).
POLICY_METRIC_KEYS = (
    "gold_reward_after",
    "proxy_reward_after",
    "kl_to_ref",
    "positive_fraction_after",
    "grammatical_fraction_after",
    "length_tokens_after",
)


def heldout_evaluation_seed(profile: Profile) -> int:
    """The sampling seed of the measurement: PPO's seed + 1, so PPO's own before/after numbers are this one's."""
    return profile.ppo.seed + 1


def evaluate_against_sft(
    policy: nn.Module,
    profile: Profile,
    reference: nn.Module | None = None,
    reward_model: nn.Module | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """``(means, samples)`` of ``policy`` on the held-out RL prompts (see :func:`evaluate_policy`).

    ``reference`` (default: the SFT policy) and ``reward_model`` (default: the pipeline's RM) may be passed in
    when the caller already holds them; the tokenizer is the course's (every policy shares it).
    """
    if reference is None:
        reference, _ = load_sft_model(profile)
    if reward_model is None:
        reward_model, _ = load_reward_model(profile)
    _, tokenizer = load_sft_model(profile)
    prompts = [r["prompt"] for r in load_dataset_rows("rl_prompts_test", profile)]
    return evaluate_policy(
        policy,
        ref_policy=reference,
        proxy_fn=reward_model_fn(reward_model.requires_grad_(False)),
        tokenizer=tokenizer,
        prompts=prompts,
        sampling=sampling_config(profile.evaluation, profile.ppo, tokenizer),
        seed=heldout_evaluation_seed(profile),
        gold_fn=rw.gold_reward,
    )


def after_metrics(means: dict[str, float]) -> dict[str, float]:
    """``evaluate_policy``'s means as a stage reports them: ``<metric>_after`` and ``kl_to_ref``."""
    return {**{f"{k}_after": v for k, v in means.items()}, "kl_to_ref": means["kl"], "kl_to_ref_k3": means["kl_k3"]}
