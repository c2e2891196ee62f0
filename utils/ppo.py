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
computations); this module is the loop that feeds them. The machinery around the loop has modules of
its own: :mod:`utils.rollout` (the sampler of step 1), :mod:`utils.policy_model` (reading a transformers
LM as a policy), :mod:`utils.distributed` (statistics over several processes), :mod:`utils.ppo_logs` (the
log and its dashboard); the pipeline's ``ppo`` stage is :mod:`utils.stages.ppo`.

The loop's structure follows CleanRL's ``ppo.py``, and its details follow Huang et al., "The N
Implementation Details of RLHF with PPO" (2024) and TRL's original ``PPOTrainer``: log-probabilities at
the sampling temperature in the rollout and in training, the score added at the last token, the penalty
for responses without EOS, Adam with eps = 1e-5, value clipping, advantage whitening. Where we differ from
TRL we say so in a comment (e.g. TRL adds the score one position *after* EOS, and recomputes the rollout's
log-probs in a second forward pass).

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

import dataclasses
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from utils.config_checks import check, check_bool, check_choice, check_int, check_names, check_number
from utils.decoding import left_pad
from utils.distributed import (
    Processes,
    RunningMoments,
    global_explained_variance,
    global_masked_mean,
    global_masked_whiten,
)
from utils.policy_model import gpt2_parts, hidden_states, last_true_index, response_logits, use_fused_gelu
from utils.ppo_logs import write_log
from utils.ppo_losses import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae_for_token_sequences,
    kl_k1,
    kl_k3,
    logprobs_from_logits,
    masked_mean,
)
from utils.rollout import Samples, sample_responses

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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
    policy we evaluate is that tempered distribution). 0.7 as in TRL. At 1.0, with the reward model that
    also learned broken reviews, PPO still misses the positive and grammatical targets on run seeds 0 and 1
    (0.85 / 0.89 and 0.87 / 0.93 on 256 held-out prompts, against 0.95 / 0.98 and 0.93 / 0.96 at 0.7): the
    untempered SFT policy's tail of slips the reward model still pays for (a misplaced verdict, text after
    it, a word out of place) survives PPO (notebook 11, section 8)"""

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
        for name in (
            "total_episodes",
            "batch_size",
            "num_minibatches",
            "ppo_epochs",
            "response_length",
            "lora_r",
            "lora_alpha",
            "kl_horizon",
        ):
            check_int(self, name, ge=1)
        for name in ("seed", "checkpoint_every"):
            check_int(self, name, ge=0)
        check_int(self, "generation_batch_size", ge=1, none_ok=True)
        check(self, "total_episodes", self.total_episodes >= self.batch_size, f">= batch_size ({self.batch_size})")
        check(
            self,
            "batch_size",
            self.batch_size % self.num_minibatches == 0,
            f"divisible by num_minibatches ({self.num_minibatches})",
        )
        for name in ("temperature", "lr", "adam_eps", "max_grad_norm", "kl_target"):
            check_number(self, name, gt=0)
        for name in ("vf_coef", "ent_coef", "kl_coef", "missing_eos_penalty"):
            check_number(self, name, ge=0)
        for name in ("gamma", "lam"):
            check_number(self, name, ge=0, le=1)
        check_number(self, "clip_range", gt=0, lt=1)
        check_number(self, "clip_range_value", gt=0, none_ok=True)
        check_choice(self, "lr_schedule", LR_SCHEDULES)
        check_choice(self, "kl_estimator", KL_ESTIMATORS)
        check_choice(self, "value_model", VALUE_MODELS)
        for name in ("whiten_advantages", "adaptive_kl", "normalize_scores", "whiten_rewards", "use_lora"):
            check_bool(self, name)
        check_names(self, "lora_target_modules")

    @property
    def num_updates(self) -> int:
        """Number of rollout + optimisation rounds in the run."""
        return self.total_episodes // self.batch_size


# ---------------------------------------------------------------------------------------------------------
# Randomness: one independent stream per purpose and moment
# ---------------------------------------------------------------------------------------------------------
def derived_seed(*keys: int) -> int:
    """A seed for one purpose at one moment, e.g. ``(seed, SAMPLING, update, group)``: independent streams."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


PROMPT_STREAM, SAMPLING_STREAM, MINIBATCH_STREAM = 0, 1, 2  # the three uses of randomness


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


def decode_episodes(
    tokenizer: PreTrainedTokenizerBase, query_responses: torch.Tensor, context_length: int
) -> tuple[list[str], list[str]]:
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
def penalise_missing_eos(
    scores: torch.Tensor, responses: torch.Tensor, eos_token_id: int, penalty: float
) -> torch.Tensor:
    """Subtract ``penalty`` from the score (B,) of every response (B, R) that contains no EOS.

    A cut-off response is not a finished answer, yet the reward model scores it anyway (at its last
    token); without the penalty the policy can learn to ramble instead of concluding (TRL's
    ``missing_eos_penalty``).
    """
    has_eos = (responses == eos_token_id).any(dim=1)  # (B,)
    return scores - penalty * (~has_eos).to(scores.dtype)


def per_token_rewards(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    scores: torch.Tensor,
    beta: float,
    kl_estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
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

    def forward(
        self, query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tempered logits of the response tokens (B, R, V) and the values of the states before them (B, R).

        V at response position t estimates the return from the state "prompt + first t response tokens",
        i.e. it is read at the same position that predicts token t.
        """
        logits, hidden = response_logits(self.policy, query_responses, attention_mask, context_length, temperature)
        if self.value_head is not None:
            return logits, self.value_head(hidden).squeeze(-1)  # (B, R)
        return logits, self.values(query_responses, attention_mask, context_length)

    def values(self, query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int) -> torch.Tensor:
        """Values (B, R) from the separate value model, read at the positions that predict the response."""
        hidden = hidden_states(self.value_model, query_responses, attention_mask)  # (B, T, C)
        return self.value_model.score(hidden[:, context_length - 1 : -1]).squeeze(-1).float()


def add_lora(policy: nn.Module, config: PPOConfig) -> nn.Module:
    """Wrap ``policy`` in a PEFT LoRA model: frozen weights plus trainable low-rank updates."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(config.lora_target_modules),
        fan_in_fan_out=True,  # GPT-2's Conv1D
        bias="none",
        task_type="CAUSAL_LM",
    )
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

    def __init__(
        self,
        config: PPOConfig,
        policy: nn.Module,
        ref_policy: nn.Module | None,
        reward_fn: RewardFn,
        prompts: Sequence[Sequence[int]],
        pad_token_id: int,
        eos_token_id: int,
        value_model: nn.Module | None = None,
        gold_fn: RewardFn | None = None,
        output_dir: str | Path | None = None,
    ) -> None:
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
        self.kl_controller = (
            AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
            if config.adaptive_kl
            else FixedKLController(config.kl_coef)
        )
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
            raise ValueError(
                f"the per-process batch ({local}) must be divisible by generation_batch_size "
                f"({c.generation_batch_size})"
            )
        if c.use_lora and ref_policy is not None:
            raise ValueError(
                "with use_lora=True the reference is the policy with its adapter disabled: pass ref_policy=None"
            )
        if not c.use_lora and ref_policy is None:
            raise ValueError("ref_policy is required (a frozen copy of the initial policy) unless use_lora=True")
        if (c.value_model == "model") != (value_model is not None):
            raise ValueError(
                f"value_model={c.value_model!r} needs "
                + (
                    "a value_model module (e.g. a copy of the reward model)"
                    if c.value_model == "model"
                    else "value_model=None (the value head lives on the policy)"
                )
            )
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
                raise ValueError(
                    f"the longest prompt ({longest} tokens) + response_length ({c.response_length}) "
                    f"exceeds the {name}'s context of {limit} positions"
                )

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
        stats.update(
            {
                "update": self.update,
                "episode": self.update * c.batch_size,
                "lr": self.optimizer.param_groups[0]["lr"],
                "beta": beta,
                "time/update": elapsed,
                "eps": c.batch_size / elapsed,
                "tokens_per_second": stats["val/response_length"] * c.batch_size / elapsed,
            }
        )
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
        batch = Rollout(
            queries,
            responses,
            query_responses,
            attention_mask,
            mask,
            samples.logprobs,
            ref_logprobs,
            values,
            samples.entropy,
            scores,
            raw_scores,
            (responses == self.eos_token_id).any(dim=1),
        )

        # 3. Rewards: -beta * KL per token, plus the score at the last real token.
        batch.non_score_rewards, batch.rewards = per_token_rewards(
            batch.logprobs, ref_logprobs, mask, scores, beta, c.kl_estimator
        )
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
        return left_pad(batch[lo : lo + self.local_batch_size], self.pad_token_id, length)

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
            groups.append(
                sample_responses(
                    self.model.policy,
                    queries[rows],
                    query_mask[rows],
                    self.config.response_length,
                    self.config.temperature,
                    self.eos_token_id,
                    self.pad_token_id,
                    generator,
                    self.model.value_head,
                )
            )
        # Groups stop at their own longest response: pad them to the longest of this process's batch.
        length = max(g.responses.shape[1] for g in groups)

        def cat(name: str, fill) -> torch.Tensor | None:
            if getattr(groups[0], name) is None:
                return None
            padded = [
                nn.functional.pad(getattr(g, name), (0, length - g.responses.shape[1]), value=fill) for g in groups
            ]
            return torch.cat(padded).contiguous()

        return Samples(
            cat("responses", self.pad_token_id),
            cat("mask", False),
            cat("logprobs", 0.0),
            cat("entropy", 0.0),
            cat("values", 0.0),
        )

    def _ref_logprobs(self, query_responses: torch.Tensor, attention_mask: torch.Tensor, P: int) -> torch.Tensor:
        """log p_ref of the sampled tokens, at the same temperature as the policy's."""
        responses = query_responses[:, P:]
        if self.config.use_lora:  # the reference is the policy without its adapter
            with self.model.policy.disable_adapter():
                logits, _ = response_logits(
                    self.model.policy, query_responses, attention_mask, P, self.config.temperature
                )
        else:
            logits, _ = response_logits(self.ref_policy, query_responses, attention_mask, P, self.config.temperature)
        return logprobs_from_logits(logits, responses)

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
                ids = order[start : start + minibatch_size]
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
        logits, new_values = self.model(
            batch.query_responses[rows], batch.attention_mask[rows], batch.context_length, c.temperature
        )
        new_logprobs = logprobs_from_logits(logits, batch.responses[rows])  # (m, R)
        pg_loss, pg = clipped_policy_loss(
            new_logprobs, batch.logprobs[rows], batch.advantages[rows], mask, c.clip_range
        )
        vf_loss, vf = clipped_value_loss(new_values, batch.values[rows], batch.returns[rows], mask, c.clip_range_value)
        loss = pg_loss + c.vf_coef * vf_loss
        if c.ent_coef > 0:  # the bonus needs the entropy of the whole distribution: a pass over (m, R, V)
            loss = loss - c.ent_coef * masked_mean(entropy_from_logits(logits), mask)
        stats = torch.stack(
            [
                pg_loss.detach(),
                vf_loss.detach(),
                pg["approx_kl_squared"],
                pg["approx_kl"],
                pg["clipfrac"],
                vf["vf_clipfrac"],
                pg["ratio_mean"],
            ]
        )
        return loss, stats

    def _sum_gradients(self) -> None:
        """Sum the gradients over processes (one flat all-reduce); each process then takes the same step."""
        if self.processes.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self.processes.sum(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for p in self.params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def _set_lr(self, update: int) -> None:
        c = self.config
        progress = update / c.num_updates  # 0 at the first update
        factor = {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[
            c.lr_schedule
        ]
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
                    batch.query_responses, batch.attention_mask, batch.context_length
                ).float()
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
        with tqdm(
            total=c.num_updates,
            initial=self.update,
            desc="PPO",
            unit="update",
            disable=not progress or self.processes.rank != 0,
        ) as bar:
            while self.update < stop:
                stats = self.step()
                bar.update(1)
                bar.set_postfix(
                    score=f"{stats['objective/scores']:.3f}",
                    kl=f"{stats['objective/kl']:.2f}",
                    eps=f"{stats['eps']:.1f}",
                )
                if self.output_dir is not None:
                    self.write_log(self.output_dir)
                    every = c.checkpoint_every
                    if self.update == stop or (every and self.update % every == 0):
                        self.save_checkpoint(self.checkpoint_path)
        return self.log

    def trained_policy(self) -> nn.Module:
        """The policy to save or evaluate: with LoRA, its adapters merged into a plain ``GPT2LMHeadModel``
        (W + (alpha/r) B A, as fast as the base); without, the policy itself."""
        policy = self.model.policy
        return policy.merge_and_unload() if self.config.use_lora else policy

    @property
    def checkpoint_path(self) -> Path:
        if self.output_dir is None:
            raise ValueError("this trainer has no output_dir")
        return self.output_dir / "checkpoint.pt"

    def state_dict(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config),
            "update": self.update,
            "log": self.log,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "beta": self.kl_controller.beta,
            "score_moments": self.score_moments.state_dict(),
        }

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


TRAIN_STATS = (
    "loss/policy_avg",
    "loss/value_avg",
    "policy/approxkl_avg",
    "policy/approxkl_k3_avg",
    "policy/clipfrac_avg",
    "val/clipfrac_avg",
    "val/ratio",
)


class _timer:
    """``with _timer(timings, "name"):`` adds the block's wall time to ``timings["name"]``."""

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.start
