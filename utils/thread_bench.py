"""One thread or two? ``python -m utils.thread_bench`` times the course's workloads both ways, idle and busy.

On a 2-core machine torch's default is two OpenMP threads per process. For models as small as the course's
(4 blocks of width 128, about 0.9M parameters) every operation is tiny, so the threads meet at a barrier
after each ``addmm`` or ``layer_norm``. When another process holds one of the cores (a browser, a second
notebook, Colab's neighbour), one thread must wait for the core it cannot get, and every operation waits
with it: the run does not slow down by 2x but collapses.

This benchmark measures that, for each kind of work the course does, with the course's own shapes (random
weights: the cost depends only on the shapes):

* ``lm_train``: base-LM training steps (batch 32 x 64 tokens, AdamW), as in stage ``lm`` and notebook 04;
* ``sft_train``: instruction-tuning steps (batch 32, about 40 tokens), as in stage ``sft`` and notebook 06;
* ``rm_train``: reward-model steps (64 pairs, about 30 tokens each), as in stage ``rm`` and notebook 08;
* ``generate``: sampling 64 continuations of 32 tokens with a KV cache, as in notebooks 05, 10 and 11;
* ``ppo``: PPO updates (policy, reference, reward and value model), as in stage ``ppo`` and the KL slider.

Each is timed with 1 and with 2 threads, on an idle machine and with one other process spinning on a core
(``--load`` runs ``while True: pass`` in a subprocess for the duration of a measurement). It prints a table
and, with ``--json``, writes the numbers. The course's default (:func:`utils.seed.configure_threads`) is
chosen from these measurements; see the README section "Threads".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from utils.config_checks import check_int

WORKLOADS = ("lm_train", "sft_train", "rm_train", "generate", "ppo")


@dataclass(frozen=True)
class ThreadBenchConfig:
    """What is measured. Validated on construction."""

    repeats: int = 3
    """timed repetitions of each workload per condition (the median is reported)"""
    steps: int = 10
    """optimiser steps (or generation calls, or PPO updates) in one repetition"""
    vocab_size: int = 1024
    """the course tokenizer's vocabulary"""
    seed: int = 0
    """seeds the random weights and inputs"""

    def __post_init__(self) -> None:
        for name in ("repeats", "steps", "vocab_size"):
            check_int(self, name, ge=1)
        check_int(self, "seed", ge=0)


def _gpt2(vocab_size: int, classifier: bool = False):
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    from utils.language_model import gpt2_config

    config = gpt2_config(vocab_size, 256, 128, 4, 4, bos_token_id=0, eos_token_id=0, pad_token_id=1, num_labels=1)
    return GPT2ForSequenceClassification(config) if classifier else GPT2LMHeadModel(config)


def _train_steps(model: torch.nn.Module, batch: torch.Tensor, steps: int, lm: bool) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(steps):
        if lm:
            loss = model(input_ids=batch, labels=batch).loss
        else:  # Bradley-Terry on (chosen, rejected) halves of the batch
            scores = model(input_ids=batch).logits.squeeze(-1)
            chosen, rejected = scores.chunk(2)
            loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def make_workload(name: str, config: ThreadBenchConfig) -> Callable[[], None]:
    """A zero-argument function that runs ``config.steps`` units of the named workload once."""
    torch.manual_seed(config.seed)
    tokens = lambda *shape: torch.randint(2, config.vocab_size, shape)  # noqa: E731
    if name == "lm_train":
        model, batch = _gpt2(config.vocab_size), tokens(32, 64)
        return lambda: _train_steps(model, batch, config.steps, lm=True)
    if name == "sft_train":
        model, batch = _gpt2(config.vocab_size), tokens(32, 40)
        return lambda: _train_steps(model, batch, config.steps, lm=True)
    if name == "rm_train":
        model, batch = _gpt2(config.vocab_size, classifier=True), tokens(128, 30)
        return lambda: _train_steps(model, batch, config.steps, lm=False)
    if name == "generate":
        model, prompts = _gpt2(config.vocab_size).eval(), tokens(64, 8)

        def generate() -> None:
            with torch.no_grad():
                for _ in range(max(1, config.steps // 5)):
                    model.generate(
                        prompts, do_sample=True, max_new_tokens=32, min_new_tokens=32, pad_token_id=1, eos_token_id=0
                    )

        return generate
    if name == "ppo":
        from utils.bench import BenchConfig, build_models
        from utils.ppo import PPOConfig, PPOTrainer, reward_model_fn

        bench = BenchConfig(
            vocab_size=config.vocab_size, batch_size=64, value_model=PPOConfig.value_model, seed=config.seed
        )
        policy, reference, reward_model, value_model = build_models(bench)
        prompts = tokens(64 * config.steps, 8)
        prompts[:, 0] = 0
        ppo = PPOConfig(
            total_episodes=64 * max(1, config.steps // 5),
            batch_size=64,
            response_length=32,
            seed=config.seed,
        )

        def ppo_updates() -> None:
            trainer = PPOTrainer(
                ppo,
                policy,
                reference,
                reward_model_fn(reward_model),
                prompts.tolist(),
                pad_token_id=1,
                eos_token_id=0,
                value_model=value_model,
            )
            trainer.train(progress=False)

        return ppo_updates
    raise ValueError(f"workload {name!r} is unknown; choose from {list(WORKLOADS)}")


@contextmanager
def busy_core(active: bool):
    """Another process spinning on one core while the block runs (nothing when ``active`` is False)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if active else None
    try:
        if spinner is not None:
            time.sleep(0.5)  # let the scheduler give it its core
        yield
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def time_workload(run: Callable[[], None], threads: int, loaded: bool, repeats: int) -> float:
    """Median seconds of ``repeats`` runs with ``threads`` intra-op threads, idle or beside a busy core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run()  # warm-up: allocator, kernels, the spinner settling
        with busy_core(loaded):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return sorted(times)[len(times) // 2]


def measure(config: ThreadBenchConfig, workloads: tuple[str, ...] = WORKLOADS) -> dict:
    """Seconds per repetition for every workload x (1, 2 threads) x (idle, loaded)."""
    load_before = os.getloadavg()[0]
    rows = {}
    for name in workloads:
        run = make_workload(name, config)
        rows[name] = {
            f"{threads}t_{'loaded' if loaded else 'idle'}": time_workload(run, threads, loaded, config.repeats)
            for loaded in (False, True)
            for threads in (1, 2)
        }
    return {
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "torch": torch.__version__,
        "config": config.__dict__,
        "seconds": rows,
    }


def format_table(result: dict) -> str:
    """A markdown table: seconds per repetition, and how much 2 threads gain (idle) or lose (loaded)."""
    lines = [
        "| workload | 1 thread idle | 2 threads idle | 1 thread loaded | 2 threads loaded "
        "| 2 vs 1, idle | 2 vs 1, loaded |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in result["seconds"].items():
        lines.append(
            f"| {name} | {s['1t_idle']:.2f} s | {s['2t_idle']:.2f} s | {s['1t_loaded']:.2f} s | {s['2t_loaded']:.2f} s "
            f"| {s['1t_idle'] / s['2t_idle']:.2f}x faster | {s['2t_loaded'] / s['1t_loaded']:.1f}x slower |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.thread_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=ThreadBenchConfig.repeats)
    parser.add_argument("--steps", type=int, default=ThreadBenchConfig.steps)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    try:
        config = ThreadBenchConfig(repeats=args.repeats, steps=args.steps)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    result = measure(config, tuple(args.workloads))
    cpus, load = result["cpu_count"], result["load_average_before"]
    print(f"{cpus} CPUs, load average {load:.2f} before, torch {result['torch']}")
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
