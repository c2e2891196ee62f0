"""PPO for language models: the reinforcement-learning step of RLHF, written out top to bottom.

One update of :class:`PPOTrainer` (see :meth:`PPOTrainer.step`) is, in order:

1. **Rollout.** Take a batch of prompts, left-pad them with the PAD token, and let the policy continue
   each one by sampling at ``temperature`` until it emits EOS (or ``response_length`` tokens). Tokens after
   EOS are PAD and masked out of everything that follows.
   As in CleanRL's rollout, the policy records on the way what PPO needs later: the log-probability of
   each token it sampled (the "old" log-probs of the ratio), the entropy it sampled from, and, with a
   value head, the value of each state.
2. **Evaluate the rollout, without gradients.** The reference policy's log-probabilities of the same
   tokens, the values (if a separate value model), and the reward model's score of each prompt + response
   (read at its last real token). A response that never emitted EOS loses ``missing_eos_penalty``.
3. **Rewards.** Per token ``-beta * (log p - log p_ref)`` (the KL penalty), plus the score at the last real
   token of the response.
4. **Advantages.** GAE over the response tokens, then whitened (mean 0, std 1 over the batch).
5. **Optimise.** ``ppo_epochs`` passes over the batch in ``num_minibatches`` shuffled minibatches: the
   clipped policy loss plus ``vf_coef`` times the clipped value loss (minus an optional entropy bonus),
   gradient clipping, one Adam step per minibatch.
6. **Schedules.** The learning rate decays; an adaptive KL controller moves beta towards a target KL.

The formulas live in :mod:`utils.ppo_losses` (pure functions on tensors, tested against hand
computations); this module is the loop that feeds them. Its structure follows CleanRL's ``ppo.py``, and
its details follow Huang et al., "The N Implementation Details of RLHF with PPO" (2024) and TRL's original
``PPOTrainer``: log-probabilities at the sampling temperature in the rollout and in training, the score
added at the last token, the penalty for responses without EOS, Adam with eps = 1e-5, value clipping,
advantage whitening. Where we differ from TRL we say so in a comment (e.g. TRL adds the score one
position *after* EOS, and recomputes the rollout's log-probs in a second forward pass).

The trainer takes plain modules (a policy LM, a reference LM, optionally a value model) and a reward
*function* of token ids, so it works with any scorer: a reward model (:func:`reward_model_fn`), a rule on
the decoded text (:func:`text_reward_fn`), or a toy rule in a test.

Several processes (``torchrun --nproc_per_node 2 train.py``, or ``accelerate launch --multi_gpu
--num_processes 2 train.py``, which on a machine without CUDA starts CPU processes) split every batch
between them; gradients are summed and every statistic that needs the whole batch (advantage whitening,
reward normalisation, logged means) is computed across processes, so that 2 processes make *the same
update* as 1 process with the same global batch (``tests/test_ppo_multiprocess.py``).

Everything random at update ``u`` is drawn from generators seeded from ``(seed, u)``, so a run resumed
from a checkpoint continues exactly as if it had never stopped.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import io
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from utils.decoding import left_pad, position_ids_from_mask  # noqa: F401 (left_pad: re-exported)
from utils.ppo_losses import (AdaptiveKLController, FixedKLController, clipped_policy_loss,
                              clipped_value_loss, entropy_from_logits, gae_for_token_sequences, kl_k1, kl_k3,
                              masked_mean)

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from transformers import PreTrainedTokenizerBase

    from utils.profiles import Profile

VALUE_MODELS = ("head", "model")
LR_SCHEDULES = ("constant", "linear", "cosine")
KL_ESTIMATORS = ("k1", "k3")

# A reward function scores a batch of finished episodes: (query_responses (B, P + R) token ids, left-padded
# prompt then response with PAD after EOS; attention_mask (B, P + R), 1 on real tokens; context_length P)
# -> scores (B,). It runs under torch.no_grad().
RewardFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PPOConfig:
    """Hyperparameters of PPO for language models. Validated on construction (ValueError on bad values)."""

    # --- Rollouts -------------------------------------------------------------------------------------
    total_episodes: int = 1_536
    """episodes (prompt + sampled response) over the whole run; updates = total_episodes // batch_size.
    Short on purpose: against our length-biased reward model the gold reward peaks after ~1,000-1,500
    episodes and then falls while the proxy keeps rising (notebook 11)"""
    batch_size: int = 64
    """episodes per update (the rollout batch), summed over all processes"""
    num_minibatches: int = 2
    """the batch is split into this many minibatches: one optimiser step each, ppo_epochs times"""
    ppo_epochs: int = 4
    """passes over each rollout batch: more reuse per (expensive) sample, but the policy drifts further"""
    generation_batch_size: int | None = None
    """episodes sampled together by one generate call, each group from its own random stream, so a
    group's samples do not depend on which process draws it; None: the whole per-process batch"""
    response_length: int = 32
    """most tokens sampled per response; a response that has not emitted EOS by then is cut off (and
    penalised). SFT answers are ~15 tokens; a tight budget limits how far PPO can chase the RM's length bias"""
    temperature: float = 0.7
    """sampling temperature; the logits are divided by it in the rollout AND in every training forward
    pass, so the log-probabilities PPO optimises are those of the distribution that was sampled (and the
    policy we evaluate is that tempered distribution). 0.7 as in TRL: on the course, 1,024 held-out
    samples gave 0.95 positive and 0.98 grammatical after PPO at 0.7 against 0.89 and 0.93 at 1.0, since
    at 1.0 the SFT policy's tail of broken reviews (which the reward model never learned to punish)
    survives PPO"""

    # --- Optimiser ------------------------------------------------------------------------------------
    lr: float = 3e-4
    """peak learning rate of Adam (tiny models from scratch tolerate far larger steps than GPT-scale ones)"""
    lr_schedule: str = "linear"
    """"constant", "linear" (to 0 at the last update, as CleanRL and TRL) or "cosine" (to 0)"""
    adam_eps: float = 1e-5
    """Adam's epsilon; 1e-5 rather than PyTorch's 1e-8, as in CleanRL and OpenAI's baselines"""
    max_grad_norm: float = 1.0
    """gradients are rescaled so that their global norm is at most this (over policy and value)"""

    # --- Advantages -----------------------------------------------------------------------------------
    gamma: float = 1.0
    """discount; 1 because the episode is short and only its end is rewarded: nothing to discount"""
    lam: float = 0.95
    """GAE lambda: 0 is the one-step TD advantage (low variance, biased), 1 the Monte-Carlo return"""
    whiten_advantages: bool = True
    """normalise the advantages to mean 0, std 1 over the batch (all processes) before the updates"""

    # --- Losses ---------------------------------------------------------------------------------------
    clip_range: float = 0.2
    """PPO's epsilon: the probability ratio is clipped to [1 - eps, 1 + eps]; must be in (0, 1)"""
    clip_range_value: float | None = 0.2
    """new value predictions are clipped to old value +- this (in reward units); None disables it"""
    vf_coef: float = 0.1
    """weight of the value loss in the total loss (TRL's default)"""
    ent_coef: float = 0.0
    """weight of the entropy bonus; 0 as in RLHF practice: the KL penalty already keeps the policy broad"""

    # --- Rewards --------------------------------------------------------------------------------------
    kl_coef: float = 0.2
    """beta: weight of the per-token KL penalty -beta * (log p - log p_ref); the initial value if adaptive.
    0.2 for the course: at 0.05 or less our policy trades grammar for the RM's favourite (long) answers"""
    kl_estimator: str = "k1"
    """per-token KL in the reward: "k1" = log p - log p_ref (TRL's default) or "k3" = (r - 1) - log r. Both
    estimate the KL without bias, but as a reward k3 does not give the KL's gradient: on the course the policy
    then answered in ~4 tokens at twice the KL (REPORT.md, PPO chapter). Both are always logged"""
    adaptive_kl: bool = False
    """let beta follow Ziegler et al.'s controller towards kl_target instead of keeping it fixed"""
    kl_target: float = 6.0
    """target KL (nats per response) of the adaptive controller"""
    kl_horizon: int = 10_000
    """time scale, in episodes, over which the adaptive controller corrects beta"""
    missing_eos_penalty: float = 1.0
    """subtracted from the score of a response that never emitted EOS (cut off at response_length); 0: off"""
    normalize_scores: bool = False
    """standardise scores with their running mean and std over all updates so far (all processes)"""
    whiten_rewards: bool = False
    """scale the per-token rewards to std 1 over the batch, keeping their mean (TRL's whiten_rewards)"""

    # --- Models ---------------------------------------------------------------------------------------
    value_model: str = "head"
    """where the values come from: "head" = a linear head on the policy's last hidden state (shares the
    trunk: one forward and backward pass serve both policy and value, about 1.5x faster per update on a
    CPU; on the course it predicts little, yet the policy it trains is as good, see REPORT.md), or
    "model" = a separate network initialised from the reward model (TRL's choice and the N-details paper's:
    no interference between the two losses, and a trunk that already knows what earns reward)"""
    use_lora: bool = False
    """train the policy as a LoRA adapter; the reference is then the same model with the adapter switched
    off, so only one copy of the weights is in memory (ref_policy must be None)"""
    lora_r: int = 16
    """rank of the LoRA update B A"""
    lora_alpha: int = 32
    """LoRA scale: the update is multiplied by lora_alpha / lora_r"""
    lora_target_modules: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")
    """GPT-2 projections that get an adapter (attention and MLP)"""

    # --- Bookkeeping ----------------------------------------------------------------------------------
    seed: int = 0
    """seeds prompt order, sampling and minibatch order (each derived from (seed, update))"""
    checkpoint_every: int = 0
    """updates between checkpoints (and one at the end) when the trainer has an output_dir; 0: only at the end"""

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ValueError(f"PPOConfig.{name} must be {allowed}, got {getattr(self, name)!r}")

        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        for name in ("total_episodes", "batch_size", "num_minibatches", "ppo_epochs", "response_length",
                     "lora_r", "lora_alpha", "kl_horizon"):
            check(name, is_int(getattr(self, name)) and getattr(self, name) >= 1, "an int >= 1")
        for name in ("seed", "checkpoint_every"):
            check(name, is_int(getattr(self, name)) and getattr(self, name) >= 0, "an int >= 0")
        check("generation_batch_size", self.generation_batch_size is None
              or (is_int(self.generation_batch_size) and self.generation_batch_size >= 1), "None or an int >= 1")
        check("total_episodes", self.total_episodes >= self.batch_size, f">= batch_size ({self.batch_size})")
        check("batch_size", self.batch_size % self.num_minibatches == 0,
              f"divisible by num_minibatches ({self.num_minibatches})")
        check("temperature", is_number(self.temperature) and self.temperature > 0, "a number > 0")
        for name in ("lr", "adam_eps", "max_grad_norm", "kl_target"):
            check(name, is_number(getattr(self, name)) and getattr(self, name) > 0, "a number > 0")
        for name in ("vf_coef", "ent_coef", "kl_coef", "missing_eos_penalty"):
            check(name, is_number(getattr(self, name)) and getattr(self, name) >= 0, "a number >= 0")
        for name in ("gamma", "lam"):
            check(name, is_number(getattr(self, name)) and 0 <= getattr(self, name) <= 1, "a number in [0, 1]")
        check("clip_range", is_number(self.clip_range) and 0 < self.clip_range < 1, "a number in (0, 1)")
        check("clip_range_value", self.clip_range_value is None
              or (is_number(self.clip_range_value) and self.clip_range_value > 0), "None or a number > 0")
        check("lr_schedule", self.lr_schedule in LR_SCHEDULES, f"one of {LR_SCHEDULES}")
        check("kl_estimator", self.kl_estimator in KL_ESTIMATORS, f"one of {KL_ESTIMATORS}")
        check("value_model", self.value_model in VALUE_MODELS, f"one of {VALUE_MODELS}")
        for name in ("whiten_advantages", "adaptive_kl", "normalize_scores", "whiten_rewards", "use_lora"):
            check(name, isinstance(getattr(self, name), bool), "a bool")
        check("lora_target_modules", isinstance(self.lora_target_modules, tuple) and len(self.lora_target_modules) > 0
              and all(isinstance(m, str) for m in self.lora_target_modules), "a non-empty tuple of module names")

    @property
    def num_updates(self) -> int:
        """Number of rollout + optimisation rounds in the run."""
        return self.total_episodes // self.batch_size


# ---------------------------------------------------------------------------------------------------------
# Processes: one, or several splitting every batch (torch.distributed with the gloo backend on CPU)
# ---------------------------------------------------------------------------------------------------------
def init_distributed() -> None:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe in the environment.

    Does nothing in a plain single-process run (no ``WORLD_SIZE`` > 1) or when the group already exists.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="gloo")


@dataclass(frozen=True)
class Processes:
    """Who we are among the processes sharing the work, and the one collective operation we need."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> Processes:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``tensor`` over all processes (the tensor itself with one process)."""
        if self.world_size > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def global_masked_mean(values: torch.Tensor, mask: torch.Tensor, processes: Processes) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is set, over the entries of every process.

    With one process this is ``ppo_losses.masked_mean``; with several, each contributes its sum and count.
    """
    total = processes.sum(torch.stack([torch.where(mask, values, 0.0).sum(), mask.sum().to(values.dtype)]))
    return total[0] / total[1]


def global_masked_var(values: torch.Tensor, mask: torch.Tensor, processes: Processes,
                      unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked entries of every process (two passes: mean, then squared deviations)."""
    count = processes.sum(mask.sum().to(values.dtype))
    if count < 2:
        raise ValueError(f"need at least 2 valid entries for a variance, got {int(count)}")
    variance = global_masked_mean((values - global_masked_mean(values, mask, processes)) ** 2, mask, processes)
    return variance * count / (count - 1) if unbiased else variance


def global_masked_whiten(values: torch.Tensor, mask: torch.Tensor, processes: Processes,
                         shift_mean: bool = True) -> torch.Tensor:
    """``ppo_losses.masked_whiten`` with the mean and variance taken over all processes' entries."""
    mean = global_masked_mean(values, mask, processes)
    whitened = (values - mean) * torch.rsqrt(global_masked_var(values, mask, processes) + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, 0.0)


class RunningMoments:
    """Mean and variance of every score seen so far (all processes), merged batch by batch (Chan et al.)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, values: torch.Tensor, processes: Processes) -> None:
        local = torch.stack([values.sum(), (values ** 2).sum(), torch.tensor(float(values.numel()))]).double()
        total, total_sq, n = processes.sum(local).tolist()
        batch_mean = total / n
        batch_var = max(total_sq / n - batch_mean ** 2, 0.0)
        count = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / count
        self.var = (self.var * self.count + batch_var * n + delta ** 2 * self.count * n / count) / count
        self.count = int(count)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


# ---------------------------------------------------------------------------------------------------------
# Small helpers on token batches
# ---------------------------------------------------------------------------------------------------------
def derived_seed(*keys: int) -> int:
    """A seed for one purpose at one moment, e.g. ``(seed, SAMPLING, update, group)``: independent streams."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


PROMPT_STREAM, SAMPLING_STREAM, MINIBATCH_STREAM = 0, 1, 2  # the three uses of randomness


def last_true_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) index of the last set position of each row (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask.bool(), positions, 0).amax(dim=1)


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (B, T, C) of a transformers model's backbone (e.g. ``model.transformer`` of GPT-2).

    Works for a causal LM, a sequence classifier and a PEFT-wrapped LM (its adapters stay active). A mask
    without padding is dropped so that attention takes its fast, purely causal path.
    """
    if hasattr(model, "get_base_model"):  # PEFT: the wrapped model, LoRA layers injected in place
        model = model.get_base_model()
    backbone = getattr(model, model.base_model_prefix)
    if bool(attention_mask.all()):
        return backbone(input_ids=input_ids, use_cache=False).last_hidden_state
    return backbone(input_ids=input_ids, attention_mask=attention_mask,
                    position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state


def lm_head(model: nn.Module) -> nn.Module:
    """The output projection (hidden -> vocabulary logits) of a causal LM, PEFT-wrapped or not."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.get_output_embeddings()


def response_logits(model: nn.Module, query_responses: torch.Tensor, attention_mask: torch.Tensor,
                    context_length: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Tempered logits of the response tokens (B, R, V), and the hidden states that predicted them (B, R, C).

    The token at position t is predicted from position t - 1, so the response (positions P .. P+R-1) is
    predicted by positions P-1 .. P+R-2. Only those R positions go through the (vocabulary-sized) head.
    """
    # contiguous: a strided slice would send the head's matmul down a slower batched path
    hidden = hidden_states(model, query_responses, attention_mask)[:, context_length - 1:-1].contiguous()  # (B, R, C)
    return tempered_logits(lm_head(model), hidden, temperature), hidden


def tempered_logits(head: nn.Module, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
    """``head(hidden) / temperature``: logits (..., V) of hidden states (..., C) at a sampling temperature."""
    if temperature == 1.0:
        return head(hidden)
    if getattr(head, "bias", None) is None:
        # head(h) / T == head(h / T) for a linear map without bias: C divisions per token instead of V.
        return head(hidden / temperature)
    return head(hidden) / temperature


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under softmax(logits): logits (B, R, V), tokens (B, R) -> (B, R).

    The same numbers as ``ppo_losses.logprobs_from_logits`` (gather minus logsumexp), but through the fused
    ``log_softmax`` kernel, whose forward and backward are about twice as fast on a CPU; the (B, R, V)
    intermediate it keeps is a few MB at our sizes.
    """
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def use_fused_gelu(model: nn.Module) -> nn.Module:
    """Replace GPT-2's ``gelu_new`` (the tanh approximation of GELU written as 8 elementwise Python-level
    ops, each kept for the backward pass) with PyTorch's fused kernel for the same function. Same values
    to ~1e-7, noticeably faster on a CPU. Changes ``model`` in place (its weights are untouched)."""
    from transformers.activations import NewGELUActivation

    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(module, name, nn.GELU(approximate="tanh"))
    return model


# ---------------------------------------------------------------------------------------------------------
# Rollout sampling
#
# Like CleanRL's rollout (`action, logprob, _, value = agent.get_action_and_value(obs)`), the policy records
# what it "thought" while acting: the log-probability of each token it sampled (these ARE the old
# log-probs of the ratio, nothing is recomputed), the entropy of the distribution it sampled from, and,
# with a value head, the value of the state. This is utils.decoding.generate_with_logprobs specialised to
# GPT-2 and written against its blocks directly: transformers' generic forward spends most of a
# 1-token decoding step in Python bookkeeping, and torch.multinomial draws a random number per
# vocabulary entry where inverse-CDF sampling needs one per row. On the benchmark this halves the
# generation time. The test suite checks every recorded number against a plain teacher-forced forward.
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Samples:
    """What the policy did and thought during a rollout; (B, R) each, R = longest response."""

    responses: torch.Tensor  # sampled tokens, PAD after EOS
    mask: torch.Tensor  # bool, True up to and including EOS
    logprobs: torch.Tensor  # log p(token) at the sampling temperature, 0 after EOS
    entropy: torch.Tensor  # entropy of the (tempered) next-token distribution, 0 after EOS
    values: torch.Tensor | None  # value-head output for the state before each token, None without a head


def gpt2_parts(model: nn.Module) -> nn.Module:
    """The ``GPT2Model`` inside a GPT-2 LM (PEFT-wrapped or not), checked to be a plain GPT-2."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    backbone = getattr(model, "transformer", None)
    config = getattr(model, "config", None)
    if backbone is None or not hasattr(backbone, "h") or getattr(config, "model_type", None) != "gpt2":
        raise ValueError(f"PPO's rollout sampler expects a GPT-2 language model, got {type(model).__name__}")
    if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx or config.add_cross_attention:
        raise ValueError("PPO's rollout sampler supports GPT-2's standard attention only")
    return backbone


def sample_token(logits: torch.Tensor, generator: torch.Generator | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one token per row from softmax(logits) (B, V) by inverse CDF: one uniform number per row.

    Returns (tokens (B,), their log-probabilities (B,), the entropy of each row's distribution (B,)).
    """
    logp = torch.log_softmax(logits, dim=-1)  # (B, V)
    probs = logp.exp()
    cdf = probs.cumsum(dim=-1)  # (B, V)
    u = torch.rand(logits.shape[0], 1, generator=generator, device=logits.device) * cdf[:, -1:]  # scaled: no overshoot
    tokens = torch.searchsorted(cdf, u).clamp_(max=logits.shape[-1] - 1).squeeze(1)  # (B,)
    entropy = -(probs * logp).sum(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(1), entropy


@torch.no_grad()
def sample_responses(policy: nn.Module, queries: torch.Tensor, query_mask: torch.Tensor, max_new_tokens: int,
                     temperature: float, eos_token_id: int, pad_token_id: int, generator: torch.Generator | None,
                     value_head: nn.Module | None = None) -> Samples:
    """Continue left-padded prompts (B, P) with a GPT-2 policy (a PEFT wrapper keeps its adapters active).

    The prompt goes through once (prefill), then each step feeds one token per row, reusing keys and values
    from a preallocated cache. A row that emits EOS is finished: it gets PAD from then on, masked out, and
    the loop ends when every row is finished or after ``max_new_tokens``.
    """
    backbone, head = gpt2_parts(policy), lm_head(policy)
    B, P = queries.shape
    T = P + max_new_tokens
    H = backbone.config.n_head
    C = backbone.config.n_embd
    D = C // H
    keys = torch.empty(len(backbone.h), B, H, T, D)  # the KV cache, one slot per position
    values_cache = torch.empty_like(keys)
    key_ok = torch.ones(B, T, dtype=torch.bool)  # which cached positions may be attended to (not padding)
    key_ok[:, :P] = query_mask.bool()
    # Prefill: causal attention among real tokens; each position also sees itself, so that padding rows
    # attend to something and stay finite (their outputs are never used).
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    attend = (causal & key_ok[:, None, :P]) | torch.eye(P, dtype=torch.bool)  # (B, P, P)

    responses = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long)
    mask = torch.zeros(B, max_new_tokens, dtype=torch.bool)
    logprobs, entropy = torch.zeros(B, max_new_tokens), torch.zeros(B, max_new_tokens)
    values = torch.zeros(B, max_new_tokens) if value_head is not None else None
    unfinished = torch.ones(B, dtype=torch.bool)

    tokens, positions = queries, position_ids_from_mask(query_mask)  # (B, P) first, then (B, 1)
    start, steps = 0, 0  # cache slots filled so far; response tokens sampled so far
    for step in range(max_new_tokens):
        n = tokens.shape[1]  # P at prefill, then 1
        x = backbone.wte(tokens) + backbone.wpe(positions)  # (B, n, C)
        mask_now = attend[:, None] if step == 0 else key_ok[:, None, None, :start + n]  # (B, 1, n, keys)
        for layer, block in enumerate(backbone.h):
            q, k, v = block.attn.c_attn(block.ln_1(x)).split(C, dim=-1)  # (B, n, C) each
            keys[layer, :, :, start:start + n] = k.view(B, n, H, D).transpose(1, 2)
            values_cache[layer, :, :, start:start + n] = v.view(B, n, H, D).transpose(1, 2)
            attn = nn.functional.scaled_dot_product_attention(
                q.view(B, n, H, D).transpose(1, 2), keys[layer, :, :, :start + n],
                values_cache[layer, :, :, :start + n], attn_mask=mask_now)  # (B, H, n, D)
            x = x + block.attn.c_proj(attn.transpose(1, 2).reshape(B, n, C))
            x = x + block.mlp(block.ln_2(x))
        last = backbone.ln_f(x[:, -1])  # (B, C): the state the next token is sampled from
        token, token_logprob, token_entropy = sample_token(tempered_logits(head, last, temperature), generator)
        token = torch.where(unfinished, token, pad_token_id)
        responses[:, step] = token
        mask[:, step] = unfinished
        logprobs[:, step] = torch.where(unfinished, token_logprob, 0.0)
        entropy[:, step] = torch.where(unfinished, token_entropy, 0.0)
        if values is not None:
            values[:, step] = torch.where(unfinished, value_head(last).squeeze(-1), 0.0)
        steps = step + 1
        unfinished &= token != eos_token_id
        if not bool(unfinished.any()):
            break
        start += n
        tokens, positions = token[:, None], positions[:, -1:] + 1
    trim = slice(0, steps)
    return Samples(responses[:, trim].contiguous(), mask[:, trim].contiguous(), logprobs[:, trim].contiguous(),
                   entropy[:, trim].contiguous(), values[:, trim].contiguous() if values is not None else None)


# ---------------------------------------------------------------------------------------------------------
# Reward functions
# ---------------------------------------------------------------------------------------------------------
def reward_model_fn(reward_model: nn.Module) -> RewardFn:
    """Score episodes with a sequence classifier (e.g. ``GPT2ForSequenceClassification``) on the token ids.

    The head reads the hidden state of the last real token: the EOS of a finished response (where the
    reward model was trained to read it), or the last token of a cut-off one. If the model's config holds
    ``reward_mean`` / ``reward_std`` (see ``utils.reward_model.set_normalisation``) they are applied.
    """
    mean = float(getattr(reward_model.config, "reward_mean", 0.0))
    std = float(getattr(reward_model.config, "reward_std", 1.0))

    def score(query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int) -> torch.Tensor:
        hidden = hidden_states(reward_model, query_responses, attention_mask)  # (B, T, C)
        last = last_true_index(attention_mask)  # (B,)
        raw = reward_model.score(hidden[torch.arange(len(last)), last]).squeeze(-1).float()  # (B,)
        return (raw - mean) / std

    return score


def decode_episodes(tokenizer: PreTrainedTokenizerBase, query_responses: torch.Tensor,
                    context_length: int) -> tuple[list[str], list[str]]:
    """(prompts, responses) as text; special tokens (BOS, EOS, PAD) are dropped."""
    prompts = tokenizer.batch_decode(query_responses[:, :context_length], skip_special_tokens=True)
    responses = tokenizer.batch_decode(query_responses[:, context_length:], skip_special_tokens=True)
    return prompts, responses


def text_reward_fn(fn: Callable[[str], float], tokenizer: PreTrainedTokenizerBase) -> RewardFn:
    """A reward function that decodes each episode to ``prompt + response`` and scores it with ``fn(text)``."""

    def score(query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int) -> torch.Tensor:
        prompts, responses = decode_episodes(tokenizer, query_responses, context_length)
        return torch.tensor([fn(p + r) for p, r in zip(prompts, responses)], dtype=torch.float32)

    return score


# ---------------------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------------------
def penalise_missing_eos(scores: torch.Tensor, responses: torch.Tensor, eos_token_id: int,
                         penalty: float) -> torch.Tensor:
    """Subtract ``penalty`` from the score (B,) of every response (B, R) that contains no EOS.

    A cut-off response is not a finished answer, yet the reward model scores it anyway (at its last
    token); without the penalty the policy can learn to ramble instead of concluding (TRL's
    ``missing_eos_penalty``).
    """
    has_eos = (responses == eos_token_id).any(dim=1)  # (B,)
    return scores - penalty * (~has_eos).to(scores.dtype)


def per_token_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor,
                      beta: float, kl_estimator: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """RLHF's reward per response token (B, R): ``-beta * KL_t`` everywhere, plus the score at the last token.

    KL_t is the per-token estimate of KL(policy || reference) from the sampled token: k1 = log p - log p_ref
    or k3 (see ``utils.ppo_losses``). The score (B,) goes to the last token the mask keeps: the EOS, or
    the last token of a cut-off response. (TRL adds it one position after EOS, its ``sequence_lengths_p1``,
    where it also trains the value; we follow Huang et al. 2024 and keep everything inside the mask.)
    Returns ``(non_score_rewards, rewards)``, both 0 outside the mask.
    """
    kl = (kl_k1 if kl_estimator == "k1" else kl_k3)(logprobs, ref_logprobs)  # (B, R)
    non_score_rewards = torch.where(mask, -beta * kl, 0.0)  # (B, R)
    rewards = non_score_rewards.clone()
    last = last_true_index(mask)  # (B,)
    rewards[torch.arange(len(last)), last] += scores
    return non_score_rewards, rewards


# ---------------------------------------------------------------------------------------------------------
# The trainable module: policy + value function
# ---------------------------------------------------------------------------------------------------------
class PolicyAndValue(nn.Module):
    """The policy LM and its value function, trained together by one optimiser.

    ``value_model=None`` puts a linear value head on the policy's last hidden state (one forward pass gives
    logits and values); otherwise ``value_model`` is a separate sequence classifier (e.g. a copy of the
    reward model) whose ``score`` head is read at every position.
    """

    def __init__(self, policy: nn.Module, value_model: nn.Module | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        if value_model is None:
            self.value_head = nn.Linear(policy.config.n_embd, 1)
            # Zero init: every value starts at 0, so early advantages are just the (whitened) returns.
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        else:
            self.value_head = None

    def forward(self, query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int,
                temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Tempered logits of the response tokens (B, R, V) and the values of the states before them (B, R).

        V at response position t estimates the return from the state "prompt + first t response tokens",
        i.e. it is read at the same position that predicts token t.
        """
        logits, hidden = response_logits(self.policy, query_responses, attention_mask, context_length,
                                          temperature)
        if self.value_head is not None:
            return logits, self.value_head(hidden).squeeze(-1)  # (B, R)
        return logits, self.values(query_responses, attention_mask, context_length)

    def values(self, query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int
               ) -> torch.Tensor:
        """Values (B, R) from the separate value model, read at the positions that predict the response."""
        hidden = hidden_states(self.value_model, query_responses, attention_mask)  # (B, T, C)
        return self.value_model.score(hidden[:, context_length - 1:-1]).squeeze(-1).float()


def add_lora(policy: nn.Module, config: PPOConfig) -> nn.Module:
    """Wrap ``policy`` in a PEFT LoRA model: frozen weights plus trainable low-rank updates."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=list(config.lora_target_modules), fan_in_fan_out=True,  # GPT-2's Conv1D
                      bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        # PEFT still reads transformers' renamed `is_gradient_checkpointing`: harmless, and not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(policy, lora)


# ---------------------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One batch of episodes and everything computed about it before the optimisation (this process's rows)."""

    queries: torch.Tensor  # (b, P) left-padded prompts
    responses: torch.Tensor  # (b, R) sampled tokens, PAD after EOS
    query_responses: torch.Tensor  # (b, P + R)
    attention_mask: torch.Tensor  # (b, P + R) 1 on real tokens (prompt and response up to EOS)
    mask: torch.Tensor  # (b, R) bool, True on response tokens up to and including EOS
    logprobs: torch.Tensor  # (b, R) log p_old(token) at the sampling temperature
    ref_logprobs: torch.Tensor  # (b, R) log p_ref(token) at the sampling temperature
    values: torch.Tensor  # (b, R) V_old of the state before each token
    entropy: torch.Tensor  # (b, R) entropy of the policy's next-token distribution at each response position
    scores: torch.Tensor  # (b,) reward-model scores, after the missing-EOS penalty and normalisation
    raw_scores: torch.Tensor  # (b,) what the reward function returned
    has_eos: torch.Tensor  # (b,) bool
    non_score_rewards: torch.Tensor | None = None  # (b, R) -beta * KL estimate per token, 0 outside the mask
    rewards: torch.Tensor | None = None  # (b, R) per-token rewards: KL penalty + score at the last token
    advantages: torch.Tensor | None = None  # (b, R) whitened GAE advantages
    returns: torch.Tensor | None = None  # (b, R) value targets

    @property
    def context_length(self) -> int:
        return self.queries.shape[1]


class PPOTrainer:
    """PPO on a causal LM with a KL penalty to a frozen reference (RLHF's RL step).

    Args:
        config: the hyperparameters.
        policy: the causal LM to train (e.g. the SFT model); trained in place (or wrapped in LoRA).
        ref_policy: the frozen reference (a copy of the initial policy); must be None with ``use_lora``.
        reward_fn: scores finished episodes, see :data:`RewardFn` (e.g. :func:`reward_model_fn`).
        prompts: tokenized prompts (lists of ids, each starting with BOS) the episodes start from.
        pad_token_id, eos_token_id: PAD fills the left of prompts and everything after EOS.
        value_model: the separate value network when ``config.value_model == "model"`` (e.g. a deep copy
            of the reward model); must be None with ``"head"``.
        gold_fn: optional second scorer of the same form, only logged (``objective/gold_reward``).
        output_dir: where the log (CSV, JSON) and checkpoints go; None keeps everything in memory.
    """

    def __init__(self, config: PPOConfig, policy: nn.Module, ref_policy: nn.Module | None, reward_fn: RewardFn,
                 prompts: Sequence[Sequence[int]], pad_token_id: int, eos_token_id: int,
                 value_model: nn.Module | None = None, gold_fn: RewardFn | None = None,
                 output_dir: str | Path | None = None) -> None:
        self.config = config
        self.processes = Processes.current()
        self._check_setup(policy, ref_policy, value_model, prompts, pad_token_id, eos_token_id)
        self.local_batch_size = config.batch_size // self.processes.world_size
        self.generation_batch_size = config.generation_batch_size or self.local_batch_size

        for model in (policy, ref_policy, value_model):
            if model is not None:
                use_fused_gelu(model)
        if value_model is not None:
            value_model.requires_grad_(True)  # trained here, even if it is a copy of a frozen reward model
        if config.use_lora:
            policy = add_lora(policy, config)
        self.model = PolicyAndValue(policy, value_model).eval()  # eval: no dropout, so ratios start at 1
        self.ref_policy = ref_policy.eval().requires_grad_(False) if ref_policy is not None else None
        self.reward_fn, self.gold_fn = reward_fn, gold_fn
        self.prompts = [list(p) for p in prompts]
        self._order: tuple[int | None, list[int]] = (None, [])  # cached (epoch, prompt order)
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id

        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # fused: one kernel updates every tensor (the default loops over tensors in Python on a CPU)
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, eps=config.adam_eps, fused=True)
        self.kl_controller = (AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
                              if config.adaptive_kl else FixedKLController(config.kl_coef))
        self.score_moments = RunningMoments()
        self.update = 0  # updates done so far
        self.log: list[dict] = []
        self.output_dir = Path(output_dir) if output_dir is not None else None

    def _check_setup(self, policy, ref_policy, value_model, prompts, pad_token_id, eos_token_id) -> None:
        c, world = self.config, self.processes.world_size
        if c.batch_size % world:
            raise ValueError(f"batch_size {c.batch_size} must be divisible by the number of processes {world}")
        local = c.batch_size // world
        if c.generation_batch_size is not None and local % c.generation_batch_size:
            raise ValueError(f"the per-process batch ({local}) must be divisible by generation_batch_size "
                             f"({c.generation_batch_size})")
        if c.use_lora and ref_policy is not None:
            raise ValueError("with use_lora=True the reference is the policy with its adapter disabled: "
                             "pass ref_policy=None")
        if not c.use_lora and ref_policy is None:
            raise ValueError("ref_policy is required (a frozen copy of the initial policy) unless use_lora=True")
        if (c.value_model == "model") != (value_model is not None):
            raise ValueError(f"value_model={c.value_model!r} needs "
                             + ("a value_model module (e.g. a copy of the reward model)" if c.value_model == "model"
                                else "value_model=None (the value head lives on the policy)"))
        gpt2_parts(policy)  # the rollout sampler is written for GPT-2
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
        if pad_token_id == eos_token_id:
            raise ValueError("pad_token_id must differ from eos_token_id: masking PAD would mask the real EOS")
        longest = max(len(p) for p in prompts)
        models = {"policy": policy, "ref_policy": ref_policy, "value_model": value_model}
        for name, model in models.items():
            limit = getattr(getattr(model, "config", None), "n_positions", None)
            if limit is not None and longest + c.response_length > limit:
                raise ValueError(f"the longest prompt ({longest} tokens) + response_length ({c.response_length}) "
                                 f"exceeds the {name}'s context of {limit} positions")

    # ----- the algorithm ---------------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """One PPO update: collect a rollout (steps 1-4), optimise on it (5), adapt beta (6). Returns the
        statistics logged for it."""
        c, start = self.config, time.perf_counter()
        self._set_lr(self.update)
        beta = self.kl_controller.beta
        batch, timings = self.collect_rollout(self.update, beta)
        with _timer(timings, "time/training"):
            train_stats = self.optimise(batch, self.update)

        # 6. KL controller (fed this batch's KL), bookkeeping.
        stats = self._rollout_stats(batch)
        self.kl_controller.update(stats["objective/kl"], c.batch_size)
        self.update += 1
        elapsed = time.perf_counter() - start
        stats.update(train_stats)
        stats.update(timings)
        stats.update({
            "update": self.update, "episode": self.update * c.batch_size, "lr": self.optimizer.param_groups[0]["lr"],
            "beta": beta, "time/update": elapsed, "eps": c.batch_size / elapsed,
            "tokens_per_second": stats["val/response_length"] * c.batch_size / elapsed,
        })
        self.log.append(stats)
        return stats

    @torch.no_grad()
    def collect_rollout(self, update: int, beta: float) -> tuple[Rollout, dict[str, float]]:
        """Steps 1-4 for this process's share of the batch: sample, evaluate, reward, advantages.
        Returns the filled :class:`Rollout` and the seconds each phase took."""
        c, timings = self.config, {}

        # 1. Rollout: sample a response to each prompt (left-padded), PAD after EOS, recording the
        #    log-prob and entropy of each token and (value head) the value of each state on the way.
        with _timer(timings, "time/generation"):
            queries, query_mask = self._next_prompts(update)
            samples = self._sample(queries, query_mask, update)
        responses, mask = samples.responses, samples.mask  # (b, R) each
        query_responses = torch.cat([queries, responses], dim=1)  # (b, P + R)
        attention_mask = torch.cat([query_mask, mask.long()], dim=1)  # (b, P + R)
        P = queries.shape[1]

        # 2. Evaluate the episodes: values (if a separate model), reference log-probs, scores.
        values = samples.values
        if values is None:
            with _timer(timings, "time/value_forward"):
                values = self.model.values(query_responses, attention_mask, P)  # (b, R)
        with _timer(timings, "time/reference_forward"):
            ref_logprobs = self._ref_logprobs(query_responses, attention_mask, P)  # (b, R)
        with _timer(timings, "time/scoring"):
            raw_scores = self.reward_fn(query_responses, attention_mask, P).float()  # (b,)
        scores = penalise_missing_eos(raw_scores, responses, self.eos_token_id, c.missing_eos_penalty)
        if c.normalize_scores:
            self.score_moments.update(scores, self.processes)
            scores = (scores - self.score_moments.mean) / math.sqrt(self.score_moments.var + 1e-8)
        batch = Rollout(queries, responses, query_responses, attention_mask, mask, samples.logprobs, ref_logprobs,
                        values, samples.entropy, scores, raw_scores, (responses == self.eos_token_id).any(dim=1))

        # 3. Rewards: -beta * KL per token, plus the score at the last real token.
        batch.non_score_rewards, batch.rewards = per_token_rewards(batch.logprobs, ref_logprobs, mask, scores,
                                                                   beta, c.kl_estimator)
        if c.whiten_rewards:
            batch.rewards = global_masked_whiten(batch.rewards, mask, self.processes, shift_mean=False)

        # 4. Advantages (GAE) and returns; whiten the advantages over the whole batch (all processes).
        batch.advantages, batch.returns = gae_for_token_sequences(batch.rewards, values, mask, c.gamma, c.lam)
        if c.whiten_advantages:
            batch.advantages = global_masked_whiten(batch.advantages, mask, self.processes)
        return batch, timings

    def _next_prompts(self, update: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of the update's prompts, left-padded to the longest of the GLOBAL batch
        (so every process and every generation group has the same shapes as in a one-process run)."""
        n, B = len(self.prompts), self.config.batch_size
        indices = []
        for k in range(update * B, (update + 1) * B):  # epochs over the prompts, each in a fresh order
            epoch, offset = divmod(k, n)
            indices.append(self._prompt_order(epoch)[offset])
        batch = [self.prompts[i] for i in indices]
        length = max(len(p) for p in batch)
        lo = self.processes.rank * self.local_batch_size
        return left_pad(batch[lo:lo + self.local_batch_size], self.pad_token_id, length)

    def _prompt_order(self, epoch: int) -> list[int]:
        """The order of the prompts in pass ``epoch`` over them (a permutation seeded from (seed, epoch))."""
        if self._order[0] != epoch:
            generator = torch.Generator().manual_seed(derived_seed(self.config.seed, PROMPT_STREAM, epoch))
            self._order = (epoch, torch.randperm(len(self.prompts), generator=generator).tolist())
        return self._order[1]

    def _sample(self, queries: torch.Tensor, query_mask: torch.Tensor, update: int) -> Samples:
        """Sample this process's responses group by group, each group from its own generator."""
        groups_per_process = self.local_batch_size // self.generation_batch_size
        groups = []
        for g in range(groups_per_process):
            rows = slice(g * self.generation_batch_size, (g + 1) * self.generation_batch_size)
            group = self.processes.rank * groups_per_process + g  # global index: the same in any process layout
            generator = torch.Generator().manual_seed(derived_seed(self.config.seed, SAMPLING_STREAM, update, group))
            groups.append(sample_responses(self.model.policy, queries[rows], query_mask[rows],
                                           self.config.response_length, self.config.temperature, self.eos_token_id,
                                           self.pad_token_id, generator, self.model.value_head))
        # Groups stop at their own longest response: pad them to the longest of this process's batch.
        length = max(g.responses.shape[1] for g in groups)

        def cat(name: str, fill) -> torch.Tensor | None:
            if getattr(groups[0], name) is None:
                return None
            padded = [nn.functional.pad(getattr(g, name), (0, length - g.responses.shape[1]), value=fill)
                      for g in groups]
            return torch.cat(padded).contiguous()

        return Samples(cat("responses", self.pad_token_id), cat("mask", False), cat("logprobs", 0.0),
                       cat("entropy", 0.0), cat("values", 0.0))

    def _ref_logprobs(self, query_responses: torch.Tensor, attention_mask: torch.Tensor, P: int) -> torch.Tensor:
        """log p_ref of the sampled tokens, at the same temperature as the policy's."""
        responses = query_responses[:, P:]
        if self.config.use_lora:  # the reference is the policy without its adapter
            with self.model.policy.disable_adapter():
                logits, _ = response_logits(self.model.policy, query_responses, attention_mask, P,
                                            self.config.temperature)
        else:
            logits, _ = response_logits(self.ref_policy, query_responses, attention_mask, P, self.config.temperature)
        return token_logprobs(logits, responses)

    def optimise(self, batch: Rollout, update: int) -> dict[str, float]:
        """5. ``ppo_epochs`` x ``num_minibatches`` Adam steps on the clipped losses; returns averaged statistics.

        Minibatches are drawn from one permutation of the GLOBAL batch, the same in every process; each
        process computes the losses of the rows it holds, normalised by the minibatch's global token
        count, and the summed gradients are those of the whole minibatch: the update does not depend on
        how many processes share the work.
        """
        c, processes = self.config, self.processes
        b, lo = self.local_batch_size, processes.rank * self.local_batch_size
        minibatch_size = c.batch_size // c.num_minibatches
        totals = torch.zeros(len(TRAIN_STATS))  # token-weighted sums of each statistic, this process
        for epoch in range(c.ppo_epochs):
            generator = torch.Generator().manual_seed(derived_seed(c.seed, MINIBATCH_STREAM, update, epoch))
            order = torch.randperm(c.batch_size, generator=generator)
            for start in range(0, c.batch_size, minibatch_size):
                ids = order[start:start + minibatch_size]
                rows = ids[(ids >= lo) & (ids < lo + b)] - lo  # the minibatch's episodes held here
                local_tokens = batch.mask[rows].sum()
                tokens = processes.sum(local_tokens.float())
                if len(rows) > 0:
                    loss, minibatch_stats = self.minibatch_loss(batch, rows)
                    # mean over this process's tokens x its share of the tokens = sum here / global count
                    (loss * (local_tokens / tokens)).backward()
                    totals += minibatch_stats * local_tokens
                self._sum_gradients()
                torch.nn.utils.clip_grad_norm_(self.params, c.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=False)  # keep zero grads: a process with no rows sums zeros
        totals = processes.sum(totals) / processes.sum(batch.mask.sum().float() * c.ppo_epochs)
        return dict(zip(TRAIN_STATS, totals.tolist()))

    def minibatch_loss(self, batch: Rollout, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The PPO loss of the episodes ``rows`` (a mean over their valid tokens) and its statistics."""
        c, mask = self.config, batch.mask[rows]
        logits, new_values = self.model(batch.query_responses[rows], batch.attention_mask[rows],
                                        batch.context_length, c.temperature)
        new_logprobs = token_logprobs(logits, batch.responses[rows])  # (m, R)
        pg_loss, pg = clipped_policy_loss(new_logprobs, batch.logprobs[rows], batch.advantages[rows], mask,
                                          c.clip_range)
        vf_loss, vf = clipped_value_loss(new_values, batch.values[rows], batch.returns[rows], mask,
                                         c.clip_range_value)
        loss = pg_loss + c.vf_coef * vf_loss
        if c.ent_coef > 0:  # the bonus needs the entropy of the whole distribution: a pass over (m, R, V)
            loss = loss - c.ent_coef * masked_mean(entropy_from_logits(logits), mask)
        stats = torch.stack([pg_loss.detach(), vf_loss.detach(), pg["approx_kl_squared"], pg["approx_kl"],
                             pg["clipfrac"], vf["vf_clipfrac"], pg["ratio_mean"]])
        return loss, stats

    def _sum_gradients(self) -> None:
        """Sum the gradients over processes (one flat all-reduce); each process then takes the same step."""
        if self.processes.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self.processes.sum(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for p in self.params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def _set_lr(self, update: int) -> None:
        c = self.config
        progress = update / c.num_updates  # 0 at the first update
        factor = {"constant": 1.0, "linear": 1.0 - progress,
                  "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[c.lr_schedule]
        for group in self.optimizer.param_groups:
            group["lr"] = c.lr * factor

    def _rollout_stats(self, batch: Rollout) -> dict[str, float]:
        """Means over the whole batch (all processes) of what the rollout measured, with TRL's names."""
        mask, processes = batch.mask, self.processes
        ones = torch.ones_like(batch.scores, dtype=torch.bool)
        kl_tokens = torch.where(mask, kl_k1(batch.logprobs, batch.ref_logprobs), 0.0)
        kl3_tokens = torch.where(mask, kl_k3(batch.logprobs, batch.ref_logprobs), 0.0)
        nonscore = batch.non_score_rewards.sum(1)  # (b,)
        per_episode = {
            "objective/kl": kl_tokens.sum(1),
            "objective/kl_k3": kl3_tokens.sum(1),
            "objective/entropy": torch.where(mask, -batch.logprobs, 0.0).sum(1),
            "objective/non_score_reward": nonscore,
            "objective/rlhf_reward": batch.scores + nonscore,
            "objective/scores": batch.scores,
            "objective/raw_scores": batch.raw_scores,
            "val/response_length": mask.sum(1).float(),
            "val/eos_fraction": batch.has_eos.float(),
        }
        if self.gold_fn is not None:
            with torch.no_grad():
                per_episode["objective/gold_reward"] = self.gold_fn(
                    batch.query_responses, batch.attention_mask, batch.context_length).float()
        stats = {k: global_masked_mean(v, ones, processes).item() for k, v in per_episode.items()}
        stats["policy/entropy_avg"] = global_masked_mean(batch.entropy, mask, processes).item()
        stats["val/num_eos_tokens"] = processes.sum(batch.has_eos.sum().float()).item()
        stats["val/explained_variance"] = global_explained_variance(batch.values, batch.returns, mask, processes)
        return stats

    # ----- the loop, checkpoints, logs -------------------------------------------------------------------
    def train(self, progress: bool = True, max_updates: int | None = None) -> list[dict]:
        """Run the remaining updates (resuming from ``output_dir``'s checkpoint if there is one).

        ``max_updates`` stops after that many updates of this call (and saves a checkpoint): an
        interruption on purpose, for tests and for notebooks that train in slices.
        """
        from tqdm.auto import tqdm

        c = self.config
        if self.output_dir is not None and self.update == 0 and self.checkpoint_path.is_file():
            self.load_checkpoint(self.checkpoint_path)
        stop = c.num_updates if max_updates is None else min(c.num_updates, self.update + max_updates)
        with tqdm(total=c.num_updates, initial=self.update, desc="PPO", unit="update",
                  disable=not progress or self.processes.rank != 0) as bar:
            while self.update < stop:
                stats = self.step()
                bar.update(1)
                bar.set_postfix(score=f"{stats['objective/scores']:.3f}", kl=f"{stats['objective/kl']:.2f}",
                                eps=f"{stats['eps']:.1f}")
                if self.output_dir is not None:
                    self.write_log(self.output_dir)
                    every = c.checkpoint_every
                    if self.update == stop or (every and self.update % every == 0):
                        self.save_checkpoint(self.checkpoint_path)
        return self.log

    @property
    def checkpoint_path(self) -> Path:
        if self.output_dir is None:
            raise ValueError("this trainer has no output_dir")
        return self.output_dir / "checkpoint.pt"

    def state_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "update": self.update, "log": self.log,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "beta": self.kl_controller.beta, "score_moments": self.score_moments.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()}
        if saved != dataclasses.asdict(self.config):
            raise ValueError("the checkpoint was written with a different PPOConfig; refusing to resume")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_controller.beta = state["beta"]
        self.score_moments.load_state_dict(state["score_moments"])
        self.update, self.log = state["update"], list(state["log"])

    def save_checkpoint(self, path: str | Path) -> None:
        """Write everything needed to continue (atomically; only the first process writes)."""
        if self.processes.rank != 0:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_checkpoint(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(path, weights_only=False))

    def write_log(self, folder: str | Path) -> None:
        """``log.json`` and ``log.csv`` in ``folder``, each written atomically (first process only)."""
        if self.processes.rank == 0:
            write_log(self.log, folder)


TRAIN_STATS = ("loss/policy_avg", "loss/value_avg", "policy/approxkl_avg", "policy/approxkl_k3_avg",
               "policy/clipfrac_avg", "val/clipfrac_avg", "val/ratio")


def global_explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                              processes: Processes) -> float:
    """``ppo_losses.explained_variance`` over all processes: 1 - Var[returns - values] / Var[returns]."""
    var_returns = global_masked_var(returns, mask, processes, unbiased=False)
    if var_returns == 0:
        return math.nan
    return (1.0 - global_masked_var(returns - values, mask, processes, unbiased=False) / var_returns).item()


class _timer:
    """``with _timer(timings, "name"):`` adds the block's wall time to ``timings["name"]``."""

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.start


# ---------------------------------------------------------------------------------------------------------
# Logs and the dashboard
# ---------------------------------------------------------------------------------------------------------
def write_log(log: Sequence[dict], folder: str | Path) -> None:
    """Write ``log`` (one dict per update) as ``log.json`` and ``log.csv`` in ``folder``, atomically."""
    from utils.artifacts import atomic_write_json, atomic_write_text

    folder = Path(folder)
    atomic_write_json(folder / "log.json", list(log))
    columns = list(dict.fromkeys(k for row in log for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(log)
    atomic_write_text(folder / "log.csv", buffer.getvalue())


def read_log(path: str | Path) -> list[dict]:
    """A log written by :func:`write_log` (``log.json``, or the folder holding it)."""
    path = Path(path)
    return json.loads((path / "log.json" if path.is_dir() else path).read_text())


DASHBOARD_PANELS = (  # (title, [(log key, label), ...])
    ("reward", [("objective/scores", "score (proxy)"), ("objective/rlhf_reward", "score - beta KL"),
                ("objective/gold_reward", "gold")]),
    ("KL to reference (nats / response)", [("objective/kl", "k1"), ("objective/kl_k3", "k3")]),
    ("beta", [("beta", "beta")]),
    ("clip fraction", [("policy/clipfrac_avg", "policy"), ("val/clipfrac_avg", "value")]),
    ("approx. KL(old || new) per token", [("policy/approxkl_avg", "k2 (TRL)"), ("policy/approxkl_k3_avg", "k3")]),
    ("value loss", [("loss/value_avg", "value loss")]),
    ("explained variance", [("val/explained_variance", "explained variance")]),
    ("response length (tokens)", [("val/response_length", "mean length")]),
)


def plot_dashboard(log: Sequence[dict] | str | Path) -> Figure:
    """A 2 x 4 matplotlib figure of a PPO run: rewards, KL, beta, clipping, approx. KL, value loss,
    explained variance and response length against episodes. ``log`` is a list of dicts or a log path."""
    import matplotlib.pyplot as plt

    rows = read_log(log) if isinstance(log, (str, Path)) else list(log)
    if not rows:
        raise ValueError("the log is empty: nothing to plot")
    episodes = [r["episode"] for r in rows]
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5), constrained_layout=True)
    for ax, (title, series) in zip(axes.flat, DASHBOARD_PANELS):
        for key, label in series:
            if key in rows[0]:
                ax.plot(episodes, [r.get(key, math.nan) for r in rows], label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("episodes")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------------------
# The pipeline stage
# ---------------------------------------------------------------------------------------------------------
def _ppo_training_key(profile: Profile) -> dict:
    """What a PPO run from the course models depends on: the SFT policy, the reward model, the PPO config."""
    from utils.reward_model import _rm_key
    from utils.sft import _sft_key

    return {**_sft_key(profile), **_rm_key(profile), "ppo": profile.ppo}


def _ppo_key(profile: Profile) -> dict:
    """The ``ppo`` artifact: the run, and its before/after measurement, which samples as the eval stage does."""
    from utils.evaluation import eval_config

    evaluation = eval_config(profile)
    sampling = {"temperature": evaluation.temperature, "max_new_tokens": evaluation.max_new_tokens}
    return {**_ppo_training_key(profile), "evaluation_sampling": sampling}


def ppo_dir(profile: Profile | None = None, progress: bool = True) -> Path:
    """Folder of the PPO-trained policy, its log and its before/after evaluation, built on first use."""
    from utils import evaluation as ev
    from utils import pipeline
    from utils.artifacts import get_or_build, write_jsonl
    from utils.profiles import get_profile
    from utils.reward_model import load_reward_model
    from utils.seed import set_seed
    from utils.sft import load_sft_model

    profile = profile or get_profile()
    config: PPOConfig = profile.ppo

    def build(folder: Path) -> dict:
        policy, tokenizer = load_sft_model(profile)
        reference = copy.deepcopy(policy)
        reward_model, _ = load_reward_model(profile)
        reward_fn = reward_model_fn(reward_model.requires_grad_(False))
        gold_fn = text_reward_fn(_gold_reward, tokenizer)
        value_model = copy.deepcopy(reward_model).requires_grad_(True) if config.value_model == "model" else None
        train_prompts = [r["prompt"] for r in pipeline.load_dataset_rows("rl_prompts_train", profile)]
        test_prompts = [r["prompt"] for r in pipeline.load_dataset_rows("rl_prompts_test", profile)]

        # A sample independent of the eval stage's (seed config.seed + 1, not EvalConfig.seed), measured by
        # the same function: two estimates of every number, so the reader sees the sampling noise.
        evaluate = functools.partial(ev.evaluate_policy, ref_policy=reference, proxy_fn=reward_fn,
                                     tokenizer=tokenizer, prompts=test_prompts, seed=config.seed + 1,
                                     sampling=ev.sampling_config(ev.eval_config(profile), config, tokenizer))
        before, before_samples = evaluate(policy)
        set_seed(config.seed)
        trainer = PPOTrainer(config, policy, None if config.use_lora else reference, reward_fn,
                             tokenizer(train_prompts)["input_ids"], tokenizer.pad_token_id, tokenizer.eos_token_id,
                             value_model=value_model, gold_fn=gold_fn)
        start = time.perf_counter()
        log = trainer.train(progress=progress)
        seconds = time.perf_counter() - start
        trained = trainer.model.policy
        if config.use_lora:
            trained = trained.merge_and_unload()
        after, after_samples = evaluate(trained)
        trained.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        write_log(log, folder)
        write_jsonl(folder / "samples_before.jsonl", before_samples)
        write_jsonl(folder / "samples_after.jsonl", after_samples)
        meta = {f"{k}_before": v for k, v in before.items()}
        meta.update({f"{k}_after": v for k, v in after.items()})
        meta.update(kl_to_ref=after["kl"], kl_to_ref_k3=after["kl_k3"], train_seconds=seconds,
                    episodes_per_second=config.num_updates * config.batch_size / seconds)
        return meta

    return get_or_build("ppo", _ppo_key(profile), build)


def _gold_reward(text: str) -> float:
    from utils import review_world as rw

    return rw.gold_reward(text)


def load_ppo_policy(profile: Profile | None = None):
    """(model, tokenizer) of the PPO-trained policy, training it first if needed."""
    from transformers import GPT2LMHeadModel

    from utils.tokenizer import load_tokenizer

    folder = ppo_dir(profile)
    return GPT2LMHeadModel.from_pretrained(str(folder)).eval(), load_tokenizer(folder)


def ppo_stage(profile: Profile) -> dict:
    """Pipeline stage ``ppo``: builds (or loads) the PPO policy and returns its metrics as ``ppo.*``."""
    from utils.artifacts import read_meta

    meta = read_meta(ppo_dir(profile))
    keys = ("gold_reward_before", "gold_reward_after", "proxy_reward_before", "proxy_reward_after", "kl_to_ref",
            "grammatical_fraction_before", "grammatical_fraction_after", "positive_fraction_before",
            "positive_fraction_after", "length_tokens_before", "length_tokens_after", "train_seconds",
            "episodes_per_second")
    return {f"ppo.{k}": meta[k] for k in keys}
