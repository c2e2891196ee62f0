"""Group baselines: advantages without a value model, for RLOO and GRPO.

PPO subtracts a learned value V(prompt) from the reward to cut the policy gradient's variance. RLOO and
GRPO sample a GROUP of G completions of each prompt and use the group itself as the baseline:

* **RLOO** (REINFORCE leave-one-out; Kool et al. 2019, Ahmadian et al. 2024): completion i's baseline is
  the mean reward of the OTHER G - 1 completions of its prompt,

      A_i = r_i - (1 / (G - 1)) * sum_{j != i} r_j  =  G / (G - 1) * (r_i - mean(r)).

  The baseline does not depend on r_i, so the gradient estimate stays unbiased.
* **GRPO** (group relative policy optimisation; Shao et al. 2024, DeepSeekMath): the group-normalised
  reward,

      A_i = (r_i - mean(r)) / (std(r) + eps),

  with std the unbiased (Bessel-corrected, G - 1) standard deviation and eps = 1e-4 added to it, as TRL
  1.16's ``GRPOTrainer`` computes it (``scale_rewards="group"``, its default; ``"none"``, our
  ``scale=False``, keeps only the centring, as Dr. GRPO recommends). r_i itself is in the mean, so the
  estimate is slightly biased; dividing by the std rescales each prompt's advantages to unit spread, so
  that easy and hard prompts weigh alike.

A group whose completions all get the same reward gives every one of them advantage 0: it teaches nothing.

Layout, as in TRL (``rewards.view(-1, num_generations)``): ``rewards`` is flat, (n_prompts * G,), the G
completions of one prompt consecutive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from utils.config_checks import check_bool, check_choice, check_int, check_number, is_int, is_number

ESTIMATORS = ("rloo", "grpo")


@dataclass(frozen=True)
class GroupAdvantageConfig:
    """How a group of completions per prompt turns rewards into advantages. Validated on construction."""

    group_size: int = 4
    """completions sampled per prompt (TRL's ``num_generations``); >= 2, since a baseline from the group
    needs at least one other completion"""
    estimator: str = "grpo"
    """"rloo" (leave-one-out baseline) or "grpo" (group-normalised)"""
    scale: bool = True
    """GRPO only: divide by the group's std (TRL's scale_rewards="group"); False keeps only r - mean"""
    eps: float = 1e-4
    """GRPO only: added to the group std before dividing (TRL 1.16 uses 1e-4)"""

    def __post_init__(self) -> None:
        check_int(self, "group_size", ge=2)
        check_choice(self, "estimator", ESTIMATORS)
        check_bool(self, "scale")
        check_number(self, "eps", gt=0)


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``rewards`` (n * group_size,) as (n, group_size), after checking the arguments."""
    if not (is_int(group_size) and group_size >= 2):
        raise ValueError(
            f"group_size must be an int >= 2 (a group baseline needs another completion), got {group_size!r}"
        )
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1 or not rewards.is_floating_point():
        raise ValueError("rewards must be a 1-D floating-point tensor (the completions of each prompt consecutive)")
    if rewards.numel() == 0 or rewards.numel() % group_size:
        raise ValueError(f"rewards has {rewards.numel()} entries: not a positive multiple of group_size={group_size}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards must be finite")
    return rewards.view(-1, group_size)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """r_i minus the mean reward of the other completions of its prompt, (n * group_size,)."""
    grouped = _grouped(rewards, group_size)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).reshape(-1)


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """(r_i - group mean) / (unbiased group std + eps), or r_i - group mean when ``scale`` is False."""
    grouped = _grouped(rewards, group_size)
    if not (is_number(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)  # torch.std: unbiased (G - 1), as TRL
    return centred.reshape(-1)


def group_advantages(rewards: torch.Tensor, config: GroupAdvantageConfig) -> torch.Tensor:
    """The advantages ``config`` asks for."""
    if config.estimator == "rloo":
        return rloo_advantages(rewards, config.group_size)
    return grpo_advantages(rewards, config.group_size, scale=config.scale, eps=config.eps)
