"""Stage ``eval``: the SFT-vs-PPO comparison on held-out prompts and the KL-coefficient sweep (two cached
artifacts), then ``results/samples.md`` and the figures of notebooks 10 and 11."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from utils.artifacts import (
    atomic_write_json,
    atomic_write_text,
    get_or_build,
    read_jsonl,
    read_meta,
    run_dir,
    write_jsonl,
)
from utils.evaluation import (
    METRICS,
    evaluate_policy,
    kl_sweep,
    pairwise_outcomes,
    plot_overoptimisation,
    samples_table,
    sampling_config,
    sweep_finals,
    sweep_run_config,
    sweep_summary,
    sweep_table,
    win_rate,
)
from utils.plotting import save_figure, use_headless_backend_if_needed
from utils.ppo import reward_model_fn
from utils.ppo_logs import plot_dashboard, read_log
from utils.profiles import Profile
from utils.seed import set_seed
from utils.stages.data import load_dataset_rows
from utils.stages.ppo import load_ppo_policy, ppo_dir, ppo_key, ppo_training_key
from utils.stages.profile import resolve_profile
from utils.stages.rm import load_reward_model
from utils.stages.sft import load_sft_model


def eval_key(profile: Profile) -> dict:
    """The SFT-vs-PPO evaluation depends on the PPO policy (``ppo_key`` names everything upstream of it) and
    on how it is evaluated; not on the sweep, nor on how many rows the table shows."""
    config = dataclasses.asdict(profile.evaluation)
    return {**ppo_key(profile), "evaluation": {k: v for k, v in config.items() if k not in ("sweep", "table_rows")}}


def sweep_key(profile: Profile) -> dict:
    """The sweep trains its own runs from the SFT policy against the reward model, with PPO's hyperparameters
    (all named by ``ppo_training_key``) but its own temperature; it does not use the trained PPO policy."""
    config = profile.evaluation
    # The sweep sets beta, the run length, the temperature and the seed of its runs itself, so the main run's
    # values of those fields are not part of what it depends on (retuning the main run's beta reuses the sweep).
    runs = sweep_run_config(profile.ppo, config.sweep, 0.0, config.seed)
    return {
        **ppo_training_key(profile),
        "ppo": runs,
        "sweep": config.sweep,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
    }


def _course_models(profile: Profile):
    """(SFT policy, reward model, proxy function, tokenizer) of the pipeline's cached artifacts."""
    policy, tokenizer = load_sft_model(profile)
    reward_model, _ = load_reward_model(profile)
    reward_model.requires_grad_(False)
    return policy, reward_model, reward_model_fn(reward_model), tokenizer


def _prompts(profile: Profile, name: str, n: int | None = None) -> list[str]:
    return [r["prompt"] for r in load_dataset_rows(name, profile)][:n]


def sweep_dir(profile: Profile | None = None, progress: bool = True) -> Path:
    """Folder of the KL-coefficient sweep (``sweep.json``), built on first use (a few minutes on 2 cores)."""
    profile = resolve_profile(profile)
    config, ppo = profile.evaluation, profile.ppo

    def build(folder: Path) -> dict:
        policy, reward_model, proxy_fn, tokenizer = _course_models(profile)
        value_model = reward_model if ppo.value_model == "model" else None
        set_seed(config.seed)
        start = time.perf_counter()
        records = kl_sweep(
            policy,
            proxy_fn,
            tokenizer,
            _prompts(profile, "rl_prompts_train"),
            _prompts(profile, "rl_prompts_test", config.sweep.eval_prompts),
            ppo,
            config.sweep,
            sampling_config(config, ppo, tokenizer),
            seed=config.seed,
            value_model=value_model,
            progress=progress,
        )
        atomic_write_json(folder / "sweep.json", records)
        return {"seconds": time.perf_counter() - start, **sweep_summary(records)}

    return get_or_build("kl_sweep", sweep_key(profile), build)


def load_sweep(profile: Profile | None = None) -> list[dict]:
    """The records of the KL-coefficient sweep (see ``utils.evaluation.kl_sweep``), computing it first if needed."""
    return json.loads((sweep_dir(profile) / "sweep.json").read_text())


def eval_dir(profile: Profile | None = None) -> Path:
    """Folder of the SFT-vs-PPO evaluation on the held-out prompts (samples of both, means, win rate)."""
    profile = resolve_profile(profile)
    config, ppo = profile.evaluation, profile.ppo

    def build(folder: Path) -> dict:
        sft, _, proxy_fn, tokenizer = _course_models(profile)
        trained, _ = load_ppo_policy(profile)
        prompts = _prompts(profile, "rl_prompts_test", config.num_prompts)
        sampling = sampling_config(config, ppo, tokenizer)
        evaluate = dict(
            proxy_fn=proxy_fn,
            tokenizer=tokenizer,
            prompts=prompts,
            sampling=sampling,
            seed=config.seed,
            batch_size=config.batch_size,
        )
        start = time.perf_counter()
        sft_metrics, sft_samples = evaluate_policy(sft, sft, **evaluate)
        ppo_metrics, ppo_samples = evaluate_policy(trained, sft, **evaluate)
        write_jsonl(folder / "samples_sft.jsonl", sft_samples)
        write_jsonl(folder / "samples_ppo.jsonl", ppo_samples)
        whole = [[s["prompt"] + s["response"] for s in samples] for samples in (ppo_samples, sft_samples)]
        wins, ties, losses = pairwise_outcomes(*whole)
        meta = {f"sft.{k}": v for k, v in sft_metrics.items()}
        meta.update({f"ppo.{k}": v for k, v in ppo_metrics.items()})
        meta.update(
            win_rate_vs_sft=(wins + 0.5 * ties) / len(prompts),
            wins=wins,
            ties=ties,
            losses=losses,
            proxy_win_rate_vs_sft=win_rate(*whole, judge=_proxy_judge(ppo_samples + sft_samples)),
            temperature=sampling.temperature,
            seconds=time.perf_counter() - start,
        )
        return meta

    return get_or_build("eval", eval_key(profile), build)


def _proxy_judge(samples: Sequence[dict]) -> Callable[[str], float]:
    """A judge that looks up the proxy score already computed for each whole text."""
    scores = {s["prompt"] + s["response"]: s["proxy_reward"] for s in samples}
    return scores.__getitem__


def load_eval_samples(profile: Profile | None = None) -> tuple[list[dict], list[dict]]:
    """(SFT samples, PPO samples) of the held-out evaluation, row i of both answering the same prompt."""
    folder = eval_dir(profile)
    return read_jsonl(folder / "samples_sft.jsonl"), read_jsonl(folder / "samples_ppo.jsonl")


def eval_metrics(profile: Profile) -> dict:
    """Stage ``eval``: the SFT-vs-PPO evaluation and the KL sweep (cached artifacts), then writes
    ``results/samples.md`` and the figures (PPO dashboard, over-optimisation); the ``eval.*`` metrics."""
    import matplotlib.pyplot as plt

    use_headless_backend_if_needed()
    config = profile.evaluation
    meta = read_meta(eval_dir(profile))
    sft_samples, ppo_samples = load_eval_samples(profile)
    rows = range(min(config.table_rows, len(sft_samples)))
    table = samples_table(
        [sft_samples[i]["prompt"] for i in rows],
        [sft_samples[i]["response"] for i in rows],
        [ppo_samples[i]["response"] for i in rows],
        [sft_samples[i]["gold_reward"] for i in rows],
        [ppo_samples[i]["gold_reward"] for i in rows],
        [sft_samples[i]["proxy_reward"] for i in rows],
        [ppo_samples[i]["proxy_reward"] for i in rows],
    )
    records = load_sweep(profile)
    summary = read_meta(sweep_dir(profile))
    atomic_write_text(run_dir() / "samples.md", _samples_markdown(meta, table, records))

    for name, fig in (
        ("10_ppo_dashboard", plot_dashboard(read_log(ppo_dir(profile)))),
        ("11_overoptimisation", plot_overoptimisation(records)),
    ):
        save_figure(fig, name)
        plt.close(fig)

    metrics = {f"eval.{k}": meta[k] for k in ("win_rate_vs_sft", "proxy_win_rate_vs_sft", "wins", "ties", "losses")}
    for policy in ("sft", "ppo"):
        metrics.update({f"eval.{policy}.{k}": meta[f"{policy}.{k}"] for k in METRICS})
    metrics.update({f"eval.sweep.{k}": v for k, v in summary.items()})
    metrics.update({f"eval.sweep.{k}": v for k, v in sweep_finals(records).items()})
    return metrics


def _samples_markdown(meta: dict, table: str, records: Sequence[dict]) -> str:
    means = "\n".join(f"| {k} | {meta[f'sft.{k}']:.3f} | {meta[f'ppo.{k}']:.3f} |" for k in METRICS)
    return (
        "# Samples before (SFT) and after PPO\n\n"
        f"Held-out review openings (`rl_prompts_test`), one sample each at temperature {meta['temperature']:g} "
        "(the temperature PPO trained at) from the SFT policy and "
        "from the PPO policy (the same random seed). *gold*: the review world's true reward (sentiment in "
        "[-1, 1], -2 if the text is not a grammatical review); *proxy*: the reward model's normalised score.\n\n"
        + table
        + "\n## Means over all held-out prompts\n\n| metric | SFT | PPO |\n|---|---:|---:|\n"
        + means
        + f"\n\nWin rate of PPO against SFT (gold judge, ties count half): {meta['win_rate_vs_sft']:.3f} "
        f"({meta['wins']} wins, {meta['ties']} ties, {meta['losses']} losses).\n\n"
        "## KL-coefficient sweep (final evaluation of each run)\n\n" + sweep_table(records)
    )
