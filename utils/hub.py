"""The hub profile's ideas: the course's stages on real text, with GPT-2, IMDB and HH-RLHF.

The course runs on its own review world, where every number can be checked against a known truth. A
student with internet access and a GPU wants the classic experiment on real text: GPT-2 tuned with PPO
towards positive IMDB reviews. This module holds what that needs beyond the course's own code:

* **Data** in the hub's schemas, read by the loaders of :mod:`utils.preference_data`: IMDB reviews
  (``load_imdb``) and Anthropic's HH-RLHF pairs (``load_hh_rlhf_jsonl``, then validated). With the hub
  at hand the split is downloaded with ``datasets`` and written to a file first, so that the same loader
  reads it as reads the local slices in ``../shared/data``: one code path, whichever the source.
* **Models**: ``gpt2`` from the hub, or, offline, the real 124M-parameter ``GPT2Config()`` randomly
  initialised (:func:`build_policy`); the tokenizer is GPT-2's, or offline a byte-level BPE trained on the
  data with GPT-2's pre-tokenizer (:func:`train_standin_tokenizer`). The switch is at the loading point
  only (:func:`resolve_weights`): everything after it is the same code, online or not.
* **The reward model's data**: IMDB's labels as preferences, a positive review preferred to a negative
  one (:func:`sentiment_pairs`). HH-RLHF's pairs teach helpfulness and harmlessness of assistant replies,
  which says nothing about a movie review; the PPO task here is "continue this review positively", so its
  reward must measure sentiment, and the outside judge can then check the policy on the same axis.
* **An outside judge** in place of the review world's gold reward, which real text does not have: a
  sentiment classifier that was not used as the reward (:func:`build_judge`; on the hub, DistilBERT
  fine-tuned on SST-2 sentences, which are not IMDB reviews). Offline it is a randomly initialised model
  of the same architecture: its numbers exercise the code and mean nothing.
* **Training loops that use the accelerator**: the course's loops run on a CPU in fp32. Here
  :func:`train_steps` moves each batch to the model's device, runs under autocast (bf16 where the GPU
  has it, fp16 with a gradient scaler on other CUDA GPUs such as Colab's T4, fp32 on a CPU), and can
  enable gradient checkpointing. LoRA wraps the model with :mod:`peft`; QLoRA (4-bit base, bitsandbytes)
  is used only where :func:`utils.sft.qlora_unavailable_reason` says it can run.

Long texts: GPT-2 reads at most 1,024 tokens and some IMDB reviews are longer (31 of the 700 in the local
slice with the stand-in tokenizer). Every cut is counted and logged (:func:`truncate_tokens`), never silent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from utils.config_checks import (
    check_bool,
    check_choice,
    check_int,
    check_names,
    check_number,
    check_numbers,
    check_text,
)
from utils.language_model import collate, get_lr
from utils.preference_data import (
    PreferenceDataError,
    load_hh_rlhf_jsonl,
    validate_preference_rows,
)
from utils.reward_model import batch_indices, bradley_terry_loss, collate_pairs, make_optimizer, pair_rewards
from utils.seed import set_seed

logger = logging.getLogger(__name__)

WEIGHTS = ("auto", "hub", "random")  # where the models come from; "auto": the hub when it can be reached
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
GPT2_SMALL_PARAMETERS = 124_439_808  # GPT2Config(): 12 blocks of width 768, 50,257 tokens, tied embeddings
GPT2_CONTEXT = 1_024  # GPT2Config().n_positions: the most tokens GPT-2 reads
EOS_TOKEN = "<|endoftext|>"  # GPT-2's only special token: BOS, EOS and UNK at once
PROJECT_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubDataConfig:
    """Which real data the hub profile reads, and how much of it goes where. Validated on construction."""

    local_dir: str = "../shared/data"
    """folder of the offline slices, relative to the project root (used when the hub cannot be reached)"""
    imdb_file: str = "imdb_reviews_sample700.csv"
    """the IMDB slice in ``local_dir`` (CSV copy schema ``review,sentiment``)"""
    hh_file: str = "hh_rlhf_harmless_base_test_first1000.jsonl"
    """the HH-RLHF slice in ``local_dir`` (the hub's ``chosen,rejected`` transcripts)"""
    imdb_dataset: str = "stanfordnlp/imdb"
    """hub dataset of IMDB reviews (``text``, ``label``)"""
    imdb_split: str = "train"
    """its split (25,000 labelled reviews)"""
    hh_dataset: str = "Anthropic/hh-rlhf"
    """hub dataset of HH-RLHF pairs"""
    hh_data_dir: str = "harmless-base"
    """its subset"""
    hh_split: str = "test"
    """its split"""
    hh_rows: int = 1_000
    """HH-RLHF rows loaded and validated (counted in the data stage's metrics; 0: skip HH-RLHF)"""
    sft_reviews: int = 4_000
    """reviews for the short language-model fine-tuning of GPT-2 on IMDB"""
    rm_train_pairs: int = 4_000
    """(positive review, negative review) pairs the reward model trains on"""
    rm_test_pairs: int = 500
    """held-out pairs for the reward model's accuracy"""
    prompts_train: int = 1_024
    """reviews whose openings are PPO's prompts"""
    prompts_test: int = 256
    """held-out reviews whose openings the evaluation samples from"""
    prompt_tokens: int = 8
    """tokens of a review's opening that make a prompt"""
    sft_max_tokens: int = 256
    """each fine-tuning review is cut to this many tokens (EOS included), counted in the metrics"""
    rm_max_tokens: int = 128
    """each review the reward model reads is cut to its first tokens (EOS included): PPO's episodes are an
    opening plus a short continuation, so the RM learns on texts of that kind, not on whole reviews"""
    seed: int = 0
    """shuffles the reviews before they are split"""

    def __post_init__(self) -> None:
        for name in (
            "local_dir",
            "imdb_file",
            "hh_file",
            "imdb_dataset",
            "imdb_split",
            "hh_dataset",
            "hh_data_dir",
            "hh_split",
        ):
            check_text(self, name)
        for name in ("sft_reviews", "rm_train_pairs", "rm_test_pairs", "prompts_train", "prompts_test"):
            check_int(self, name, ge=1)
        check_int(self, "prompt_tokens", ge=1)
        for name in ("sft_max_tokens", "rm_max_tokens"):
            check_int(self, name, ge=2, le=GPT2_CONTEXT)
        for name in ("hh_rows", "seed"):
            check_int(self, name, ge=0)


@dataclass(frozen=True)
class HubModelConfig:
    """Where the models come from and how they run. Validated on construction."""

    weights: str = "auto"
    """"hub": ``gpt2``, its tokenizer and the judge from the hub; "random": GPT2Config() randomly
    initialised, a stand-in tokenizer and a random judge (offline); "auto": the hub when it can be reached"""
    base_model: str = "gpt2"
    """hub name of the base model (and its tokenizer)"""
    judge_model: str = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"
    """hub name of the outside sentiment judge (trained on SST-2 sentences, not on IMDB, never the reward)"""
    standin_vocab_size: int = 8_192
    """offline only: vocabulary of the BPE trained on the data (GPT-2's 50,257 needs far more text than a
    slice); the random model's embeddings are sized to it, every other dimension is GPT2Config()'s"""
    pad_token: str = "<|pad|>"
    """added to GPT-2's tokenizer, which has none: our PPO masks PAD, so PAD must differ from EOS"""
    device: str = "auto"
    """"auto": CUDA when present, else the CPU (PPO and sampling always run on the CPU, see utils.stages.hub)"""
    precision: str = "auto"
    """autocast dtype of training: "auto" = bf16 where the GPU supports it, fp16 on other CUDA GPUs (T4), fp32 on
    a CPU"""
    gradient_checkpointing: bool = True
    """recompute activations in the backward pass on CUDA (less memory, ~30% more compute); ignored on a CPU"""
    seed: int = 0
    """initialisation of the random models and of the added PAD embedding"""

    def __post_init__(self) -> None:
        check_choice(self, "weights", WEIGHTS)
        check_choice(self, "device", DEVICES)
        check_choice(self, "precision", PRECISIONS)
        for name in ("base_model", "judge_model", "pad_token"):
            check_text(self, name)
        check_int(self, "standin_vocab_size", ge=300)  # the 256 bytes, the special tokens and some merges
        check_int(self, "seed", ge=0)
        check_bool(self, "gradient_checkpointing")


@dataclass(frozen=True)
class HubTrainConfig:
    """A short training run (the SFT stage's LM loss, or the reward model's Bradley-Terry loss)."""

    steps: int = 200
    """optimiser steps"""
    batch_size: int = 16
    """sequences (SFT) or pairs (RM) per step"""
    lr: float = 5e-5
    """peak learning rate (pretrained GPT-2 wants small steps; LoRA larger ones)"""
    min_lr_ratio: float = 0.1
    """cosine decays to lr * min_lr_ratio"""
    warmup_steps: int = 20
    """linear warmup"""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices"""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas"""
    grad_clip: float = 1.0
    """max global gradient norm"""
    lora: bool = False
    """train LoRA adapters on frozen weights instead of every weight (merged into the saved model)"""
    qlora: bool = False
    """LoRA on a 4-bit base (bitsandbytes); only on CUDA: elsewhere it logs why and trains plain LoRA"""
    lora_r: int = 16
    """rank of the LoRA update"""
    lora_alpha: int = 32
    """LoRA scale alpha / r"""
    lora_target_modules: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")
    """GPT-2 matrices that get adapters"""
    seed: int = 0
    """batch order and the reward head's initialisation"""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "lora_r", "lora_alpha"):
            check_int(self, name, ge=1)
        for name in ("warmup_steps", "seed"):
            check_int(self, name, ge=0)
        for name in ("lr", "grad_clip"):
            check_number(self, name, gt=0)
        check_number(self, "min_lr_ratio", ge=0, le=1)
        check_number(self, "weight_decay", ge=0)
        check_numbers(self, "betas", length=2, ge=0, lt=1)
        for name in ("lora", "qlora"):
            check_bool(self, name)
        check_names(self, "lora_target_modules")


@dataclass(frozen=True)
class HubEvalConfig:
    """How the policies before and after PPO are sampled and judged."""

    num_prompts: int = 256
    """held-out review openings sampled from (at most ``HubDataConfig.prompts_test``)"""
    max_new_tokens: int = 24
    """tokens sampled per continuation"""
    temperature: float = 1.0
    """sampling temperature"""
    batch_size: int = 32
    """prompts sampled together"""
    judge_reviews: int = 256
    """held-out labelled reviews on which the judge's own accuracy is measured (is the judge any good?)"""
    seed: int = 0
    """the sampling generator"""

    def __post_init__(self) -> None:
        for name in ("num_prompts", "max_new_tokens", "batch_size", "judge_reviews"):
            check_int(self, name, ge=1)
        check_number(self, "temperature", gt=0)
        check_int(self, "seed", ge=0)


# ------------------------------------------------------------------------------------------------
# Where things come from: the one switch
# ------------------------------------------------------------------------------------------------
def hub_reachable() -> bool:
    """True unless the environment says offline (``HF_HUB_OFFLINE``; importing ``utils`` sets it unless
    ``RLHF_ALLOW_HUB=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on")


def resolve_weights(config: HubModelConfig) -> str:
    """ "hub" or "random": the source every loader of the profile follows (part of every cache key)."""
    if config.weights != "auto":
        return config.weights
    return "hub" if hub_reachable() else "random"


def local_file(config: HubDataConfig, name: str) -> Path:
    """A file of the offline slices; FileNotFoundError saying how to get data when it is missing."""
    path = (PROJECT_ROOT / config.local_dir / name).resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the hub profile offline reads the slices in {config.local_dir} "
            "(see ../shared/data/README.md); with internet, set RLHF_ALLOW_HUB=1 to download the data instead"
        )
    return path


def imdb_source(config: HubDataConfig, folder: Path, online: bool) -> Path:
    """The IMDB file ``load_imdb`` reads: the hub split written to ``folder`` as Parquet, or the local slice."""
    if not online:
        return local_file(config, config.imdb_file)
    from datasets import load_dataset

    path = folder / "imdb_download.parquet"
    load_dataset(config.imdb_dataset, split=config.imdb_split).to_parquet(str(path))
    return path


def hh_source(config: HubDataConfig, folder: Path, online: bool) -> Path:
    """The HH-RLHF file ``load_hh_rlhf_jsonl`` reads: the hub split written to ``folder``, or the local slice."""
    if not online:
        return local_file(config, config.hh_file)
    from datasets import load_dataset

    path = folder / "hh_rlhf_download.jsonl"
    dataset = load_dataset(config.hh_dataset, data_dir=config.hh_data_dir, split=config.hh_split)
    dataset.select(range(min(config.hh_rows, len(dataset)))).to_json(str(path), lines=True)
    return path


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def split_imdb(rows: Sequence[dict], config: HubDataConfig) -> dict[str, list[dict]]:
    """Shuffle labelled reviews (``{"text", "label"}``) and deal them out, no review in two splits.

    Returns ``sft`` and the two prompt splits as review rows, and ``rm_train`` / ``rm_test`` as implicit-prompt
    preference rows ``{"chosen": positive review, "rejected": negative review}``. ValueError, with the counts,
    when there are not enough reviews of either label.
    """
    order = list(rows)
    random.Random(config.seed).shuffle(order)
    positives = [r for r in order if r["label"] == 1]
    negatives = [r for r in order if r["label"] == 0]
    pair_count = config.rm_train_pairs + config.rm_test_pairs
    if min(len(positives), len(negatives)) < pair_count:
        raise ValueError(
            f"the reward model's {pair_count} pairs need {pair_count} positive and {pair_count} negative reviews; "
            f"the data have {len(positives)} and {len(negatives)}: lower rm_train_pairs / rm_test_pairs"
        )
    pairs = [{"chosen": p["text"], "rejected": n["text"]} for p, n in zip(positives, negatives)][:pair_count]
    used = {id(r) for r in positives[:pair_count] + negatives[:pair_count]}
    rest = [r for r in order if id(r) not in used]
    sizes = {"prompts_train": config.prompts_train, "prompts_test": config.prompts_test, "sft": config.sft_reviews}
    if sum(sizes.values()) > len(rest):
        raise ValueError(
            f"after the reward model's {2 * pair_count} reviews, {len(rest)} remain for {sizes} "
            f"({sum(sizes.values())} in all): lower these sizes"
        )
    splits: dict[str, list[dict]] = {
        "rm_train": pairs[: config.rm_train_pairs],
        "rm_test": pairs[config.rm_train_pairs :],
    }
    start = 0
    for name, size in sizes.items():
        splits[name] = rest[start : start + size]
        start += size
    return splits


def load_hh_pairs(path: Path, rows: int) -> tuple[list[dict], int]:
    """The first ``rows`` HH-RLHF pairs as explicit-prompt rows, and how many unusable ones were dropped.

    ``validate_preference_rows`` names every unusable row (the harmless-base test split has chosen replies
    that are a lone space, and pairs with nothing to prefer); those rows are dropped and counted, the rest kept.
    """
    loaded = load_hh_rlhf_jsonl(path)[:rows]
    try:
        validate_preference_rows(loaded)
        return loaded, 0
    except PreferenceDataError as error:
        bad = {problem.row for problem in error.problems}
        if None in bad:
            raise
        for problem in error.problems[:3]:
            logger.info("HH-RLHF: dropped %s", problem)
        return [row for i, row in enumerate(loaded) if i not in bad], len(bad)


def truncate_tokens(sequences: Sequence[list[int]], max_tokens: int, what: str) -> tuple[list[list[int]], int]:
    """Cut every sequence to its first ``max_tokens`` tokens; returns (sequences, how many were cut), and
    logs that count: a cut is never silent."""
    cut = sum(len(s) > max_tokens for s in sequences)
    if cut:
        logger.warning(
            "%s: %d of %d sequences were longer than %d tokens and were cut", what, cut, len(sequences), max_tokens
        )
    return [list(s[:max_tokens]) for s in sequences], cut


def encode_with_eos(
    texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_tokens: int, what: str
) -> tuple[list[list[int]], int]:
    """Each text's first ``max_tokens - 1`` tokens, then EOS (where a GPT reward head reads its score);
    returns (sequences, how many texts were cut)."""
    ids = tokenizer(list(texts), verbose=False)["input_ids"]  # whole texts: we cut (and count) ourselves
    cut_ids, cut = truncate_tokens(ids, max_tokens - 1, what)
    return [s + [tokenizer.eos_token_id] for s in cut_ids], cut


def review_openings(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, prompt_tokens: int) -> list[list[int]]:
    """The first ``prompt_tokens`` tokens of each review: PPO's prompts (classic IMDB sentiment task)."""
    return tokenizer(list(texts), truncation=True, max_length=prompt_tokens)["input_ids"]


# ------------------------------------------------------------------------------------------------
# Tokenizer and models
# ------------------------------------------------------------------------------------------------
def train_standin_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """A byte-level BPE trained on ``texts``, built as GPT-2's is: GPT-2's byte-level pre-tokenizer (no
    prefix space), the 256 bytes as its alphabet, ``<|endoftext|>`` as BOS, EOS and UNK. It stands in for
    GPT-2's tokenizer where the hub's files cannot be downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN, model_max_length=1024
    )


def load_tokenizer(config: HubModelConfig, weights: str, texts: Sequence[str] = ()) -> PreTrainedTokenizerBase:
    """GPT-2's tokenizer from the hub, or the stand-in trained on ``texts``; either way with a PAD of its own."""
    if weights == "hub":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    else:
        tokenizer = train_standin_tokenizer(texts, config.standin_vocab_size)
    return with_pad_token(tokenizer, config.pad_token)


def with_pad_token(tokenizer: PreTrainedTokenizerBase, pad_token: str) -> PreTrainedTokenizerBase:
    """``tokenizer`` with a PAD token distinct from EOS (added when missing; GPT-2 has none)."""
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": pad_token})
    return tokenizer


def build_random_gpt2(config: GPT2Config | None = None, seed: int = 0) -> GPT2LMHeadModel:
    """GPT-2 with ``config`` (default: GPT2Config(), the 124M model) and GPT-2's random initialisation."""
    set_seed(seed)
    return GPT2LMHeadModel(config or GPT2Config())


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def build_policy(config: HubModelConfig, tokenizer: PreTrainedTokenizerBase, weights: str) -> GPT2LMHeadModel:
    """The base policy: ``gpt2`` from the hub, or GPT2Config() randomly initialised; then, either way, the
    embeddings sized to ``tokenizer`` (GPT-2 + our PAD: 50,258 rows; the stand-in: its own size) and the
    model told its PAD and EOS."""
    if weights == "hub":
        model = GPT2LMHeadModel.from_pretrained(config.base_model)
    else:
        model = build_random_gpt2(GPT2Config(), seed=config.seed)
    set_seed(config.seed)  # the added PAD row is drawn here
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = model.config.bos_token_id = tokenizer.eos_token_id
    return model


def build_judge(config: HubModelConfig, weights: str, standin_tokenizer: PreTrainedTokenizerBase):
    """(model, tokenizer) of the outside sentiment judge. Offline: DistilBERT's architecture randomly
    initialised, reading the stand-in tokenizer, labelled as the hub's judge is (its scores mean nothing)."""
    from transformers import AutoModelForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification

    if weights == "hub":
        from transformers import AutoTokenizer

        return (
            AutoModelForSequenceClassification.from_pretrained(config.judge_model).eval(),
            AutoTokenizer.from_pretrained(config.judge_model),
        )
    set_seed(config.seed + 1)
    judge_config = DistilBertConfig(
        vocab_size=len(standin_tokenizer),
        pad_token_id=standin_tokenizer.pad_token_id,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    return DistilBertForSequenceClassification(judge_config).eval(), standin_tokenizer


def positive_label(model: nn.Module) -> int:
    """Index of the judge's "positive" class, read from its labels (ValueError when it has none)."""
    for index, label in model.config.id2label.items():
        if str(label).lower() in ("positive", "pos"):
            return int(index)
    raise ValueError(f"the judge's labels {model.config.id2label} have no 'positive' class")


@torch.no_grad()
def judge_positive(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 32
) -> torch.Tensor:
    """The judge's probability that each text is positive (len(texts),), texts cut to its positions."""
    device = next(model.parameters()).device
    limit = model.config.max_position_embeddings
    index = positive_label(model)
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]),
            truncation=True,
            max_length=limit,
            padding=True,
            return_tensors="pt",
        )
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits
        out.append(logits.float().softmax(-1)[:, index].cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------
# Device, precision, adapters
# ------------------------------------------------------------------------------------------------
def pick_device(config: HubModelConfig) -> torch.device:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA GPU is available; use 'auto' or 'cpu'")
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def autocast_dtype(config: HubModelConfig, device: torch.device) -> torch.dtype | None:
    """The dtype training autocasts to (None: fp32). "auto": bf16 where the GPU has it, else fp16; fp32 on a CPU."""
    if device.type != "cuda":
        return None
    if config.precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[config.precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def add_lora(model: nn.Module, config: HubTrainConfig, task_type: str) -> nn.Module:
    """``model`` wrapped by PEFT with LoRA adapters (the same adapter settings as utils.sft.lora_config)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        target_modules=list(config.lora_target_modules),
        fan_in_fan_out=True,  # GPT-2's Conv1D stores (in, out)
        bias="none",
        task_type=task_type,
        modules_to_save=["score"] if task_type == "SEQ_CLS" else None,  # the reward head is new: train it whole
    )
    with warnings.catch_warnings():
        # PEFT still reads transformers' renamed `is_gradient_checkpointing`: harmless, and not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)


def qlora_base(model_dir: Path) -> nn.Module:
    """The LM saved in ``model_dir`` in 4-bit NF4, ready for LoRA (utils.sft.load_for_qlora; CUDA only)."""
    from utils.sft import SFTConfig, load_for_qlora

    return load_for_qlora(model_dir, SFTConfig())


# ------------------------------------------------------------------------------------------------
# Training on any device
# ------------------------------------------------------------------------------------------------
def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the real tokens of a right-padded batch (labels -100 on PAD)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100)


def rm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Bradley-Terry loss of a batch made by ``collate_pairs`` (chosen half, then rejected half)."""
    r_chosen, r_rejected = pair_rewards(model, batch)
    return bradley_terry_loss(r_chosen.float(), r_rejected.float())


def train_steps(
    model: nn.Module,
    batches: Iterator[dict[str, torch.Tensor]] | Sequence[dict[str, torch.Tensor]],
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    config: HubTrainConfig,
    device: torch.device,
    dtype: torch.dtype | None,
) -> list[float]:
    """One AdamW step per batch (warmup + cosine, gradient clipping) on ``device`` under autocast to ``dtype``;
    fp16 gets a gradient scaler. Returns the loss of every step."""
    optimizer = make_optimizer(model, config.lr, config.weight_decay, config.betas)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    params = [p for p in model.parameters() if p.requires_grad]
    losses = []
    model.train()
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, config)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device, dtype):
            loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    model.eval()
    return losses


def lm_batches(sequences: Sequence[list[int]], pad_id: int, config: HubTrainConfig) -> Iterator[dict]:
    """``config.steps`` right-padded LM batches, in epochs of a seeded shuffle."""
    for index in batch_indices(len(sequences), config.batch_size, config.steps, True, config.seed):
        yield collate([sequences[i] for i in index], pad_id)


def pair_batches(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, config: HubTrainConfig) -> Iterator[dict]:
    """``config.steps`` preference batches (chosen half, rejected half), in epochs of a seeded shuffle."""
    for index in batch_indices(len(pairs), config.batch_size, config.steps, True, config.seed):
        yield collate_pairs([pairs[i] for i in index], pad_id)


@torch.no_grad()
def sequence_scores(
    model: nn.Module, sequences: Sequence[list[int]], pad_id: int, batch_size: int = 32
) -> torch.Tensor:
    """A sequence classifier's raw score (len(sequences),), read at each sequence's last token, on its device."""
    from utils.reward_model import right_pad

    device = next(model.parameters()).device
    model.eval()
    out = []
    for start in range(0, len(sequences), batch_size):
        batch = right_pad(sequences[start : start + batch_size], pad_id)
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits
        out.append(logits.squeeze(-1).float().cpu())
    return torch.cat(out)


def pair_accuracy(
    model: nn.Module, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 32
) -> float:
    """Share of pairs whose chosen side scores higher."""
    chosen = sequence_scores(model, [c for c, _ in pairs], pad_id, batch_size)
    rejected = sequence_scores(model, [r for _, r in pairs], pad_id, batch_size)
    return (chosen > rejected).float().mean().item()


def store_normalisation(model: nn.Module, scores: torch.Tensor) -> tuple[float, float]:
    """Store mean and std of ``scores`` in the model's config as ``reward_mean`` / ``reward_std``, the
    statistics ``utils.ppo.reward_model_fn`` applies (as ``utils.reward_model.set_normalisation`` does)."""
    mean, std = scores.mean().item(), scores.std(unbiased=False).item()
    if not std > 0:
        raise ValueError("every reference text gets the same reward: cannot normalise (std = 0)")
    model.config.reward_mean, model.config.reward_std = mean, std
    return mean, std


def describe_weights(weights: str) -> str:
    """What the profile's numbers mean, for every metrics file and sample table."""
    if weights == "hub":
        return "pretrained gpt2 and judge from the hub"
    return "RANDOM-INIT GPT-2-shaped models and judge (offline smoke run): the numbers exercise the code, mean nothing"


# ------------------------------------------------------------------------------------------------
# Sampling continuations (the policy before and after PPO)
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_continuations(
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    config: HubEvalConfig,
) -> list[dict]:
    """Sample one continuation per prompt with PPO's own sampler (utils.rollout, CPU), in seeded batches.

    Returns rows ``{"prompt", "response", "query_response" (ids), "attention_mask" (ids' mask), "response_tokens"}``.
    """
    from utils.decoding import left_pad
    from utils.rollout import sample_responses

    generator = torch.Generator().manual_seed(config.seed)
    rows = []
    for start in range(0, len(prompts), config.batch_size):
        queries, query_mask = left_pad(prompts[start : start + config.batch_size], tokenizer.pad_token_id)  # (B, P)
        samples = sample_responses(
            policy,
            queries,
            query_mask,
            config.max_new_tokens,
            config.temperature,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            generator,
        )
        query_responses = torch.cat([queries, samples.responses], dim=1)  # (B, P + R)
        attention_mask = torch.cat([query_mask.bool(), samples.mask], dim=1)  # (B, P + R)
        for i in range(len(queries)):
            rows.append(
                {
                    "prompt": tokenizer.decode(queries[i][query_mask[i].bool()], skip_special_tokens=True),
                    "response": tokenizer.decode(samples.responses[i][samples.mask[i]], skip_special_tokens=True),
                    "query_response": query_responses[i].tolist(),
                    "attention_mask": attention_mask[i].long().tolist(),
                    "response_tokens": int(samples.mask[i].sum()),
                }
            )
    return rows
