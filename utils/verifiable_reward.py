"""A rule-based ("verifiable") reward for the review world: a checker, not a learned model.

Reasoning models are trained with rewards a program computes exactly (RLVR: does the answer match, do the
tests pass), so there is no reward model to hack. Ours checks two things with the review world's own
recogniser, no learned weights:

* **is it a review?** the grammar's parser (:func:`utils.review_world.parse`) accepts it, or not;
* **is it positive?** a counting rule on the parse: its positive verdicts outnumber its negative ones,
  where each clause ("the plot was dull") and the closing verdict ("i would recommend it.") is one vote,
  by its polarity alone.

    reward = positive_reward        grammatical, more positive votes than negative
             non_positive_reward    grammatical otherwise (a tie is not positive)
             ungrammatical_reward   the parser rejects it

This is deliberately simpler than the gold reward (:func:`utils.review_world.gold_reward`), which weighs
each clause by its adjective's strength and degree word, lets the second clause of a contrast win ("good,
but dull" is negative) and counts the closing verdict twice. The rule is blind to all of that: it cannot
tell "the plot was decent." from "the plot was superb." (both +1), and it counts "the plot was great, but
the acting was awful." as a tie where gold calls it negative. A policy trained on it is told the truth
about grammar and the rough direction of sentiment, and nothing about intensity: what it optimises, and
what it may hack (short, barely positive reviews score as well as glowing ones), differ from the gold
reward's, which is the point of comparing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from utils import review_world as rw
from utils.config_checks import check, check_number


@dataclass(frozen=True)
class VerifiableRewardConfig:
    """The three rewards of the rule. Validated on construction (ValueError naming the field)."""

    positive_reward: float = 1.0
    """reward of a grammatical review with more positive than negative verdicts"""
    non_positive_reward: float = 0.0
    """reward of a grammatical review that is not positive by the rule (negative, or a tie)"""
    ungrammatical_reward: float = -1.0
    """reward of a text the grammar rejects; below non_positive_reward, so that breaking the grammar never pays"""

    def __post_init__(self) -> None:
        for name in ("positive_reward", "non_positive_reward", "ungrammatical_reward"):
            check_number(self, name)
        check(
            self,
            "positive_reward",
            self.positive_reward > self.non_positive_reward,
            f"> non_positive_reward ({self.non_positive_reward})",
        )
        check(
            self,
            "ungrammatical_reward",
            self.ungrammatical_reward < self.non_positive_reward,
            f"< non_positive_reward ({self.non_positive_reward})",
        )


def polarity_votes(parsed: rw.ParsedReview) -> tuple[int, int]:
    """(positive, negative) verdicts of a parsed review: one per clause and one for the closing verdict."""
    signs = [clause.polarity for clause in parsed.clauses]
    if parsed.closing_value is not None:
        signs.append(1 if parsed.closing_value > 0 else -1)
    return sum(s > 0 for s in signs), sum(s < 0 for s in signs)


def is_positive_by_rule(text: str) -> bool | None:
    """True / False for a grammatical review (positive by the vote rule or not), None for a non-review."""
    parsed = rw.parse(text.strip())
    if parsed is None:
        return None
    positive, negative = polarity_votes(parsed)
    return positive > negative


def verifiable_reward(text: str, config: VerifiableRewardConfig | None = None) -> float:
    """The rule's reward for one completion (the whole review text)."""
    config = config or VerifiableRewardConfig()
    verdict = is_positive_by_rule(text)
    if verdict is None:
        return config.ungrammatical_reward
    return config.positive_reward if verdict else config.non_positive_reward


def verifiable_rewards(texts: Sequence[str], config: VerifiableRewardConfig | None = None) -> list[float]:
    """:func:`verifiable_reward` of each text (the shape of a TRL reward function's answer)."""
    config = config or VerifiableRewardConfig()
    return [verifiable_reward(text, config) for text in texts]
