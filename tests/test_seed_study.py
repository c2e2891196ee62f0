"""The seed study's arithmetic, the course targets, and the label-noise-free accuracy they rest on."""

from __future__ import annotations

import math
import statistics
import subprocess

import numpy as np
import pytest

from utils import seed_study
from utils.reward_model import expected_accuracy
from utils.targets import MEAN_TARGETS, TARGETS, by_name, check


def _metrics(**overrides) -> dict:
    """A run that meets every target by a margin (values like the course's)."""
    m = {
        "lm.val_nll_per_review": 27.9,
        "lm.source_entropy_per_review": 27.4,
        "lm.grammatical_fraction": 0.96,
        "rm.bayes_optimal_accuracy": 0.83,
        "rm.heldout_expected_accuracy": 0.815,
        "rm.heldout_accuracy": 0.81,
        "ppo.positive_fraction_after": 0.95,
        "ppo.grammatical_fraction_after": 0.98,
        "ppo.kl_to_ref": 2.0,
        "eval.sweep.lowest_beta_gold": -0.5,
        "eval.sweep.start_gold": -0.1,
        "eval.sweep.lowest_beta_proxy": 1.2,
        "eval.sweep.start_proxy": -0.2,
        "profile": "course",
    }
    m.update(overrides)
    return m


def test_expected_accuracy_by_hand():
    # model picks chosen, chosen, rejected, tie; annotators prefer chosen with 0.9, 0.4, 0.3, 0.8
    got = expected_accuracy([0.7, 0.6, 0.2, 0.5], [0.9, 0.4, 0.3, 0.8])
    assert got == pytest.approx((0.9 + 0.4 + 0.7 + 0.5) / 4)
    # the Bayes-optimal scorer (p itself) reaches mean max(p, 1 - p)
    p = np.array([0.9, 0.4, 0.3, 0.8])
    assert expected_accuracy(p, p) == pytest.approx(np.maximum(p, 1 - p).mean())
    with pytest.raises(ValueError, match="equal-length"):
        expected_accuracy([0.5], [0.5, 0.4])


def test_expected_accuracy_is_the_mean_of_sampled_accuracies():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 1, 400)
    model = np.clip(true + rng.normal(0, 0.3, 400), 0.01, 0.99)
    sampled = [((model > 0.5) == (rng.uniform(size=400) < true)).mean() for _ in range(4000)]
    assert expected_accuracy(model, true) == pytest.approx(np.mean(sampled), abs=2e-3)


def test_targets_read_the_metrics_and_flag_each_miss():
    assert all(check(_metrics()).values())
    assert check(_metrics()) == {t.name: True for t in TARGETS}
    misses = {
        "lm.nll_excess": {"lm.val_nll_per_review": 27.4 * 1.06},
        "lm.grammatical": {"lm.grammatical_fraction": 0.89},
        "rm.gap_to_bayes": {"rm.heldout_expected_accuracy": 0.79},
        "ppo.positive": {"ppo.positive_fraction_after": 0.899},
        "ppo.grammatical": {"ppo.grammatical_fraction_after": 0.94},
        "ppo.kl": {"ppo.kl_to_ref": 10.5},
        "sweep.gold_falls": {"eval.sweep.lowest_beta_gold": 0.0},
        "sweep.proxy_rises": {"eval.sweep.lowest_beta_proxy": -0.3},
    }
    for name, change in misses.items():
        result = check(_metrics(**change))
        assert [k for k, ok in result.items() if not ok] == [name]
    with pytest.raises(KeyError, match="needs metric 'ppo.kl_to_ref'"):
        by_name("ppo.kl").measure({})
    assert by_name("rm.gap_to_bayes_mean") is MEAN_TARGETS[0]


def test_summary_statistics_by_hand():
    runs = {
        0: _metrics(**{"ppo.kl_to_ref": 1.0}),
        1: _metrics(**{"ppo.kl_to_ref": 2.0}),
        2: _metrics(**{"ppo.kl_to_ref": 4.5}),
    }
    row = seed_study.summarise(runs)["ppo.kl_to_ref"]
    assert row["mean"] == pytest.approx(2.5)
    assert row["sd"] == pytest.approx(statistics.stdev([1.0, 2.0, 4.5]))
    assert (row["min"], row["max"], row["values"]) == (1.0, 4.5, {"0": 1.0, "1": 2.0, "2": 4.5})
    assert "profile" not in seed_study.summarise(runs)  # strings are not statistics


def test_target_table_reports_the_worst_seed_and_the_mean_target():
    runs = {
        0: _metrics(),
        1: _metrics(**{"rm.heldout_expected_accuracy": 0.795}),
        2: _metrics(**{"ppo.grammatical_fraction_after": 0.94}),
    }
    rows = {r["target"]: r for r in seed_study.target_table(runs)}
    assert rows["ppo.grammatical"]["worst"] == pytest.approx(0.94)
    assert not rows["ppo.grammatical"]["met_on_every_seed"]
    assert rows["rm.gap_to_bayes"]["worst"] == pytest.approx(0.035)
    assert not rows["rm.gap_to_bayes"]["met_on_every_seed"]
    mean_gap = 0.83 - (0.815 + 0.795 + 0.815) / 3
    assert rows["rm.gap_to_bayes_mean"]["worst"] == pytest.approx(mean_gap)
    assert rows["rm.gap_to_bayes_mean"]["met_on_every_seed"] == (mean_gap <= 0.02)
    assert rows["ppo.kl"]["met_on_every_seed"]


def test_markdown_and_thread_comparison():
    runs = {0: _metrics(), 1: _metrics(**{"ppo.kl_to_ref": 3.0})}
    study = {
        "profile": "course",
        "seeds": [0, 1],
        "metrics": seed_study.summarise(runs),
        "targets": seed_study.target_table(runs),
    }
    study["threads"] = seed_study.thread_comparison(
        0, runs[0], _metrics(**{"ppo.kl_to_ref": 2.5}), study["metrics"], 2, 1
    )
    row = study["threads"]["metrics"]["ppo.kl_to_ref"]
    assert row["difference"] == pytest.approx(0.5)
    assert row["difference_over_seed_sd"] == pytest.approx(0.5 / math.sqrt(0.5))
    text = seed_study.markdown(study)
    assert "| ppo.kl | <= 10 | 2 | 3 | 3 | yes |" in text
    assert "| `ppo.kl_to_ref` | 2.5 | 0.71 |" in text
    assert "## Seed 0 on 1 thread(s) against the study's 2" in text


def test_cli_needs_two_seeds():
    with pytest.raises(SystemExit):
        seed_study.main(["--seeds", "0"])


def test_sweep_over_seeds_averages_beta_by_beta(tmp_path):
    runs = {
        0: {
            "eval.sweep.beta=0/gold_reward": -1.0,
            "eval.sweep.beta=0/proxy_reward": 1.5,
            "eval.sweep.beta=0/kl": 30.0,
            "eval.sweep.beta=0.1/gold_reward": 0.4,
            "eval.sweep.beta=0.1/proxy_reward": 1.0,
            "eval.sweep.beta=0.1/kl": 3.0,
            "eval.sweep.start_gold": -0.2,
        },
        1: {
            "eval.sweep.beta=0/gold_reward": -2.0,
            "eval.sweep.beta=0/proxy_reward": 1.7,
            "eval.sweep.beta=0/kl": 40.0,
            "eval.sweep.beta=0.1/gold_reward": 0.6,
            "eval.sweep.beta=0.1/proxy_reward": 1.2,
            "eval.sweep.beta=0.1/kl": 5.0,
            "eval.sweep.start_gold": -0.3,
        },
    }
    study = {"seeds": [0, 1], "metrics": seed_study.summarise(runs)}
    rows = seed_study.sweep_over_seeds(study)
    assert [r["beta"] for r in rows] == [0.0, 0.1]
    assert rows[0]["gold_reward"]["mean"] == pytest.approx(-1.5)
    assert rows[0]["kl"]["sd"] == pytest.approx(math.sqrt(50.0))  # (30, 40): deviations ±5, n - 1 = 1
    assert rows[1]["proxy_reward"]["mean"] == pytest.approx(1.1)
    fig = seed_study.plot_sweep_over_seeds(study)
    [ax] = fig.axes
    assert len(ax.containers) == 2  # proxy and gold, each with error bars
    with pytest.raises(ValueError, match="no eval.sweep.beta"):
        seed_study.plot_sweep_over_seeds({"seeds": [0, 1], "metrics": seed_study.summarise({0: {}, 1: {}})})


def test_run_pipeline_passes_the_stages_to_the_pipeline(monkeypatch):
    seen = {}

    def fake_run(command, env, stdout, text):
        seen["command"], seen["env"] = command, env
        return subprocess.CompletedProcess(command, 0, stdout='{"seed": 3}')

    monkeypatch.setattr(seed_study.subprocess, "run", fake_run)
    assert seed_study.run_pipeline(3, num_threads=1, stages=["rm", "ppo"]) == {"seed": 3}
    assert seen["command"][-3:] == ["--stages", "rm", "ppo"]
    assert seen["env"]["RLHF_SEED"] == "3" and seen["env"]["RLHF_NUM_THREADS"] == "1"
    seed_study.run_pipeline(3)
    assert "--stages" not in seen["command"]
