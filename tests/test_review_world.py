"""The review world: exact probabilities, the recogniser, the gold reward and the annotators."""

from __future__ import annotations

import math
from itertools import product

import pytest

from utils import review_world as rw


@pytest.fixture(scope="module")
def corpus():
    return rw.lm_corpus(3000, seed=123)


def test_same_seed_same_reviews():
    assert rw.lm_corpus(50, seed=7) == rw.lm_corpus(50, seed=7)
    assert rw.lm_corpus(50, seed=7) != rw.lm_corpus(50, seed=8)


def test_sampler_log_prob_equals_parser_log_prob(corpus):
    """The parser recovers the unique derivation: its probability is the one the sampler recorded."""
    for row in corpus:
        parsed = rw.parse(row["text"])
        assert parsed is not None, row["text"]
        assert parsed.log_prob == pytest.approx(row["log_prob"], abs=1e-9)


def test_log_prob_by_hand():
    text = "the acting was superb."
    config = rw.GrammarConfig()
    aspect_total = sum(w for _, w in rw.ASPECTS)
    adj_total = sum(w for _, w, _ in rw.ADJECTIVES[1])
    expected = (
        math.log(config.sentence_count_probs[0])  # one sentence
        + math.log(config.sentence_form_probs[0])  # simple
        + math.log(0.5)  # positive
        + math.log(config.clause_form_probs[0])  # "the A was ADJ"
        + math.log(3.0 / aspect_total)  # acting
        + math.log(1.0 / adj_total)  # superb
        + math.log(1 - config.closing_prob)
    )  # no closing
    assert rw.log_prob(text) == pytest.approx(expected)


def test_probabilities_of_short_reviews_sum_to_their_share():
    """Enumerating every one-sentence simple review without closing sums to P(that shape)."""
    config = rw.GrammarConfig()
    total = 0.0
    for (aspect, _), polarity in product(rw.ASPECTS, (1, -1)):
        for adj, _, _ in rw.ADJECTIVES[polarity]:
            total += math.exp(rw.log_prob(f"the {aspect} was {adj}."))
            total += math.exp(rw.log_prob(f"the {aspect} felt {adj}."))
            for degree, _, _ in rw.DEGREES:
                total += math.exp(rw.log_prob(f"the {aspect} was {degree} {adj}."))
        for verb, _, _ in rw.VERBS[polarity]:
            total += math.exp(rw.log_prob(f"i {verb} the {aspect}."))
    expected = config.sentence_count_probs[0] * config.sentence_form_probs[0] * (1 - config.closing_prob)
    assert total == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "text",
    [
        "the acting was superb",  # no full stop
        "The acting was superb.",  # not canonical (capital)
        "the acting was  superb.",  # double space
        "the acting was superb .",  # detached punctuation
        "the acting was good but the plot was great.",  # "but" needs its comma
        "the acting was good and.",  # "and" needs a second clause
        "overall, a great film.",  # a verdict alone is not a review
        "the acting was superb. overall, a great film. the plot was dull.",  # text after the verdict
        "the acting was superb. the acting was superb. the acting was superb. the acting was superb. "
        "the acting was superb.",  # five sentences
        "the movie was superb.",  # unknown aspect
        "",
    ],
)
def test_recogniser_rejects(text):
    assert rw.parse(text) is None
    assert rw.gold_reward(text) == rw.UNGRAMMATICAL_REWARD
    assert rw.log_prob(text) == -math.inf


def test_connective_agreement_is_likely_not_required():
    """'but' usually joins opposite sentiments; the other polarity is possible, just 9 times rarer."""
    agree = rw.GrammarConfig().connective_agreement_prob
    contrast = rw.log_prob("the acting was good, but the plot was dull.")
    same = rw.log_prob("the acting was good, but the plot was solid.")
    adj = {w: weight for w, weight, _ in rw.ADJECTIVES[1] + rw.ADJECTIVES[-1]}
    pos_total = sum(w for _, w, _ in rw.ADJECTIVES[1])
    neg_total = sum(w for _, w, _ in rw.ADJECTIVES[-1])
    expected_gap = (math.log(agree) + math.log(adj["dull"] / neg_total)) - (
        math.log(1 - agree) + math.log(adj["solid"] / pos_total)
    )
    assert contrast - same == pytest.approx(expected_gap)


def test_gold_reward_by_hand():
    # superb = 1.0; weak = -0.5; "but": 0.3 * first + 0.7 * second; a verdict weighs 2.
    assert rw.gold_reward("the acting was superb.") == pytest.approx(1.0)
    assert rw.gold_reward("the acting was superb, but the plot was weak.") == pytest.approx(0.3 - 0.35)
    assert rw.gold_reward("the acting was very good.") == pytest.approx(0.625)
    assert rw.gold_reward("the acting was very superb.") == pytest.approx(1.0)  # clipped
    text = "i hated the plot. i would recommend it."
    assert rw.gold_reward(text) == pytest.approx((-1.0 + 2 * 0.8) / 3)
    assert rw.is_positive(text) and not rw.is_positive("i hated the plot.")


def test_sentiment_is_balanced_and_bounded(corpus):
    rewards = [rw.gold_reward(r["text"]) for r in corpus]
    assert all(-1.0 <= r <= 1.0 for r in rewards)
    positive = sum(r > 0 for r in rewards) / len(rewards)
    assert 0.45 < positive < 0.55  # "about half" of the reviews are positive


def test_summary_reference():
    parsed = rw.parse("the acting was superb, but the plot was weak. i loved the acting.")
    assert parsed.summary() == "acting positive, plot negative; overall positive."


def test_source_entropy_matches_direct_mean(corpus):
    entropy, stderr = rw.source_entropy(corpus)
    assert entropy == pytest.approx(-sum(r["log_prob"] for r in corpus) / len(corpus))
    assert 0 < stderr < 0.5


def test_openings_and_rl_prompts():
    assert rw.opening("the acting was superb.") == "the acting was"
    assert rw.opening("although the plot was very dull, i loved the cast.") == "although the plot was very"
    assert rw.opening("i loved the cast.") is None  # only one word before the sentiment
    prompts = rw.rl_prompts(200, seed=3)
    assert len(prompts) == 200 and all(set(p) == {"prompt"} for p in prompts)
    for p in prompts:
        assert not p["prompt"].endswith(" ")


def test_sample_completions_are_conditional_samples():
    prompts = ["the acting was", "the plot felt", "the acting was"]
    completions = rw.sample_completions(prompts, k=3, seed=1)
    assert [len(c) for c in completions] == [3, 3, 3]
    for prompt, group in zip(prompts, completions):
        for completion in group:
            assert completion.startswith(" ") and rw.is_grammatical(prompt + completion)
    assert completions[0] != completions[2]  # the repeated prompt gets fresh samples


def test_instruction_pairs_formats():
    rows = rw.instruction_pairs(300, seed=2)
    assert {r["task"] for r in rows} == set(rw.INSTRUCTION_TASKS)
    for row in rows:
        assert set(row) == {"prompt", "completion", "task"}
        if row["task"] == "summarise":
            review = row["prompt"].removeprefix("Summarise the review: ").removesuffix("\nSummary:")
            assert row["completion"] == " " + rw.parse(review).summary()
        elif row["task"] == "write":
            label = "positive" if "positive" in row["prompt"] else "negative"
            parsed = rw.parse(row["completion"].strip())
            assert (parsed.sentiment > 0) == (label == "positive")
            assert f"about the {parsed.clauses[0].aspect}." in row["prompt"]
        else:
            assert rw.is_grammatical(row["prompt"] + row["completion"])


def test_annotator_bradley_terry_probability():
    config = rw.AnnotatorConfig(temperature=0.5, length_bias_per_word=0.1)
    prompt = "the acting was"
    a, b = " superb.", " weak. the plot was dull."  # gold 1.0 vs -0.6; b is 4 words longer
    expected_logit = (1.0 - (-0.5 - 0.7) / 2) / 0.5 + 0.1 * (1 - 5)
    p = rw.preference_probability(prompt, a, b, config)
    assert p == pytest.approx(1 / (1 + math.exp(-expected_logit)))
    assert rw.preference_probability(prompt, b, a, config) == pytest.approx(1 - p)


def test_annotator_agreement_and_bayes_optimal_accuracy():
    config = rw.AnnotatorConfig(seed=0)
    rows = rw.preference_pairs(400, seed=11, annotator=config)
    bayes = rw.bayes_optimal_accuracy(rows, config)
    # The labels are noisy, so the Bayes-optimal scorer is right often but not always.
    assert 0.7 < bayes < 0.95
    # The Bayes scorer's accuracy on the actual labels is close to its expectation.
    hits = [rw.preference_probability(r["prompt"], r["chosen"], r["rejected"], config) >= 0.5 for r in rows]
    assert abs(sum(hits) / len(hits) - bayes) < 0.06
    # Length bias: chosen completions are longer on average than rejected ones.
    longer = sum(rw.word_count(r["chosen"]) > rw.word_count(r["rejected"]) for r in rows)
    shorter = sum(rw.word_count(r["chosen"]) < rw.word_count(r["rejected"]) for r in rows)
    assert longer > shorter


@pytest.mark.parametrize("kind", rw.BREAKAGES)
def test_break_completion_breaks_each_way(kind):
    import random

    prompt, completion = "the plot was", " good, but the acting was dull. i liked the music. i would not recommend it."
    assert rw.is_grammatical(prompt + completion)
    words = rw.split_words(completion)
    rng = random.Random(0)
    for _ in range(20):
        broken = rw.split_words(rw.break_completion(prompt, completion, rng, kinds=(kind,)))
        assert not rw.is_grammatical(prompt + " " + rw.render(broken))
        if kind == "cut":
            assert len(broken) < len(words) and broken == words[: len(broken)]
        elif kind == "drop":
            assert 1 <= len(words) - len(broken) <= 3
            assert any(broken == words[:i] + words[i + len(words) - len(broken) :] for i in range(len(words)))
        elif kind == "repeat":
            assert any(broken == words[: i + 1] + words[i:] for i in range(len(words)))
        elif kind == "swap":
            assert len(broken) == len(words) and sum(a != b for a, b in zip(broken, words)) == 2
        else:  # pad: two to four copies of one sentence, the review otherwise intact
            assert broken.count(".") - words.count(".") in (2, 3, 4)
            assert set(broken) == set(words)


def test_break_completion_rejects_unknown_kinds():
    import random

    with pytest.raises(ValueError, match="kinds must be"):
        rw.break_completion("the plot was", " good.", random.Random(0), kinds=("shout",))


def test_break_completion_of_nothing_fails_clearly():
    import random

    with pytest.raises(ValueError, match="no words to break"):
        rw.break_completion("the plot was", " ", random.Random(0))


def test_defective_pairs_hold_one_broken_completion_and_the_annotator_prefers_the_intact_one():
    rows = rw.defective_pairs(300, seed=11)
    assert len(rows) == 300 and rows == rw.defective_pairs(300, seed=11)
    broken_chosen = 0
    for row in rows:
        intact = [rw.is_grammatical(row["prompt"] + row[k]) for k in ("chosen", "rejected")]
        assert sorted(intact) == [False, True]
        broken_chosen += not intact[0]
    # gold puts every broken text below every review: only a much longer broken one wins, rarely
    assert broken_chosen / len(rows) < 0.05


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="sentence_count_probs"):
        rw.GrammarConfig(sentence_count_probs=(0.5, 0.6))
    with pytest.raises(ValueError, match="temperature"):
        rw.AnnotatorConfig(temperature=0.0)


def test_committed_samples_equal_regenerated(tmp_path):
    """data/*.jsonl are exactly what `python -m utils.review_world data` writes (nothing hand-edited)."""
    from pathlib import Path

    rw.write_sample_files(tmp_path)
    committed = Path(__file__).resolve().parents[1] / "data"
    for name in rw.sample_files():
        assert (tmp_path / name).read_text() == (committed / name).read_text(), name


def test_rejection_reason_explains():
    assert rw.rejection_reason("the acting was superb.") is None
    assert "expected ','" in rw.rejection_reason("the acting was superb")
    assert "canonical" in rw.rejection_reason("The acting was superb.")
    assert rw.rejection_reason("") == "empty text"
