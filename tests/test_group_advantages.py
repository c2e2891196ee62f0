"""Group baselines (RLOO, GRPO): hand computations, and equality with the expressions TRL 1.16 uses.

The TRL references below are the lines of ``trl/trainer/rloo_trainer.py`` (``RLOOTrainer.
_generate_and_score_completions``) and ``trl/trainer/grpo_trainer.py`` (``GRPOTrainer.
_generate_and_score_completions``, ``multi_objective_aggregation="sum_then_normalize"``, the default)
that turn the flat reward vector into advantages, copied with their NaN handling (no NaN here), and
calling TRL's own ``nanstd``.
"""

from __future__ import annotations

import math

import pytest
import torch
from trl.trainer.utils import nanstd

from utils.group_advantages import GroupAdvantageConfig, group_advantages, grpo_advantages, rloo_advantages


def trl_rloo_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """TRL 1.16 rloo_trainer.py, RLOOTrainer._generate_and_score_completions (normalize_advantages=False)."""
    grouped_rewards = rewards.view(-1, num_generations)
    scorable_counts = (~torch.isnan(grouped_rewards)).sum(dim=1, keepdim=True)  # (num_prompts, 1)
    grouped_sum = torch.nansum(grouped_rewards, dim=1, keepdim=True)  # (num_prompts, 1)
    baselines = (grouped_sum - grouped_rewards) / (scorable_counts - 1)  # (num_prompts, num_generations)
    baselines = baselines.view(-1)  # Flatten back to match rewards shape
    advantages = rewards - baselines
    return torch.nan_to_num(advantages, nan=0.0)


def trl_grpo_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group") -> torch.Tensor:
    """TRL 1.16 grpo_trainer.py, GRPOTrainer._generate_and_score_completions (scale_rewards "group" or "none")."""
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
    std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


# ------------------------------------------------------------------------------------------------
# By hand
# ------------------------------------------------------------------------------------------------
def test_rloo_by_hand():
    # prompt 1: rewards 1, 2, 6 -> baselines 4, 3.5, 1.5; prompt 2: 0, 0, 3 -> 1.5, 1.5, 0
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    expected = torch.tensor([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
    torch.testing.assert_close(rloo_advantages(rewards, 3), expected)


def test_rloo_is_the_centred_reward_scaled_by_g_over_g_minus_one():
    rewards = torch.randn(5 * 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grouped = rewards.view(5, 4)
    expected = 4 / 3 * (grouped - grouped.mean(dim=1, keepdim=True))
    torch.testing.assert_close(rloo_advantages(rewards, 4), expected.reshape(-1))


def test_grpo_by_hand():
    # group 1, 3, 5: mean 3, unbiased std 2 -> (-2, 0, 2) / (2 + eps)
    rewards = torch.tensor([1.0, 3.0, 5.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    expected = torch.tensor([-2 / (2 + 1e-4), 0.0, 2 / (2 + 1e-4), 0.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(grpo_advantages(rewards, 3), expected)
    # unscaled: the centred reward only; a group with one reward everywhere teaches nothing either way
    torch.testing.assert_close(grpo_advantages(rewards, 3, scale=False), torch.tensor([-2.0, 0, 2, 0, 0, 0]).double())


def test_grpo_std_is_unbiased_not_biased():
    # two completions, rewards 0 and 1: unbiased std sqrt(0.5), biased std 0.5
    got = grpo_advantages(torch.tensor([0.0, 1.0], dtype=torch.float64), 2, eps=1e-12)
    torch.testing.assert_close(got, torch.tensor([-1, 1], dtype=torch.float64) * 0.5 / math.sqrt(0.5))


def test_groups_are_consecutive_completions():
    # the same rewards laid out per prompt: swapping whole groups swaps the advantages with them
    rewards = torch.tensor([0.0, 1.0, 10.0, 30.0])
    advantages = grpo_advantages(rewards, 2)
    swapped = grpo_advantages(torch.tensor([10.0, 30.0, 0.0, 1.0]), 2)
    torch.testing.assert_close(swapped, advantages[[2, 3, 0, 1]])
    # and each group is normalised on its own: both give -+1/sqrt(2) (unbiased std of two values is
    # |r1 - r2| / sqrt(2)), up to eps, whatever their scale
    expected = torch.tensor([-1.0, 1.0, -1.0, 1.0]) / math.sqrt(2)
    torch.testing.assert_close(advantages, expected, atol=1e-3, rtol=0)


# ------------------------------------------------------------------------------------------------
# Against TRL 1.16's expressions
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("group_size", [2, 3, 8])
def test_equal_to_trl(group_size):
    generator = torch.Generator().manual_seed(group_size)
    rewards = torch.randn(6 * group_size, generator=generator) * 3 + 1
    rewards[:group_size] = 0.5  # a group with no spread: std 0, advantages 0
    torch.testing.assert_close(rloo_advantages(rewards, group_size), trl_rloo_advantages(rewards, group_size))
    torch.testing.assert_close(grpo_advantages(rewards, group_size), trl_grpo_advantages(rewards, group_size))
    torch.testing.assert_close(
        grpo_advantages(rewards, group_size, scale=False), trl_grpo_advantages(rewards, group_size, "none")
    )
    assert torch.all(grpo_advantages(rewards, group_size)[:group_size] == 0)


def test_config_dispatches_to_the_estimator():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    torch.testing.assert_close(
        group_advantages(rewards, GroupAdvantageConfig(group_size=3, estimator="rloo")), rloo_advantages(rewards, 3)
    )
    torch.testing.assert_close(
        group_advantages(rewards, GroupAdvantageConfig(group_size=3, scale=False)),
        grpo_advantages(rewards, 3, scale=False),
    )


# ------------------------------------------------------------------------------------------------
# Bad settings fail before any compute
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("group_size", [1, 0, -2, 2.0, True])
def test_group_size_under_two_fails(group_size):
    rewards = torch.zeros(4)
    for advantages in (rloo_advantages, grpo_advantages):
        with pytest.raises(ValueError, match=r"^group_size must be an int >= 2"):
            advantages(rewards, group_size)
    with pytest.raises(ValueError, match=r"^GroupAdvantageConfig\.group_size must be an int >= 2, got "):
        GroupAdvantageConfig(group_size=group_size)


def test_bad_rewards_fail():
    with pytest.raises(ValueError, match="not a positive multiple of group_size=3"):
        rloo_advantages(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match="finite"):
        grpo_advantages(torch.tensor([0.0, math.nan]), 2)
    with pytest.raises(ValueError, match=r"^eps must be a finite number > 0"):
        grpo_advantages(torch.zeros(2), 2, eps=0.0)
    with pytest.raises(ValueError, match=r"^GroupAdvantageConfig\.estimator must be one of"):
        GroupAdvantageConfig(estimator="ppo")
