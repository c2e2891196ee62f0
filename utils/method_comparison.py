"""Every alignment method of the course side by side: gold reward against KL to the SFT policy.

Each method's stage measures its policy the same way (:func:`utils.evaluation.evaluate_policy` on the same
held-out prompts, sampling, seed and reference), so one table and one plot compare them: SFT (the start),
PPO, DPO, RLOO, GRPO (reward model), GRPO (verifiable reward), and best-of-n.

**Best-of-n** trains nothing: sample n responses from the SFT policy per prompt and keep the one the reward
model scores highest. Its KL to the SFT policy is the one number here that is not estimated from samples
with ``log p - log p_ref``: the policy "best of n draws" has no tractable log-probability, but its KL has a
well-known closed form (Stiennon et al. 2020; exact for continuous rewards, an upper bound with ties):

    KL(best-of-n || SFT) = log n - (n - 1) / n

This module holds the pure parts: the best-of-n choice and KL, the table rows from the stages' metadata, the
markdown table, and the gold-vs-KL figure. :mod:`utils.stages.methods` reads the metadata and writes the files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from utils.config_checks import check, check_int
from utils.evaluation import summarise

# A table row: the method's name and its measured numbers (None where a method has no such number).
COLUMNS = (
    ("gold_reward", "gold reward"),
    ("positive_fraction", "positive share"),
    ("grammatical_fraction", "grammatical share"),
    ("kl", "KL to SFT (nats)"),
    ("length_tokens", "mean length (tokens)"),
    ("seconds", "wall-clock s"),
    ("throughput", "per second"),
)


@dataclass(frozen=True)
class MethodsConfig:
    """The ``methods`` comparison: the best-of-n baseline. Validated on construction (ValueError naming the field)."""

    best_of_n: tuple[int, ...] = (2, 4, 8, 16)
    """the n of best-of-n, increasing; one set of max(n) SFT samples per prompt serves all of them (the first n).
    The table shows the largest n, the figure all of them"""
    seed: int = 0
    """first sampling seed of the SFT samples (draw i uses seed + i)"""

    def __post_init__(self) -> None:
        ok = (
            isinstance(self.best_of_n, tuple)
            and len(self.best_of_n) > 0
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in self.best_of_n)
            and list(self.best_of_n) == sorted(set(self.best_of_n))
        )
        check(self, "best_of_n", ok, "a non-empty, strictly increasing tuple of ints >= 1")
        check_int(self, "seed", ge=0)


# ---------------------------------------------------------------------------------------------------------
# Best-of-n
# ---------------------------------------------------------------------------------------------------------
def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n, in nats (0 at n = 1)."""
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n


def best_of_n_samples(draws: Sequence[Sequence[dict]], n: int, score_key: str = "proxy_reward") -> list[dict]:
    """Per prompt, the sample with the highest ``score_key`` among the first ``n`` draws (ties: the earliest).

    ``draws[i][j]`` is draw i's sample of prompt j (:func:`utils.evaluation.evaluate_policy`'s samples, one
    list per sampling seed, every list over the same prompts in the same order).
    """
    if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= len(draws)):
        raise ValueError(f"n must be an int in [1, {len(draws)}] (the draws available), got {n!r}")
    lengths = {len(d) for d in draws}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"every draw must hold the same, non-zero number of prompts, got {sorted(lengths)}")
    chosen = []
    for j in range(len(draws[0])):
        candidates = [draws[i][j] for i in range(n)]
        if len({c["prompt"] for c in candidates}) != 1:
            raise ValueError(f"draws disagree on prompt {j}: they must cover the same prompts in the same order")
        chosen.append(max(candidates, key=lambda s: s[score_key]))  # max keeps the first of equal scores
    return chosen


def best_of_n_means(draws: Sequence[Sequence[dict]], n: int) -> dict[str, float]:
    """The held-out means of best-of-n (as :func:`utils.evaluation.summarise`), with the analytic KL in ``kl``
    (the sampled estimate is 0 for every draw, each being the SFT policy's own sample)."""
    means = summarise(best_of_n_samples(draws, n))
    means["kl"] = best_of_n_kl(n)
    means["kl_k3"] = float("nan")
    means["kl_se"] = 0.0
    return means


# ---------------------------------------------------------------------------------------------------------
# Table rows from the stages' metadata
# ---------------------------------------------------------------------------------------------------------
def method_row(
    method: str,
    meta: dict,
    suffix: str = "_after",
    kl_key: str = "kl_to_ref",
    seconds_key: str | None = "train_seconds",
    throughput_key: str | None = None,
    throughput_unit: str = "",
) -> dict:
    """One row of the comparison from a stage's metadata: ``gold_reward<suffix>``, ``positive_fraction<suffix>``,
    ``grammatical_fraction<suffix>``, ``length_tokens<suffix>``, ``meta[kl_key]``, and the optional cost
    columns (``None`` where ``seconds_key``/``throughput_key`` is None or missing)."""
    row = {"method": method}
    for name in ("gold_reward", "positive_fraction", "grammatical_fraction", "length_tokens"):
        if f"{name}{suffix}" not in meta:
            raise KeyError(f"{method}: its metadata has no {name + suffix!r}")
        row[name] = float(meta[f"{name}{suffix}"])
    if kl_key not in meta:
        raise KeyError(f"{method}: its metadata has no {kl_key!r}")
    row["kl"] = float(meta[kl_key])
    row["seconds"] = float(meta[seconds_key]) if seconds_key and seconds_key in meta else None
    row["throughput"] = float(meta[throughput_key]) if throughput_key and throughput_key in meta else None
    row["throughput_unit"] = throughput_unit if row["throughput"] is not None else ""
    return row


def _cell(value, key: str, unit: str = "") -> str:
    if value is None:
        return "-"
    if key in ("seconds",):
        return f"{value:.0f}"
    if key == "throughput":
        return f"{value:.1f} {unit}".strip()
    if key == "length_tokens":
        return f"{value:.1f}"
    return f"{value:.3f}" if key != "kl" else f"{value:.2f}"


def methods_table(rows: Sequence[dict]) -> str:
    """The rows as a markdown table, one line per method, in the given order."""
    if not rows:
        raise ValueError("no rows: nothing to compare")
    header = "| method | " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "| --- |" + " ---: |" * len(COLUMNS)
    lines = [header, rule]
    for row in rows:
        cells = [_cell(row.get(key), key, row.get("throughput_unit", "")) for key, _ in COLUMNS]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_frontier(records: Sequence[dict]) -> list[tuple[float, float, float]]:
    """(kl, gold_reward, beta) of each KL-sweep run's end point (:func:`utils.evaluation.kl_sweep`), by KL."""
    return sorted((float(r["kl"]), float(r["gold_reward"]), float(r["beta"])) for r in records)


def frontier_figure(
    rows: Sequence[dict],
    sweep: Sequence[tuple[float, float, float]] = (),
    best_of_n: Sequence[tuple[int, float, float]] = (),
    sweep_label: str = "PPO KL sweep (end points)",
):
    """Gold reward against KL to SFT: one marker per method (``rows``), the PPO sweep's end points as a line
    (``sweep``: (kl, gold, beta)), and best-of-n for every n as a dashed line (``best_of_n``: (n, kl, gold)).
    Returns the figure; ``fig.axes[0].collections`` holds one scatter per method (for tests and readers)."""
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("no rows: nothing to plot")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if sweep:
        kls, golds, betas = zip(*sweep)
        ax.plot(kls, golds, "-", color="0.6", lw=1.5, label=sweep_label, zorder=1)
        for kl, gold, beta in sweep:
            ax.annotate(f"β={beta:g}", (kl, gold), textcoords="offset points", xytext=(4, -10), fontsize=7, color="0.4")
    if best_of_n:
        ns, kls, golds = zip(*best_of_n)
        ax.plot(kls, golds, "--", color="tab:gray", lw=1, label="best-of-n (n = " + ", ".join(map(str, ns)) + ")")
    markers = "osD^v<>Pp*hX"
    for i, row in enumerate(rows):
        marker = markers[i % len(markers)]
        ax.scatter([row["kl"]], [row["gold_reward"]], s=60, marker=marker, label=row["method"], zorder=3)
    ax.set_xlabel("KL to the SFT policy (nats per response)")
    ax.set_ylabel("gold reward (held-out mean)")
    ax.set_title("Alignment methods: gold reward against KL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig
