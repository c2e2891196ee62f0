"""A byte-level BPE tokenizer trained on the review world, wrapped for transformers and TRL.

Byte-level BPE (GPT-2's scheme) starts from the 256 bytes, so any string can be encoded, then learns
merges of frequent adjacent pairs until the vocabulary reaches ``vocab_size`` (or no pair occurs twice).
Two special tokens:

* ``<|endoftext|>``: begins every sequence (BOS) and ends every review (EOS), as in GPT-2;
* ``<|pad|>``: a *separate* padding token. If pad were EOS, masking the padding would also mask the
  real end-of-text, and a model fine-tuned that way never learns to stop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from utils.config_checks import check_int

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


@dataclass(frozen=True)
class TokenizerConfig:
    """How the course's BPE tokenizer is trained. Validated on construction (ValueError on bad values)."""

    vocab_size: int = 1024
    """upper bound: training stops early when no pair repeats; at least 256 bytes + 2 special tokens"""
    min_frequency: int = 2
    """a pair must occur this often to be merged"""
    corpus_size: int = 20_000
    """reviews (plus as many instruction rows) to train the merges on"""
    seed: int = 0
    """seed of the corpus the merges are learned from"""

    def __post_init__(self) -> None:
        check_int(self, "vocab_size", ge=258)
        for name in ("min_frequency", "corpus_size"):
            check_int(self, name, ge=1)
        check_int(self, "seed", ge=0)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    # Every encoded text starts with BOS, so the first real token has a context to be predicted from.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{EOS_TOKEN} $A", pair=f"{EOS_TOKEN} $A $B", special_tokens=[(EOS_TOKEN, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="right",
        model_max_length=512,
    )


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(folder))
