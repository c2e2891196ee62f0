"""Masked-language-model pretraining (BERT) on the review world, and the pretrained encoder as a reward model.

An encoder sees every token of its input, so it cannot be trained to predict the next one: the next token
is in plain view. BERT (Devlin et al., 2019) hides tokens instead and predicts them. In each sequence it
chooses 15% of the ordinary tokens; of those it replaces 80% with ``[MASK]``, 10% with a random token and
leaves 10% unchanged, and the loss is the cross-entropy of the original token at the chosen positions only.
The random and unchanged cases stop the model from learning that only ``[MASK]`` positions matter, since at
fine-tuning time there is no ``[MASK]`` at all.

**Pairs and segments.** BERT reads two texts as one sequence, ``[CLS] A [SEP] B [SEP]``, and adds a learned
*segment* (token type) vector to every token: 0 for A up to and including its ``[SEP]``, 1 for B. A reward
model reads a pair too, (prompt, completion), so the encoder here reads

    [BOS] prompt [SEP] completion [EOS]        token types 0 ... 0 0 | 1 ... 1

BOS plays ``[CLS]`` (position 0, where the classifier reads). The course tokenizer has neither ``[MASK]``
nor ``[SEP]``: :class:`EncoderTokens` gives them the two ids after its vocabulary.

**Pretrained encoder -> reward model.** :func:`encoder_reward_model` puts the encoder's weights into a
transformers ``BertForSequenceClassification`` (the reward model class of ``utils.reward_model``) through
:meth:`utils.transformer.EncoderOnlyModel.hf_bert_state_dict`, optionally frozen so that only the head
(BERT's pooler and the linear classifier) trains; :class:`SegmentedPairs` computes the token types from the
``[SEP]`` in each row, so ``utils.reward_model.train_reward_model`` trains it unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertForSequenceClassification, PretrainedConfig, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

from utils import review_world as rw
from utils.config_checks import check, check_int, check_number, check_numbers
from utils.language_model import collate, get_lr
from utils.reward_model import RewardModelConfig, batch_indices, evaluate_pairs, make_optimizer, train_reward_model
from utils.seed import set_seed
from utils.transformer import EncoderOnlyConfig, EncoderOnlyModel

IGNORE = -100
"""The label of a position with nothing to predict (``F.cross_entropy``'s ``ignore_index``)."""


@dataclass(frozen=True)
class MLMConfig:
    """Masked-LM pretraining: BERT's corruption and a short AdamW run. Validated on construction."""

    steps: int = 300
    """optimiser steps (300 of 64 sequences: 1.6 epochs of notebook 02's 12,000 reviews)"""
    batch_size: int = 64
    """sequences per step"""
    lr: float = 1e-3
    """peak learning rate (small models tolerate a larger one than BERT-base's 1e-4)"""
    min_lr_ratio: float = 0.1
    """cosine decays to lr * min_lr_ratio"""
    warmup_steps: int = 40
    """linear warmup"""
    weight_decay: float = 0.01
    """decoupled AdamW weight decay on matrices (BERT: 0.01)"""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas"""
    grad_clip: float = 1.0
    """max global gradient norm"""
    mask_prob: float = 0.15
    """share of the ordinary tokens chosen for prediction (BERT: 15%)"""
    mask_token_share: float = 0.8
    """of the chosen tokens, the share replaced by [MASK]"""
    random_token_share: float = 0.1
    """of the chosen tokens, the share replaced by a random ordinary token (the rest stay unchanged)"""
    seed: int = 0
    """batch order and masks"""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            check_int(self, name, ge=1)
        check_int(self, "warmup_steps", ge=0)
        check_int(self, "seed", ge=0)
        for name in ("lr", "grad_clip"):
            check_number(self, name, gt=0)
        check_number(self, "weight_decay", ge=0)
        check_number(self, "min_lr_ratio", ge=0, le=1)
        check_numbers(self, "betas", length=2, ge=0, lt=1)
        check_number(self, "mask_prob", gt=0, le=1)
        for name in ("mask_token_share", "random_token_share"):
            check_number(self, name, ge=0, le=1)
        check(
            self,
            "random_token_share",
            self.mask_token_share + self.random_token_share <= 1,
            f"at most 1 - mask_token_share ({1 - self.mask_token_share:g})",
        )


@dataclass(frozen=True)
class EncoderTokens:
    """The ids the encoder reads: the course tokenizer's, plus ``[MASK]`` and ``[SEP]`` after its vocabulary."""

    tokenizer_size: int
    """``len(tokenizer)``"""
    bos_id: int
    """position 0 of every sequence: the encoder's [CLS]"""
    eos_id: int
    """end of the sequence (in the course tokenizer the same id as BOS)"""
    pad_id: int
    """padding"""
    first_word_id: int
    """the ordinary tokens are ``first_word_id .. tokenizer_size - 1`` (the specials come first)"""

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> EncoderTokens:
        """Read the ids from ``tokenizer``, whose special tokens must precede its ordinary ones."""
        specials = sorted(set(tokenizer.all_special_ids))
        if specials != list(range(len(specials))):
            raise ValueError(f"expected the special tokens at ids 0..{len(specials) - 1}, got {specials}")
        return cls(
            len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, len(specials)
        )

    @property
    def mask_id(self) -> int:
        """``[MASK]``: the first id after the tokenizer's vocabulary."""
        return self.tokenizer_size

    @property
    def sep_id(self) -> int:
        """``[SEP]``: between the two texts of a pair."""
        return self.tokenizer_size + 1

    @property
    def vocab_size(self) -> int:
        """The encoder's vocabulary: the tokenizer's plus [MASK] and [SEP]."""
        return self.tokenizer_size + 2

    def special_ids(self) -> torch.Tensor:
        """Ids never chosen for prediction: BOS, EOS, PAD, [SEP] (and [MASK])."""
        return torch.tensor(sorted({self.bos_id, self.eos_id, self.pad_id, self.mask_id, self.sep_id}))

    def decode_token(self, token_id: int, tokenizer: PreTrainedTokenizerBase) -> str:
        """One id as text; the two added tokens as ``[MASK]`` and ``[SEP]``."""
        added = {self.mask_id: "[MASK]", self.sep_id: "[SEP]"}
        return added.get(token_id) or tokenizer.decode([token_id])


# ------------------------------------------------------------------------------------------------
# BERT's corruption
# ------------------------------------------------------------------------------------------------
def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_id: int,
    random_ids: tuple[int, int],
    generator: torch.Generator,
    mask_prob: float = 0.15,
    mask_token_share: float = 0.8,
    random_token_share: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of ``input_ids`` (B, T) -> (inputs, labels), both (B, T).

    Each position where ``maskable`` (bool, (B, T)) is True is chosen with probability ``mask_prob``. A chosen
    position is replaced by ``mask_id`` with probability ``mask_token_share``, by a uniform random id in
    ``[random_ids[0], random_ids[1])`` with probability ``random_token_share``, and kept otherwise.
    ``labels`` holds the original id at chosen positions and ``IGNORE`` (-100) elsewhere. Three draws from
    ``generator``, in this order: the choice, the action, the random ids.
    """
    if input_ids.shape != maskable.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and maskable {tuple(maskable.shape)} differ in shape")
    chosen = (torch.rand(input_ids.shape, generator=generator) < mask_prob) & maskable  # (B, T)
    labels = input_ids.masked_fill(~chosen, IGNORE)
    action = torch.rand(input_ids.shape, generator=generator)  # (B, T): which of the three fates
    inputs = input_ids.clone()
    inputs[chosen & (action < mask_token_share)] = mask_id
    random_tokens = torch.randint(*random_ids, input_ids.shape, generator=generator)
    replace = chosen & (action >= mask_token_share) & (action < mask_token_share + random_token_share)
    inputs[replace] = random_tokens[replace]
    return inputs, labels


def segment_ids(input_ids: torch.Tensor, sep_id: int) -> torch.Tensor:
    """Token types (B, T): 0 up to and including the first ``[SEP]`` of each row, 1 after it (all 0 without one)."""
    is_sep = (input_ids == sep_id).long()
    seps_before = is_sep.cumsum(-1) - is_sep  # (B, T): [SEP]s strictly before each position
    return (seps_before > 0).long()


def encode_segment_pairs(
    pairs: Sequence[tuple[str, str]], tokenizer: PreTrainedTokenizerBase, tokens: EncoderTokens
) -> list[list[int]]:
    """(first, second) texts -> ``[BOS] first [SEP] second [EOS]`` ids, the encoder's pair format."""
    firsts = tokenizer([a for a, _ in pairs])["input_ids"]  # the tokenizer adds BOS
    seconds = tokenizer([b for _, b in pairs], add_special_tokens=False)["input_ids"]
    return [[*a, tokens.sep_id, *b, tokens.eos_id] for a, b in zip(firsts, seconds)]


def review_pairs(texts: Sequence[str]) -> list[tuple[str, str]]:
    """Reviews as (opening, rest): the words before the first sentiment word (what the RL prompts are,
    ``review_world.opening``), then the rest. Reviews whose opening is shorter than two words are left out."""
    openings = [(rw.opening(text), text) for text in texts]
    return [(opening, text[len(opening) :]) for opening, text in openings if opening is not None]


def encode_segment_preferences(
    rows: Sequence[dict], tokenizer: PreTrainedTokenizerBase, tokens: EncoderTokens
) -> list[tuple[list[int], list[int]]]:
    """Preference rows -> (chosen, rejected) ids, each ``[BOS] prompt [SEP] completion [EOS]``.

    The pair format of ``utils.reward_model.encode_pairs``, so the same training loop and metrics apply.
    """
    chosen = encode_segment_pairs([(r["prompt"], r["chosen"]) for r in rows], tokenizer, tokens)
    rejected = encode_segment_pairs([(r["prompt"], r["rejected"]) for r in rows], tokenizer, tokens)
    return list(zip(chosen, rejected))


# ------------------------------------------------------------------------------------------------
# Pretraining
# ------------------------------------------------------------------------------------------------
def _corrupted_batch(
    sequences: Sequence[list[int]], tokens: EncoderTokens, config: MLMConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    batch = collate(sequences, tokens.pad_id)
    ids, attention_mask = batch["input_ids"], batch["attention_mask"]  # (B, T), (B, T)
    maskable = attention_mask.bool() & ~torch.isin(ids, tokens.special_ids())
    inputs, labels = mask_tokens(
        ids,
        maskable,
        tokens.mask_id,
        (tokens.first_word_id, tokens.tokenizer_size),
        generator,
        config.mask_prob,
        config.mask_token_share,
        config.random_token_share,
    )
    return {
        "input_ids": inputs,
        "attention_mask": attention_mask,
        "token_type_ids": segment_ids(ids, tokens.sep_id),
        "labels": labels,
    }


def masked_lm_loss(model: EncoderOnlyModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, number of correct argmax predictions) over the positions with a label.

    The vocabulary projection runs on those positions only (15% of the tokens), not on every token.
    """
    token_types = batch["token_type_ids"] if model.token_type_embed is not None else None
    hidden = model.encode(batch["input_ids"], batch["attention_mask"], token_types)  # (B, T, d_model)
    target = batch["labels"] != IGNORE  # (B, T)
    logits = model.lm_head(hidden[target])  # (N, vocab_size), N = predicted positions
    labels = batch["labels"][target]  # (N,)
    return F.cross_entropy(logits, labels), (logits.argmax(-1) == labels).sum()


def pretrain_mlm(
    model: EncoderOnlyModel,
    sequences: Sequence[list[int]],
    tokens: EncoderTokens,
    config: MLMConfig,
    callback: Callable[[int, float], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place with the masked-LM loss on ``sequences`` (token ids with their specials).

    Batches are reshuffled epochs (``utils.reward_model.batch_indices``), masks are drawn afresh each step
    (RoBERTa's "dynamic masking": a sequence seen twice is masked differently), the learning rate warms up
    then decays on a cosine. Returns one record per step: ``{"step", "loss", "lr", "seconds"}``.
    """
    if model.config.vocab_size < tokens.vocab_size:
        raise ValueError(
            f"the model's vocabulary ({model.config.vocab_size}) lacks [MASK] and [SEP]: "
            f"it needs {tokens.vocab_size} ids"
        )
    optimizer = make_optimizer(model, config.lr, config.weight_decay, config.betas)
    generator = torch.Generator().manual_seed(config.seed)
    log: list[dict] = []
    start = time.perf_counter()
    model.train()
    for step, index in enumerate(batch_indices(len(sequences), config.batch_size, config.steps, True, config.seed)):
        lr = get_lr(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, _ = masked_lm_loss(model, _corrupted_batch([sequences[i] for i in index], tokens, config, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        log.append({"step": step + 1, "loss": loss.item(), "lr": lr, "seconds": time.perf_counter() - start})
        if callback is not None:
            callback(step + 1, loss.item())
    model.eval()
    return log


@torch.no_grad()
def evaluate_mlm(
    model: EncoderOnlyModel,
    sequences: Sequence[list[int]],
    tokens: EncoderTokens,
    config: MLMConfig,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, float]:
    """Masked-LM loss (nats per predicted token) and accuracy on ``sequences``, masked with a fixed ``seed``."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total_loss, correct, count = 0.0, 0, 0
    for start in range(0, len(sequences), batch_size):
        batch = _corrupted_batch(sequences[start : start + batch_size], tokens, config, generator)
        n = int((batch["labels"] != IGNORE).sum())
        if n == 0:
            continue
        loss, right = masked_lm_loss(model, batch)
        total_loss, correct, count = total_loss + loss.item() * n, correct + int(right), count + n
    model.train(was_training)
    return {"loss": total_loss / count, "accuracy": correct / count, "predicted_tokens": count}


def unigram_baseline(
    train_sequences: Sequence[list[int]], eval_sequences: Sequence[list[int]], tokens: EncoderTokens
) -> dict[str, float]:
    """What a model that ignores the context scores on masked tokens: the training frequencies of the ordinary
    tokens as its prediction. ``loss``: their cross-entropy on ``eval_sequences``' ordinary tokens (nats);
    ``accuracy``: how often the most frequent token is right. (Tokens never seen in training count one.)"""
    special = set(tokens.special_ids().tolist())
    counts = Counter(t for seq in train_sequences for t in seq if t not in special)
    total = sum(counts.values()) + tokens.tokenizer_size  # add-one smoothing over the ordinary vocabulary
    evaluated = [t for seq in eval_sequences for t in seq if t not in special]
    most_common = counts.most_common(1)[0][0]
    loss = -sum(math.log((counts[t] + 1) / total) for t in evaluated) / len(evaluated)
    return {"loss": loss, "accuracy": sum(t == most_common for t in evaluated) / len(evaluated)}


# ------------------------------------------------------------------------------------------------
# The pretrained encoder as a reward model
# ------------------------------------------------------------------------------------------------
class SegmentedPairs(nn.Module):
    """A BERT model called as the reward-model loop calls it, ``model(input_ids=, attention_mask=)``, with the
    token types of ``[BOS] prompt [SEP] completion [EOS]`` computed from the ``[SEP]`` of each row."""

    def __init__(self, model: BertForSequenceClassification, sep_id: int):
        super().__init__()
        self.model = model
        self.sep_id = sep_id

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SequenceClassifierOutput:
        """input_ids (B, T) -> the wrapped model's output (``.logits`` (B, 1))."""
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=segment_ids(input_ids, self.sep_id)
        )


def encoder_reward_model(
    encoder_config: EncoderOnlyConfig,
    tokens: EncoderTokens,
    seed: int,
    pretrained: EncoderOnlyModel | None = None,
    freeze: bool = False,
) -> SegmentedPairs:
    """A BERT reward model (CLS head: pooler and linear classifier) of the shape ``encoder_config``.

    The head is initialised from ``seed`` (the same head for every choice below). ``pretrained``: copy its
    embeddings and blocks (None: BERT's random initialisation, training from scratch). ``freeze``: train the
    head only, leaving the copied encoder as pretraining left it.
    """
    if freeze and pretrained is None:
        raise ValueError("freeze=True needs a pretrained encoder: a frozen random encoder learns nothing")
    hf_config = encoder_config.hf_bert_config(num_labels=1, pad_token_id=tokens.pad_id)
    set_seed(seed)
    model = BertForSequenceClassification(hf_config)
    if pretrained is not None:
        weights = {
            k.removeprefix("bert."): v for k, v in pretrained.hf_bert_state_dict().items() if k.startswith("bert.")
        }
        missing, unexpected = model.bert.load_state_dict(weights, strict=False)
        if unexpected or any(not key.startswith("pooler.") for key in missing):
            raise ValueError(f"the encoder does not fit BERT: missing {missing}, unexpected {unexpected}")
    if freeze:
        for part in (model.bert.embeddings, model.bert.encoder):
            part.requires_grad_(False)
    return SegmentedPairs(model, tokens.sep_id)


def trainable_parameters(model: nn.Module) -> int:
    """Parameters the optimiser will update (``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


ARMS = {  # name -> (start from the pretrained encoder, freeze it)
    "from scratch": (False, False),
    "MLM-pretrained, fine-tuned": (True, False),
    "MLM-pretrained, frozen (head only)": (True, True),
}


def compare_initialisations(
    pretrained: EncoderOnlyModel,
    train_pairs: Sequence[tuple[list[int], list[int]]],
    test_pairs: Sequence[tuple[list[int], list[int]]],
    tokens: EncoderTokens,
    schedule: RewardModelConfig,
) -> dict[str, dict]:
    """Train one reward model per arm of :data:`ARMS` with the same data, head initialisation and schedule
    (``schedule.steps`` batches of ``schedule.batch_size`` pairs at peak ``schedule.lr``, batch order from
    ``schedule.seed``), then measure each on every pair of ``test_pairs``.

    Returns ``{arm: {"heldout_accuracy", "heldout_loss", "trainable_parameters", "train_seconds", "log"}}``.
    """
    results = {}
    for name, (from_pretrained, freeze) in ARMS.items():
        model = encoder_reward_model(
            pretrained.config, tokens, schedule.seed, pretrained if from_pretrained else None, freeze
        )
        start = time.perf_counter()
        log = train_reward_model(model, train_pairs, test_pairs, tokens.pad_id, schedule)
        seconds = time.perf_counter() - start
        heldout = evaluate_pairs(model, test_pairs, tokens.pad_id)
        results[name] = {
            "heldout_accuracy": heldout["accuracy"],
            "heldout_loss": heldout["loss"],
            "trainable_parameters": trainable_parameters(model),
            "train_seconds": seconds,
            "log": log,
        }
    return results


def encoder_schedule(config: RewardModelConfig, steps: int, seed: int) -> RewardModelConfig:
    """The encoder reward model's schedule of the ``rm`` stage (``encoder_batch_size``, ``encoder_lr``), run for
    ``steps`` steps from ``seed``, with one held-out estimate at the end (the comparison measures its own)."""
    return dataclasses.replace(
        config,
        steps=steps,
        batch_size=config.encoder_batch_size,
        lr=config.encoder_lr,
        warmup_steps=min(config.warmup_steps, steps - 1),
        eval_every=steps,
        eval_pairs=64,
        seed=seed,
    )
