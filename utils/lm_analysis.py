"""Measuring a language model: per-review NLL, sample diversity and grammaticality, compute budgets.

Notebooks 04 and 05 ask the same questions of the base LM again and again:

* how far is its NLL from the source entropy, review by review (:func:`per_review_nll`)?
* how do the decoding knobs trade diversity (distinct-n, word entropy) against correctness (the review
  grammar) (:func:`sample_texts`, :func:`decoding_sweep`, :func:`grammatical_fraction`)?
* what do the sampling knobs do to one next-token distribution (:func:`next_token_table`)?
* how many tokens would the Chinchilla rule give a model this size (:func:`compute_budget`)?

The answers are plain numbers and lists, so tests can check them against hand computations and the
notebooks can plot them however they like.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from utils import review_world as rw
from utils.decoding import SamplingConfig, generate, generate_with_logprobs, next_token_distribution
from utils.language_model import collate, sequence_nll
from utils.seed import set_seed

# ------------------------------------------------------------------------------------------------
# Likelihood
# ------------------------------------------------------------------------------------------------


def per_review_nll(
    model: nn.Module, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int = 256
) -> torch.Tensor:
    """NLL in nats of each ``[BOS] ... [EOS]`` sequence (tokens after BOS), shape (N,).

    The mean of this is :func:`utils.language_model.nll_per_review`; keeping every value lets us
    compare each review's model NLL with its exact NLL under the generator, ``-log_prob``.
    """
    if not sequences:
        raise ValueError("per_review_nll needs at least one sequence, got none")
    model.eval()
    chunks = [
        sequence_nll(model, collate(sequences[start : start + batch_size], pad_id))
        for start in range(0, len(sequences), batch_size)
    ]
    return torch.cat(chunks)


# ------------------------------------------------------------------------------------------------
# Diversity
# ------------------------------------------------------------------------------------------------


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The ``n``-grams of a word sequence, in order (none if the sequence is shorter than ``n``)."""
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int, tokenize: Callable[[str], list[str]] = rw.split_words) -> float:
    """Distinct-n (Li et al., 2016): unique ``n``-grams / all ``n``-grams, pooled over ``texts``.

    1.0 means no ``n``-gram ever repeats; a model that always writes the same review scores close
    to 1 / len(texts). Words come from ``tokenize`` (the review world's words and punctuation by
    default). Returns 0.0 when the texts hold no ``n``-gram at all.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"distinct_n: n must be an int >= 1, got {n!r}")
    grams = [g for text in texts for g in ngrams(tokenize(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def word_entropy(texts: Sequence[str], tokenize: Callable[[str], list[str]] = rw.split_words) -> float:
    """Entropy (nats) of the empirical word distribution pooled over ``texts``.

    In a closed language such as the review world, distinct-n saturates (there are only so many n-grams),
    while this keeps measuring how evenly the words are used: low when a few words dominate (low
    temperature), equal to the source's when the samples follow the source, higher when rare words and
    junk are over-used. Returns 0.0 when the texts hold no word.
    """
    counts = collections.Counter(w for text in texts for w in tokenize(text))
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


# ------------------------------------------------------------------------------------------------
# Sampling and sweeps
# ------------------------------------------------------------------------------------------------


def sample_texts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    n: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    do_sample: bool = True,
    max_new_tokens: int = 96,
    prompt: str = "",
    seed: int = 0,
) -> tuple[list[str], float]:
    """``n`` continuations of ``prompt`` (empty: free samples from BOS) and the share that reached EOS.

    Texts are decoded without special tokens and include the prompt, so they can go straight to
    :func:`utils.review_world.is_grammatical`. Same seed, same texts.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"sample_texts: n must be an int >= 1, got {n!r}")
    config = SamplingConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    prompt_ids = tokenizer(prompt)["input_ids"]  # starts with BOS: the tokenizer adds it
    input_ids = torch.tensor([prompt_ids] * n, dtype=torch.long)  # (n, T) every row the same prompt
    model.eval()
    out = generate_with_logprobs(model, input_ids, config=config, generator=torch.Generator().manual_seed(seed))
    generated = out.sequences[:, input_ids.size(1) :]  # (n, N)
    finished = (generated == tokenizer.eos_token_id).any(dim=1).float().mean().item()
    texts = tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
    return texts, finished


def grammatical_fraction(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    n: int,
    seed: int,
    max_new_tokens: int = 96,
    temperature: float = 1.0,
) -> tuple[float, list[str]]:
    """Share of ``n`` free samples (from BOS, pure sampling) that the review grammar accepts, and the samples.

    The ``lm`` stage's headline number: a base LM that learned the grammar writes grammatical reviews.
    """
    set_seed(seed)
    model.eval()
    input_ids = torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long)
    config = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator = torch.Generator().manual_seed(seed)
    sequences = generate(model, input_ids, config=config, generator=generator)
    texts = tokenizer.batch_decode(sequences, skip_special_tokens=True)
    return sum(rw.is_grammatical(t) for t in texts) / n, texts


@dataclass(frozen=True)
class SampleStats:
    """What a batch of samples looks like, in numbers."""

    grammatical_fraction: float  # share the review grammar accepts
    distinct_1: float  # unique words / words
    distinct_2: float  # unique word pairs / word pairs
    distinct_3: float  # unique word triples / word triples
    word_entropy: float  # entropy (nats) of the pooled word distribution
    unique_fraction: float  # distinct texts / texts
    finished_fraction: float  # share that emitted EOS within the token budget
    mean_words: float  # words per sample, punctuation not counted


def sample_stats(texts: Sequence[str], finished_fraction: float = 1.0) -> SampleStats:
    """Grammaticality, diversity and length of ``texts``."""
    if not texts:
        raise ValueError("sample_stats needs at least one text, got none")
    n = len(texts)
    return SampleStats(
        grammatical_fraction=sum(rw.is_grammatical(t) for t in texts) / n,
        distinct_1=distinct_n(texts, 1),
        distinct_2=distinct_n(texts, 2),
        distinct_3=distinct_n(texts, 3),
        word_entropy=word_entropy(texts),
        unique_fraction=len(set(texts)) / n,
        finished_fraction=finished_fraction,
        mean_words=sum(rw.word_count(t) for t in texts) / n,
    )


def decoding_sweep(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    settings: Sequence[dict],
    n: int = 200,
    max_new_tokens: int = 96,
    seed: int = 0,
) -> list[dict]:
    """One row per decoding setting: the setting (e.g. ``{"temperature": 0.7}``) plus its sample stats.

    Every setting samples ``n`` free reviews with the same seed, so rows differ only by the setting.
    Allowed keys: temperature, top_k, top_p, do_sample.
    """
    allowed = {"temperature", "top_k", "top_p", "do_sample"}
    rows = []
    for setting in settings:
        unknown = set(setting) - allowed
        if unknown:
            raise ValueError(f"decoding_sweep: unknown setting key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        texts, finished = sample_texts(model, tokenizer, n, max_new_tokens=max_new_tokens, seed=seed, **setting)
        rows.append({**setting, **asdict(sample_stats(texts, finished))})
    return rows


# ------------------------------------------------------------------------------------------------
# One next-token distribution
# ------------------------------------------------------------------------------------------------


def token_label(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    """A readable label for one token: its text, a leading space shown as '␣', specials as they are."""
    text = tokenizer.decode([token_id])
    return "␣" + text[1:] if text.startswith(" ") else text


def next_token_table(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    top_n: int = 10,
) -> list[tuple[str, float, float]]:
    """The ``top_n`` most likely next tokens after ``prompt``: ``(label, raw prob, prob after the knobs)``.

    Sorted by raw probability, so the same rows appear whatever the knobs; the knobs only move the
    third column (a filtered token has 0 there).
    """
    input_ids = torch.tensor(tokenizer(prompt)["input_ids"], dtype=torch.long)  # (T,) with BOS
    model.eval()
    raw = next_token_distribution(model, input_ids)  # (V,)
    processed = next_token_distribution(model, input_ids, temperature=temperature, top_k=top_k, top_p=top_p)
    top = torch.topk(raw, min(top_n, raw.numel()))
    return [(token_label(tokenizer, i), raw[i].item(), processed[i].item()) for i in top.indices.tolist()]


# ------------------------------------------------------------------------------------------------
# Compute budgets
# ------------------------------------------------------------------------------------------------
CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. (2022): compute-optimal D is about 20 N


@dataclass(frozen=True)
class ComputeBudget:
    """Training compute of a dense transformer by the standard 6 N D rule."""

    params: int  # N, trainable parameters
    tokens: int  # D, tokens actually trained on
    flops: float  # 6 N D: forward (2 N D) plus backward (4 N D)
    chinchilla_tokens: int  # about 20 N: the compute-optimal D for this N
    chinchilla_flops: float  # 6 N (20 N)
    tokens_vs_chinchilla: float  # D / (20 N): < 1 undertrained by the rule, > 1 overtrained


def compute_budget(params: int, tokens: int, tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM) -> ComputeBudget:
    """FLOPs of training ``params`` parameters on ``tokens`` tokens, and the Chinchilla-optimal token count."""
    for name, value in (("params", params), ("tokens", tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"compute_budget: {name} must be an int >= 1, got {value!r}")
    if not tokens_per_param > 0:
        raise ValueError(f"compute_budget: tokens_per_param must be > 0, got {tokens_per_param!r}")
    optimal = round(tokens_per_param * params)
    return ComputeBudget(
        params=params,
        tokens=tokens,
        flops=6.0 * params * tokens,
        chinchilla_tokens=optimal,
        chinchilla_flops=6.0 * params * optimal,
        tokens_vs_chinchilla=tokens / optimal,
    )
