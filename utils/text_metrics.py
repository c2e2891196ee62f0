"""ROUGE and BLEU from scratch: the two n-gram overlap metrics every summarisation/translation paper reports.

Both compare a model's output (the *prediction* / *hypothesis*) with a human-written *reference* by counting
shared words. They are cheap, deterministic and blind to meaning: "the film was not good" and "the film was
good" share most of their n-grams. That blindness is why RLHF learns a reward model from human preferences
instead of optimising ROUGE or BLEU directly; the course uses these metrics as a baseline to compare against.

The numbers here equal the reference implementations, checked in tests/test_text_metrics.py:
- ROUGE equals Google's `rouge_score` package, `RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=False)`,
  including its tokenisation (lowercase, every run of characters outside [a-z0-9] is a separator, so non-ASCII
  letters split words: "café" -> ["caf"]).
- BLEU equals `sacrebleu.corpus_bleu` / `sacrebleu.sentence_bleu` with their defaults: the '13a' tokeniser
  (mteval-v13a, the WMT standard), case-sensitive, 'exp' smoothing, effective order off for corpus BLEU and
  on for sentence BLEU. Scores are on sacrebleu's 0-100 scale.

Where we deliberately differ (interfaces only, never numbers):
- Argument order is always (prediction, reference). `rouge_score.RougeScorer.score` takes (target, prediction).
- `corpus_bleu` takes references *per hypothesis* (`references[i]` is a string or a list of strings for
  `hypotheses[i]`); sacrebleu takes reference *streams* (`refs[k][i]` is the k-th reference of hypothesis i),
  i.e. the transpose. With one reference each: ours `["r1", "r2"]`, sacrebleu `[["r1", "r2"]]`.
- Only the 'exp' and 'none' smoothing methods; sacrebleu's 'floor' and 'add-k' are left out, and so are its
  other tokenisers ('intl', 'zh', 'char', ...) and ROUGE's Porter stemmer and ROUGE-Lsum.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

# ----------------------------------------------------------------------------------------------------------
# ROUGE (Lin, 2004): recall-oriented n-gram overlap between a prediction and one reference.
# ----------------------------------------------------------------------------------------------------------

# rouge_score's tokeniser: lowercase, then anything that is not an ASCII letter or digit separates words.
_ROUGE_SEPARATOR = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class RougeScore:
    """Precision, recall and their harmonic mean (F1), each in [0, 1]."""

    precision: float  # overlap / number of prediction units (n-grams, or tokens for ROUGE-L)
    recall: float  # overlap / number of reference units
    fmeasure: float  # 2PR / (P + R); 0 when P + R == 0


def rouge_tokenize(text: str) -> list[str]:
    """Split text the way `rouge_score` does: lowercase words made of [a-z0-9] only."""
    return _ROUGE_SEPARATOR.sub(" ", text.lower()).split()


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    """Multiset of the n-grams of a token list: 'a b a b', n=2 -> {(a,b): 2, (b,a): 1}."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(prediction: str, reference: str, n: int) -> RougeScore:
    """ROUGE-N: clipped n-gram overlap.

    Each reference n-gram can be matched at most as many times as it occurs in the reference (clipping), so
    repeating a correct word does not earn extra credit. An empty side gives 0 (rouge_score's convention).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pred_ngrams = _ngrams(rouge_tokenize(prediction), n)
    ref_ngrams = _ngrams(rouge_tokenize(reference), n)
    overlap = sum((pred_ngrams & ref_ngrams).values())  # Counter '&' keeps min(count_pred, count_ref)
    precision = overlap / max(sum(pred_ngrams.values()), 1)
    recall = overlap / max(sum(ref_ngrams.values()), 1)
    return RougeScore(precision, recall, _f1(precision, recall))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (in order, gaps allowed), by dynamic programming.

    `row[j]` holds the LCS length of the prefix of `a` seen so far and b[:j]; keeping one row instead of the
    full table makes memory O(len(b)) while the time stays O(len(a) * len(b)).
    """
    row = [0] * (len(b) + 1)
    for token_a in a:
        diagonal = 0  # value of the previous row at j - 1
        for j, token_b in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if token_a == token_b else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(prediction: str, reference: str) -> RougeScore:
    """ROUGE-L: overlap measured by the longest common subsequence of tokens, so word order matters."""
    pred_tokens, ref_tokens = rouge_tokenize(prediction), rouge_tokenize(reference)
    if not pred_tokens or not ref_tokens:
        return RougeScore(0.0, 0.0, 0.0)
    lcs = lcs_length(ref_tokens, pred_tokens)
    precision, recall = lcs / len(pred_tokens), lcs / len(ref_tokens)
    return RougeScore(precision, recall, _f1(precision, recall))


def rouge(prediction: str, reference: str) -> dict[str, RougeScore]:
    """ROUGE-1, ROUGE-2 and ROUGE-L of one prediction against one reference, keyed like rouge_score."""
    return {
        "rouge1": rouge_n(prediction, reference, 1),
        "rouge2": rouge_n(prediction, reference, 2),
        "rougeL": rouge_l(prediction, reference),
    }


def mean_rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Average F1 of each ROUGE variant over (prediction, reference) pairs: the usual corpus-level report."""
    _check_same_length(predictions, references, "predictions", "references")
    if not predictions:
        raise ValueError("predictions is empty: ROUGE of zero pairs is undefined")
    scores = [rouge(p, r) for p, r in zip(predictions, references)]
    return {key: sum(s[key].fmeasure for s in scores) / len(scores) for key in ("rouge1", "rouge2", "rougeL")}


# ----------------------------------------------------------------------------------------------------------
# BLEU (Papineni et al., 2002), as computed by sacrebleu.
# ----------------------------------------------------------------------------------------------------------

# mteval-v13a: split off punctuation and symbols; split '.' and ',' except inside numbers (3.14, 1,000); split
# '-' after a digit. Applied in this order, on a line padded with spaces.
_13A_RULES = [
    # every ASCII symbol except ' , - . (the apostrophe stays inside words; the other three are handled below)
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period/comma not preceded by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period/comma not followed by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash after a digit
]
_LOG_ZERO = -9999999999.0  # sacrebleu's log(0): a zero precision drives BLEU to exactly 0.0


@dataclass(frozen=True)
class BleuScore:
    """A BLEU score and the statistics it was computed from (same fields as sacrebleu's BLEUScore)."""

    score: float  # BLEU on the 0-100 scale
    precisions: list[float]  # modified n-gram precision for n = 1..max_order, in percent (after smoothing)
    counts: list[int]  # matched (clipped) n-grams per order, summed over the corpus
    totals: list[int]  # hypothesis n-grams per order, summed over the corpus
    brevity_penalty: float  # exp(1 - ref_len / hyp_len) when the output is too short, else 1
    hyp_len: int  # total hypothesis tokens
    ref_len: int  # total reference tokens (the closest reference length per sentence)


def tokenize_13a(line: str) -> list[str]:
    """sacrebleu's default '13a' tokenisation (mteval-v13a.pl) of one line, returned as a token list."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:  # undo the four XML escapes mteval knows about
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, replacement in _13A_RULES:
        line = pattern.sub(replacement, line)
    return line.split()


def _bleu_tokens(text: str, lowercase: bool) -> list[str]:
    # sacrebleu strips trailing whitespace before tokenising; it only matters for a trailing "-\n".
    return tokenize_13a((text.lower() if lowercase else text).rstrip())


def _closest_ref_len(hyp_len: int, ref_lens: Sequence[int]) -> int:
    """The reference length closest to the hypothesis length; on a tie, the shorter one (as sacrebleu)."""
    return min(ref_lens, key=lambda ref_len: (abs(ref_len - hyp_len), ref_len))


def _normalise_references(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    if isinstance(hypotheses, str):
        raise ValueError("hypotheses must be a list of strings, got a single string; use sentence_bleu for one")
    _check_same_length(hypotheses, references, "hypotheses", "references")
    per_hypothesis = []
    for i, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{i}] must be a string or a non-empty list of strings, got {refs!r}")
        per_hypothesis.append(refs)
    return per_hypothesis


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[str | Sequence[str]],
    max_order: int = 4,
    smooth: str = "exp",
    lowercase: bool = False,
    effective_order: bool = False,
) -> BleuScore:
    """Corpus BLEU: n-gram matches are summed over all sentences first, then combined once.

    BLEU = BP * exp(mean_n log p_n), where p_n is the corpus-wide modified n-gram precision (hypothesis n-gram
    counts clipped by their maximum count in any one reference) and BP = min(1, exp(1 - ref_len / hyp_len))
    punishes outputs that are too short (precision alone would reward saying one safe word).

    Args:
        hypotheses: one system output per segment.
        references: `references[i]` is the reference (str) or references (list of str) for `hypotheses[i]`.
            Note: sacrebleu wants the transpose (a list of reference streams).
        max_order: the largest n-gram order (4 is the standard BLEU-4).
        smooth: 'exp' (sacrebleu's default; an order with no match gets precision 100 / (2^k * total), k
            counting such orders) or 'none' (any order with no match makes BLEU 0).
        lowercase: lowercase both sides before tokenising (case-insensitive BLEU).
        effective_order: average only over orders that have at least one hypothesis n-gram (sacrebleu turns this
            on for sentence BLEU so that short sentences are not zeroed by missing 4-grams).
    """
    if smooth not in ("exp", "none"):
        raise ValueError(f"smooth must be 'exp' or 'none', got {smooth!r}")
    if max_order < 1:
        raise ValueError(f"max_order must be >= 1, got {max_order}")
    per_hypothesis_refs = _normalise_references(hypotheses, references)

    counts, totals = [0] * max_order, [0] * max_order
    hyp_len = ref_len = 0
    for hypothesis, refs in zip(hypotheses, per_hypothesis_refs):
        hyp_tokens = _bleu_tokens(hypothesis, lowercase)
        ref_token_lists = [_bleu_tokens(r, lowercase) for r in refs]
        hyp_len += len(hyp_tokens)
        ref_len += _closest_ref_len(len(hyp_tokens), [len(t) for t in ref_token_lists])
        for n in range(1, max_order + 1):
            hyp_ngrams = _ngrams(hyp_tokens, n)
            max_ref_ngrams: Counter[tuple[str, ...]] = Counter()  # clip by the most generous single reference
            for ref_tokens in ref_token_lists:
                max_ref_ngrams |= _ngrams(ref_tokens, n)  # Counter '|' keeps the max count
            counts[n - 1] += sum((hyp_ngrams & max_ref_ngrams).values())
            totals[n - 1] += sum(hyp_ngrams.values())
    return _bleu_from_statistics(counts, totals, hyp_len, ref_len, smooth, effective_order)


def sentence_bleu(
    hypothesis: str,
    references: str | Sequence[str],
    max_order: int = 4,
    smooth: str = "exp",
    lowercase: bool = False,
    effective_order: bool = True,
) -> BleuScore:
    """BLEU of one sentence (sacrebleu's sentence_bleu defaults: 'exp' smoothing, effective order on).

    BLEU was designed for corpora; on a single sentence it is noisy and mainly useful for eyeballing.
    """
    if not isinstance(hypothesis, str):
        raise ValueError(f"hypothesis must be a string, got {type(hypothesis).__name__}")
    return corpus_bleu([hypothesis], [references], max_order, smooth, lowercase, effective_order)


def _bleu_from_statistics(
    counts: list[int], totals: list[int], hyp_len: int, ref_len: int, smooth: str, effective_order: bool
) -> BleuScore:
    """Turn summed match statistics into BLEU, exactly as sacrebleu's BLEU.compute_bleu does."""
    max_order = len(counts)
    if hyp_len >= ref_len:
        brevity_penalty = 1.0
    else:
        brevity_penalty = math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0

    precisions = [0.0] * max_order
    if not any(counts):  # nothing matched at all: BLEU is 0 whatever the smoothing
        return BleuScore(0.0, precisions, counts, totals, brevity_penalty, hyp_len, ref_len)

    used_orders = max_order
    zero_match_orders = 0  # 'exp' smoothing halves the pseudo-precision for every further order with no match
    for n in range(1, max_order + 1):
        if totals[n - 1] == 0:  # hypotheses too short to have any n-gram of this order (or longer)
            break
        if effective_order:
            used_orders = n
        if counts[n - 1] > 0:
            precisions[n - 1] = 100.0 * counts[n - 1] / totals[n - 1]
        elif smooth == "exp":
            zero_match_orders += 1
            precisions[n - 1] = 100.0 / (2**zero_match_orders * totals[n - 1])

    log_precisions = [math.log(p) if p > 0 else _LOG_ZERO for p in precisions[:used_orders]]
    score = brevity_penalty * math.exp(sum(log_precisions) / used_orders)
    return BleuScore(score, precisions, counts, totals, brevity_penalty, hyp_len, ref_len)


def _check_same_length(a: Sequence, b: Sequence, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} and {name_b} must have the same length, got {len(a)} and {len(b)}")
