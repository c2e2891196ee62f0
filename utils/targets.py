"""The course's targets: what a trained pipeline must reach, on every seed and every machine.

A target is a claim about a trained model ("the reward model is within 3 points of the best possible
accuracy"). Floating point rounds differently on another CPU, so a claim like that is only worth making
if it holds with a margin over seeds: :mod:`utils.seed_study` measures each target's quantity on several
seeds and reports the worst one, and the notebooks print ``meets target: True`` instead of one machine's
number. The targets are read from a flat metrics dict (``results/metrics.json``), never recomputed here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """One measurable promise of the course."""

    name: str
    """short identifier, e.g. ``rm.gap_to_bayes``"""
    description: str
    """what is promised, in words, for tables and error messages"""
    value: Callable[[Mapping[str, float]], float]
    """the quantity, computed from a metrics dict"""
    bound: float
    """the threshold the quantity is compared with"""
    higher_is_better: bool
    """True: the quantity must be >= bound; False: <= bound"""

    def measure(self, metrics: Mapping[str, float]) -> float:
        try:
            return float(self.value(metrics))
        except KeyError as err:
            raise KeyError(
                f"target {self.name!r} needs metric {err.args[0]!r}, which the run did not report "
                "(run the pipeline's stages first)"
            ) from None

    def met(self, metrics: Mapping[str, float]) -> bool:
        value = self.measure(metrics)
        return value >= self.bound if self.higher_is_better else value <= self.bound

    @property
    def relation(self) -> str:
        return ">=" if self.higher_is_better else "<="


def _gap_to_bayes(m: Mapping[str, float]) -> float:
    # Both accuracies are expectations over the annotators' coin flips (see
    # utils.reward_model.expected_accuracy): the gap then measures the model, not which way the labels fell.
    return m["rm.bayes_optimal_accuracy"] - m["rm.heldout_expected_accuracy"]


TARGETS: tuple[Target, ...] = (
    Target(
        "lm.nll_excess",
        "base LM's held-out NLL per review above the source entropy (relative)",
        lambda m: m["lm.val_nll_per_review"] / m["lm.source_entropy_per_review"] - 1,
        0.05,
        False,
    ),
    Target(
        "lm.grammatical",
        "share of free base-LM samples the grammar accepts",
        lambda m: m["lm.grammatical_fraction"],
        0.90,
        True,
    ),
    Target(
        "rm.gap_to_bayes",
        "reward model's held-out accuracy below the Bayes-optimal accuracy (worst seed)",
        _gap_to_bayes,
        0.03,
        False,
    ),
    Target(
        "ppo.positive", "share of positive reviews after PPO", lambda m: m["ppo.positive_fraction_after"], 0.90, True
    ),
    Target(
        "ppo.grammatical",
        "share of grammatical reviews after PPO",
        lambda m: m["ppo.grammatical_fraction_after"],
        0.95,
        True,
    ),
    Target("ppo.kl", "KL(PPO policy || SFT policy) in nats per response", lambda m: m["ppo.kl_to_ref"], 10.0, False),
    Target(
        "sweep.gold_falls",
        "at the smallest beta, gold reward change from the SFT start (must fall)",
        lambda m: m["eval.sweep.lowest_beta_gold"] - m["eval.sweep.start_gold"],
        0.0,
        False,
    ),
    Target(
        "sweep.proxy_rises",
        "at the smallest beta, proxy reward change from the SFT start (must rise)",
        lambda m: m["eval.sweep.lowest_beta_proxy"] - m["eval.sweep.start_proxy"],
        0.0,
        True,
    ),
)
"""Every target; each must hold on every seed of the seed study."""

MEAN_TARGETS: tuple[Target, ...] = (
    Target(
        "rm.gap_to_bayes_mean",
        "reward model's held-out accuracy below the Bayes-optimal accuracy (mean)",
        _gap_to_bayes,
        0.02,
        False,
    ),
)
"""Targets on the mean over seeds (checked by the seed study on the averaged metrics)."""


def check(metrics: Mapping[str, float], targets: tuple[Target, ...] = TARGETS) -> dict[str, bool]:
    """``{target name: met?}`` for one run's metrics."""
    return {t.name: t.met(metrics) for t in targets}


def by_name(name: str) -> Target:
    """The target called ``name`` (from ``TARGETS`` or ``MEAN_TARGETS``)."""
    for target in TARGETS + MEAN_TARGETS:
        if target.name == name:
            return target
    raise KeyError(f"no target {name!r}; choose one of {[t.name for t in TARGETS + MEAN_TARGETS]}")
