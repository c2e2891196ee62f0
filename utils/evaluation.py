"""Evaluating an RLHF policy, and watching it hack its reward model.

PPO maximises a *proxy*: a reward model fitted to a few thousand noisy, length-biased comparisons. What we
want is the *gold* reward those comparisons were noisy glimpses of. Usually the gold reward is unknowable;
in the review world it is a function (:func:`utils.review_world.gold_reward`), so this module can measure,
on held-out prompts and for any policy:

* **gold reward**: the sentiment of prompt + response in [-1, 1], or -2 if the text is not a review;
* **proxy reward**: the reward model's normalised score, the very function PPO maximised;
* **KL(policy || reference)** in nats per response, estimated on the policy's own samples as the sum over
  response tokens of ``log p - log p_ref`` (k1, unbiased) and of ``(r - 1) - log r`` (k3, unbiased and >= 0);
* the shares of **positive** and of **grammatical** reviews, the **length** in words, the **EOS rate** (how
  often the policy ends its answer by itself) and the sequence **entropy** estimate ``-sum log p``.

Then it compares policies (:func:`win_rate`, ties count half) and sweeps the KL coefficient beta
(:func:`kl_sweep`): several short PPO runs from the SFT policy, each evaluated along the way. Plotted against
KL, the proxy keeps rising while the gold reward rises, peaks and falls: the over-optimisation curve of
Gao, Schulman and Hilton, "Scaling Laws for Reward Model Overoptimization" (2022).

The pipeline's ``eval`` stage (:mod:`utils.stages.evaluation`) caches the sweep (``kl_sweep`` artifact) and
the SFT-vs-PPO comparison (``eval`` artifact), and writes ``results/samples.md`` and the figures.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from utils import review_world as rw
from utils.config_checks import check, check_instance, check_int, check_number, check_numbers
from utils.decoding import SamplingConfig, generate_with_logprobs, left_pad
from utils.policy_model import response_logits
from utils.ppo import PPOConfig, PPOTrainer, RewardFn, decode_episodes, text_reward_fn
from utils.ppo_losses import kl_k1, kl_k3, logprobs_from_logits

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from transformers import PreTrainedTokenizerBase

# The per-policy means that evaluate_policy reports (and that every sweep checkpoint records).
METRICS = (
    "gold_reward",
    "proxy_reward",
    "kl",
    "kl_k3",
    "entropy",
    "positive_fraction",
    "grammatical_fraction",
    "length_words",
    "length_tokens",
    "eos_rate",
)


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepConfig:
    """The KL-coefficient sweep: short PPO runs from the SFT policy, one per beta, evaluated along the way."""

    betas: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3)
    """the fixed KL coefficients swept (no adaptive controller: each run keeps its beta)"""
    total_episodes: int = 1_024
    """episodes per run; short on purpose: the sweep must fit a few minutes of a 2-core CPU"""
    batch_size: int | None = None
    """episodes per PPO update; None: the pipeline PPO config's"""
    evaluations: int = 4
    """evaluations along each run, evenly spaced in updates (the last one at the end), plus the shared
    evaluation of the starting SFT policy at KL = 0"""
    eval_prompts: int = 128
    """held-out prompts per evaluation (the first ones of rl_prompts_test); fewer is faster but noisier"""
    samples_kept: int = 8
    """final samples stored per run, for the notebooks' before/after displays"""
    temperature: float | None = 1.0
    """sampling temperature of every run (training and evaluations); None: the PPO config's. 1, not the main
    run's 0.7: the untempered policy reaches the reward model's blind spots within the 1,024 episodes a run
    can afford here. At 0.7 the same hack comes later (beta 0 over 4,096 episodes: gold +0.01 -> -1.14 after
    576 episodes, -2.0 (nothing grammatical) from ~1,600 on, KL 189 nats; 1,024-episode runs stop before it)"""

    def __post_init__(self) -> None:
        check_numbers(self, "betas", ge=0)
        check(self, "betas", list(self.betas) == sorted(set(self.betas)), "strictly increasing")
        for name in ("total_episodes", "evaluations", "eval_prompts", "samples_kept"):
            check_int(self, name, ge=1)
        check_int(self, "batch_size", ge=1, none_ok=True)
        check_number(self, "temperature", gt=0, none_ok=True)


@dataclass(frozen=True)
class EvalConfig:
    """How policies are evaluated on the held-out prompts, and the sweep of the over-optimisation figure."""

    num_prompts: int = 256
    """held-out prompts (rl_prompts_test) for the SFT-vs-PPO comparison"""
    temperature: float | None = None
    """sampling temperature; None: the PPO config's temperature, i.e. the distribution PPO trained (and whose
    KL to the reference, tempered alike, the penalty held down)"""
    max_new_tokens: int | None = None
    """response budget in tokens; None: the PPO config's response_length (what the policy was trained with)"""
    batch_size: int = 128
    """prompts sampled together"""
    seed: int = 1234
    """seed of the evaluation's sampling; one seed for every policy (common random numbers)"""
    table_rows: int = 12
    """rows of the before/after table in results/samples.md"""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """the KL-coefficient sweep"""

    def __post_init__(self) -> None:
        for name in ("num_prompts", "batch_size", "table_rows"):
            check_int(self, name, ge=1)
        check_number(self, "temperature", gt=0, none_ok=True)
        check_int(self, "max_new_tokens", ge=1, none_ok=True)
        check_int(self, "seed", ge=0)
        check_instance(self, "sweep", SweepConfig)


def sampling_config(config: EvalConfig, ppo: PPOConfig, tokenizer: PreTrainedTokenizerBase) -> SamplingConfig:
    """Pure sampling with the temperature and response budget PPO trained with (unless ``config`` sets them)."""
    return SamplingConfig(
        max_new_tokens=config.max_new_tokens or ppo.response_length,
        temperature=config.temperature or ppo.temperature,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# ---------------------------------------------------------------------------------------------------------
# Evaluating one policy
# ---------------------------------------------------------------------------------------------------------
def response_logprobs(
    model: nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, context_length: int, temperature: float
) -> torch.Tensor:
    """log p(token) (B, R) of every response token of ``sequences`` (B, P + R) under ``model`` at ``temperature``.

    Computed the same way for the policy and the reference (one forward pass each, left padding handled by
    position ids), so that two identical models give a KL of exactly 0.
    """
    logits, _ = response_logits(model, sequences, attention_mask, context_length, temperature)  # (B, R, V)
    return logprobs_from_logits(logits, sequences[:, context_length:])  # (B, R)


@torch.no_grad()
def evaluate_policy(
    policy: nn.Module,
    ref_policy: nn.Module,
    proxy_fn: RewardFn,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    sampling: SamplingConfig,
    seed: int = 0,
    batch_size: int = 128,
    gold_fn: Callable[[str], float] = rw.gold_reward,
) -> tuple[dict[str, float], list[dict]]:
    """Sample one response per prompt from ``policy`` and measure it. Returns ``(means, samples)``.

    Args:
        policy, ref_policy: causal LMs sharing ``tokenizer`` (the reference is usually the SFT model).
        proxy_fn: the proxy reward of finished episodes, in the trainer's form (:data:`utils.ppo.RewardFn`),
            e.g. ``utils.ppo.reward_model_fn(reward_model)``: the normalised reward-model score PPO maximised.
        prompts: held-out prompts (text; the tokenizer adds BOS).
        sampling: pure sampling (``do_sample=True``, no top-k / top-p), so that the samples come from the
            distribution whose KL is estimated.
        seed: seeds the sampling generator: the same seed gives the same samples from the same policy.
        gold_fn: the judge of ``prompt + response`` (default: the review world's gold reward).

    ``samples`` holds one dict per prompt (prompt, response, gold and proxy rewards, k1 and k3 KL, entropy,
    positive, grammatical, length in words and tokens, eos, and the response's token ids up to and with
    EOS); ``means`` their averages (:data:`METRICS`), plus
    the standard errors ``gold_reward_se``, ``proxy_reward_se`` and ``kl_se``.
    """
    if not prompts:
        raise ValueError("prompts is empty: nothing to evaluate")
    if not sampling.do_sample or sampling.top_k != 0 or sampling.top_p != 1.0:
        raise ValueError(
            "evaluate_policy needs pure sampling (do_sample=True, top_k=0, top_p=1.0): the KL "
            f"estimate is only valid on samples from the policy itself, got {sampling}"
        )
    if sampling.eos_token_id is None or sampling.eos_token_id == sampling.pad_token_id:
        raise ValueError(
            "sampling needs an eos_token_id distinct from pad_token_id, "
            f"got eos={sampling.eos_token_id}, pad={sampling.pad_token_id}"
        )
    policy.eval()
    ref_policy.eval()
    generator = torch.Generator().manual_seed(seed)
    encoded = tokenizer(list(prompts))["input_ids"]
    samples = []
    for start in range(0, len(encoded), batch_size):
        queries, query_mask = left_pad(encoded[start : start + batch_size], sampling.pad_token_id)  # (B, P)
        out = generate_with_logprobs(policy, queries, query_mask, sampling, generator)
        P, mask = queries.shape[1], out.completion_mask  # mask: (B, R) response tokens up to and with EOS
        attention_mask = torch.cat([query_mask, mask.long()], dim=1)  # (B, P + R)
        logprobs = response_logprobs(policy, out.sequences, attention_mask, P, sampling.temperature)
        ref_logprobs = response_logprobs(ref_policy, out.sequences, attention_mask, P, sampling.temperature)
        k1 = torch.where(mask, kl_k1(logprobs, ref_logprobs), 0.0).sum(1)  # (B,) nats per response
        k3 = torch.where(mask, kl_k3(logprobs, ref_logprobs), 0.0).sum(1)
        entropy = torch.where(mask, -logprobs, 0.0).sum(1)
        proxy = proxy_fn(out.sequences, attention_mask, P).float()  # (B,)
        has_eos = (out.sequences[:, P:] == sampling.eos_token_id).any(1)
        texts, responses = decode_episodes(tokenizer, out.sequences, P)
        response_ids = out.sequences[:, P:]
        for i, (prompt, response) in enumerate(zip(texts, responses)):
            parsed = rw.parse((prompt + response).strip())
            samples.append(
                {
                    "prompt": prompt,
                    "response": response,
                    "gold_reward": gold_fn(prompt + response),
                    "proxy_reward": proxy[i].item(),
                    "kl": k1[i].item(),
                    "kl_k3": k3[i].item(),
                    "entropy": entropy[i].item(),
                    "positive": parsed is not None and parsed.sentiment > 0,
                    "grammatical": parsed is not None,
                    "length_words": rw.word_count(response),
                    "length_tokens": int(mask[i].sum()),
                    "eos": bool(has_eos[i]),
                    "response_ids": response_ids[i][mask[i]].tolist(),
                }
            )
    return summarise(samples), samples


def summarise(samples: Sequence[dict]) -> dict[str, float]:
    """Means of the per-sample table of :func:`evaluate_policy` (and standard errors of the key ones)."""
    if not samples:
        raise ValueError("no samples to summarise")
    columns = {
        "gold_reward": "gold_reward",
        "proxy_reward": "proxy_reward",
        "kl": "kl",
        "kl_k3": "kl_k3",
        "entropy": "entropy",
        "positive_fraction": "positive",
        "grammatical_fraction": "grammatical",
        "length_words": "length_words",
        "length_tokens": "length_tokens",
        "eos_rate": "eos",
    }
    n = len(samples)
    means = {name: sum(float(s[key]) for s in samples) / n for name, key in columns.items()}
    for name in ("gold_reward", "proxy_reward", "kl"):
        values = [float(s[name]) for s in samples]
        var = sum((v - means[name]) ** 2 for v in values) / max(n - 1, 1)
        means[f"{name}_se"] = math.sqrt(var / n)
    return means


# ---------------------------------------------------------------------------------------------------------
# Comparing two policies
# ---------------------------------------------------------------------------------------------------------
def pairwise_outcomes(
    texts_a: Sequence[str], texts_b: Sequence[str], judge: Callable[[str], float] = rw.gold_reward
) -> tuple[int, int, int]:
    """(wins, ties, losses) of A against B, pair by pair (the i-th texts answer the same prompt)."""
    if len(texts_a) != len(texts_b):
        raise ValueError(f"texts_a and texts_b must pair up, got {len(texts_a)} and {len(texts_b)} texts")
    if not texts_a:
        raise ValueError("no texts to compare")
    wins = ties = 0
    for a, b in zip(texts_a, texts_b):
        score_a, score_b = judge(a), judge(b)
        wins += score_a > score_b
        ties += score_a == score_b
    return wins, ties, len(texts_a) - wins - ties


def win_rate(texts_a: Sequence[str], texts_b: Sequence[str], judge: Callable[[str], float] = rw.gold_reward) -> float:
    """Share of prompts where A's text beats B's under ``judge``, a tie counting half.

    ``texts_a[i]`` and ``texts_b[i]`` must answer the same prompt (whole texts: prompt + response). 0.5 means
    no difference; the default judge is the gold reward, so two ungrammatical answers (both -2) tie.
    """
    wins, ties, _ = pairwise_outcomes(texts_a, texts_b, judge)
    return (wins + 0.5 * ties) / len(texts_a)


# ---------------------------------------------------------------------------------------------------------
# The KL-coefficient sweep
# ---------------------------------------------------------------------------------------------------------
def evaluation_updates(num_updates: int, evaluations: int) -> list[int]:
    """The updates after which a run of ``num_updates`` is evaluated: ``evaluations`` evenly spaced, the
    last one at the end (fewer if the run has fewer updates)."""
    if num_updates < 1 or evaluations < 1:
        raise ValueError(f"num_updates and evaluations must be >= 1, got {num_updates} and {evaluations}")
    return sorted({max(1, round(num_updates * (k + 1) / evaluations)) for k in range(evaluations)})


def sweep_run_config(ppo: PPOConfig, sweep: SweepConfig, beta: float, seed: int) -> PPOConfig:
    """The PPO config of the sweep's run at ``beta``: ``ppo`` with the sweep's run length, batch size and
    temperature, a fixed beta (no adaptive controller), no LoRA, no checkpoints, and the given seed."""
    batch_size = sweep.batch_size or ppo.batch_size
    return dataclasses.replace(
        ppo,
        kl_coef=float(beta),
        adaptive_kl=False,
        total_episodes=sweep.total_episodes,
        batch_size=batch_size,
        num_minibatches=ppo.num_minibatches if batch_size % ppo.num_minibatches == 0 else 1,
        generation_batch_size=None,
        use_lora=False,
        checkpoint_every=0,
        seed=seed,
        temperature=sweep.temperature or ppo.temperature,
    )


def kl_sweep(
    policy: nn.Module,
    proxy_fn: RewardFn,
    tokenizer: PreTrainedTokenizerBase,
    train_prompts: Sequence[str],
    eval_prompts: Sequence[str],
    ppo: PPOConfig,
    sweep: SweepConfig,
    sampling: SamplingConfig,
    seed: int = 0,
    value_model: nn.Module | None = None,
    progress: bool = False,
) -> list[dict]:
    """Train one short PPO run per beta in ``sweep.betas`` from (a copy of) ``policy``; evaluate along the way.

    Every run starts from the same policy, uses the same prompts and seeds, and differs only in beta (fixed,
    no adaptive controller). The reference is a frozen copy of ``policy``. ``ppo`` supplies every other
    hyperparameter; ``sweep`` the run length, batch size, temperature and evaluation schedule; ``sampling``
    how the evaluations sample (at the runs' temperature, whatever its own). ``value_model`` (a copy of it
    is trained per run) is needed when ``ppo.value_model == "model"``.

    Returns one record per beta: ``{"beta", "temperature" (the run's), <final METRICS>, "train_seconds",
    "checkpoints": [{"update", "episodes", <METRICS>}, ...], "log": <the trainer's per-update log>,
    "samples": [...]}``. The first checkpoint is the starting policy (update 0, KL 0), shared by all runs.
    """
    from tqdm.auto import tqdm

    if not train_prompts or not eval_prompts:
        raise ValueError("train_prompts and eval_prompts must be non-empty")
    runs = sweep_run_config(ppo, sweep, 0.0, seed)  # every run but for its beta
    sampling = dataclasses.replace(sampling, temperature=runs.temperature)  # evaluate what was trained
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    train_ids = tokenizer(list(train_prompts))["input_ids"]
    gold_fn = text_reward_fn(rw.gold_reward, tokenizer)

    def evaluate(model: nn.Module) -> tuple[dict, list[dict]]:
        return evaluate_policy(model, reference, proxy_fn, tokenizer, eval_prompts, sampling, seed=seed)

    start_metrics, _ = evaluate(reference)
    records = []
    bar = tqdm(total=len(sweep.betas) * runs.num_updates, desc="KL sweep", unit="update", disable=not progress)
    for beta in sweep.betas:
        config = sweep_run_config(ppo, sweep, beta, seed)
        trainer = PPOTrainer(
            config,
            copy.deepcopy(policy),
            reference,
            proxy_fn,
            train_ids,
            tokenizer.pad_token_id,
            tokenizer.eos_token_id,
            gold_fn=gold_fn,
            value_model=copy.deepcopy(value_model) if value_model is not None else None,
        )
        checkpoints = [{"update": 0, "episodes": 0, **start_metrics}]
        train_seconds = 0.0
        for update in evaluation_updates(config.num_updates, sweep.evaluations):
            begin = time.perf_counter()
            done = trainer.update
            trainer.train(progress=False, max_updates=update - done)
            train_seconds += time.perf_counter() - begin
            metrics, samples = evaluate(trainer.model.policy)
            bar.update(update - done)
            bar.set_postfix(beta=f"{beta:g}", kl=f"{metrics['kl']:.1f}", gold=f"{metrics['gold_reward']:+.2f}")
            checkpoints.append({"update": update, "episodes": update * config.batch_size, **metrics})
        records.append(
            {
                "beta": float(beta),
                "temperature": config.temperature,
                **metrics,
                "train_seconds": train_seconds,
                "checkpoints": checkpoints,
                "log": trainer.log,
                "samples": samples[: sweep.samples_kept],
            }
        )
    bar.close()
    return records


def sweep_summary(records: Sequence[dict]) -> dict[str, float]:
    """The sweep in a few numbers: the beta with the best final gold reward, and what the smallest beta did.

    Keys: ``best_beta``, ``best_gold``, ``best_kl``, ``best_proxy``; ``lowest_beta``, ``lowest_beta_gold``,
    ``lowest_beta_proxy``, ``lowest_beta_kl``; ``start_gold``, ``start_proxy`` (the SFT policy); ``peak_gold``
    and ``peak_gold_kl`` (the best gold over every checkpoint of every run, and the KL it was reached at).
    """
    if not records:
        raise ValueError("the sweep is empty")
    best = max(records, key=lambda r: r["gold_reward"])
    lowest = min(records, key=lambda r: r["beta"])
    start = records[0]["checkpoints"][0]
    peak = max((c for r in records for c in r["checkpoints"]), key=lambda c: c["gold_reward"])
    return {
        "best_beta": best["beta"],
        "best_gold": best["gold_reward"],
        "best_kl": best["kl"],
        "best_proxy": best["proxy_reward"],
        "lowest_beta": lowest["beta"],
        "lowest_beta_gold": lowest["gold_reward"],
        "lowest_beta_proxy": lowest["proxy_reward"],
        "lowest_beta_kl": lowest["kl"],
        "start_gold": start["gold_reward"],
        "start_proxy": start["proxy_reward"],
        "peak_gold": peak["gold_reward"],
        "peak_gold_kl": peak["kl"],
    }


def sweep_finals(records: Sequence[dict]) -> dict[str, float]:
    """Each run's end point, flat: ``beta=0.03/gold_reward``, ``beta=0.03/proxy_reward``, ``beta=0.03/kl`` for
    every beta of the sweep (metrics that several seeds can average, beta by beta)."""
    return {
        f"beta={record['beta']:g}/{key}": float(record[key])
        for record in records
        for key in ("gold_reward", "proxy_reward", "kl")
    }


# ---------------------------------------------------------------------------------------------------------
# What a practitioner watches during a run
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HealthThresholds:
    """Rules of thumb for a PPO run on a language model; each check compares the end of the run to its start."""

    max_kl: float = 10.0
    """KL(policy || reference) in nats per response; past ~10 the proxy is usually being exploited"""
    min_entropy_ratio: float = 0.5
    """sequence entropy (-sum log p per response) below this share of its start value: entropy collapse"""
    max_length_ratio: float = 1.5
    """responses this many times longer than at the start: a length-biased reward model being exploited?"""
    min_eos_rate: float = 0.9
    """share of responses that end with EOS; below it the policy has stopped stopping"""
    max_clipfrac: float = 0.2
    """share of tokens whose probability ratio was clipped; above it the updates are too large (lower lr)"""
    min_explained_variance: float = 0.0
    """the value function should explain some of the returns' variance; below 0 it is worse than a constant"""
    tail: float = 0.1
    """share of the last updates averaged as "the end of the run" (logged values are noisy)"""

    def __post_init__(self) -> None:
        for name in ("max_kl", "max_length_ratio"):
            check_number(self, name, gt=0)
        check_number(self, "min_entropy_ratio", ge=0)
        for name in ("min_eos_rate", "max_clipfrac"):
            check_number(self, name, ge=0, le=1)
        check_number(self, "min_explained_variance", le=1)
        check_number(self, "tail", gt=0, le=1)


def health_report(log: Sequence[dict], thresholds: HealthThresholds = HealthThresholds()) -> list[dict]:
    """Check a PPO log (one dict per update, TRL's metric names) against :class:`HealthThresholds`.

    Returns one row per check: ``{"check", "metric", "start", "end", "ok", "meaning"}``, where ``start`` is
    the first update's value and ``end`` the mean over the last ``tail`` share of the updates.
    """
    if not log:
        raise ValueError("the log is empty: nothing to check")
    n_tail = max(1, round(len(log) * thresholds.tail))

    def start_end(key: str) -> tuple[float, float]:
        if key not in log[0]:
            raise ValueError(f"the log has no {key!r}; is it a utils.ppo log?")
        return log[0][key], sum(row[key] for row in log[-n_tail:]) / n_tail

    t, rows = thresholds, []

    def check(name: str, key: str, ok: Callable[[float, float], bool], meaning: str) -> None:
        start, end = start_end(key)
        rows.append(
            {"check": name, "metric": key, "start": start, "end": end, "ok": bool(ok(start, end)), "meaning": meaning}
        )

    check(
        "KL to the reference",
        "objective/kl",
        lambda s, e: e <= t.max_kl,
        f"<= {t.max_kl:g} nats per response: the policy stays where the reward model is trustworthy",
    )
    check(
        "entropy collapse",
        "objective/entropy",
        lambda s, e: e >= t.min_entropy_ratio * s,
        f"entropy >= {t.min_entropy_ratio:g} x its start: the policy still samples varied answers",
    )
    check(
        "length growth",
        "val/response_length",
        lambda s, e: e <= t.max_length_ratio * s,
        f"length <= {t.max_length_ratio:g} x its start: longer answers may be bought with reward-model bias",
    )
    check(
        "EOS rate",
        "val/eos_fraction",
        lambda s, e: e >= t.min_eos_rate,
        f">= {t.min_eos_rate:g} of the responses end with EOS",
    )
    check(
        "clip fraction",
        "policy/clipfrac_avg",
        lambda s, e: e <= t.max_clipfrac,
        f"<= {t.max_clipfrac:g} of the tokens clipped: the updates stay inside PPO's trust region",
    )
    check(
        "value explained variance",
        "val/explained_variance",
        lambda s, e: math.isfinite(e) and e >= t.min_explained_variance,
        f">= {t.min_explained_variance:g}: the value function predicts the returns better than a constant",
    )
    return rows


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    """Text made safe for one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ").strip() or "(empty)"


def samples_table(
    prompts: Sequence[str],
    before: Sequence[str],
    after: Sequence[str],
    gold_before: Sequence[float],
    gold_after: Sequence[float],
    proxy_before: Sequence[float] | None = None,
    proxy_after: Sequence[float] | None = None,
    names: tuple[str, str] = ("SFT", "PPO"),
) -> str:
    """A Markdown table: one row per prompt, the two responses side by side with their scores.

    ``before`` / ``after`` are the responses (without the prompt); scores are printed with 2 decimals.
    """
    columns = [prompts, before, after, gold_before, gold_after]
    with_proxy = proxy_before is not None and proxy_after is not None
    if with_proxy:
        columns += [proxy_before, proxy_after]
    if len({len(c) for c in columns}) != 1:
        raise ValueError(f"every column must have one entry per prompt, got lengths {[len(c) for c in columns]}")
    a, b = names
    header = ["#", "prompt", f"{a} response", f"{a} gold"] + ([f"{a} proxy"] if with_proxy else [])
    header += [f"{b} response", f"{b} gold"] + ([f"{b} proxy"] if with_proxy else [])
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if h.endswith(("gold", "proxy", "#")) else "---" for h in header) + "|",
    ]
    for i, prompt in enumerate(prompts):
        row = [str(i + 1), _cell(prompt), _cell(before[i]), f"{gold_before[i]:+.2f}"]
        row += [f"{proxy_before[i]:+.2f}"] if with_proxy else []
        row += [_cell(after[i]), f"{gold_after[i]:+.2f}"] + ([f"{proxy_after[i]:+.2f}"] if with_proxy else [])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def sweep_table(records: Sequence[dict]) -> str:
    """A Markdown table of the sweep's final evaluations, one row per beta (and the SFT start)."""
    header = "| beta | KL k1 (nats) | KL k3 | proxy | gold | positive | grammatical | words | EOS rate |"
    lines = [header, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def row(name: str, m: dict) -> str:
        return (
            f"| {name} | {m['kl']:.2f} | {m['kl_k3']:.2f} | {m['proxy_reward']:+.2f} | {m['gold_reward']:+.3f} | "
            f"{m['positive_fraction']:.2f} | {m['grammatical_fraction']:.2f} | {m['length_words']:.1f} | "
            f"{m['eos_rate']:.2f} |"
        )

    lines.append(row("SFT (start)", records[0]["checkpoints"][0]))
    lines += [row(f"{r['beta']:g}", r) for r in records]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------
OVEROPTIMISATION_PANELS = (
    ("proxy_reward", "proxy reward (RM, normalised)"),
    ("gold_reward", "gold reward (true sentiment)"),
    ("length_words", "response length (words)"),
)


def plot_overoptimisation(
    records: Sequence[dict], panels: Sequence[tuple[str, str]] = OVEROPTIMISATION_PANELS, sqrt_kl: bool = False
) -> Figure:
    """One panel per metric against KL(policy || reference): every run of the sweep as a line through its
    checkpoints (from the SFT policy at KL = 0), coloured by beta. ``sqrt_kl`` puts sqrt(KL) on the x axis,
    the distance measure of Gao et al. (2022)."""
    import matplotlib.pyplot as plt

    if not records:
        raise ValueError("the sweep is empty: nothing to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), constrained_layout=True)
    axes = [axes] if len(panels) == 1 else list(axes)
    colours = plt.cm.viridis([i / max(len(records) - 1, 1) for i in range(len(records))])
    for record, colour in zip(records, colours):
        kl = [max(c["kl"], 0.0) for c in record["checkpoints"]]
        x = [math.sqrt(k) for k in kl] if sqrt_kl else kl
        for ax, (key, _) in zip(axes, panels):
            ax.plot(
                x,
                [c[key] for c in record["checkpoints"]],
                "o-",
                color=colour,
                ms=3.5,
                lw=1.3,
                label=f"beta = {record['beta']:g}",
            )
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("sqrt KL (sqrt nats)" if sqrt_kl else "KL(policy || reference), nats per response")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def plot_run(record: dict, axes=None) -> Figure:
    """One sweep run (one beta) over training: proxy and gold reward, and KL, against episodes."""
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
    else:
        fig = axes[0].figure
    log = record["log"]
    episodes = [row["episode"] for row in log]
    axes[0].plot(episodes, [row["objective/scores"] for row in log], label="proxy (RM score, training batch)")
    axes[0].plot(episodes, [row["objective/gold_reward"] for row in log], label="gold (training batch)")
    axes[0].plot(episodes, [row["objective/rlhf_reward"] for row in log], label="score - beta KL", lw=0.8)
    axes[1].plot(episodes, [row["objective/kl"] for row in log], color="C3")
    axes[0].set(title=f"beta = {record['beta']:g}: rewards", xlabel="episodes")
    axes[1].set(title="KL to reference (nats / response)", xlabel="episodes")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig
