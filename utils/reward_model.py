"""Reward models trained on pairwise preferences with the Bradley-Terry loss.

Annotators compared two completions of the same prompt and chose one. Bradley-Terry (1952) models such
choices with a scalar score r per text: P(chosen beats rejected) = sigmoid(r(chosen) - r(rejected)).
Maximising the likelihood of the labels gives the loss

    L = -log sigmoid(r_chosen - r_rejected - margin)            (margin = 0 in plain Bradley-Terry)

Only *differences* of rewards are identified: adding a constant to every score changes nothing, so we
normalise the scores afterwards (mean 0, std 1 on reference texts) for PPO.

Two architectures put a scalar head on a transformer:

* **GPT-style** (``GPT2ForSequenceClassification``, as in InstructGPT): a causal transformer initialised
  from a trained LM, and a linear head ``score`` read at the LAST non-pad token, the only position that
  has seen the whole text. With right padding that is the EOS we append to every text.
* **Encoder with a CLS head** (``BertForSequenceClassification``, BERT-style): bidirectional attention,
  so every position sees everything, and the head reads position 0. BERT puts a special [CLS] token
  there; our tokenizer already puts BOS first in every text, so BOS plays [CLS]. Trained from scratch
  here (we have no pretrained encoder): compare it with the GPT head to see what pretraining buys.

Training: our plain loop (:func:`train_reward_model`; AdamW, warmup + cosine, clipping, held-out curves)
and TRL's ``RewardTrainer`` (:func:`build_trl_reward_trainer`) on the same data. Both see the text as
``[BOS] prompt completion [EOS]`` (TRL concatenates prompt + completion and appends EOS), and both put the
chosen half and the rejected half of a batch into one right-padded forward pass.

Evaluation: held-out pairwise accuracy against the Bayes-optimal accuracy of the simulated annotators,
ROC AUC of the scores of chosen against rejected texts (:func:`roc_auc`), Spearman correlation with the gold
reward, calibration (reliability diagram, ECE), and a length-bias
diagnostic (the annotators prefer longer answers: does the RM learn that?). Real preference data (HH-RLHF)
has no gold reward: :func:`evaluate_preferences` reports accuracy, margin and calibration alone.

Long texts: a model reads at most its ``n_positions`` tokens, and real dialogues are longer (in the course
tokenizer, 65% of the HH-RLHF texts and 72% of its pairs exceed the course RM's 256). Training and evaluation
cut such sequences to their first token (BOS) and their END, where the GPT head reads the score, and log how
many pairs they cut (:func:`truncate_pairs`). TRL 1.16's ``RewardTrainer`` instead drops every pair longer than its
``max_length``; our TRL wrapper hands it the same cut sequences as our loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2ForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from utils import review_world as rw
from utils.config_checks import check, check_bool, check_choice, check_int, check_number, check_numbers
from utils.language_model import collate, get_lr
from utils.seed import set_seed

if TYPE_CHECKING:
    from trl import RewardTrainer

logger = logging.getLogger(__name__)

HEADS = ("gpt", "cls")  # GPT-style last-token head, BERT-style CLS head
INITS = ("sft", "base")  # what the GPT-style reward model starts from


@dataclass(frozen=True)
class RewardModelConfig:
    """How the reward models are built and trained. Validated on construction (ValueError on bad values)."""

    init: str = "sft"
    """what the GPT-style RM starts from: "sft" (the SFT model, as in InstructGPT) or "base" (the base LM)"""
    steps: int = 750
    """optimiser steps: 2.4 epochs of the 16,000 preference pairs and the 4,000 broken-review pairs at batch 64.
    With 4,000 pairs (300 steps at batch 32) the model memorised them and stopped 4 points short of the
    Bayes-optimal accuracy; with four times the data and twice the batch it comes within ~1.5 (seed study in
    REPORT.md). 600 steps over 16,000 + 3,000 pairs (2.0 epochs of the preference pairs) ended 1.8 points short
    on the mean of three seeds against 1.3 at 2.4 epochs without the broken pairs"""
    batch_size: int = 64
    """preference pairs per step (2 x batch_size sequences per forward pass); 64 rather than 32: at this
    learning rate the smaller batch's noisier steps ended ~0.6 points lower after the same number of pairs"""
    lr: float = 1e-3
    """peak learning rate"""
    min_lr_ratio: float = 0.1
    """cosine decays to lr * min_lr_ratio"""
    warmup_steps: int = 50
    """linear warmup"""
    weight_decay: float = 0.0
    """decoupled AdamW weight decay on matrices"""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas"""
    grad_clip: float = 1.0
    """max global gradient norm"""
    margin: float = 0.0
    """Bradley-Terry margin: demand r_chosen - r_rejected > margin (0 = plain BT)"""
    shuffle: bool = True
    """reshuffle the pairs every epoch (False: fixed order, to compare with TRL)"""
    eval_every: int = 100
    """steps between train / held-out estimates (the overfitting curves)"""
    eval_pairs: int = 300
    """pairs of each split used for those estimates (each estimate costs ~6 training steps)"""
    normalisation_texts: int = 2_000
    """reference texts for the mean-0 / std-1 normalisation"""
    calibration_bins: int = 10
    """bins of the reliability diagram"""
    encoder_n_layer: int = 2
    """BERT-style encoder (trained from scratch): blocks"""
    encoder_n_embd: int = 128
    """BERT-style encoder: width"""
    encoder_n_head: int = 4
    """BERT-style encoder: attention heads"""
    encoder_lr: float = 1e-3
    """BERT-style encoder: peak learning rate"""
    encoder_steps: int = 300
    """BERT-style encoder: optimiser steps. Half the GPT head's budget in steps and pairs, to keep the stage
    within a few minutes on 2 cores: the encoder is a side comparison, not the course's reward model"""
    encoder_batch_size: int = 32
    """BERT-style encoder: preference pairs per step"""
    train_encoder: bool = True
    """also train the encoder RM in the pipeline stage (for the comparison)"""
    train_trl: bool = False
    """also train with TRL's RewardTrainer in the stage (doubles its time; notebook 08 and
    tests/test_reward_model.py show step-by-step equal losses on short runs)"""
    defective_pairs: int = 4_000
    """extra training pairs of a review and the same review broken (a cut, a dropped, repeated or swapped
    word; utils.review_world.defective_pairs), labelled by the same annotators. The preference data hold only
    grammatical reviews, so without them the RM never sees the slips PPO's samples make and cannot punish
    them; 0: none"""
    defective_heldout_pairs: int = 500
    """held-out broken pairs on which the RM's accuracy is measured (``defective_heldout_accuracy``)"""
    seed: int = 0
    """head init, batch order and the broken pairs"""

    def __post_init__(self) -> None:
        check_choice(self, "init", INITS)
        for name in (
            "steps",
            "batch_size",
            "encoder_steps",
            "encoder_batch_size",
            "eval_every",
            "eval_pairs",
            "normalisation_texts",
            "calibration_bins",
            "encoder_n_layer",
            "encoder_n_embd",
            "encoder_n_head",
        ):
            check_int(self, name, ge=1)
        for name in ("warmup_steps", "seed", "defective_pairs", "defective_heldout_pairs"):
            check_int(self, name, ge=0)
        for name in ("lr", "encoder_lr", "grad_clip"):
            check_number(self, name, gt=0)
        check_number(self, "min_lr_ratio", ge=0, le=1)
        for name in ("weight_decay", "margin"):
            check_number(self, name, ge=0)
        check_numbers(self, "betas", length=2, ge=0, lt=1)
        for name in ("shuffle", "train_encoder", "train_trl"):
            check_bool(self, name)
        check(
            self,
            "encoder_n_embd",
            self.encoder_n_embd % self.encoder_n_head == 0,
            f"divisible by encoder_n_head ({self.encoder_n_head})",
        )


# ------------------------------------------------------------------------------------------------
# The loss
# ------------------------------------------------------------------------------------------------
def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float | torch.Tensor = 0.0, reduction: str = "mean"
) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected - margin), averaged over pairs (``reduction="none"``: per pair).

    Computed as ``-F.logsigmoid(x)`` (= ``F.softplus(-x)``), which is stable (the naive
    ``-torch.log(torch.sigmoid(x))`` returns inf once sigmoid(x) underflows to 0, x < -104 in float32) and
    differentiated as one smooth function: its gradient is -sigmoid(-x) everywhere, -1/2 at a tie.
    Notebook 08 shows the bug this replaced: the same value written as ``max(-x, 0) + log1p(exp(-|x|))``
    gets gradient -1 at x = 0, because autograd takes one-sided derivatives at the kinks of max and |.|.
    Away from x = 0 the two forms agree to a float32 rounding (values and gradients within 1.2e-7).
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    x = r_chosen - r_rejected - margin  # (B,) the logit of "chosen wins"
    loss = -F.logsigmoid(x)  # (B,)
    return loss.mean() if reduction == "mean" else loss


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
def build_gpt_reward_model(lm: nn.Module, pad_token_id: int, seed: int = 0) -> GPT2ForSequenceClassification:
    """A GPT-2 reward model: the transformer of the causal LM ``lm`` plus a fresh scalar head.

    ``pad_token_id`` must be set: the model finds the last non-pad token of each row by looking for it
    (``num_labels=1``: one scalar per text). The LM head is dropped; the head ``score`` (no bias: a
    constant would cancel in every difference anyway) starts near zero, so all rewards start near 0.
    """
    fields = {k: v for k, v in lm.config.to_dict().items() if k not in ("id2label", "label2id")}
    config = lm.config.__class__.from_dict(
        {**fields, "num_labels": 1, "pad_token_id": pad_token_id, "architectures": ["GPT2ForSequenceClassification"]}
    )
    set_seed(seed)
    model = GPT2ForSequenceClassification(config)
    model.transformer.load_state_dict(lm.transformer.state_dict())
    return model


def build_encoder_reward_model(
    config: RewardModelConfig, tokenizer: PreTrainedTokenizerBase, max_positions: int = 256, seed: int = 0
) -> BertForSequenceClassification:
    """A small BERT-style encoder with a CLS head, randomly initialised (trained from scratch).

    BERT's head reads position 0 ([CLS]) through a tanh "pooler" then a linear layer. Our tokenizer puts
    BOS at position 0 of every text, so BOS is our CLS: no new token, no change to the encoding.
    """
    bert_config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.encoder_n_embd,
        num_hidden_layers=config.encoder_n_layer,
        num_attention_heads=config.encoder_n_head,
        intermediate_size=4 * config.encoder_n_embd,
        max_position_embeddings=max_positions,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=1,
    )
    set_seed(seed)
    return BertForSequenceClassification(bert_config)


# ------------------------------------------------------------------------------------------------
# Data: the same encoding as TRL's RewardTrainer
# ------------------------------------------------------------------------------------------------
def with_eos(text: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """``text`` ending in EOS (appended once, as TRL does): the GPT head reads the reward at this token."""
    return text if text.endswith(tokenizer.eos_token) else text + tokenizer.eos_token


def encode_texts(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Each text as ``[BOS] tokens [EOS]`` (the tokenizer adds BOS; we add EOS)."""
    return tokenizer([with_eos(t, tokenizer) for t in texts])["input_ids"]


def encode_pairs(
    rows: Sequence[dict], tokenizer: PreTrainedTokenizerBase, max_length: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """TRL preference rows (explicit prompt) -> (chosen_ids, rejected_ids): prompt + completion, + EOS.

    ``max_length`` (e.g. ``model_positions(model)``) cuts longer sequences as :func:`truncate_pairs` does
    and logs how many pairs it cut; None keeps every token (training and evaluation cut to the model's
    positions themselves).
    """
    chosen = encode_texts([r["prompt"] + r["chosen"] for r in rows], tokenizer)
    rejected = encode_texts([r["prompt"] + r["rejected"] for r in rows], tokenizer)
    pairs = list(zip(chosen, rejected))
    return _truncate_and_report(pairs, max_length, "encode_pairs")[0]


def model_positions(model: nn.Module) -> int | None:
    """How many tokens ``model`` can read (GPT-2: ``n_positions``; BERT: ``max_position_embeddings``), or None."""
    config = getattr(model, "config", None)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def truncate_pairs(
    pairs: Sequence[tuple[list[int], list[int]]], max_length: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Cut every sequence longer than ``max_length``; returns (pairs, number of pairs with a cut side).

    A cut sequence keeps its first token and its last ``max_length - 1``. The end holds the EOS where the
    GPT head reads the score and the final reply that the two sides of a pair differ in; the first token
    is the BOS every sequence starts with (the encoder head's CLS position, and the start the GPT was
    trained with). TRL's ``RewardTrainer`` drops such pairs instead, and position embeddings beyond
    ``n_positions`` do not exist: an uncut pair ends in ``IndexError: index out of range in self``.
    """
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2 (the first token and at least one more), got {max_length!r}")

    def cut(ids: list[int]) -> list[int]:
        return ids if len(ids) <= max_length else [ids[0], *ids[len(ids) - max_length + 1 :]]

    out = [(cut(chosen), cut(rejected)) for chosen, rejected in pairs]
    n_cut = sum(len(c) > max_length or len(r) > max_length for c, r in pairs)
    return out, n_cut


def _truncate_and_report(
    pairs: Sequence[tuple[list[int], list[int]]], max_length: int | None, where: str
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """:func:`truncate_pairs`, with a warning that says how many pairs were cut (None: nothing to cut to)."""
    if max_length is None:
        return list(pairs), 0
    out, n_cut = truncate_pairs(pairs, max_length)
    if n_cut:
        logger.warning(
            "%s: %d of %d pairs have a side longer than %d tokens; cut to their first token and "
            "their last %d (the end, where the score is read)",
            where,
            n_cut,
            len(pairs),
            max_length,
            max_length - 1,
        )
    return out, n_cut


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (B, T), padded on the right (the LM's collate, without labels)."""
    batch = collate(sequences, pad_id)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def collate_pairs(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """One (2B, T) batch: the B chosen texts, then the B rejected ones (TRL's layout: one forward pass)."""
    return right_pad([c for c, _ in pairs] + [r for _, r in pairs], pad_id)


def pair_rewards(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected), each (B,), from a batch made by :func:`collate_pairs`."""
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    return rewards.chunk(2)  # (2B,) -> (B,), (B,)


# ------------------------------------------------------------------------------------------------
# Our training loop
# ------------------------------------------------------------------------------------------------
def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases or LayerNorm gains)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas
    )


def lr_at(step: int, config: RewardModelConfig, lr: float | None = None) -> float:
    """Warmup then cosine decay (``language_model.get_lr``) with peak ``lr`` (default ``config.lr``)."""
    return get_lr(step, _Schedule(lr or config.lr, config.min_lr_ratio, config.warmup_steps, config.steps))


@dataclass(frozen=True)
class _Schedule:  # the four fields get_lr reads
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    steps: int


def batch_indices(n: int, batch_size: int, steps: int, shuffle: bool, seed: int) -> list[list[int]]:
    """Row indices of each step's batch: epochs of a (re)shuffled order, the last batch of an epoch short.

    This is what a ``DataLoader`` over a ``RandomSampler`` (or ``SequentialSampler``) does.
    """
    generator = torch.Generator().manual_seed(seed)
    batches: list[list[int]] = []
    while len(batches) < steps:
        order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
        batches.extend(order[i : i + batch_size] for i in range(0, n, batch_size))
    return batches[:steps]


@torch.no_grad()
def reward_margins(
    model: nn.Module, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 128
) -> torch.Tensor:
    """r_chosen - r_rejected (len(pairs),) of encoded pairs that fit the model, without gradient."""
    was_training = model.training
    model.eval()
    margins = []
    for start in range(0, len(pairs), batch_size):
        r_chosen, r_rejected = pair_rewards(model, collate_pairs(pairs[start : start + batch_size], pad_id))
        margins.append(r_chosen - r_rejected)
    model.train(was_training)
    return torch.cat(margins)


def evaluate_pairs(
    model: nn.Module,
    pairs: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
    batch_size: int = 128,
    max_length: int | None = None,
) -> dict[str, float]:
    """Mean Bradley-Terry loss and accuracy (share of pairs with r_chosen > r_rejected).

    Sequences longer than ``max_length`` (default: the model's positions) are cut by :func:`truncate_pairs`,
    with a warning that says how many.
    """
    pairs, _ = _truncate_and_report(pairs, max_length or model_positions(model), "evaluate_pairs")
    margins = reward_margins(model, pairs, pad_id, batch_size)
    loss = bradley_terry_loss(margins, torch.zeros_like(margins), reduction="none")
    return {"loss": loss.mean().item(), "accuracy": int((margins > 0).sum()) / len(pairs)}


def train_reward_model(
    model: nn.Module,
    train: Sequence[tuple[list[int], list[int]]],
    val: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
    config: RewardModelConfig,
    lr: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    callback: Callable[[int, dict], None] | None = None,
    max_length: int | None = None,
) -> list[dict]:
    """Train ``model`` in place on encoded pairs with the Bradley-Terry loss; returns the log.

    Every ``eval_every`` steps the log gets a record with the loss and accuracy on ``eval_pairs`` training
    pairs and as many held-out pairs: when the two curves part, the model starts to memorise. Each record
    also holds the loss of every step since the previous record (``step_losses``).
    ``callback(step, record)`` is called at each evaluation (e.g. to redraw a live plot).
    Sequences longer than ``max_length`` (default: the model's positions) are cut by :func:`truncate_pairs`,
    with a warning that says how many pairs of each split were cut.
    """
    limit = max_length or model_positions(model)
    train, _ = _truncate_and_report(train, limit, "train_reward_model, training pairs")
    val, _ = _truncate_and_report(val, limit, "train_reward_model, held-out pairs")
    lr = lr or config.lr
    optimizer = optimizer or make_optimizer(model, lr, config.weight_decay, config.betas)
    train_probe, val_probe = train[: config.eval_pairs], val[: config.eval_pairs]
    log: list[dict] = []
    step_losses: list[float] = []
    start = time.perf_counter()
    model.train()
    for step, index in enumerate(
        batch_indices(len(train), config.batch_size, config.steps, config.shuffle, config.seed)
    ):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config, lr)
        r_chosen, r_rejected = pair_rewards(model, collate_pairs([train[i] for i in index], pad_id))
        loss = bradley_terry_loss(r_chosen, r_rejected, config.margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step_losses.append(loss.item())
        if (step + 1) % config.eval_every == 0 or step == config.steps - 1:
            train_eval = evaluate_pairs(model, train_probe, pad_id)
            val_eval = evaluate_pairs(model, val_probe, pad_id)
            record = {
                "step": step + 1,
                "lr": lr_at(step, config, lr),
                "grad_norm": grad_norm.item(),
                "train_loss": train_eval["loss"],
                "train_accuracy": train_eval["accuracy"],
                "val_loss": val_eval["loss"],
                "val_accuracy": val_eval["accuracy"],
                "step_losses": step_losses,
                "seconds": time.perf_counter() - start,
            }
            log.append(record)
            step_losses = []
            if callback is not None:
                callback(step + 1, record)
    model.eval()
    return log


# ------------------------------------------------------------------------------------------------
# TRL's RewardTrainer on the same data
# ------------------------------------------------------------------------------------------------
def build_trl_reward_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    config: RewardModelConfig,
    output_dir: str | Path,
    optimizers: tuple | None = None,
    max_length: int | None = None,
) -> RewardTrainer:
    """TRL's ``RewardTrainer`` set up like our loop (same steps, schedule, clipping, batch size, seed).

    Pass ``optimizers=(optimizer, scheduler)`` to share an optimiser with our loop exactly (TRL's own
    default differs in details: eps, which parameters decay, linear-vs-cosine schedule, ...). With
    ``config.shuffle=False`` the batches come in row order, as in our loop with the same setting.
    The trainer gets the rows encoded by :func:`encode_pairs` (the tokens TRL's own preprocessing makes:
    prompt + completion + EOS), cut to ``max_length`` (default: the model's positions) as our loop cuts
    them: TRL 1.16 would drop every longer pair instead (its ``max_length``), or crash without one.
    """
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from utils.trl_helpers import offline_cpu_training_args, quiet_training, silence_trainer

    if optimizers is None:
        optimizer = make_optimizer(model, config.lr, config.weight_decay, config.betas)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, config) / config.lr)
        optimizers = (optimizer, scheduler)
    args = RewardConfig(
        output_dir=str(output_dir),
        max_steps=config.steps,
        max_grad_norm=config.grad_clip,
        learning_rate=config.lr,
        disable_dropout=True,
        center_rewards_coefficient=None,
        max_length=None,  # TRL would DROP longer pairs; they are cut above, as in our loop
        train_sampling_strategy="random" if config.shuffle else "sequential",
        **offline_cpu_training_args(config.batch_size, config.seed),
    )
    args.logging_steps = 1  # every step's loss, to compare with our loop
    pairs = encode_pairs(rows, tokenizer, max_length or model_positions(model))
    dataset = Dataset.from_list([{"chosen_ids": chosen, "rejected_ids": rejected} for chosen, rejected in pairs])
    with quiet_training():
        return silence_trainer(
            RewardTrainer(
                model=model, args=args, processing_class=tokenizer, train_dataset=dataset, optimizers=optimizers
            )
        )


def trl_step_losses(trainer: RewardTrainer) -> list[float]:
    """The loss of every training step, from the trainer's log (``logging_steps=1``)."""
    return [record["loss"] for record in trainer.state.log_history if "loss" in record]


# ------------------------------------------------------------------------------------------------
# Scoring and normalisation
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def raw_scores(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """Unnormalised rewards (len(texts),) of whole texts (prompt + completion as one string)."""
    model.eval()
    encoded = encode_texts(texts, tokenizer)
    limit = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    too_long = [i for i, ids in enumerate(encoded) if len(ids) > limit]
    if too_long:
        raise ValueError(
            f"{len(too_long)} text(s) exceed the reward model's {limit} positions "
            f"(e.g. text {too_long[0]}: {len(encoded[too_long[0]])} tokens); shorten them"
        )
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths: little padding
    scores = torch.empty(len(encoded))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = right_pad([encoded[i] for i in index], tokenizer.pad_token_id)
        scores[index] = model(**batch).logits.squeeze(-1).float()
    return scores


def set_normalisation(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, reference_texts: Sequence[str], batch_size: int = 256
) -> tuple[float, float]:
    """Store the affine map that gives the reference texts mean 0 and std 1 in ``model.config``.

    Saved with the model (``config.json``) and applied by :func:`score_texts`. Bradley-Terry fixes rewards
    only up to a constant, and their scale depends on the run: PPO needs a known scale to balance the
    reward against the KL penalty.
    """
    model.config.reward_mean, model.config.reward_std = 0.0, 1.0
    scores = raw_scores(model, tokenizer, reference_texts, batch_size)
    mean, std = scores.mean().item(), scores.std(unbiased=False).item()
    if not std > 0:
        raise ValueError("the reference texts all get the same reward: cannot normalise (std = 0)")
    model.config.reward_mean, model.config.reward_std = mean, std
    return mean, std


def score_texts(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """Normalised rewards (len(texts),): ``(raw - mean) / std`` with the statistics stored in the model.

    ``texts`` are whole strings, prompt + completion (e.g. PPO's decoded rollouts); EOS is appended and
    the reward is read at it. Batched, no gradient. A model without stored statistics is left as is.
    """
    mean = getattr(model.config, "reward_mean", 0.0)
    std = getattr(model.config, "reward_std", 1.0)
    return (raw_scores(model, tokenizer, texts, batch_size) - mean) / std


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------
def rankdata(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties getting the average of the ranks they span (as ``scipy.stats.rankdata``)."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1  # mean of ranks start+1 .. end+1
        start = end + 1
    return ranks


def roc_auc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> float:
    """Area under the ROC curve of a score meant to rank ``positive_scores`` above ``negative_scores``.

    It equals the probability that a random positive outscores a random negative, a tie counting one half:
    the Mann-Whitney U statistic divided by ``n_pos * n_neg``. From ranks in O(n log n):
    ``U = R_pos - n_pos (n_pos + 1) / 2``, with ``R_pos`` the sum of the positives' ranks among all the scores
    (ties get the average of their ranks, :func:`rankdata`). 0.5 is chance, 1 a perfect ranking.
    """
    positive, negative = np.asarray(positive_scores, dtype=float), np.asarray(negative_scores, dtype=float)
    if positive.ndim != 1 or negative.ndim != 1 or len(positive) == 0 or len(negative) == 0:
        raise ValueError(f"roc_auc needs two non-empty 1-d sequences, got shapes {positive.shape} and {negative.shape}")
    ranks = rankdata(np.concatenate([positive, negative]))
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: the Pearson correlation of the ranks (ties averaged)."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two sequences of the same length >= 2, got {len(x)} and {len(y)}")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt((rx**2).sum() * (ry**2).sum())
    if denominator == 0:
        raise ValueError("spearman is undefined when one sequence is constant")
    return float((rx * ry).sum() / denominator)


def calibration(prob_chosen: Sequence[float], n_bins: int = 10) -> dict:
    """Reliability diagram data and expected calibration error of pairwise predictions.

    ``prob_chosen[i]`` = the model's P(chosen beats rejected) for pair i, i.e. sigmoid(r_c - r_r). The model
    predicts the completion it favours, with confidence max(p, 1 - p) in [0.5, 1], and is right when
    p > 0.5. Pairs are binned by confidence into ``n_bins`` equal-width bins over [0.5, 1]; a calibrated
    model is right 80% of the time when it says 80%. ECE = sum over bins of (n_bin / n) * |accuracy - confidence|.
    Returns {"ece", "bins": [{"lower", "upper", "count", "confidence", "accuracy"}, ...]} (empty bins omitted).
    """
    p = np.asarray(prob_chosen, dtype=float)
    if p.ndim != 1 or len(p) == 0 or np.any((p < 0) | (p > 1)):
        raise ValueError("prob_chosen must be a non-empty 1-D sequence of probabilities in [0, 1]")
    confidence = np.maximum(p, 1 - p)
    correct = (p > 0.5).astype(float)  # a tie (p = 0.5) counts as wrong
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    bin_of = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        members = bin_of == b
        if not members.any():
            continue
        count, conf, acc = int(members.sum()), float(confidence[members].mean()), float(correct[members].mean())
        ece += count / len(p) * abs(acc - conf)
        bins.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "confidence": conf,
                "accuracy": acc,
            }
        )
    return {"ece": ece, "bins": bins}


def length_bias(scores: Sequence[float], gold: Sequence[float], words: Sequence[int]) -> dict[str, float]:
    """Least squares ``score ~ a * gold + b * words + c``: how much of the reward is length, not quality.

    The annotators' logit is gold / temperature + length_bias_per_word * extra words, so a reward model
    that learned their preferences exactly has (in raw logit units) a = 1 / temperature and b =
    length_bias_per_word; b / a is the length bonus per word in gold-reward units.
    """
    design = np.column_stack([np.asarray(gold, float), np.asarray(words, float), np.ones(len(gold))])
    (a, b, c), *_ = np.linalg.lstsq(design, np.asarray(scores, float), rcond=None)
    return {"gold_coefficient": float(a), "length_coefficient": float(b), "intercept": float(c)}


def preference_probabilities(
    model: nn.Module, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 128
) -> np.ndarray:
    """sigmoid(r_chosen - r_rejected) for each encoded pair (longer pairs cut as :func:`truncate_pairs` does)."""
    pairs, _ = _truncate_and_report(pairs, model_positions(model), "preference_probabilities")
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            r_chosen, r_rejected = pair_rewards(model, collate_pairs(pairs[start : start + batch_size], pad_id))
            out.append(torch.sigmoid(r_chosen - r_rejected))
    return torch.cat(out).numpy()


def expected_accuracy(model_probs: Sequence[float], true_probs: Sequence[float]) -> float:
    """Mean probability that an annotator agrees with the model on each pair.

    ``model_probs[i]`` is the model's P(chosen preferred), ``true_probs[i]`` the annotator's. Where the model
    picks the labelled chosen side (p > 1/2) an annotator agrees with probability ``true_probs[i]``, else
    ``1 - true_probs[i]``; a tie (p = 1/2 exactly) counts as a coin flip. This is the accuracy the model
    would score averaged over every way the labels could have fallen, the same expectation that
    :func:`utils.review_world.bayes_optimal_accuracy` takes, so the two compare like with like.
    """
    model_probs, true_probs = np.asarray(model_probs, dtype=float), np.asarray(true_probs, dtype=float)
    if model_probs.shape != true_probs.shape or model_probs.ndim != 1 or len(model_probs) == 0:
        raise ValueError(
            f"expected two equal-length, non-empty 1-d sequences, got shapes {model_probs.shape} and {true_probs.shape}"
        )
    agree = np.where(model_probs > 0.5, true_probs, 1.0 - true_probs)
    agree = np.where(model_probs == 0.5, 0.5, agree)
    return float(agree.mean())


def evaluate_reward_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    annotator: rw.AnnotatorConfig,
    n_bins: int = 10,
) -> tuple[dict, dict]:
    """Held-out metrics of a reward model on labelled pairs ``rows``; returns (flat metrics, details).

    Metrics: ``heldout_accuracy`` (agreement with the sampled labels), ``heldout_expected_accuracy`` (the
    same, in expectation over the annotators' coin flips: on each pair, the probability that an annotator
    agrees with the model's choice), ``bayes_optimal_accuracy`` (what the annotators' own probabilities
    would score, also in expectation: so the gap between the two is free of label noise),
    ``spearman_vs_gold`` (on every distinct text), ``ece`` and ``ece_bayes`` (the ECE of the annotators' true
    probabilities: the floor set by having finitely many pairs), and the length-bias fit.
    Details: the reliability bins and the per-text scores, for plots.
    """
    pairs = encode_pairs(rows, tokenizer)
    probs = preference_probabilities(model, pairs, tokenizer.pad_token_id)
    true_probs = [rw.preference_probability(r["prompt"], r["chosen"], r["rejected"], annotator) for r in rows]
    texts = sorted({r["prompt"] + r[k] for r in rows for k in ("chosen", "rejected")})
    scores = raw_scores(model, tokenizer, texts).tolist()
    gold = [rw.gold_reward(t) for t in texts]
    words = [rw.word_count(t) for t in texts]  # words, punctuation not counted: what the annotators count
    reliability = calibration(probs, n_bins)
    fit = length_bias(scores, gold, words)
    metrics = {
        "heldout_accuracy": float((probs > 0.5).mean()),
        "heldout_expected_accuracy": expected_accuracy(probs, true_probs),
        "bayes_optimal_accuracy": rw.bayes_optimal_accuracy(rows, annotator),
        "spearman_vs_gold": spearman(scores, gold),
        "ece": reliability["ece"],
        "ece_bayes": calibration(true_probs, n_bins)["ece"],
        **fit,
        "annotator_length_bias_per_word": annotator.length_bias_per_word,
        "annotator_gold_coefficient": 1 / annotator.temperature,
        "gold_length_coefficient": float(np.polyfit(words, gold, 1)[0]),  # does quality itself grow with length?
    }
    details = {
        "reliability": reliability["bins"],
        "texts": [{"text": t, "score": s, "gold": g, "words": w} for t, s, g, w in zip(texts, scores, gold, words)],
    }
    return metrics, details


def evaluate_preferences(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    n_bins: int = 10,
    max_length: int | None = None,
    batch_size: int = 128,
) -> tuple[dict, dict]:
    """Metrics of a reward model on labelled pairs with no gold reward (real data, e.g. HH-RLHF).

    ``rows`` are explicit-prompt preference rows. Metrics: ``accuracy`` (share of pairs with r_chosen >
    r_rejected; a tie counts as wrong), ``mean_margin`` (mean r_chosen - r_rejected, in raw reward units),
    ``loss`` (mean Bradley-Terry loss), ``ece`` (calibration of sigmoid(margin) as P(chosen wins)),
    ``pairs`` and ``truncated_pairs`` (pairs cut to ``max_length``, default the model's positions, as in
    :func:`truncate_pairs`). Details: the reliability bins and every pair's margin, for plots.
    :func:`evaluate_reward_model` adds what only the review world can tell (gold reward, Bayes accuracy).
    """
    if not rows:
        raise ValueError("evaluate_preferences needs at least one row")
    pairs, truncated = _truncate_and_report(
        encode_pairs(rows, tokenizer), max_length or model_positions(model), "evaluate_preferences"
    )
    margins = reward_margins(model, pairs, tokenizer.pad_token_id, batch_size).double()
    reliability = calibration(torch.sigmoid(margins).numpy(), n_bins)
    metrics = {
        "accuracy": float((margins > 0).double().mean()),
        "mean_margin": float(margins.mean()),
        "loss": float(bradley_terry_loss(margins, torch.zeros_like(margins))),
        "ece": reliability["ece"],
        "pairs": len(pairs),
        "truncated_pairs": truncated,
    }
    return metrics, {"reliability": reliability["bins"], "margins": margins.tolist()}
