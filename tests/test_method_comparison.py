"""The methods comparison (utils.method_comparison): best-of-n's choice and KL, table rows, the figure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from utils.method_comparison import (
    COLUMNS,
    MethodsConfig,
    best_of_n_kl,
    best_of_n_means,
    best_of_n_samples,
    frontier_figure,
    method_row,
    methods_table,
    sweep_frontier,
)


def exact_best_of_n_kl(n: int, outcomes: int) -> float:
    """KL(best-of-n || uniform base) over ``outcomes`` equally likely responses with distinct scores, exactly:
    the best of n draws is the k-th lowest with probability (k/M)^n - ((k-1)/M)^n."""
    k = np.arange(1, outcomes + 1)
    p = (k / outcomes) ** n - ((k - 1) / outcomes) ** n
    return float(np.sum(p * np.log(p * outcomes)))


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_best_of_n_kl_is_the_limit_of_the_exact_discrete_kl(n):
    assert best_of_n_kl(n) == pytest.approx(math.log(n) - (n - 1) / n)
    assert exact_best_of_n_kl(n, 100_000) == pytest.approx(best_of_n_kl(n), abs=1e-3)
    assert exact_best_of_n_kl(n, 10) <= best_of_n_kl(n) + 1e-12  # coarse outcomes: the formula bounds it


def test_best_of_n_kl_rejects_bad_n():
    for n in (0, 1.5, True):
        with pytest.raises(ValueError, match="n must be an int >= 1"):
            best_of_n_kl(n)


def sample(prompt, proxy, gold, positive=True, grammatical=True, length=10):
    return {
        "prompt": prompt,
        "response": f" r{proxy}",
        "proxy_reward": proxy,
        "gold_reward": gold,
        "kl": 0.0,
        "kl_k3": 0.0,
        "entropy": 1.0,
        "positive": positive,
        "grammatical": grammatical,
        "length_words": length,
        "length_tokens": length,
        "eos": True,
    }


DRAWS = [
    [sample("a", 0.1, 1.0), sample("b", 0.9, -1.0, positive=False, length=20)],
    [sample("a", 0.5, 0.0, grammatical=False), sample("b", 0.9, 2.0)],  # b ties with draw 0: the earlier wins
    [sample("a", 2.0, 3.0), sample("b", -1.0, 5.0)],
]


def test_best_of_n_picks_the_highest_proxy_among_the_first_n():
    assert [s["proxy_reward"] for s in best_of_n_samples(DRAWS, 1)] == [0.1, 0.9]
    chosen = best_of_n_samples(DRAWS, 2)
    assert [s["gold_reward"] for s in chosen] == [0.0, -1.0]  # a: draw 1 (0.5 > 0.1); b: the tie keeps draw 0
    assert [s["gold_reward"] for s in best_of_n_samples(DRAWS, 3)] == [3.0, -1.0]


def test_best_of_n_means():
    means = best_of_n_means(DRAWS, 2)
    assert means["gold_reward"] == pytest.approx(-0.5)
    assert means["positive_fraction"] == pytest.approx(0.5)
    assert means["grammatical_fraction"] == pytest.approx(0.5)
    assert means["length_tokens"] == pytest.approx(15.0)
    assert means["kl"] == pytest.approx(math.log(2) - 0.5)


def test_best_of_n_rejects_misaligned_draws():
    with pytest.raises(ValueError, match="n must be an int in"):
        best_of_n_samples(DRAWS, 4)
    with pytest.raises(ValueError, match="same, non-zero number"):
        best_of_n_samples([DRAWS[0], DRAWS[1][:1]], 2)
    with pytest.raises(ValueError, match="disagree on prompt"):
        best_of_n_samples([DRAWS[0], DRAWS[1][::-1]], 2)


def test_methods_config():
    assert MethodsConfig().best_of_n[-1] == 16
    for bad in ((), (4, 2), (2, 2), (0, 2), (2.0,), [2, 4]):
        with pytest.raises(ValueError, match=r"MethodsConfig\.best_of_n must be"):
            MethodsConfig(best_of_n=bad)


PPO_META = {
    "gold_reward_before": -0.07,
    "positive_fraction_before": 0.5,
    "grammatical_fraction_before": 0.9,
    "length_tokens_before": 15.0,
    "kl_before": 0.0,
    "gold_reward_after": 0.57,
    "positive_fraction_after": 0.95,
    "grammatical_fraction_after": 0.98,
    "length_tokens_after": 18.25,
    "kl_to_ref": 2.6,
    "train_seconds": 30.0,
    "episodes_per_second": 51.2,
}


def test_rows_and_table_from_hand_made_metas():
    sft = method_row("SFT", PPO_META, suffix="_before", kl_key="kl_before", seconds_key=None)
    ppo = method_row("PPO", PPO_META, throughput_key="episodes_per_second", throughput_unit="episodes/s")
    assert sft == {
        "method": "SFT",
        "gold_reward": -0.07,
        "positive_fraction": 0.5,
        "grammatical_fraction": 0.9,
        "length_tokens": 15.0,
        "kl": 0.0,
        "seconds": None,
        "throughput": None,
        "throughput_unit": "",
    }
    assert (ppo["gold_reward"], ppo["kl"], ppo["seconds"], ppo["throughput"]) == (0.57, 2.6, 30.0, 51.2)
    table = methods_table([sft, ppo]).splitlines()
    assert len(table) == 4 and table[0].count("|") == len(COLUMNS) + 2
    assert table[2] == "| SFT | -0.070 | 0.500 | 0.900 | 0.00 | 15.0 | - | - |"
    assert table[3] == "| PPO | 0.570 | 0.950 | 0.980 | 2.60 | 18.2 | 30 | 51.2 episodes/s |"
    with pytest.raises(KeyError, match="gold_reward_after"):
        method_row("broken", {"kl_to_ref": 1.0})
    with pytest.raises(ValueError, match="no rows"):
        methods_table([])


def test_sweep_frontier_sorts_end_points_by_kl():
    records = [{"beta": 0.0, "kl": 30.0, "gold_reward": -1.9}, {"beta": 0.2, "kl": 3.0, "gold_reward": 0.5}]
    assert sweep_frontier(records) == [(3.0, 0.5, 0.2), (30.0, -1.9, 0.0)]


def test_figure_has_one_point_per_method():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        method_row("SFT", PPO_META, suffix="_before", kl_key="kl_before", seconds_key=None),
        method_row("PPO", PPO_META),
        {**method_row("RLOO", PPO_META), "kl": 1.9, "gold_reward": 0.3},
    ]
    fig = frontier_figure(rows, sweep=[(1.0, 0.2, 0.5), (3.0, 0.5, 0.2)], best_of_n=[(2, 0.19, 0.1), (4, 0.64, 0.2)])
    ax = fig.axes[0]
    assert len(ax.collections) == len(rows)  # one scatter per method
    points = [tuple(c.get_offsets()[0]) for c in ax.collections]
    assert points == [(0.0, -0.07), (2.6, 0.57), (1.9, 0.3)]
    assert len(ax.lines) == 2  # the sweep's line and best-of-n's
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"SFT", "PPO", "RLOO"} <= set(labels)
    plt.close(fig)
