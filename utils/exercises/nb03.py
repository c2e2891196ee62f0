"""Checks for the exercises of notebook 03 (tokenizers and embeddings).

The checks train their own small byte-level BPE tokenizer on a fixed corpus of the review world (a fraction of
a second), and compare the student's answer with the library or with the finished version in ``utils``.
"""

from __future__ import annotations

import functools
import json

import torch

from utils import review_world as rw
from utils.exercises import NotYet, exercise
from utils.language_model import collate
from utils.tokenizer import train_bpe


@functools.cache
def _toy_tokenizer(num_merges: int):
    """The 60-merge toy tokenizer of the notebook's section 2 (same fixed corpus), or another merge count."""
    return train_bpe([row["text"] for row in rw.lm_corpus(2000, seed=2016)], vocab_size=258 + num_merges)


def _merges(tokenizer) -> list[tuple[str, str]]:
    return [tuple(pair) for pair in json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]]


def _texts(n: int, seed: int) -> list[str]:
    return [row["text"] for row in rw.lm_corpus(n, seed=seed)]


@exercise("03.1")
def check_chars_per_token(chars_per_token) -> None:
    """``chars_per_token(tokenizer, texts)``: characters per BPE token over all texts, BOS excluded."""
    texts = _texts(100, seed=31)
    for num_merges in (20, 60):
        tokenizer = _toy_tokenizer(num_merges)
        want = sum(map(len, texts)) / sum(len(tokenizer.tokenize(t)) for t in texts)
        got = float(chars_per_token(tokenizer, texts))
        if abs(got - want) > 1e-6 * want:
            raise NotYet(
                f"a {num_merges}-merge tokenizer on 100 reviews gave {got:.4f}: total characters over total "
                "tokens (the BOS the tokenizer adds in front of each text is not part of the text)"
            )


@exercise("03.2")
def check_bpe_encode(bpe_encode) -> None:
    """``bpe_encode(text, merges)``: the library's tokens, from the merges applied in the order learned."""
    for num_merges in (60, 150):
        tokenizer = _toy_tokenizer(num_merges)
        merges = _merges(tokenizer)
        for text in [*_texts(40, seed=32), "the cinematography was superbly clumsy, although i adored it."]:
            got, want = list(bpe_encode(text, merges)), tokenizer.tokenize(text)
            if got != want:
                raise NotYet(
                    f"with {num_merges} merges, {text[:40]!r}... gave {got[:8]}...; the library: {want[:8]}..."
                )


@exercise("03.3")
def check_collate_lm(collate_lm) -> None:
    """``collate_lm(sequences, pad_id)``: right-padded ids, attention mask, labels -100 exactly on padding."""
    eos = 0
    sequences = [[eos, 5, 9, 3, eos], [eos, 7, eos], [eos, 4, 4, 8, 6, 2, eos], [eos, 11, 12, eos]]
    for pad_id in (1, eos):  # a separate pad token, then pad == EOS: the labels must not change
        want = collate(sequences, pad_id)
        got = collate_lm(sequences, pad_id)
        for key in ("input_ids", "attention_mask", "labels"):
            if key not in got:
                raise NotYet(f"the batch has no {key!r}")
            if not torch.equal(torch.as_tensor(got[key]).long(), want[key]):
                where = "with pad == EOS" if pad_id == eos else "with a separate pad id"
                raise NotYet(f"{key} is not right {where}: got {torch.as_tensor(got[key]).tolist()}")


@exercise("03.4")
def check_ordered_pairs(ordered_pairs) -> None:
    """``ordered_pairs(direction, pos_vectors, neg_vectors)``: the share of (positive, negative) pairs in
    which the positive vector projects higher on ``direction``."""
    generator = torch.Generator().manual_seed(34)
    for n_pos, n_neg, shift in ((5, 3, 0.3), (4, 6, -0.2)):
        direction = torch.randn(16, generator=generator)
        pos = torch.randn(n_pos, 16, generator=generator) + shift * direction
        neg = torch.randn(n_neg, 16, generator=generator)
        pos_scores, neg_scores = pos @ direction, neg @ direction
        want = (pos_scores[:, None] > neg_scores[None, :]).float().mean().item()
        got = float(ordered_pairs(direction, pos, neg))
        if abs(got - want) > 1e-6:
            raise NotYet(
                f"{n_pos} positive and {n_neg} negative random vectors gave {got:.3f}: compare every positive "
                "with every negative (all pairs), by their projections on the direction"
            )


@exercise("03.5")
def check_wordpiece_encode(wordpiece_encode) -> None:
    """``wordpiece_encode(word, vocab)``: BERT's greedy longest-match-first cut, ``[UNK]`` for the whole word."""
    from utils.subword import train_wordpiece
    from utils.subword import wordpiece_encode as reference

    hand = {"super", "superb", "##bly", "##l", "##y", "s", "##u"}
    cases = [("superbly", hand), ("sux", hand), ("su", hand)]
    tokenizer = train_wordpiece(_texts(1000, seed=35), vocab_size=400)
    vocab = set(tokenizer.get_vocab())
    for text in [*_texts(30, seed=36), "the acting was superbly Great!", "a naïve cinematographer"]:
        cases += [(word, vocab) for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)]
    for word, pieces in cases:
        got, want = list(wordpiece_encode(word, set(pieces))), reference(word, pieces)
        if got != want:
            where = "with a trained vocabulary"
            if pieces is hand:
                where = "with the pieces {super, superb, ##bly, ##l, ##y, s, ##u}"
            raise NotYet(f"{where}, {word!r} gave {got}: take the longest piece that fits at each position")
