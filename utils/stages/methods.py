"""Stage ``methods``: every alignment method's held-out numbers in one table and one gold-vs-KL figure.

Runs after the method stages and reads their metadata: SFT (the ``ppo`` stage's ``*_before``), PPO, DPO,
RLOO, GRPO, GRPO with the verifiable reward; and builds one artifact of its own, ``best_of_n``: max(n) SFT
samples per held-out prompt, scored by the reward model (:mod:`utils.method_comparison`). Writes
``results/methods.md`` and ``results/figures/methods_frontier.png`` (under ``results/seed-N/`` for run seed N).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from utils import review_world as rw
from utils.artifacts import atomic_write_text, get_or_build, read_meta, run_dir
from utils.evaluation import evaluate_policy, sampling_config
from utils.method_comparison import (
    best_of_n_kl,
    best_of_n_means,
    frontier_figure,
    method_row,
    methods_table,
    sweep_frontier,
)
from utils.plotting import save_figure
from utils.ppo import reward_model_fn
from utils.profiles import Profile
from utils.stages.data import load_dataset_rows
from utils.stages.dpo import dpo_dir
from utils.stages.evaluation import load_sweep
from utils.stages.group_rl import group_rl_dir
from utils.stages.policy_eval import heldout_evaluation_seed
from utils.stages.ppo import ppo_dir
from utils.stages.profile import resolve_profile
from utils.stages.rm import load_reward_model, rm_key
from utils.stages.sft import load_sft_model, sft_key


def best_of_n_key(profile: Profile) -> dict:
    """The best-of-n samples depend on the SFT policy, the reward model, the config and the eval's sampling."""
    evaluation, ppo = profile.evaluation, profile.ppo
    sampling = {
        "temperature": evaluation.temperature or ppo.temperature,
        "max_new_tokens": evaluation.max_new_tokens or ppo.response_length,
    }
    return {**sft_key(profile), **rm_key(profile), "methods": profile.methods, "evaluation_sampling": sampling}


def best_of_n_dir(profile: Profile | None = None) -> Path:
    """Folder of max(n) SFT samples per held-out prompt (``draws.json``: one list per draw) and, in the meta,
    best-of-n's means for every n (``best_of_<n>.<metric>``, KL analytic) and ``seconds_per_draw``."""
    profile = resolve_profile(profile)
    config = profile.methods

    def build(folder: Path) -> dict:
        sft, tokenizer = load_sft_model(profile)
        reward_model, _ = load_reward_model(profile)
        prompts = [r["prompt"] for r in load_dataset_rows("rl_prompts_test", profile)]
        sampling = sampling_config(profile.evaluation, profile.ppo, tokenizer)
        proxy_fn = reward_model_fn(reward_model.requires_grad_(False))
        draws, seconds = [], []
        for i in range(max(config.best_of_n)):
            start = time.perf_counter()
            _, samples = evaluate_policy(
                sft, sft, proxy_fn, tokenizer, prompts, sampling, seed=config.seed + i, gold_fn=rw.gold_reward
            )
            seconds.append(time.perf_counter() - start)
            draws.append([{k: v for k, v in s.items() if k != "response_ids"} for s in samples])
        (folder / "draws.json").write_text(json.dumps(draws))
        meta = {"seconds_per_draw": sum(seconds) / len(seconds), "prompts": len(prompts)}
        for n in config.best_of_n:
            meta.update({f"best_of_{n}.{k}": v for k, v in best_of_n_means(draws, n).items()})
        return meta

    return get_or_build("best_of_n", best_of_n_key(profile), build)


def best_of_n_row(profile: Profile) -> tuple[dict, list[tuple[int, float, float]]]:
    """(the table row of the largest n, (n, kl, gold) of every n) from the best-of-n artifact."""
    meta = read_meta(best_of_n_dir(profile))
    ns = profile.methods.best_of_n
    curve = [(n, meta[f"best_of_{n}.kl"], meta[f"best_of_{n}.gold_reward"]) for n in ns]
    n = ns[-1]
    row_meta = {k.removeprefix(f"best_of_{n}."): v for k, v in meta.items() if k.startswith(f"best_of_{n}.")}
    row_meta["seconds"] = meta["seconds_per_draw"] * n  # sampling and scoring n responses per held-out prompt
    row_meta["completions_per_second"] = n * meta["prompts"] / row_meta["seconds"]
    row = method_row(
        f"best-of-{n} (SFT samples, RM picks)",
        row_meta,
        suffix="",
        kl_key="kl",
        seconds_key="seconds",
        throughput_key="completions_per_second",
        throughput_unit="completions/s",
    )
    return row, curve


def dpo_row(profile: Profile) -> dict:
    """DPO's row (stage ``dpo``: the shared ``after_metrics`` keys, ``train_seconds``, ``pairs_per_second``)."""
    meta = read_meta(dpo_dir(profile))
    return method_row("DPO", meta, throughput_key="pairs_per_second", throughput_unit="pairs/s")


def method_rows(profile: Profile) -> list[dict]:
    """The table's rows, building any method stage that is missing."""
    ppo = read_meta(ppo_dir(profile))
    rows = [
        method_row("SFT (start)", ppo, suffix="_before", kl_key="kl_before", seconds_key=None),
        method_row("PPO", ppo, throughput_key="episodes_per_second", throughput_unit="episodes/s"),
    ]
    rows.append(dpo_row(profile))
    names = {"rloo": "RLOO (RM)", "grpo": "GRPO (RM)", "grpo_verifiable": "GRPO (verifiable reward)"}
    for stage, name in names.items():
        meta = read_meta(group_rl_dir(stage, profile))
        rows.append(method_row(name, meta, throughput_key="completions_per_second", throughput_unit="completions/s"))
    return rows


def methods_markdown(rows: list[dict], profile: Profile, sweep_temperature: float | None) -> str:
    n = profile.methods.best_of_n[-1]
    notes = [
        "# Alignment methods compared",
        "",
        f"Profile `{profile.name}`. Every policy is measured on the same {profile.data.rl_prompt_test_size} held-out "
        f"prompts with the same sampling (seed {heldout_evaluation_seed(profile)}), one response per prompt; the KL "
        "to the SFT policy is the sampled estimate sum(log p - log p_sft) per response, except for best-of-n, whose KL "
        f"is the analytic log n - (n - 1)/n = {best_of_n_kl(n):.2f} nats at n = {n} (its policy has no tractable "
        "log-probability).",
        "Wall-clock seconds are training time on this machine at the time of the run (best-of-n: sampling and "
        "scoring n responses per held-out prompt); a busy machine is slower.",
        "",
        methods_table(rows),
    ]
    if sweep_temperature is not None:
        notes.append(
            f"The figure's grey line is the PPO KL sweep's end points, sampled at temperature {sweep_temperature:g} "
            "(the sweep's own), so its KL is not on quite the same scale as the table's.\n"
        )
    return "\n".join(notes)


def methods_metrics(profile: Profile) -> dict:
    """Stage ``methods``: writes ``methods.md`` and ``figures/methods_frontier.png``; returns best-of-n's numbers
    (``methods.best_of_n.*``, the largest n) and the number of methods compared."""
    import matplotlib.pyplot as plt

    rows = method_rows(profile)
    bon, curve = best_of_n_row(profile)
    rows.append(bon)
    records = load_sweep(profile)
    sweep = sweep_frontier(records)
    temperature = records[0].get("temperature") if records else None
    folder = run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "methods.md", methods_markdown(rows, profile, temperature))
    label = f"PPO KL sweep (end points, T={temperature:g})" if temperature is not None else "PPO KL sweep"
    fig = frontier_figure(rows, sweep, curve, sweep_label=label)
    save_figure(fig, "methods_frontier")
    plt.close(fig)
    return {
        "methods.compared": len(rows),
        "methods.best_of_n.n": profile.methods.best_of_n[-1],
        "methods.best_of_n.gold_reward": bon["gold_reward"],
        "methods.best_of_n.kl": bon["kl"],
    }
