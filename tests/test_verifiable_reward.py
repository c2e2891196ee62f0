"""The rule-based (verifiable) reward: hand-made reviews, where it differs from gold, and its config."""

from __future__ import annotations

import math

import pytest

from utils import review_world as rw
from utils.verifiable_reward import (
    VerifiableRewardConfig,
    is_positive_by_rule,
    polarity_votes,
    verifiable_reward,
    verifiable_rewards,
)

POSITIVE = "the acting was great. i would recommend it."
NEGATIVE = "the plot was boring and i hated the ending."
BROKEN = "the acting was great the."


def test_hand_made_reviews():
    assert rw.is_grammatical(POSITIVE) and rw.is_grammatical(NEGATIVE) and not rw.is_grammatical(BROKEN)
    assert verifiable_reward(POSITIVE) == 1.0
    assert verifiable_reward(NEGATIVE) == 0.0
    assert verifiable_reward(BROKEN) == -1.0
    assert verifiable_reward("") == -1.0
    assert verifiable_reward("The acting was great.") == -1.0  # not the canonical lower-case form
    assert verifiable_rewards([POSITIVE, NEGATIVE, BROKEN]) == [1.0, 0.0, -1.0]


def test_votes_count_clauses_and_the_closing_verdict():
    assert polarity_votes(rw.parse(POSITIVE)) == (2, 0)
    assert polarity_votes(rw.parse(NEGATIVE)) == (0, 2)
    assert polarity_votes(rw.parse("the plot was dull. overall, a superb film.")) == (1, 1)
    assert is_positive_by_rule(BROKEN) is None


def test_the_rule_is_simpler_than_gold():
    # strength is invisible to the rule: a decent and a superb review earn the same
    decent, superb = "the plot was decent.", "the plot was superb."
    assert verifiable_reward(decent) == verifiable_reward(superb) == 1.0
    assert rw.gold_reward(decent) < rw.gold_reward(superb)
    # a contrast is a tie for the rule (not positive), and negative for gold, where the second clause wins
    contrast = "the plot was great, but the acting was awful."
    assert verifiable_reward(contrast) == 0.0 and rw.gold_reward(contrast) < 0
    # two weak positives outvote one strong negative: positive by the rule, negative by gold
    outvoted = "the plot was decent. the acting was decent. i hated the ending."
    assert verifiable_reward(outvoted) == 1.0 and not rw.is_positive(outvoted)


def test_the_rule_mostly_agrees_with_gold_positivity_on_the_review_distribution():
    texts = [row["text"] for row in rw.lm_corpus(2_000, seed=1)]
    agreement = sum(is_positive_by_rule(t) == rw.is_positive(t) for t in texts) / len(texts)
    # about 80% (seed 1: 0.80); not 100%: it is a cruder rule, and not near 50%: it is not noise
    assert 0.7 < agreement < 0.95


def test_config_rewards_are_used():
    config = VerifiableRewardConfig(positive_reward=2.0, non_positive_reward=0.5, ungrammatical_reward=-3.0)
    assert verifiable_rewards([POSITIVE, NEGATIVE, BROKEN], config) == [2.0, 0.5, -3.0]


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"positive_reward": 0.0}, "positive_reward"),
        ({"ungrammatical_reward": 0.0}, "ungrammatical_reward"),
        ({"positive_reward": math.nan}, "positive_reward"),
        ({"non_positive_reward": "0"}, "non_positive_reward"),
    ],
)
def test_bad_config_fails_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"^VerifiableRewardConfig\.{field} must be "):
        VerifiableRewardConfig(**changes)
