"""The base language model: a small GPT-2 trained from scratch on the review world.

We use transformers' ``GPT2LMHeadModel`` (our own ``utils.transformer.GPT`` computes the same logits,
see notebook 02) so that TRL, PEFT and ``generate`` work on it unchanged. Training is the plain
next-token objective with teacher forcing, AdamW, linear warmup then cosine decay, and gradient
clipping, the recipe of nanoGPT.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from utils.config_checks import check, check_int, check_number, check_numbers
from utils.seed import set_seed


@dataclass(frozen=True)
class LMConfig:
    """Shape of the GPT-2 base model (vocabulary size comes from the tokenizer). Validated on construction."""

    n_layer: int = 4
    """transformer blocks"""
    n_head: int = 4
    """attention heads per block"""
    n_embd: int = 128
    """residual stream width; head size = n_embd / n_head"""
    n_positions: int = 256
    """longest sequence, in tokens (prompt + completion)"""
    dropout: float = 0.0
    """fresh samples every step: nothing to overfit, so no dropout"""

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "n_positions"):
            check_int(self, name, ge=1)
        check_number(self, "dropout", ge=0, lt=1)
        check(self, "n_embd", self.n_embd % self.n_head == 0, f"divisible by n_head ({self.n_head})")


@dataclass(frozen=True)
class LMTrainConfig:
    """How the base model is trained. Validated on construction (ValueError on bad values)."""

    steps: int = 700
    """optimiser steps (~3 min on 2 cores; 1,200 steps: NLL 27.93 -> 27.90, 65% more time)"""
    batch_size: int = 32
    """rows per step"""
    block_size: int = 64
    """tokens per row: reviews are packed end to end, so no compute is spent on padding"""
    lr: float = 3e-3
    """peak learning rate (tiny models tolerate large ones)"""
    min_lr_ratio: float = 0.1
    """cosine decays to lr * min_lr_ratio"""
    warmup_steps: int = 100
    """linear warmup: Adam's second moments are unreliable at first"""
    weight_decay: float = 0.1
    """decoupled weight decay on matrices only"""
    grad_clip: float = 1.0
    """max global gradient norm"""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas, as in GPT-3 / nanoGPT"""
    eval_every: int = 100
    """steps between validation estimates"""
    eval_batches: int = 8
    """batches per estimate"""
    seed: int = 0
    """model init and batch order"""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "block_size", "eval_every", "eval_batches"):
            check_int(self, name, ge=1)
        for name in ("warmup_steps", "seed"):
            check_int(self, name, ge=0)
        for name in ("lr", "grad_clip"):
            check_number(self, name, gt=0)
        check_number(self, "min_lr_ratio", ge=0, le=1)
        check_number(self, "weight_decay", ge=0)
        check_numbers(self, "betas", length=2, ge=0, lt=1)


def gpt2_config(
    vocab_size: int,
    n_positions: int,
    n_embd: int,
    n_layer: int,
    n_head: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    dropout: float = 0.0,
    **extra,
) -> GPT2Config:
    """transformers' ``GPT2Config`` of the given shape, one dropout for all three places (0: deterministic
    logits, as every course model and test model uses), and the special-token ids; ``extra`` passes on (e.g.
    ``num_labels=1`` for a reward or value model)."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        **extra,
    )


def build_model(config: LMConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 whose special-token ids match ``tokenizer``."""
    set_seed(seed)
    hf_config = gpt2_config(
        len(tokenizer),
        config.n_positions,
        config.n_embd,
        config.n_layer,
        config.n_head,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        dropout=config.dropout,
    )
    model = GPT2LMHeadModel(hf_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def get_lr(step: int, config: LMTrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine)


def encode_reviews(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Each review as ``[BOS] tokens [EOS]``: the model must also learn where a review ends."""
    eos = tokenizer.eos_token_id
    return [ids + [eos] for ids in tokenizer(list(texts))["input_ids"]]


def pack(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """One long token stream ``[BOS] r1 [EOS] r2 [EOS] ...`` (BOS and EOS are the same token).

    Training on random windows of the stream (nanoGPT's ``get_batch``) wastes nothing on padding;
    each EOS doubles as the BOS of the next review, exactly the context the model sees when it
    generates a review from scratch.
    """
    stream = [sequences[0][0]] + [token for seq in sequences for token in seq[1:]]
    return torch.tensor(stream, dtype=torch.long)


def get_batch(
    stream: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """``batch_size`` random windows of ``block_size`` tokens; labels are the inputs (HF shifts them)."""
    starts = torch.randint(len(stream) - block_size, (batch_size,), generator=generator)
    input_ids = torch.stack([stream[s : s + block_size] for s in starts.tolist()])  # (B, T)
    return {"input_ids": input_ids, "labels": input_ids}


def collate(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence; labels are -100 on padding so the loss ignores it."""
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros_like(input_ids)
    for i, seq in enumerate(sequences):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@torch.no_grad()
def sequence_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed negative log-likelihood (nats) of each sequence's tokens after BOS, shape (B,)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    targets = batch["input_ids"][:, 1:]
    token_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return -(token_logprobs * batch["attention_mask"][:, 1:]).sum(dim=1)


def nll_per_review(model: nn.Module, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int = 256) -> float:
    """Mean NLL per review in nats: comparable with the source entropy, which no model can beat."""
    model.eval()
    total = 0.0
    for start in range(0, len(sequences), batch_size):
        total += sequence_nll(model, collate(sequences[start : start + batch_size], pad_id)).sum().item()
    return total / len(sequences)


@torch.no_grad()
def estimate_loss(
    model: nn.Module, streams: dict[str, torch.Tensor], config: LMTrainConfig, generator: torch.Generator
) -> dict[str, float]:
    """Mean per-token loss on a few random batches of each split (cheap, for the training log)."""
    model.eval()
    out = {}
    for name, stream in streams.items():
        losses = [
            model(**get_batch(stream, config.batch_size, config.block_size, generator)).loss.item()
            for _ in range(config.eval_batches)
        ]
        out[name] = sum(losses) / len(losses)
    model.train()
    return out


def make_optimizer(model: nn.Module, config: LMTrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms or embeddings' gains)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def train_lm(
    model: nn.Module,
    train: Sequence[Sequence[int]],
    val: Sequence[Sequence[int]],
    config: LMTrainConfig,
    progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place; returns the log (one dict per evaluation).

    ``callback(step, record)`` is called at every evaluation, e.g. to redraw a live loss curve.
    """
    set_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    streams = {"train": pack(train), "val": pack(val)}
    optimizer = make_optimizer(model, config)
    model.train()
    log: list[dict] = []
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="train LM", disable=not progress, mininterval=1.0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, config)
        loss = model(**get_batch(streams["train"], config.batch_size, config.block_size, generator)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if (step + 1) % config.eval_every == 0 or step == config.steps - 1:
            losses = estimate_loss(model, streams, config, generator)
            record = {
                "step": step + 1,
                "lr": get_lr(step, config),
                "grad_norm": grad_norm.item(),
                "train_loss": losses["train"],
                "val_loss": losses["val"],
                "seconds": time.perf_counter() - start,
            }
            log.append(record)
            bar.set_postfix(train=f"{losses['train']:.3f}", val=f"{losses['val']:.3f}")
            if callback is not None:
                callback(step + 1, record)
    model.eval()
    return log
