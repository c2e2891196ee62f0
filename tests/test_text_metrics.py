"""ROUGE and BLEU written from scratch must give the numbers of the reference packages.

References: `rouge_score` (Google's ROUGE re-implementation) and `sacrebleu` (the standard BLEU).
"""

from __future__ import annotations

import math

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from utils.text_metrics import (
    corpus_bleu,
    lcs_length,
    mean_rouge,
    rouge,
    rouge_l,
    rouge_n,
    rouge_tokenize,
    sentence_bleu,
    tokenize_13a,
)

# (prediction, reference) pairs covering the regimes a metric can get wrong.
PAIRS = {
    "identical": ("the cat sat on the mat", "the cat sat on the mat"),
    "disjoint": ("dogs bark loudly", "the cat sat on the mat"),
    "partial_overlap": ("the cat was sitting on a mat", "the cat sat on the mat"),
    "shorter_prediction": ("the cat", "the cat sat on the mat"),
    "longer_prediction": ("well the cat sat on the mat all day long", "the cat sat on the mat"),
    "repeated_words": ("the the the the the", "the cat sat on the mat"),
    "reordered": ("mat the on sat cat the", "the cat sat on the mat"),
    "punctuation_case": ("The CAT, sat -- on the mat!!", "the cat sat on the mat."),
    "numbers_and_symbols": ("It costs $3.50 (or 1,000 yen) in 2019-2020.", "It cost $3.50 in 2019 - or 1,000 yen."),
    "non_ascii": ("the café was très good", "the cafe was very good"),
    "multi_sentence": (
        "This film is wonderful. The acting is great, and the plot keeps you guessing.\nI loved it.",
        "The film is wonderful. The acting is superb and the plot keeps you guessing until the end. Loved it.",
    ),
    "empty_prediction": ("", "the cat sat on the mat"),
    "single_word_match": ("cat", "cat"),
}


@pytest.fixture(scope="module")
def reference_scorer():
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_rouge_matches_rouge_score(name, reference_scorer):
    prediction, reference = PAIRS[name]
    expected = reference_scorer.score(reference, prediction)  # rouge_score takes (target, prediction)
    ours = rouge(prediction, reference)
    for key in ("rouge1", "rouge2", "rougeL"):
        for field in ("precision", "recall", "fmeasure"):
            assert getattr(ours[key], field) == pytest.approx(getattr(expected[key], field), abs=1e-6), (key, field)


def test_rouge_hand_computed():
    # prediction "the cat was sitting on a mat" (7 tokens) vs reference "the cat sat on the mat" (6 tokens)
    # unigram overlap: the, cat, on, mat = 4 -> P = 4/7, R = 4/6
    r1 = rouge_n("the cat was sitting on a mat", "the cat sat on the mat", 1)
    assert (r1.precision, r1.recall) == pytest.approx((4 / 7, 4 / 6))
    assert r1.fmeasure == pytest.approx(2 * (4 / 7) * (4 / 6) / (4 / 7 + 4 / 6))
    # bigrams: only "the cat" is shared -> P = 1/6, R = 1/5
    r2 = rouge_n("the cat was sitting on a mat", "the cat sat on the mat", 2)
    assert (r2.precision, r2.recall) == pytest.approx((1 / 6, 1 / 5))
    # clipping: "the" x5 matches "the" at most twice
    clipped = rouge_n("the the the the the", "the cat sat on the mat", 1)
    assert (clipped.precision, clipped.recall) == pytest.approx((2 / 5, 2 / 6))
    # five distinct words reversed: the LCS is a single word, although ROUGE-1 would be perfect
    reversed_l = rouge_l("mat on sat cat the", "the cat sat on mat")
    assert (reversed_l.precision, reversed_l.recall) == pytest.approx((1 / 5, 1 / 5))
    assert rouge_n("mat on sat cat the", "the cat sat on mat", 1).fmeasure == pytest.approx(1.0)
    # "the on the" is a common subsequence of these two (length 3, the LCS): P = 3/6, R = 3/6
    assert rouge_l("mat the on sat cat the", "the cat sat on the mat").recall == pytest.approx(3 / 6)


def test_lcs_length_hand_cases():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the CLRS textbook example (BCBA)
    assert lcs_length([], ["a"]) == 0
    assert lcs_length(["a", "b"], ["a", "b"]) == 2
    assert lcs_length(["a", "b", "c"], ["c", "b", "a"]) == 1


def test_rouge_tokenize_matches_rouge_score_rules():
    assert rouge_tokenize("The CAT, sat -- on the mat!!") == ["the", "cat", "sat", "on", "the", "mat"]
    assert rouge_tokenize("café 3.50") == ["caf", "3", "50"]  # non-ASCII letters separate words, as in rouge_score


def test_mean_rouge_averages_f1(reference_scorer):
    preds = [PAIRS[k][0] for k in ("identical", "partial_overlap", "disjoint")]
    refs = [PAIRS[k][1] for k in ("identical", "partial_overlap", "disjoint")]
    expected = [reference_scorer.score(r, p) for p, r in zip(preds, refs)]
    ours = mean_rouge(preds, refs)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert ours[key] == pytest.approx(sum(e[key].fmeasure for e in expected) / 3, abs=1e-9)
    with pytest.raises(ValueError, match="same length"):
        mean_rouge(preds, refs[:2])
    with pytest.raises(ValueError, match="n must be >= 1"):
        rouge_n("a", "a", 0)


TOKENIZER_CASES = [
    "It costs $3.50 (or 1,000 yen) in 2019-2020.",
    'He said: "hello, world!" &amp; left &lt;quietly&gt;.',
    "A line-\nbreak and a\nnewline <skipped> here",
    "e.g. U.S.A., etc. 3.14 and 1,5",
    "  leading and trailing spaces  ",
    "",
]


@pytest.mark.parametrize("line", TOKENIZER_CASES)
def test_tokenize_13a_matches_sacrebleu(line):
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    assert tokenize_13a(line) == Tokenizer13a()(line).split()


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_sentence_bleu_matches_sacrebleu(name):
    hypothesis, reference = PAIRS[name]
    expected = sacrebleu.sentence_bleu(hypothesis, [reference])
    ours = sentence_bleu(hypothesis, reference)
    assert ours.score == pytest.approx(expected.score, abs=0.01)
    assert ours.counts == list(expected.counts) and ours.totals == list(expected.totals)
    assert (ours.hyp_len, ours.ref_len) == (expected.sys_len, expected.ref_len)
    assert ours.brevity_penalty == pytest.approx(expected.bp, abs=1e-9)


@pytest.mark.parametrize("smooth", ["exp", "none"])
@pytest.mark.parametrize("lowercase", [False, True])
def test_corpus_bleu_matches_sacrebleu(smooth, lowercase):
    hypotheses = [PAIRS[k][0] for k in sorted(PAIRS)]
    references = [PAIRS[k][1] for k in sorted(PAIRS)]
    expected = sacrebleu.corpus_bleu(hypotheses, [references], smooth_method=smooth, lowercase=lowercase)
    ours = corpus_bleu(hypotheses, references, smooth=smooth, lowercase=lowercase)
    assert ours.score == pytest.approx(expected.score, abs=0.01)
    assert ours.precisions == pytest.approx(list(expected.precisions), abs=1e-9)
    assert (ours.hyp_len, ours.ref_len) == (expected.sys_len, expected.ref_len)


def test_corpus_bleu_regimes_match_sacrebleu():
    cases = {
        "identical": (["the cat sat on the mat today ."], ["the cat sat on the mat today ."]),
        "disjoint": (["dogs bark loudly at night"], ["the cat sat on the mat"]),
        "too_short_for_4grams": (["the cat", "a mat"], ["the cat sat", "a mat here"]),  # no 3/4-grams at all
        "brevity": (["the cat sat"], ["the cat sat on the mat and purred"]),
    }
    for name, (hyps, refs) in cases.items():
        expected = sacrebleu.corpus_bleu(hyps, [refs])
        assert corpus_bleu(hyps, refs).score == pytest.approx(expected.score, abs=0.01), name
    assert corpus_bleu(*cases["identical"]).score == pytest.approx(100.0)
    assert corpus_bleu(*cases["disjoint"]).score == 0.0


def test_corpus_bleu_multiple_references_match_sacrebleu():
    hypotheses = ["the cat is on the mat", "there is a cat on the mat", "a dog"]
    references = [
        ["the cat is on the mat", "there is a cat on the mat"],
        ["a cat is on the mat", "there is a cat on the rug"],
        ["the dog barks", "a dog runs in the park"],
    ]
    streams = [list(stream) for stream in zip(*references)]  # sacrebleu's layout is the transpose of ours
    expected = sacrebleu.corpus_bleu(hypotheses, streams)
    ours = corpus_bleu(hypotheses, references)
    assert ours.score == pytest.approx(expected.score, abs=0.01)
    assert ours.ref_len == expected.ref_len  # closest reference length per sentence, shorter on ties


def test_bleu_hand_computed():
    # hypothesis "the cat sat on the" vs reference "the cat sat on the mat": every n-gram of the hypothesis
    # matches, so all precisions are 100 and BLEU is the brevity penalty exp(1 - 6/5).
    result = corpus_bleu(["the cat sat on the"], ["the cat sat on the mat"])
    assert result.precisions == pytest.approx([100.0] * 4)
    assert result.score == pytest.approx(100 * math.exp(1 - 6 / 5))
    # 'exp' smoothing: "a b c d" vs "a b x d": 1-grams 3/4, 2-grams 1/3, 3-grams 0/2 -> 100/(2*2), 4-grams 0/1
    # -> 100/(4*1).
    smoothed = corpus_bleu(["a b c d"], ["a b x d"])
    assert smoothed.precisions == pytest.approx([75.0, 100 / 3, 25.0, 25.0])
    assert smoothed.score == pytest.approx(math.exp((math.log(75) + math.log(100 / 3) + 2 * math.log(25)) / 4))


def test_bleu_bad_input_is_rejected():
    with pytest.raises(ValueError, match="same length"):
        corpus_bleu(["a", "b"], [["a", "b"]])  # sacrebleu's stream layout passed by mistake
    with pytest.raises(ValueError, match="smooth"):
        corpus_bleu(["a"], ["a"], smooth="floor")
    with pytest.raises(ValueError, match="single string"):
        corpus_bleu("a cat", ["a cat"])
    with pytest.raises(ValueError, match=r"references\[0\]"):
        corpus_bleu(["a"], [[]])


def _random_sentences(seed: int, count: int) -> list[str]:
    """Seeded random sentences over a tiny vocabulary, so that n-grams overlap often but not always."""
    import random

    rng = random.Random(seed)
    vocab = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "Mat", ".", ",", "3.5", "well-made", "!"]
    return [" ".join(rng.choices(vocab, k=rng.randint(0, 12))) for _ in range(count)]


def test_random_pairs_match_both_references(reference_scorer):
    predictions, references = _random_sentences(0, 200), _random_sentences(1, 200)
    for prediction, reference in zip(predictions, references):
        expected = reference_scorer.score(reference, prediction)
        ours = rouge(prediction, reference)
        for key in ("rouge1", "rouge2", "rougeL"):
            assert ours[key].fmeasure == pytest.approx(expected[key].fmeasure, abs=1e-6), (prediction, reference)
        expected_bleu = sacrebleu.sentence_bleu(prediction, [reference]).score
        assert sentence_bleu(prediction, reference).score == pytest.approx(expected_bleu, abs=0.01)
    assert corpus_bleu(predictions, references).score == pytest.approx(
        sacrebleu.corpus_bleu(predictions, [references]).score, abs=0.01
    )
