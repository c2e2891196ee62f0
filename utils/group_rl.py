"""RLOO and GRPO with TRL: policy-gradient RLHF without a value model, from a group of completions per prompt.

PPO (:mod:`utils.ppo`) learns a value model to tell a good response from a lucky one. RLOO and GRPO sample a
GROUP of G completions of each prompt and compare them with each other (:mod:`utils.group_advantages`): no
value model, no GAE, one reward per completion. We train both with TRL's own trainers (``RLOOTrainer``,
``GRPOTrainer``) from the SFT policy, against

* the reward model, read exactly as PPO reads it (:func:`reward_model_reward`: the normalised score of
  prompt + response at its last real token, EOS included, minus the missing-EOS penalty), or
* the rule-based verifiable reward (:func:`verifiable_reward_fn`, :mod:`utils.verifiable_reward`).

Fair with PPO (``utils.ppo.PPOConfig``): the same RL prompts, the same sampling temperature (0.7, also inside
every training forward pass) and response budget (32 tokens), the same missing-EOS penalty, the same number of
completions sampled over the run (1,536) and the same KL coefficient. What differs is where the KL goes:

* **PPO** (ours): per-token k1 = log p - log p_ref, times beta, in the per-token REWARD; GAE spreads it.
* **RLOO** (TRL): the sequence's summed k1, times beta, subtracted from the completion's reward before the
  leave-one-out baseline. For a reward paid at the end, with gamma = 1, that is the same return as PPO's:
  the same objective, r - beta * KL.
* **GRPO** (TRL): k3 = exp(q) - q - 1 (q = log p_ref - log p) per token, times beta, added to the LOSS,
  beside advantages that are divided by the group's reward std. The advantages are in units of the group's
  spread, not of reward, so the same beta pulls differently: it is a regulariser, not a price in reward units.

And where the baseline comes from: PPO's value head against the group's other completions; PPO's 4 epochs of
2 minibatches per batch against ``num_iterations`` passes of ``num_minibatches`` (TRL's ``steps_per_generation``).

Two details TRL leaves to us. (1) Position ids: TRL's training forward passes no ``position_ids``, so a
left-padded prompt would be read at shifted positions (GPT-2's positions are learned), unlike generation,
which derives them from the attention mask; :func:`positions_from_mask` makes both read the same positions
(the policy and the reference), so that TRL's log-probabilities are those of the distribution it sampled
(``tests/test_group_rl.py`` checks them against :func:`utils.evaluation.response_logprobs`). (2) TRL builds
its own reference from the policy's folder (``config._name_or_path``), so the builders save the policy to
a folder first and hand TRL that path.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from utils.config_checks import check, check_choice, check_int, check_number
from utils.decoding import position_ids_from_mask
from utils.ppo import penalise_missing_eos, reward_model_fn
from utils.trl_helpers import offline_cpu_training_args, quiet_training, silence_trainer
from utils.verifiable_reward import VerifiableRewardConfig, verifiable_rewards

if TYPE_CHECKING:  # heavy imports (TRL, datasets) are loaded only when training
    from transformers import PreTrainedTokenizerBase

METHODS = ("rloo", "grpo")
LR_SCHEDULES = ("constant", "linear", "cosine")

# A TRL reward function: (prompts, completions, completion_ids, **kwargs) -> one float per completion.
TRLRewardFn = Callable[..., list[float]]


@dataclass(frozen=True)
class GroupRLConfig:
    """An RLOO or GRPO run with TRL from the SFT policy. Validated on construction (ValueError naming the field)."""

    group_size: int = 4
    """completions sampled per prompt (TRL's ``num_generations``); >= 2, since the baseline of each completion
    comes from the others of its group"""
    total_completions: int = 1_536
    """completions sampled over the whole run (PPO's total_episodes); a whole number of batches"""
    batch_size: int = 64
    """completions per generation batch (batch_size / group_size prompts), a multiple of group_size and of
    num_minibatches * group_size, so that every minibatch holds whole groups"""
    num_minibatches: int = 2
    """each generation batch is split into this many minibatches, one optimiser step each (TRL's
    ``steps_per_generation``)"""
    num_iterations: int = 1
    """passes over each generation batch (TRL's ``num_iterations``, PPO's epochs); every minibatch after the
    first of a batch (the second of 2 here, and all of a second pass) is off-policy, so TRL keeps the sampling
    policy's log-probabilities and clips the ratio to them at 1 +- clip_range"""
    kl_coef: float = 0.2
    """beta, the KL coefficient (PPO's kl_coef): RLOO subtracts beta * (summed k1) from each completion's reward;
    GRPO adds beta * k3 per token to its loss. 0: no reference model"""
    lr: float = 3e-4
    """peak learning rate of AdamW (PPO's 3e-4: a tiny model trained from scratch, not TRL's 1e-6 for LLMs)"""
    lr_schedule: str = "linear"
    """"constant", "linear" (to 0 at the last step, as PPO) or "cosine" (to 0)"""
    max_grad_norm: float = 1.0
    """gradients are rescaled so that their global norm is at most this"""
    clip_range: float = 0.2
    """epsilon of the clipped ratio (TRL's ``epsilon``), in (0, 1); it can bite from the second minibatch of
    each generation batch on, once an optimiser step has moved the policy away from the one that sampled"""
    temperature: float = 0.7
    """sampling temperature, also applied inside every training forward pass (PPO's 0.7)"""
    response_length: int = 32
    """most tokens sampled per completion (PPO's response_length)"""
    missing_eos_penalty: float = 1.0
    """subtracted from the reward of a completion that never emitted EOS (PPO's missing_eos_penalty); 0: off"""
    seed: int = 0
    """TRL's seed: prompt order and sampling"""

    def __post_init__(self) -> None:
        check_int(self, "group_size", ge=2)
        for name in ("total_completions", "batch_size", "num_minibatches", "num_iterations", "response_length"):
            check_int(self, name, ge=1)
        check_number(self, "kl_coef", ge=0)
        check_number(self, "lr", gt=0)
        check_choice(self, "lr_schedule", LR_SCHEDULES)
        check_number(self, "max_grad_norm", gt=0)
        check_number(self, "clip_range", gt=0, lt=1)
        check_number(self, "temperature", gt=0)
        check_number(self, "missing_eos_penalty", ge=0)
        check_int(self, "seed", ge=0)
        per_minibatch = self.num_minibatches * self.group_size
        check(
            self,
            "batch_size",
            self.batch_size % per_minibatch == 0,
            f"a multiple of num_minibatches * group_size = {per_minibatch} (whole groups in every minibatch)",
        )
        check(
            self,
            "total_completions",
            self.total_completions % self.batch_size == 0,
            f"a multiple of batch_size = {self.batch_size} (whole generation batches)",
        )

    @property
    def generation_batches(self) -> int:
        """Generation batches over the run."""
        return self.total_completions // self.batch_size

    @property
    def optimizer_steps(self) -> int:
        """Optimiser steps over the run: every batch, num_iterations passes of num_minibatches steps."""
        return self.generation_batches * self.num_minibatches * self.num_iterations

    @property
    def prompts_used(self) -> int:
        """Distinct prompt draws over the run (each sampled group_size times)."""
        return self.total_completions // self.group_size


# ---------------------------------------------------------------------------------------------------------
# Rewards, as TRL reward functions
# ---------------------------------------------------------------------------------------------------------
def episodes(
    prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """PPO's layout of finished episodes: ``(query_responses (B, P + R), attention_mask (B, P + R), P)``,
    prompts left-padded to P, completions (EOS included, if any) right-padded to R with PAD."""
    if len(prompt_ids) != len(completion_ids) or not prompt_ids:
        raise ValueError(f"need as many prompts as completions (>= 1), got {len(prompt_ids)} and {len(completion_ids)}")
    P = max(len(p) for p in prompt_ids)
    R = max(1, max(len(c) for c in completion_ids))
    ids = torch.full((len(prompt_ids), P + R), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        ids[i, P - len(p) : P] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, P - len(p) : P] = 1
        ids[i, P : P + len(c)] = torch.as_tensor(list(c), dtype=torch.long)
        mask[i, P : P + len(c)] = 1
    return ids, mask, P


def reward_model_reward(
    reward_model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    missing_eos_penalty: float = 1.0,
    gold_fn: Callable[[str], float] | None = None,
    batch_size: int = 256,
) -> TRLRewardFn:
    """The reward model as a TRL reward function, scoring exactly as PPO does.

    Each prompt is tokenized as TRL and PPO tokenize it (BOS first), followed by the completion's token ids
    as sampled (up to and with EOS); :func:`utils.ppo.reward_model_fn` reads the normalised score at the last
    real token, and :func:`utils.ppo.penalise_missing_eos` subtracts ``missing_eos_penalty`` from a completion
    without EOS. With ``gold_fn``, the batch's mean gold reward of ``prompt + completion`` is logged through
    TRL's ``log_metric`` (as ``gold_reward``), for reading only.
    """
    score = reward_model_fn(reward_model.requires_grad_(False))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    @torch.no_grad()
    def reward_model(prompts, completions, completion_ids, **kwargs) -> list[float]:
        prompt_ids = tokenizer(list(prompts))["input_ids"]
        scores = []
        for start in range(0, len(prompt_ids), batch_size):
            ids, mask, P = episodes(
                prompt_ids[start : start + batch_size], completion_ids[start : start + batch_size], pad
            )
            responses = torch.where(mask[:, P:].bool(), ids[:, P:], pad)
            scores.append(penalise_missing_eos(score(ids, mask, P).float(), responses, eos, missing_eos_penalty))
        _log_gold(gold_fn, prompts, completions, kwargs)
        return torch.cat(scores).tolist()

    return reward_model


def verifiable_reward_fn(
    tokenizer: PreTrainedTokenizerBase,
    config: VerifiableRewardConfig | None = None,
    missing_eos_penalty: float = 1.0,
    gold_fn: Callable[[str], float] | None = None,
) -> TRLRewardFn:
    """The rule-based reward (:func:`utils.verifiable_reward.verifiable_rewards`) of ``prompt + completion`` as a
    TRL reward function, minus ``missing_eos_penalty`` for a completion without EOS (as PPO's). With ``gold_fn``,
    the batch's mean gold reward is logged as ``gold_reward``."""
    eos = tokenizer.eos_token_id

    def verifiable(prompts, completions, completion_ids, **kwargs) -> list[float]:
        rewards = verifiable_rewards([p + c for p, c in zip(prompts, completions)], config)
        _log_gold(gold_fn, prompts, completions, kwargs)
        return [r - (0.0 if eos in ids else missing_eos_penalty) for r, ids in zip(rewards, completion_ids)]

    return verifiable


def _log_gold(gold_fn, prompts, completions, kwargs) -> None:
    if gold_fn is not None and kwargs.get("log_metric") is not None:
        gold = [gold_fn(p + c) for p, c in zip(prompts, completions)]
        kwargs["log_metric"]("gold_reward", sum(gold) / len(gold))


# ---------------------------------------------------------------------------------------------------------
# Building the trainers
# ---------------------------------------------------------------------------------------------------------
def positions_from_mask(model: nn.Module) -> nn.Module:
    """Make ``model``'s backbone derive ``position_ids`` from the attention mask when it is called without them.

    GPT-2 otherwise numbers positions 0..T-1 whatever the padding, so a left-padded prompt is read at shifted
    positions in TRL's training forward, though it was generated at the mask's positions. A call that passes
    position ids (generation does) is left alone. Idempotent; returns ``model``.
    """
    backbone = getattr(model, model.base_model_prefix)
    if getattr(backbone, "_positions_from_mask", False):
        return model

    def hook(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if kwargs.get("position_ids") is None and mask is not None and mask.dim() == 2 and not bool(mask.all()):
            kwargs["position_ids"] = position_ids_from_mask(mask)
        return args, kwargs

    backbone.register_forward_pre_hook(hook, with_kwargs=True)
    backbone._positions_from_mask = True
    return model


def trl_args(method: str, config: GroupRLConfig, output_dir: str | Path):
    """TRL's ``RLOOConfig`` or ``GRPOConfig`` for ``config`` (CPU, fp32, quiet, no checkpoints)."""
    from trl import GRPOConfig, RLOOConfig

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    common = offline_cpu_training_args(config.batch_size // config.num_minibatches, config.seed)
    common.update(logging_steps=1, logging_strategy="steps")
    args = dict(
        output_dir=str(output_dir),
        num_generations=config.group_size,
        steps_per_generation=config.num_minibatches,
        num_iterations=config.num_iterations,
        max_steps=config.optimizer_steps,
        max_completion_length=config.response_length,
        temperature=config.temperature,
        top_p=1.0,
        top_k=0,
        beta=config.kl_coef,
        epsilon=config.clip_range,
        learning_rate=config.lr,
        lr_scheduler_type=config.lr_schedule,
        warmup_steps=0,
        max_grad_norm=config.max_grad_norm,
        disable_dropout=True,
        shuffle_dataset=True,
        **common,
    )
    if method == "rloo":
        return RLOOConfig(**args)
    # GRPO as in its paper: advantages divided by the group's std, the loss averaged over each
    # completion's tokens ("grpo"); TRL's default "dapo" averages over all tokens of the batch instead.
    return GRPOConfig(scale_rewards="group", loss_type="grpo", **args)


def build_group_rl_trainer(
    method: str,
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    reward_fn: TRLRewardFn,
    prompts: Sequence[str],
    config: GroupRLConfig,
    output_dir: str | Path,
):
    """TRL's ``RLOOTrainer`` (``method="rloo"``) or ``GRPOTrainer`` (``"grpo"``) for ``policy``, not yet trained.

    ``policy`` is saved to ``output_dir/start`` (TRL loads the policy and its frozen reference from there; the
    caller's module is not modified); ``prompts`` are the training prompts (text), of which the run samples
    ``config.prompts_used`` draws, each ``config.group_size`` times. ``reward_fn`` scores completions
    (:func:`reward_model_reward`, :func:`verifiable_reward_fn`, or any TRL reward function).
    """
    from datasets import Dataset
    from trl import GRPOTrainer, RLOOTrainer

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not prompts:
        raise ValueError("prompts is empty: nothing to train on")
    if tokenizer.eos_token_id is None or tokenizer.eos_token_id == tokenizer.pad_token_id:
        raise ValueError("the tokenizer needs an EOS token distinct from its PAD token")
    start = Path(output_dir) / "start"
    policy.save_pretrained(str(start))
    tokenizer.save_pretrained(str(start))
    args = trl_args(method, config, output_dir)
    trainer_cls = RLOOTrainer if method == "rloo" else GRPOTrainer
    with quiet_training():
        trainer = trainer_cls(
            model=str(start),
            reward_funcs=reward_fn,
            args=args,
            train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
            processing_class=tokenizer,
        )
    positions_from_mask(trainer.model)
    if trainer.ref_model is not None:
        positions_from_mask(trainer.ref_model)
    return silence_trainer(trainer)


def train_group_rl(
    method: str,
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    reward_fn: TRLRewardFn,
    prompts: Sequence[str],
    config: GroupRLConfig,
    output_dir: str | Path | None = None,
):
    """Build the trainer (:func:`build_group_rl_trainer`) and train it; returns the trainer (``trainer.model`` is
    the trained policy, ``trainer.state.log_history`` TRL's log, one entry per optimiser step)."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_group_rl_trainer(
            method, policy, tokenizer, reward_fn, prompts, config, output_dir or Path(tmp) / "trl"
        )
        with quiet_training():
            trainer.train()
    return trainer


def log_series(log_history: Sequence[dict], key: str) -> list[float]:
    """The values of ``key`` over TRL's log (one per logged step that has it; NaN-free)."""
    return [float(e[key]) for e in log_history if key in e and not math.isnan(float(e[key]))]
