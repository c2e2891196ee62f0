"""The constitution, its critics and the AI labeller (utils.constitution): validation, the critic's fit against a
reference fit, hand-computed label measurements, a labeller that learns from the recipes' data alone (never the
gold reward), and critique-and-revise."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from utils import review_world as rw
from utils.constitution import (
    DEFAULT_PRINCIPLES,
    GRAMMATICAL,
    NOT_PADDED,
    POSITIVE,
    Constitution,
    ConstitutionalLabeller,
    CriticConfig,
    NgramCritic,
    RLAIFConfig,
    grammar_examples,
    label_report,
    ngrams,
    pair_texts,
    picks_intact,
    revise_by_resampling,
    sentiment_examples,
    train_labeller,
)
from utils.dpo import DPOTrainConfig


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------
def test_a_constitution_without_principles_fails_naming_the_field():
    with pytest.raises(ValueError, match=r"^Constitution\.principles must be a non-empty tuple of Principle"):
        Constitution(principles=())
    with pytest.raises(ValueError, match=r"^Constitution\.principles must be "):
        Constitution(principles=[GRAMMATICAL])  # a list, not a tuple
    with pytest.raises(ValueError, match=r"^Constitution\.principles must be principles with distinct names"):
        Constitution(principles=(GRAMMATICAL, dataclasses.replace(POSITIVE, name="grammatical")))
    with pytest.raises(ValueError, match=r"^Constitution\.principles must be at most one principle per recipe"):
        Constitution(principles=(POSITIVE, dataclasses.replace(POSITIVE, name="warm")))


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("name", "", "a non-empty string"),
        ("text", "  ", "a non-empty string"),
        ("recipe", "helpful", "one of"),
        ("weight", 0.0, "a finite number > 0"),
        ("weight", float("nan"), "a finite number > 0"),
    ],
)
def test_a_bad_principle_fails_naming_the_field(field, value, allowed):
    with pytest.raises(ValueError, match=rf"^Principle\.{field} must be {allowed}"):
        dataclasses.replace(POSITIVE, **{field: value})


def test_rlaif_config_checks_train_pairs_against_label_pairs():
    with pytest.raises(ValueError, match=r"^RLAIFConfig\.train_pairs must be <= label_pairs \(10\)"):
        RLAIFConfig(label_pairs=10, train_pairs=20)
    with pytest.raises(ValueError, match=r"^RLAIFConfig\.constitution must be a Constitution"):
        RLAIFConfig(constitution=(GRAMMATICAL,))
    assert RLAIFConfig(dpo=DPOTrainConfig(pairs=None)).dpo.pairs is None


def test_the_default_constitution_renders_one_numbered_line_per_principle():
    text = Constitution().render().splitlines()
    assert len(text) == len(DEFAULT_PRINCIPLES)
    assert text[0].startswith("1. A review is written in whole sentences")
    assert Constitution().principle("not_padded") is None
    assert Constitution((GRAMMATICAL, POSITIVE, NOT_PADDED)).principle("not_padded") is NOT_PADDED


# ------------------------------------------------------------------------------------------------
# The critic
# ------------------------------------------------------------------------------------------------
def test_ngrams_by_hand():
    assert ngrams("i liked it.", bigrams=False) == ["i", "liked", "it", "."]
    assert ngrams("i liked it.") == ["i", "liked", "it", ".", "<s> i", "i liked", "liked it", "it .", ". </s>"]


def _reference_fit(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """The same objective minimised by torch's L-BFGS on dense features: (weights, bias)."""
    xt, yt = torch.tensor(x), torch.tensor(y)
    theta = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([theta], lr=1, max_iter=2_000, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        w, b = theta[:-1], theta[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    optimiser.step(closure)
    return theta.detach().numpy()


@pytest.mark.parametrize("frequencies", [False, True])
def test_critic_fit_equals_a_reference_logistic_regression(frequencies):
    texts = [r["text"] for r in rw.lm_corpus(60, seed=3)]
    labels = [float(rw.parse(t).sentiment > 0) for t in texts]
    critic = NgramCritic(bigrams=True, frequencies=frequencies, l2=1e-2).fit(texts, labels)
    x = critic.features(texts).toarray()
    if frequencies:  # each row sums its n-grams' 1 / words: (words + bigrams) / words
        words = np.array([rw.word_count(t) for t in texts])
        assert np.allclose(x.sum(1) * words, [len(ngrams(t)) for t in texts])
    theta = _reference_fit(x, np.array(labels), 1e-2)
    assert np.max(np.abs(critic.weights - theta[:-1])) < 1e-3  # weights of size ~0.1-1
    assert abs(critic.bias - theta[-1]) < 1e-3
    sigmoid = 1 / (1 + np.exp(-(x @ critic.weights + critic.bias)))
    assert np.allclose(critic.probabilities(texts), sigmoid, atol=1e-12)
    assert np.allclose(sigmoid, 1 / (1 + np.exp(-(x @ theta[:-1] + theta[-1]))), atol=1e-3)


def test_critic_ignores_unseen_ngrams_and_needs_both_labels():
    critic = NgramCritic().fit(["the plot was good.", "the plot was bad."], [1.0, 0.0])
    assert critic.features(["zebra zebra"]).nnz == 0
    assert critic.logits(["zebra zebra"])[0] == pytest.approx(critic.bias)
    with pytest.raises(ValueError, match="both labels"):
        NgramCritic().fit(["a.", "b."], [1.0, 1.0])
    with pytest.raises(RuntimeError, match="fit the critic first"):
        NgramCritic().logits(["a."])


# ------------------------------------------------------------------------------------------------
# Recipes and the labeller, learned from the recipes' data alone
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def instructions():
    return rw.instruction_pairs(600, seed=11)


@pytest.fixture(scope="module")
def labeller(instructions):
    continue_rows = [r for r in instructions if r["task"] == "continue"]
    return train_labeller(
        Constitution(), continue_rows, instructions, CriticConfig(grammar_examples=200, sentiment_examples=200)
    )


def test_recipes_make_labelled_examples_without_gold(instructions):
    continue_rows = [r for r in instructions if r["task"] == "continue"]
    texts, labels = grammar_examples(continue_rows, 50, seed=0)
    assert labels == [1.0, 0.0] * 50
    assert all(rw.is_grammatical(t) for t in texts[0::2]) and not any(rw.is_grammatical(t) for t in texts[1::2])
    texts, labels = sentiment_examples(instructions, 80)
    write_rows = [r for r in instructions if r["task"] == "write"][:80]
    assert texts == [r["completion"].strip() for r in write_rows]
    assert labels == [float(rw.parse(t).sentiment > 0) for t in texts]  # the prompt's request is the truth


def test_the_labeller_never_reads_the_gold_reward_or_the_annotators(instructions, monkeypatch):
    continue_rows = [r for r in instructions if r["task"] == "continue"]
    # break_completion checks its slips with the recogniser: that is the data recipe's doing, before training
    grammar_data = grammar_examples(continue_rows, 60, seed=0)
    held = rw.defective_pairs(20, seed=5)

    def forbidden(*args, **kwargs):
        raise AssertionError("the AI labeller read the gold reward, the grammar or an annotator")

    for name in ("gold_reward", "preference_probability", "is_positive", "parse", "is_grammatical", "log_prob"):
        monkeypatch.setattr(rw, name, forbidden)
    monkeypatch.setattr(rw.SimulatedAnnotator, "label", forbidden)
    critics = {
        "grammatical": NgramCritic().fit(*grammar_data),
        "positive": NgramCritic().fit(*sentiment_examples(instructions, 60)),
    }
    lab = ConstitutionalLabeller(Constitution(), critics)
    assert len(lab.label(held)) == 20 and len(lab.critique(pair_texts(held)[0])) == 20


def test_the_grammar_critic_learns_held_out_slips(labeller):
    held = rw.defective_pairs(150, seed=21)  # other reviews, other slips
    intact, broken = [], []
    for text_a, text_b in zip(*pair_texts(held)):
        (intact if rw.is_grammatical(text_a) else broken).append(text_a)
        (intact if rw.is_grammatical(text_b) else broken).append(text_b)
    critic = labeller.critics["grammatical"]
    assert np.mean(critic.logits(intact) > critic.logits(broken)) > 0.75  # chance: 0.5
    assert picks_intact(labeller.prefers_a(*pair_texts(held)), held) > 0.75
    critique = labeller.critique(intact + broken)
    grammar_logits = critic.logits(intact + broken)
    sentiment_logits = labeller.critics["positive"].logits(intact + broken)
    assert critique == [
        [name for name, bad in (("grammatical", g < 0), ("positive", p < 0)) if bad]
        for g, p in zip(grammar_logits, sentiment_logits)
    ]
    flagged = np.array(["grammatical" in c for c in critique])
    assert flagged[len(intact) :].mean() - flagged[: len(intact)].mean() > 0.3


def test_the_labeller_agrees_with_gold_well_above_chance(labeller):
    rows = rw.preference_pairs(120, seed=31)
    report = label_report(labeller.prefers_a(*pair_texts(rows)), rows)
    assert report["agreement_gold"] > 0.65  # chance 0.5; 0.73 when this was written
    shuffled = NgramCritic().fit(*sentiment_examples(rw.instruction_pairs(300, seed=12), 100))
    shuffled.weights = np.random.default_rng(0).permutation(shuffled.weights)  # a critic that learned nothing
    lab = dataclasses.replace(labeller, critics={**labeller.critics, "positive": shuffled})
    assert label_report(lab.prefers_a(*pair_texts(rows)), rows)["agreement_gold"] < report["agreement_gold"] - 0.1


def test_label_keeps_each_pair_and_chooses_the_higher_score(labeller):
    rows = rw.preference_pairs(30, seed=41)
    labelled = labeller.label(rows)
    for row, new in zip(rows, labelled):
        assert {row["chosen"], row["rejected"]} == {new["chosen"], new["rejected"]} and row["prompt"] == new["prompt"]
        chosen, rejected = labeller.scores([new["prompt"] + new["chosen"], new["prompt"] + new["rejected"]])
        assert chosen >= rejected
    terms = labeller.terms(["the plot was great."])
    assert set(terms) == {"grammatical", "positive"}
    assert labeller.scores(["the plot was great."])[0] == pytest.approx(sum(t[0] for t in terms.values()))


# ------------------------------------------------------------------------------------------------
# Measurements, by hand
# ------------------------------------------------------------------------------------------------
def test_label_report_by_hand():
    rows = [
        # gold prefers the shorter chosen; annotator chose it
        {"prompt": "the plot", "chosen": " was great.", "rejected": " was dull. the music was dull."},
        # gold prefers the longer rejected
        {"prompt": "the plot", "chosen": " was dull.", "rejected": " was great. the music was good."},
        # same length, gold prefers chosen
        {"prompt": "the plot", "chosen": " was superb.", "rejected": " was awful."},
    ]
    verdict = np.array([-1, -1, 1])  # picks the longer twice, and gold's winner on rows 2 and 3
    report = label_report(verdict, rows)
    assert report["agreement_gold"] == pytest.approx(2 / 3)
    assert report["agreement_human"] == pytest.approx(1 / 3)
    assert report["picks_longer"] == pytest.approx(1.0)  # both pairs of different length
    assert report["gold_picks_longer"] == pytest.approx(0.5)
    assert report["longer_when_gold_prefers_shorter"] == pytest.approx(1.0)
    assert label_report(np.array([0, 0, 0]), rows)["agreement_gold"] == pytest.approx(0.5)  # ties count half


def test_picks_intact_by_hand():
    rows = [
        {"prompt": "the plot", "chosen": " was great.", "rejected": " was was great."},
        {"prompt": "the plot", "chosen": " great was.", "rejected": " was dull."},
    ]
    assert picks_intact(np.array([1, 1]), rows) == pytest.approx(0.5)
    assert picks_intact(np.array([1, -1]), rows) == pytest.approx(1.0)
    assert picks_intact(np.array([0, -1]), rows) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="exactly one grammatical"):
        picks_intact(np.array([1]), [{"prompt": "the plot", "chosen": " was dull.", "rejected": " was great."}])


# ------------------------------------------------------------------------------------------------
# Critique and revise
# ------------------------------------------------------------------------------------------------
class _DoubledWordCritic:
    """A stand-in labeller whose critique is written by hand: a doubled "was" breaks the grammar principle."""

    def critique(self, texts):
        return [["grammatical"] if "was was" in t else [] for t in texts]


def test_revise_by_resampling_redraws_only_what_the_critique_rejects():
    labeller = _DoubledWordCritic()
    prompts = ["the plot", "the music"]
    draws = {"the plot": [" was was great.", " was great.", " was great."], "the music": [" was superb."] * 3}
    calls = []

    def sample(batch):
        calls.append(list(batch))
        return [draws[p].pop(0) for p in batch]

    completions, tries = revise_by_resampling(sample, prompts, labeller, max_tries=3)
    assert completions == [" was great.", " was superb."] and tries == [2, 1]
    assert calls == [prompts, ["the plot"]]
    with pytest.raises(ValueError, match="max_tries must be an int >= 1"):
        revise_by_resampling(sample, prompts, labeller, max_tries=0)
