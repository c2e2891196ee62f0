"""Tiny word-level GPT-2s for the limits chapter (notebook 14): a word tokenizer, masked training, greedy decoding.

The knowledge world and the score puzzles speak a closed language of a few hundred words (film-title words,
names, years, numbers and a few template words), so a word-level tokenizer fits it better than the course's
byte-level BPE, which was trained on reviews: every name, year and number is then exactly one token, an answer
is one next-token prediction, and the probability the model gives it is its *confidence* (notebook 14's
calibration plot). The vocabulary is fixed up front from the world's pools, so tokens that training never shows
(years after the knowledge cut-off) still have an id: the model has simply never learnt anything about them.

Models are transformers' ``GPT2LMHeadModel`` of the course's shape helper (:func:`utils.language_model.gpt2_config`);
training minimises the next-token loss only on the tokens a model must *write* (answers, scratchpads, actions),
never on the prompt or on what a tool returned: a loss mask per token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from transformers import GPT2LMHeadModel

from utils.config_checks import check, check_int, check_number
from utils.language_model import gpt2_config
from utils.seed import set_seed

PAD = "<pad>"
EOS = "<s>"  # begins and ends every sequence, as in the course's LM


class WordTokenizer:
    """Space-separated words <-> ids over a fixed vocabulary (``<pad>`` is 0, ``<s>`` is 1)."""

    def __init__(self, words: Iterable[str]):
        extra = sorted(set(words) - {PAD, EOS})
        if any(not w or " " in w for w in extra):
            raise ValueError("vocabulary words must be non-empty and contain no space")
        self.vocab = [PAD, EOS, *extra]
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.eos_id = 0, 1

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Ids of the words of ``text``; a word outside the vocabulary is an error (the world is closed)."""
        try:
            return [self.ids[w] for w in text.split()]
        except KeyError as err:
            raise ValueError(f"word {err.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if i not in (self.pad_id, self.eos_id))


@dataclass(frozen=True)
class WordLMConfig:
    """Shape and training of one tiny word-level GPT-2. Validated on construction."""

    n_layer: int = 2
    """transformer blocks"""
    n_head: int = 4
    """attention heads per block"""
    n_embd: int = 64
    """residual stream width"""
    n_positions: int = 96
    """longest sequence in tokens (the ReAct transcripts are the longest, about 60)"""
    steps: int = 800
    """optimiser steps"""
    batch_size: int = 32
    """sequences per step"""
    lr: float = 3e-3
    """peak learning rate (linear warmup, then cosine decay to a tenth)"""
    warmup_steps: int = 100
    """linear warmup steps"""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay"""

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "n_positions", "steps", "batch_size"):
            check_int(self, name, ge=1)
        check_int(self, "warmup_steps", ge=0)
        check_number(self, "lr", gt=0)
        check_number(self, "weight_decay", ge=0)
        check(self, "n_embd", self.n_embd % self.n_head == 0, f"divisible by n_head ({self.n_head})")


def build_word_lm(config: WordLMConfig, tokenizer: WordTokenizer, seed: int) -> GPT2LMHeadModel:
    """A freshly initialised tiny GPT-2 over ``tokenizer``'s vocabulary (initialised from ``seed``)."""
    set_seed(seed)
    hf = gpt2_config(
        len(tokenizer),
        config.n_positions,
        config.n_embd,
        config.n_layer,
        config.n_head,
        tokenizer.eos_id,
        tokenizer.eos_id,
        tokenizer.pad_id,
    )
    return GPT2LMHeadModel(hf)


Example = tuple[list[int], list[int]]
"""(token ids, loss mask): mask 1 on the tokens the model is trained to write."""


def masked_example(segments: Sequence[tuple[str, bool]], tokenizer: WordTokenizer) -> Example:
    """``<s>`` + the segments' words + ``<s>``; each segment says whether the model writes it (loss on it).

    The closing ``<s>`` is written by the model (it learns to stop), the opening one is not.
    """
    ids, mask = [tokenizer.eos_id], [0]
    for text, written in segments:
        words = tokenizer.encode(text)
        ids += words
        mask += [int(written)] * len(words)
    return ids + [tokenizer.eos_id], mask + [1]


def collate_masked(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask, and labels that are -100 wherever the loss mask is 0."""
    length = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for i, (ids, mask) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, : len(ids)] = torch.where(torch.tensor(mask) == 1, torch.tensor(ids), -100)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def learning_rate(step: int, config: WordLMConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr / 10`` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_word_lm(
    model: GPT2LMHeadModel,
    sample_batch: Callable[[int, torch.Generator], list[Example]],
    config: WordLMConfig,
    seed: int,
    log_every: int = 100,
) -> list[dict]:
    """Train ``model`` in place on batches from ``sample_batch(batch_size, generator)`` (the generator seeded
    with ``seed``); returns the loss log.

    The loss is the mean next-token cross-entropy over the written tokens (labels -100 elsewhere; HF shifts).
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    model.train()
    log, running = [], []
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        batch = collate_masked(sample_batch(config.batch_size, generator), model.config.pad_token_id)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step == config.steps - 1:
            log.append({"step": step + 1, "loss": sum(running) / len(running)})
            running = []
    model.eval()
    return log


@torch.no_grad()
def greedy_continue(
    model: GPT2LMHeadModel, prompts: Sequence[Sequence[int]], stop_ids: Iterable[int], max_new_tokens: int
) -> list[tuple[list[int], list[float]]]:
    """Greedy continuation of each prompt until a stop token (included) or ``max_new_tokens``.

    Returns, per prompt, the new ids and the probability the model gave each of them (its confidence).
    Prompts of the same length are decoded together; all positions are recomputed each step (sequences are
    a few dozen tokens, so no cache is needed).
    """
    stop = set(stop_ids)
    out: list[tuple[list[int], list[float]] | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    for indices in by_length.values():
        ids = torch.tensor([list(prompts[i]) for i in indices])
        new = [[] for _ in indices]
        probs = [[] for _ in indices]
        done = [False] * len(indices)
        for _ in range(max_new_tokens):
            p = torch.softmax(model(input_ids=ids).logits[:, -1].float(), dim=-1)
            conf, nxt = p.max(dim=-1)
            for j, (token, c) in enumerate(zip(nxt.tolist(), conf.tolist())):
                if not done[j]:
                    new[j].append(token)
                    probs[j].append(c)
                    done[j] = token in stop
            if all(done):
                break
            ids = torch.cat([ids, nxt[:, None]], dim=1)
        for j, i in enumerate(indices):
            out[i] = (new[j], probs[j])
    return out  # type: ignore[return-value]
