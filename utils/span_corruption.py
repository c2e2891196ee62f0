"""Span corruption: how T5 pretrains an encoder-decoder by filling in dropped spans.

T5 (Raffel et al., 2020) drops about 15% of the tokens of a text in contiguous spans of mean length 3. Each
dropped span is replaced in the encoder's input by one *sentinel* token, ``<extra_id_0>``, ``<extra_id_1>``,
... in order, and the decoder must write the dropped spans, each after its sentinel, closed by one more
sentinel. The paper's example:

    original : Thank you for inviting me to your party last week .
    input    : Thank you <extra_id_0> me to your party <extra_id_1> week .
    target   : <extra_id_0> for inviting <extra_id_1> last <extra_id_2>

The target is short (the dropped tokens plus one sentinel per span), so a step costs far less decoder work
than rewriting the whole text, and interleaving input and target rebuilds the original exactly
(:func:`reconstruct`). BART (Lewis et al., 2020) corrupts similarly ("text infilling": each span, of
Poisson(3) length, becomes a single ``[MASK]``) but its decoder rewrites the whole original text.

:func:`random_spans_noise_mask` is T5's ``random_spans_noise_mask`` (t5/data/preprocessors.py): exactly
``round(length * noise_density)`` noise tokens in ``round(noise / mean_span_length)`` spans, span lengths
drawn by cutting the noise and the kept tokens at random places, kept and noise spans alternating, kept
first. T5's sentinels count down from the end of its vocabulary (``<extra_id_0>`` is id 32099); ours are
the ids just after the tokenizer's vocabulary, counting up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utils.config_checks import check_int, check_number
from utils.language_model import get_lr
from utils.reward_model import batch_indices
from utils.transformer import EncoderDecoderTransformer

IGNORE = -100
"""The label of a padded target position (``F.cross_entropy``'s ``ignore_index``)."""


@dataclass(frozen=True)
class SpanCorruptionConfig:
    """T5's span corruption and a short denoising run. Validated on construction (ValueError on bad values)."""

    noise_density: float = 0.15
    """share of the tokens dropped (T5: 15%)"""
    mean_span_length: float = 3.0
    """mean length of a dropped span (T5: 3)"""
    steps: int = 150
    """optimiser steps of :func:`train_denoiser` (a 300-step run on review-world text: 4.6 nats over its first 20
    steps, 0.8 by step 100, 0.6 at the end; 150 steps get most of the fall for half the time)"""
    batch_size: int = 64
    """texts per step"""
    lr: float = 2e-3
    """peak learning rate"""
    warmup_steps: int = 20
    """linear warmup"""
    min_lr_ratio: float = 0.1
    """cosine decays to lr * min_lr_ratio"""
    grad_clip: float = 1.0
    """max global gradient norm"""
    seed: int = 0
    """batch order and noise masks"""

    def __post_init__(self) -> None:
        check_number(self, "noise_density", gt=0, lt=1)
        check_number(self, "mean_span_length", ge=1)
        for name in ("steps", "batch_size"):
            check_int(self, name, ge=1)
        for name in ("warmup_steps", "seed"):
            check_int(self, name, ge=0)
        for name in ("lr", "grad_clip"):
            check_number(self, name, gt=0)
        check_number(self, "min_lr_ratio", ge=0, le=1)


def _random_segmentation(num_items: int, num_segments: int, generator: torch.Generator) -> list[int]:
    """``num_segments`` positive lengths summing to ``num_items``: cut at ``num_segments - 1`` random gaps."""
    cuts = sorted((torch.randperm(num_items - 1, generator=generator)[: num_segments - 1] + 1).tolist())
    bounds = [0, *cuts, num_items]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def random_spans_noise_mask(
    length: int, noise_density: float, mean_span_length: float, generator: torch.Generator
) -> torch.Tensor:
    """T5's noise mask (length,) bool: True = dropped. Kept and dropped spans alternate, kept first, so a text
    always starts with a kept token and ends with a dropped one (T5's choice: the last span is noise)."""
    if length < 2:
        raise ValueError(f"a text needs at least 2 tokens to keep one and drop one, got {length}")
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_span_length), 1)
    num_spans = min(num_spans, num_noise, length - num_noise)  # every span at least one token
    noise_lengths = _random_segmentation(num_noise, num_spans, generator)
    kept_lengths = _random_segmentation(length - num_noise, num_spans, generator)
    mask: list[bool] = []
    for kept, dropped in zip(kept_lengths, noise_lengths):
        mask += [False] * kept + [True] * dropped
    return torch.tensor(mask)


def corrupt(tokens: Sequence[int], noise_mask: Sequence[bool], sentinels: Sequence[int]) -> tuple[list[int], list[int]]:
    """(input, target) of T5's span corruption.

    input : ``tokens`` with each dropped span replaced by the next sentinel;
    target: each dropped span after its sentinel, then one closing sentinel.
    """
    if len(tokens) != len(noise_mask):
        raise ValueError(f"{len(tokens)} tokens but a noise mask of {len(noise_mask)}")
    inputs: list[int] = []
    target: list[int] = []
    spans, previous = 0, False
    for token, dropped in zip(tokens, (bool(m) for m in noise_mask)):
        if dropped and not previous:  # a span starts: its sentinel goes to both sides
            if spans + 1 >= len(sentinels):
                raise ValueError(f"more spans than the {len(sentinels)} sentinels allow (one closes the target)")
            inputs.append(sentinels[spans])
            target.append(sentinels[spans])
            spans += 1
        (target if dropped else inputs).append(token)
        previous = dropped
    target.append(sentinels[spans])  # the closing sentinel
    return inputs, target


def reconstruct(inputs: Sequence[int], target: Sequence[int], sentinels: Sequence[int]) -> list[int]:
    """The original tokens from (input, target): each sentinel of the input replaced by the tokens that follow
    the same sentinel in the target. ``reconstruct(*corrupt(x, m, s), s) == x`` for any mask ``m``."""
    sentinel_set = set(sentinels)
    fill: dict[int, list[int]] = {}
    current = None
    for token in target:
        if token in sentinel_set:
            current = token
            fill[current] = []
        elif current is not None:
            fill[current].append(token)
    out: list[int] = []
    for token in inputs:
        out.extend(fill.get(token, []) if token in sentinel_set else [token])
    return out


def span_corruption_batch(
    texts: Sequence[Sequence[int]],
    config: SpanCorruptionConfig,
    sentinels: Sequence[int],
    eos_id: int,
    pad_id: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """A right-padded batch for an encoder-decoder from token lists without specials.

    ``src_ids`` (B, S): the corrupted text + EOS; ``tgt_in`` (B, T): EOS as the decoder's start token, then
    the target shifted right (teacher forcing); ``labels`` (B, T): the target + EOS, ``IGNORE`` on padding;
    ``src_attention_mask`` and ``tgt_attention_mask``: 1 on real tokens.
    """
    sources, targets = [], []
    for tokens in texts:
        mask = random_spans_noise_mask(len(tokens), config.noise_density, config.mean_span_length, generator)
        inputs, target = corrupt(tokens, mask.tolist(), sentinels)
        sources.append([*inputs, eos_id])
        targets.append([*target, eos_id])

    def pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, rows))
        ids = torch.tensor([row + [value] * (width - len(row)) for row in rows])  # (B, width)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
        return ids, mask

    src_ids, src_mask = pad(sources, pad_id)
    labels, tgt_mask = pad(targets, IGNORE)
    tgt_in = torch.cat([torch.full((len(texts), 1), eos_id), labels[:, :-1]], dim=1).masked_fill(tgt_mask == 0, pad_id)
    return {
        "src_ids": src_ids,
        "src_attention_mask": src_mask,
        "tgt_in": tgt_in,
        "tgt_attention_mask": tgt_mask,
        "labels": labels,
    }


def train_denoiser(
    model: EncoderDecoderTransformer,
    texts: Sequence[Sequence[int]],
    config: SpanCorruptionConfig,
    sentinels: Sequence[int],
    eos_id: int,
    pad_id: int,
) -> list[float]:
    """Train ``model`` in place to write the dropped spans (cross-entropy on the target tokens); the loss of
    each step. Fresh noise masks every step, reshuffled epochs, warmup then cosine decay, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    model.train()
    for step, index in enumerate(batch_indices(len(texts), config.batch_size, config.steps, True, config.seed)):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, config)
        batch = span_corruption_batch([texts[i] for i in index], config, sentinels, eos_id, pad_id, generator)
        logits = model(batch["src_ids"], batch["tgt_in"], batch["src_attention_mask"], batch["tgt_attention_mask"])
        loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)  # (B*T, V)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def greedy_target(
    model: EncoderDecoderTransformer, inputs: Sequence[int], eos_id: int, max_new_tokens: int = 32
) -> list[int]:
    """The decoder's greedy target for one corrupted input (which should end in EOS), without its final EOS.

    The encoder runs once; the decoder reruns on the growing target (no cache: targets are a few tokens).
    """
    model.eval()
    memory = model.encode(torch.tensor([list(inputs)]))  # (1, S, d_model)
    target = [eos_id]  # the start token
    for _ in range(max_new_tokens):
        next_id = int(model.decode(torch.tensor([target]), memory)[0, -1].argmax())
        if next_id == eos_id:
            break
        target.append(next_id)
    return target[1:]
