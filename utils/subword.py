"""WordPiece and Unigram, the two other subword schemes, beside the course's byte-level BPE.

All three cut text into subwords from a learned vocabulary; they differ in how the vocabulary is learned
and how a word is cut:

* **BPE** (GPT-2, :mod:`utils.tokenizer`): learn merges of the most *frequent* adjacent pair; encode by
  replaying the merges in the order learned. Byte-level, so nothing is ever unknown.
* **WordPiece** (BERT): learn merges of the pair with the highest *score*
  ``count(ab) / (count(a) * count(b))`` (a pair that occurs together more than its parts predict);
  encode each word **greedily, longest match first** from the left; continuation pieces carry a ``##``
  prefix. A word with a character the vocabulary lacks becomes ``[UNK]`` as a whole.
* **Unigram** (SentencePiece; T5, ALBERT, XLNet): start from many candidate pieces, fit a unigram
  probability to each by EM, and *prune* the pieces whose removal costs the corpus likelihood least;
  encode by the **most probable segmentation** (Viterbi over the pieces' log-probabilities). The space is
  a visible symbol ``▁``, so decoding is a plain concatenation.

The trainers are those of the Hugging Face ``tokenizers`` library; :func:`wordpiece_encode` and
:func:`unigram_encode` are from-scratch encoders that reproduce the library's cuts of a word from the
learned vocabulary alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

WORDPIECE_UNK = "[UNK]"
UNIGRAM_UNK = "<unk>"


def _check_vocab_size(vocab_size: int) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """BERT's scheme: split on whitespace and punctuation, then WordPiece with ``##`` continuations."""
    _check_vocab_size(vocab_size)
    tokenizer = Tokenizer(models.WordPiece(unk_token=WORDPIECE_UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[WORDPIECE_UNK], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def train_unigram(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """SentencePiece's scheme: spaces become ``▁`` (prepended to each word), then a pruned Unigram model."""
    _check_vocab_size(vocab_size)
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=[UNIGRAM_UNK], unk_token=UNIGRAM_UNK, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def unigram_scores(tokenizer: Tokenizer) -> dict[str, float]:
    """Each piece of a trained Unigram tokenizer with its log-probability (the unknown token excluded)."""
    vocab = json.loads(tokenizer.to_str())["model"]["vocab"]
    return {piece: score for piece, score in vocab if piece != UNIGRAM_UNK}


def wordpiece_encode(word: str, vocab: Iterable[str], unk: str = WORDPIECE_UNK, prefix: str = "##") -> list[str]:
    """Greedy longest-match-first WordPiece of one pre-token: at each position take the longest piece in the
    vocabulary (``prefix`` + piece after the first); if none fits anywhere, the whole word is ``unk``."""
    vocab = set(vocab)
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:  # no piece starts here: BERT gives up on the whole word
            return [unk]
    return pieces


def unigram_encode(word: str, scores: dict[str, float], unk: str = UNIGRAM_UNK) -> tuple[list[str], float]:
    """The most probable segmentation of ``word`` into pieces of ``scores`` (Viterbi), and its log-probability.

    ``best[i]`` is the best log-probability of a segmentation of ``word[:i]``; a character no piece covers
    is ``unk`` with a heavy penalty (the library's: 10 below the lowest score), so any segmentation that
    avoids it wins; a run of such characters becomes one ``unk``, as in the library.
    """
    unk_score = min(scores.values()) - 10.0
    longest = max(map(len, scores))
    best = [0.0] + [-math.inf] * len(word)
    back: list[tuple[int, str]] = [(0, "")] * (len(word) + 1)
    for end in range(1, len(word) + 1):
        for start in range(max(0, end - longest), end):
            piece = word[start:end]
            score = scores.get(piece)
            if score is None and end - start == 1:
                piece, score = unk, unk_score
            if score is not None and best[start] + score > best[end]:
                best[end], back[end] = best[start] + score, (start, piece)
    pieces, end = [], len(word)
    while end > 0:
        start, piece = back[end]
        if not (piece == unk and pieces and pieces[-1] == unk):  # a run of unknown characters is one unk
            pieces.append(piece)
        end = start
    return pieces[::-1], best[-1]
