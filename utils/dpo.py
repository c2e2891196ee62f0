"""Direct Preference Optimisation (DPO, Rafailov et al. 2023): preference tuning with no reward model and no
sampling, from the closed form of the KL-regularised objective.

RLHF maximises, for each prompt x, the expected reward minus a KL penalty to the reference policy:

    max_pi  E_{y ~ pi(.|x)} [ r(x, y) ]  -  beta * KL( pi(.|x) || pi_ref(.|x) )

Its maximiser has a closed form (a Gibbs distribution; Z(x) normalises it):

    pi*(y|x) = pi_ref(y|x) * exp( r(x, y) / beta ) / Z(x)

Solved for the reward, every policy pi defines an *implicit reward*

    r(x, y) = beta * log( pi(y|x) / pi_ref(y|x) )  +  beta * log Z(x)

Bradley-Terry only ever compares two completions of the SAME prompt, so beta * log Z(x) cancels in the
difference, and the reward model's loss becomes a loss on the policy itself:

    L = -log sigmoid( beta * [ (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)) ] )

with y_w the chosen and y_l the rejected completion. Fitting Bradley-Terry on the implicit reward IS
solving the KL-regularised problem, for the reward model that fits the preferences best; beta plays the
KL coefficient's role (small beta: far from pi_ref; large beta: close to it).

Label smoothing (conservative DPO, Mitchell 2023): if a fraction eps of the labels is flipped, the
expected loss is -(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d). TRL 1.16's ``"sigmoid"`` loss
ignores ``label_smoothing`` (only its ``"robust"`` and ``"aot"`` losses read it), so TRL and we agree at
label_smoothing = 0, the default.

``sequence_logprobs`` sums the log-probabilities of the completion tokens only, as TRL does: the prompt is
shared by the two completions and the reference, and cancels anyway.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from utils.config_checks import check, check_choice, check_int, check_number, check_numbers, is_number
from utils.ppo_losses import logprobs_from_logits
from utils.trl_helpers import offline_cpu_training_args, quiet_training, silence_trainer

if TYPE_CHECKING:  # heavy imports (TRL, datasets) are loaded only when training
    from transformers import PreTrainedTokenizerBase

LOSS_TYPES = ("sigmoid", "hinge")  # DPO's Bradley-Terry loss; SLiC's hinge on the same margin


@dataclass(frozen=True)
class DPOConfig:
    """The DPO loss's settings. Validated on construction (ValueError naming the field on bad values)."""

    beta: float = 0.1
    """KL coefficient of the objective DPO solves, and the scale of the implicit reward beta * log pi/pi_ref.
    Must be > 0: at 0 the loss no longer depends on the policy (and the objective has no KL anchor)"""
    label_smoothing: float = 0.0
    """assumed fraction of flipped labels (conservative DPO), in [0, 0.5): at 0.5 the labels carry no
    information and the loss has no gradient. Only the "sigmoid" loss uses it"""
    loss_type: str = "sigmoid"
    """"sigmoid" (DPO: -log sigmoid(beta * margin), TRL's default) or "hinge" (SLiC: relu(1 - beta * margin))"""
    seed: int = 0
    """seed of the training run that uses this config (batch order, dropout if any)"""

    def __post_init__(self) -> None:
        check_number(self, "beta", gt=0)
        check_number(self, "label_smoothing", ge=0, lt=0.5)
        check_choice(self, "loss_type", LOSS_TYPES)
        check(
            self,
            "label_smoothing",
            self.loss_type == "sigmoid" or self.label_smoothing == 0,
            f"0 with loss_type={self.loss_type!r} (only the sigmoid loss smooths labels)",
        )
        check_int(self, "seed", ge=0)


def sequence_logprobs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """log pi(completion | prompt) for each row: the summed log-probs of the tokens where ``completion_mask``
    is set. All tensors (B, T), prompt then completion in each row, right padding.

    Token t is predicted by the logits at position t - 1, so the first token (BOS) is never scored; a mask
    set on it would be ignored, as in TRL, which also shifts by one.
    """
    if not (input_ids.shape == attention_mask.shape == completion_mask.shape):
        raise ValueError(
            "input_ids, attention_mask and completion_mask must have the same shape, got "
            f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(completion_mask.shape)}"
        )
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    token_logps = logprobs_from_logits(logits, input_ids[:, 1:])
    scored = completion_mask[:, 1:].bool()
    # where, not multiply: whatever the model says about padding must not reach the sum or its gradient
    return torch.where(scored, token_logps, torch.zeros_like(token_logps)).sum(dim=1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss of a batch of pairs, and the implicit rewards of its completions.

    Inputs are (B,) sequence log-probs (:func:`sequence_logprobs`) of the chosen and rejected completions
    under the policy and the frozen reference. Returns ``(loss, chosen_rewards, rejected_rewards)``:

    * loss: the batch mean of -log sigmoid(beta * margin) (``"sigmoid"``) or relu(1 - beta * margin)
      (``"hinge"``), with margin = (log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected);
    * the implicit rewards beta * (log pi - log pi_ref) of each completion, (B,), detached (they are for
      reading: reward accuracy is chosen_rewards > rejected_rewards), as TRL logs them.
    """
    if not (is_number(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    if not (is_number(label_smoothing) and 0 <= label_smoothing < 0.5):
        raise ValueError(f"label_smoothing must be a finite number in [0, 0.5), got {label_smoothing!r}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    shapes = {
        tuple(t.shape) for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    }
    if len(shapes) != 1:
        raise ValueError(f"the four log-prob tensors must have the same shape, got {sorted(shapes)}")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratios - rejected_logratios)  # Bradley-Terry on the implicit rewards
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    else:
        if label_smoothing != 0:
            raise ValueError(f"label_smoothing must be 0 with loss_type='hinge', got {label_smoothing!r}")
        losses = torch.relu(1 - logits)
    return losses.mean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def dpo_loss_from_config(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    config: DPOConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`dpo_loss` with the settings of ``config``."""
    return dpo_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta=config.beta,
        label_smoothing=config.label_smoothing,
        loss_type=config.loss_type,
    )


# ------------------------------------------------------------------------------------------------
# Training with TRL's DPOTrainer
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DPOTrainConfig:
    """A DPO run from the SFT policy with TRL's ``DPOTrainer`` (our config; ``trl.DPOConfig`` is built from it).
    Validated on construction (ValueError naming the field on bad values)."""

    beta: float = 0.3
    """KL coefficient of the objective DPO solves (the implicit reward is beta * log pi/pi_ref). Must be > 0.
    0.3: at 0.1 the same run moves further (KL ~0.9 nats) into longer, cut-off reviews"""
    pairs: int | None = 2_000
    """preference pairs trained on: the first ``pairs`` rows of the training pairs (None: all of them)"""
    epochs: float = 1.0
    """passes over those pairs"""
    lr: float = 5e-5
    """peak learning rate (AdamW); at 1e-4 the policy grows long and loses its EOS (measured on seed 0)"""
    lr_scheduler: str = "cosine"
    """transformers scheduler name (``transformers.SchedulerType``): warmup, then decay"""
    warmup_ratio: float = 0.1
    """share of the steps spent warming up linearly"""
    batch_size: int = 32
    """pairs per optimiser step (each step scores 2 x batch_size sequences under the policy and the reference)"""
    grad_clip: float = 1.0
    """max global gradient norm"""
    max_length: int = 128
    """longest prompt + completion in tokens; longer ones are cut at the end (ours are < 100: nothing is cut)"""
    max_completion_tokens: int | None = 24
    """pairs with a completion longer than this many tokens (EOS included) are left out before ``pairs`` are
    counted (None: none is). Below the 32-token response budget the policies are sampled with: the annotators'
    length bias teaches DPO longer reviews, and one it has no tokens left to finish is ungrammatical"""
    sft_weight: float = 0.5
    """weight of the chosen completion's negative log-likelihood added to the DPO loss (RPO, Pang et al. 2024;
    TRL's ``loss_type=["sigmoid", "sft"]``); 0: plain DPO. DPO alone lowers the likelihood of both completions
    and the policy loses grammar (seed 0: grammatical 0.98 -> 0.90); the NLL term keeps it (0.93)"""
    ld_alpha: float | None = None
    """length desensitisation (LD-DPO, Liu et al. 2024): the log-probs of the tokens past the shorter
    completion's length count ``ld_alpha`` times, in [0, 1]; None (or 1): plain DPO"""
    seed: int = 0
    """TRL's seed: batch order"""

    def __post_init__(self) -> None:
        from transformers import SchedulerType

        for name in ("beta", "epochs", "lr", "grad_clip"):
            check_number(self, name, gt=0)
        check_int(self, "pairs", ge=1, none_ok=True)
        check_number(self, "warmup_ratio", ge=0, lt=1)
        check_choice(self, "lr_scheduler", [s.value for s in SchedulerType])
        for name in ("batch_size", "max_length"):
            check_int(self, name, ge=1)
        check_int(self, "max_completion_tokens", ge=1, none_ok=True)
        check_number(self, "sft_weight", ge=0)
        check_number(self, "ld_alpha", ge=0, le=1, none_ok=True)
        check_int(self, "seed", ge=0)


@dataclass(frozen=True)
class DPOSweepConfig:
    """The beta sweep of notebook 12: short DPO runs from the SFT policy, one per beta, each measured on the
    first held-out prompts and pairs. Validated on construction (ValueError naming the field on bad values)."""

    betas: tuple[float, ...] = (0.1, 0.3, 1.0)
    """the KL coefficients swept (each > 0, strictly increasing); every other setting is the ``dpo`` stage's"""
    pairs: int = 500
    """training pairs per run (fewer than the stage's, so that the sweep fits a notebook's budget)"""
    eval_prompts: int = 128
    """held-out prompts each run is measured on (the first ones of the evaluation's)"""
    heldout_pairs: int = 500
    """held-out preference pairs on which each run's implicit-reward accuracy is measured"""

    def __post_init__(self) -> None:
        check_numbers(self, "betas", gt=0)
        check(self, "betas", list(self.betas) == sorted(set(self.betas)), "strictly increasing")
        for name in ("pairs", "eval_prompts", "heldout_pairs"):
            check_int(self, name, ge=1)


def completion_tokens(tokenizer: PreTrainedTokenizerBase, completion: str) -> int:
    """Tokens of ``completion`` with the EOS that ends it (what a policy must sample to write it)."""
    return len(tokenizer(completion, add_special_tokens=False)["input_ids"]) + 1


def preference_rows(
    rows: Sequence[dict],
    pairs: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_completion_tokens: int | None = None,
) -> list[dict]:
    """The first ``pairs`` rows (all with None) as TRL's prompt/chosen/rejected rows, other columns dropped;
    with ``max_completion_tokens``, of the rows whose two completions both fit it (needs ``tokenizer``)."""
    if not rows or not {"prompt", "chosen", "rejected"} <= set(rows[0]):
        raise ValueError("preference rows must be a non-empty list of dicts with 'prompt', 'chosen', 'rejected'")
    if max_completion_tokens is not None:
        if tokenizer is None:
            raise ValueError("max_completion_tokens needs the tokenizer that counts the tokens")
        rows = [
            r
            for r in rows
            if max(completion_tokens(tokenizer, r["chosen"]), completion_tokens(tokenizer, r["rejected"]))
            <= max_completion_tokens
        ]
    kept = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows[:pairs]]
    if not kept:
        raise ValueError(f"no preference row has both completions within {max_completion_tokens} tokens")
    return kept


def build_dpo_trainer(
    policy: nn.Module,
    reference: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    config: DPOTrainConfig,
    output_dir: str | Path,
):
    """TRL's ``DPOTrainer`` for ``policy`` against the frozen ``reference`` on prompt/chosen/rejected ``rows``
    (the first ``config.pairs`` of them), not yet trained. TRL appends EOS to every completion and scores the
    completion tokens only (as :func:`sequence_logprobs`); its loss is :func:`dpo_loss` (``tests/test_dpo.py``)."""
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    args = TRLDPOConfig(
        output_dir=str(output_dir),
        beta=config.beta,
        loss_type=["sigmoid", "sft"] if config.sft_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, config.sft_weight] if config.sft_weight > 0 else None,
        ld_alpha=config.ld_alpha,
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a share of the total steps
        max_grad_norm=config.grad_clip,
        max_length=config.max_length,
        truncation_mode="keep_start",
        disable_dropout=True,
        **offline_cpu_training_args(config.batch_size, config.seed),
    )
    with quiet_training():
        return silence_trainer(
            DPOTrainer(
                model=policy,
                ref_model=reference.requires_grad_(False).eval(),
                args=args,
                train_dataset=Dataset.from_list(
                    preference_rows(rows, config.pairs, tokenizer, config.max_completion_tokens)
                ),
                processing_class=tokenizer,
            )
        )


def train_dpo(
    policy: nn.Module,
    reference: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    config: DPOTrainConfig,
) -> tuple[nn.Module, dict]:
    """Train ``policy`` (in place) with DPO on ``rows``; returns it in eval mode and a report (TRL's log,
    seconds, steps, pairs trained on, pairs per second)."""
    with tempfile.TemporaryDirectory(prefix="dpo-") as output_dir:
        trainer = build_dpo_trainer(policy, reference, tokenizer, rows, config, output_dir)
        pairs = len(trainer.train_dataset)
        start = time.perf_counter()
        with quiet_training():
            trainer.train()
        seconds = time.perf_counter() - start
    return trainer.model.eval(), {
        "train_seconds": seconds,
        "steps": trainer.state.global_step,
        "pairs": pairs,
        "pairs_per_second": pairs * config.epochs / seconds,
        "log": trainer.state.log_history,
    }


# ------------------------------------------------------------------------------------------------
# Reading a DPO policy: its implicit reward on any pairs
# ------------------------------------------------------------------------------------------------
def encode_completions(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], completions: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, completion_mask)`` (B, T), right-padded, of ``prompt + completion + EOS``
    tokenised as TRL's DPOTrainer does: the completion starts where the tokens of the prompt alone and of the
    whole text diverge, and EOS ends it."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    rows = []
    for prompt, completion in zip(prompts, completions):
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
        start = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids)) if a != b), min(len(prompt_ids), len(ids)))
        rows.append((ids, start))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    completion_mask = torch.zeros_like(input_ids)
    for i, (ids, start) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        completion_mask[i, start : len(ids)] = 1
    return input_ids, attention_mask, completion_mask


@torch.no_grad()
def completion_logprobs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    batch_size: int = 128,
) -> torch.Tensor:
    """log pi(completion + EOS | prompt) (B,) under ``model``, in batches (see :func:`encode_completions`)."""
    model.eval()
    out = []
    for s in range(0, len(prompts), batch_size):
        batch = encode_completions(tokenizer, prompts[s : s + batch_size], completions[s : s + batch_size])
        out.append(sequence_logprobs(model, *batch))
    return torch.cat(out)


def implicit_rewards(
    policy: nn.Module,
    reference: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    beta: float,
    batch_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The implicit rewards beta * log pi/pi_ref of the chosen and of the rejected completion of each row:
    ``(chosen, rejected)``, each (N,). DPO's "reward model": it prefers the chosen one where chosen > rejected."""
    if not (is_number(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    prompts = [r["prompt"] for r in rows]
    rewards = []
    for key in ("chosen", "rejected"):
        completions = [r[key] for r in rows]
        policy_logps = completion_logprobs(policy, tokenizer, prompts, completions, batch_size)
        ref_logps = completion_logprobs(reference, tokenizer, prompts, completions, batch_size)
        rewards.append(beta * (policy_logps - ref_logps))
    return rewards[0], rewards[1]
