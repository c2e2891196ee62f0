"""How much the course's numbers vary: the whole pipeline on several seeds, and once more on one thread.

A trained number from one run is one draw. Another seed, or another CPU (which rounds floating point
differently and so trains a slightly different model), gives another draw. This study runs the pipeline
for each seed (``RLHF_SEED=N``; the artifacts of different seeds live side by side in ``results/``), and,
as a stand-in for a machine change, repeats one seed on another thread count in a separate results
folder (the thread count is not part of an artifact's key, so its runs must not share the cache).

It writes ``results/seed_study.json`` (for every metric: mean, sd, min, max and each seed's value; every
target of :mod:`utils.targets` on every seed) and ``results/seed_study.md`` (the same as tables).

    python -m utils.seed_study --seeds 0 1 2 --threads-check 0      # what ``make seeds`` runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from utils.artifacts import atomic_write_json, atomic_write_text, results_dir
from utils.seed import available_cores
from utils.targets import MEAN_TARGETS, TARGETS


def run_pipeline(
    seed: int,
    num_threads: int | None = None,
    results: Path | None = None,
    profile: str | None = None,
    stages: Sequence[str] | None = None,
) -> dict:
    """Run ``python -m utils.pipeline`` for one seed in a subprocess and return its metrics.

    A subprocess, not a call: the seed and the thread count are read from the environment when the
    pipeline starts, and torch's thread pool cannot be resized reliably inside a running process.
    """
    env = dict(os.environ, RLHF_SEED=str(seed))
    if num_threads is not None:
        env["RLHF_NUM_THREADS"] = str(num_threads)
    if results is not None:
        env["RLHF_RESULTS_DIR"] = str(results)
    command = [sys.executable, "-m", "utils.pipeline"] + (["--profile", profile] if profile else [])
    command += ["--stages", *stages] if stages else []
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"the pipeline failed for seed {seed} (threads {num_threads or 'default'}) with exit "
            f"code {done.returncode}; its log is above"
        )
    return json.loads(done.stdout)


def numeric(metrics: Mapping[str, object]) -> dict[str, float]:
    """The metrics that are numbers (booleans and strings such as the profile name are left out)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def summarise(runs: Mapping[int, Mapping[str, float]]) -> dict[str, dict]:
    """For every metric present in every run: mean, sd (n - 1 in the denominator), min, max, per-seed values."""
    seeds = sorted(runs)
    keys = sorted(set.intersection(*(set(numeric(runs[s])) for s in seeds)))
    out = {}
    for key in keys:
        values = [numeric(runs[s])[key] for s in seeds]
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out[key] = {
            "mean": mean,
            "sd": sd,
            "min": min(values),
            "max": max(values),
            "values": dict(zip(map(str, seeds), values)),
        }
    return out


def target_table(runs: Mapping[int, Mapping[str, float]]) -> list[dict]:
    """Every target on every seed, its worst value, and whether it holds on all of them (and on the mean)."""
    rows = []
    for target in TARGETS:
        values = {str(s): target.measure(m) for s, m in sorted(runs.items())}
        worst = (min if target.higher_is_better else max)(values.values())
        rows.append(
            {
                "target": target.name,
                "description": target.description,
                "relation": target.relation,
                "bound": target.bound,
                "values": values,
                "worst": worst,
                "met_on_every_seed": all(target.met(m) for m in runs.values()),
            }
        )
    mean_metrics = {k: v["mean"] for k, v in summarise(runs).items()}
    for target in MEAN_TARGETS:
        value = target.measure(mean_metrics)
        rows.append(
            {
                "target": target.name,
                "description": target.description,
                "relation": target.relation,
                "bound": target.bound,
                "values": {"mean": value},
                "worst": value,
                "met_on_every_seed": target.met(mean_metrics),
            }
        )
    return rows


def markdown(study: dict) -> str:
    """The study as markdown: the targets, then every metric's spread, then the thread comparison."""
    seeds = study["seeds"]
    lines = [
        f"# Seed study: seeds {', '.join(map(str, seeds))} (profile {study['profile']})",
        "",
        "## Targets (each must hold on every seed)",
        "",
        "| target | bound | " + " | ".join(f"seed {s}" for s in seeds) + " | worst | met |",
        "|---|---|" + "---:|" * len(seeds) + "---:|---|",
    ]
    for row in study["targets"]:
        cells = [f"{row['values'].get(str(s), row['values'].get('mean', float('nan'))):.4g}" for s in seeds]
        lines.append(
            f"| {row['target']} | {row['relation']} {row['bound']:g} | "
            + " | ".join(cells)
            + f" | {row['worst']:.4g} | {'yes' if row['met_on_every_seed'] else '**no**'} |"
        )
    lines += [
        "",
        "## Every metric: mean ± sd over seeds",
        "",
        "| metric | mean | sd | min | max | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(seeds),
    ]
    for key, row in study["metrics"].items():
        lines.append(
            f"| `{key}` | {row['mean']:.4g} | {row['sd']:.2g} | {row['min']:.4g} | {row['max']:.4g} | "
            + " | ".join(f"{row['values'][str(s)]:.4g}" for s in seeds)
            + " |"
        )
    threads = study.get("threads")
    if threads:
        n, m = threads["threads"], threads["other_threads"]
        lines += [
            "",
            f"## Seed {threads['seed']} on {m} thread(s) against the study's {n}",
            "",
            "A different thread count sums in a different order, as another CPU would: a model trained "
            "from the same seed differs in its last bits, and training amplifies that.",
            "",
            f"| metric | {n} thread(s) | {m} thread(s) | difference | difference / seed sd |",
            "|---|---:|---:|---:|---:|",
        ]
        for key, row in threads["metrics"].items():
            ratio = row["difference_over_seed_sd"]
            lines.append(
                f"| `{key}` | {row['study']:.4g} | {row['other']:.4g} | {row['difference']:+.3g} | "
                + ("" if ratio is None else f"{ratio:.2f}")
                + " |"
            )
    return "\n".join(lines) + "\n"


SWEEP_KEY = re.compile(r"eval\.sweep\.beta=([0-9.e+-]+)/(gold_reward|proxy_reward|kl)$")


def sweep_over_seeds(study: dict) -> list[dict]:
    """The KL sweep's end points beta by beta, averaged over the study's seeds: for each beta, the mean and sd
    of the final gold reward, proxy reward and KL (from the ``eval.sweep.beta=B/...`` metrics)."""
    by_beta: dict[float, dict] = {}
    for key, row in study["metrics"].items():
        match = SWEEP_KEY.match(key)
        if match:
            by_beta.setdefault(float(match.group(1)), {"beta": float(match.group(1))})[match.group(2)] = row
    return [by_beta[beta] for beta in sorted(by_beta) if len(by_beta[beta]) == 4]


def plot_sweep_over_seeds(study: dict):
    """Gold and proxy reward at the end of each sweep run against its KL, mean ± sd over seeds (error bars in
    both directions), one point per beta: the over-optimisation picture with its spread."""
    import matplotlib.pyplot as plt

    rows = sweep_over_seeds(study)
    if not rows:
        raise ValueError("the study has no eval.sweep.beta=B/... metrics (rerun the pipeline's eval stage)")
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    kl = [r["kl"]["mean"] for r in rows]
    kl_sd = [r["kl"]["sd"] for r in rows]
    for key, label, colour in (
        ("proxy_reward", "proxy (reward model)", "C0"),
        ("gold_reward", "gold (the truth)", "C1"),
    ):
        ax.errorbar(
            kl,
            [r[key]["mean"] for r in rows],
            xerr=kl_sd,
            yerr=[r[key]["sd"] for r in rows],
            fmt="o-",
            color=colour,
            capsize=3,
            label=label,
        )
    for r in rows:
        ax.annotate(
            f"β={r['beta']:g}",
            (r["kl"]["mean"], r["gold_reward"]["mean"]),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=8,
        )
    start = study["metrics"].get("eval.sweep.start_gold")
    if start:
        ax.axhline(start["mean"], color="grey", lw=1, ls=":", label="SFT policy's gold")
    ax.set(
        xlabel="KL to the SFT policy at the end of the run (nats)",
        ylabel="reward at the end of the run",
        title=f"KL sweep, mean ± sd over seeds {', '.join(map(str, study['seeds']))}",
    )
    ax.legend(fontsize=8)
    return fig


def thread_comparison(
    seed: int,
    study_run: Mapping[str, float],
    other_run: Mapping[str, float],
    metrics: Mapping[str, dict],
    threads: int,
    other_threads: int,
) -> dict:
    """Metric by metric: one seed on the study's thread count and on another, against the spread over seeds."""
    shared = sorted(set(numeric(study_run)) & set(numeric(other_run)))
    rows = {}
    for key in shared:
        a, b = numeric(study_run)[key], numeric(other_run)[key]
        sd = metrics.get(key, {}).get("sd")
        rows[key] = {
            "study": a,
            "other": b,
            "difference": b - a,
            "difference_over_seed_sd": (abs(b - a) / sd) if sd else None,
        }
    return {"seed": seed, "threads": threads, "other_threads": other_threads, "metrics": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds (default: 0 1 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="RLHF_NUM_THREADS of the seed runs (default: every core, fixed, so that no run depends on the load)",
    )
    parser.add_argument(
        "--threads-check",
        type=int,
        default=None,
        metavar="SEED",
        help="also rerun SEED on another thread count (1, or 2 if the study runs on 1), in results/threads-N/",
    )
    parser.add_argument("--profile", default=None, help="course (default) or tiny")
    parser.add_argument(
        "--stages", nargs="+", default=None, help="pipeline stages to run for every seed (default: all, as make run)"
    )
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < 2:
        parser.error(f"--seeds needs at least two different seeds to measure a spread, got {args.seeds}")
    if any(s < 0 for s in args.seeds):
        parser.error(f"--seeds must be non-negative integers, got {args.seeds}")

    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    threads = args.threads or available_cores()
    runs, seconds = {}, {}
    for seed in args.seeds:
        start = time.perf_counter()
        print(f"seed study: pipeline with RLHF_SEED={seed} ...", file=sys.stderr, flush=True)
        runs[seed] = run_pipeline(seed, num_threads=threads, profile=args.profile, stages=args.stages)
        seconds[seed] = time.perf_counter() - start
    study = {
        "profile": next(iter(runs.values())).get("profile", args.profile or "course"),
        "seeds": sorted(runs),
        "wall_seconds": {str(s): t for s, t in seconds.items()},
        "metrics": summarise(runs),
        "targets": target_table(runs),
    }
    if args.threads_check is not None:
        seed = args.threads_check
        other = 1 if threads != 1 else 2
        print(f"seed study: seed {seed} again with RLHF_NUM_THREADS={other} ...", file=sys.stderr, flush=True)
        study_run = (
            runs[seed]
            if seed in runs
            else run_pipeline(seed, num_threads=threads, profile=args.profile, stages=args.stages)
        )
        other_run = run_pipeline(
            seed,
            num_threads=other,
            results=results_dir() / f"threads-{other}",
            profile=args.profile,
            stages=args.stages,
        )
        study["threads"] = thread_comparison(seed, study_run, other_run, study["metrics"], threads, other)
    atomic_write_json(results_dir() / "seed_study.json", study)
    atomic_write_text(results_dir() / "seed_study.md", markdown(study))
    if sweep_over_seeds(study):
        from utils.plotting import save_figure, use_headless_backend_if_needed

        use_headless_backend_if_needed()
        save_figure(plot_sweep_over_seeds(study), "seed_study_sweep", folder=results_dir() / "figures")
    print(markdown(study))
    failed = [row["target"] for row in study["targets"] if not row["met_on_every_seed"]]
    if failed:
        print(f"targets missed on some seed: {failed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
