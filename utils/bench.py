"""How fast is our PPO on this machine? ``python -m utils.bench [--flags]``.

Builds randomly initialised GPT-2 models of the requested size (random weights are fine: the cost of a
PPO update does not depend on what the weights say, only on their shapes and on the response lengths,
and a random policy almost never emits EOS, so every response is full length), runs :class:`utils.ppo.
PPOTrainer` for ``--episodes`` episodes, and prints:

* the configuration (all flags) and the machine: threads, load average, a bare fp32 matmul's GFLOP/s;
* completions (episodes) per second, generated tokens per second, peak memory (RSS);
* the FLOPs one completion costs (counted from the shapes, as in the Chinchilla / Kaplan papers:
  2 FLOPs per multiply-add, backward = 2 x forward) and the share of the matmul throughput that PPO
  achieves;
* where the time goes: generation, the policy/value forward, the reference forward, scoring, training.

The reference configuration (the defaults) is the one we compare with TRL: policy, reward and value model
GPT-2 with 4 layers, 4 heads, width 128, vocabulary 4096 (1.35M parameters), 8-token prompts, 32-token
responses, batch 16, 4 PPO epochs, 1 minibatch, 512 episodes, 2 threads, fp32.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time
from dataclasses import dataclass

import torch

from utils.config_checks import check, check_bool, check_choice, check_int
from utils.policy_model import use_fused_gelu
from utils.ppo import VALUE_MODELS, PPOConfig, PPOTrainer, reward_model_fn
from utils.seed import set_seed


@dataclass(frozen=True)
class BenchConfig:
    """What is benchmarked (the defaults are the reference configuration). Validated on construction."""

    n_layer: int = 4
    """transformer blocks of every model"""
    n_head: int = 4
    """attention heads"""
    n_embd: int = 128
    """width"""
    vocab_size: int = 4096
    """vocabulary (random token ids; 0 = BOS/EOS, 1 = PAD, so at least 3)"""
    prompt_length: int = 8
    """tokens per prompt, BOS included"""
    response_length: int = 32
    """tokens sampled per response"""
    batch_size: int = 16
    """episodes per PPO update"""
    ppo_epochs: int = 4
    """passes over each batch"""
    num_minibatches: int = 1
    """optimiser steps per pass"""
    episodes: int = 512
    """episodes in the timed run"""
    threads: int = 2
    """torch intra-op threads"""
    value_model: str = "model"
    """"model": separate value network (TRL's layout) or "head" on the policy"""
    use_lora: bool = False
    """train the policy as a LoRA adapter (reference = adapter disabled)"""
    seed: int = 0
    """seeds the random weights, prompts and the PPO run"""

    def __post_init__(self) -> None:
        for name in (
            "n_layer",
            "n_head",
            "n_embd",
            "prompt_length",
            "response_length",
            "batch_size",
            "ppo_epochs",
            "num_minibatches",
            "episodes",
            "threads",
        ):
            check_int(self, name, ge=1)
        check_int(self, "vocab_size", ge=3)
        check_int(self, "seed", ge=0)
        check(self, "n_embd", self.n_embd % self.n_head == 0, f"divisible by n_head ({self.n_head})")
        check_choice(self, "value_model", VALUE_MODELS)
        check_bool(self, "use_lora")


def build_models(config: BenchConfig):
    """(policy, reference, reward model, value model or None) with random weights of the configured shape."""
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    from utils.language_model import gpt2_config

    gpt2 = gpt2_config(
        config.vocab_size,
        max(256, config.prompt_length + config.response_length),
        config.n_embd,
        config.n_layer,
        config.n_head,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
        num_labels=1,
    )
    set_seed(config.seed)
    policy = GPT2LMHeadModel(gpt2)
    reference = None if config.use_lora else copy.deepcopy(policy)
    reward_model = use_fused_gelu(GPT2ForSequenceClassification(gpt2).requires_grad_(False))
    value_model = copy.deepcopy(reward_model).requires_grad_(True) if config.value_model == "model" else None
    return policy, reference, reward_model, value_model


def matmul_gflops(threads: int, size: int = 1024, seconds: float = 1.0) -> float:
    """Throughput of a bare fp32 (size x size) @ (size x size) matmul: this machine's practical ceiling."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def forward_flops(config: BenchConfig, tokens: int, context: float, head_positions: int, head_width: int) -> float:
    """FLOPs of one forward pass of one sequence: the blocks' matmuls on ``tokens`` tokens (12 C^2 weights
    per block: QKV 3 C^2, projection C^2, MLP 8 C^2), attention scores and mixing (2 x 2 C per token and
    attended position, ``context`` positions on average), and an output head of ``head_width`` on
    ``head_positions`` positions."""
    C, L = config.n_embd, config.n_layer
    return 2 * tokens * 12 * L * C * C + 4 * L * C * tokens * context + 2 * head_positions * C * head_width


def flops_per_completion(config: BenchConfig) -> dict[str, float]:
    """FLOPs one episode costs, by phase (every response assumed full length, as with random weights)."""
    P, R, V = config.prompt_length, config.response_length, config.vocab_size
    T = P + R
    full = dict(tokens=T, context=(T + 1) / 2)  # a teacher-forced pass over prompt + response
    # Generation: the prompt once (prefill, logits only for its last position), then one token per step.
    generation = forward_flops(config, P, (P + 1) / 2, 1, V) + forward_flops(config, R - 1, P + R / 2, R - 1, V)
    policy = forward_flops(config, **full, head_positions=R, head_width=V)  # logits of the R response tokens
    value = forward_flops(config, **full, head_positions=R, head_width=1)  # a separate value model
    separate_value = config.value_model == "model"
    flops = {
        "generation": generation,  # log-probs, entropies (and a value head) are recorded while sampling
        "value_forward": value if separate_value else 0.0,
        "reference_forward": policy,
        "scoring": forward_flops(config, **full, head_positions=1, head_width=1),
        "training": config.ppo_epochs * 3 * (policy + (value if separate_value else 0.0)),
    }
    flops["total"] = sum(flops.values())
    return flops


def training_state_mb(trainer: PPOTrainer, *others: torch.nn.Module | None) -> dict[str, float]:
    """Memory held by the weights of every model (policy with its value part, reference, reward model),
    the gradients of the trainable ones and Adam's two moments: what LoRA saves, without the interpreter's
    few hundred MB of libraries that dominate the RSS of a model this small."""
    mb = lambda tensors: sum(t.numel() * t.element_size() for t in tensors) / 2**20  # noqa: E731
    models = [trainer.model, trainer.ref_policy, *others]
    weights = mb({id(p): p for m in models if m is not None for p in m.parameters()}.values())
    optimizer = mb(
        v for state in trainer.optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.dim() > 0
    )
    return {
        "weights_mb": weights,
        "gradients_mb": mb(trainer.params),
        "adam_state_mb": optimizer,
        "total_mb": weights + mb(trainer.params) + optimizer,
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(config: BenchConfig) -> dict:
    """Run the benchmark; returns every number it measured."""
    torch.set_num_threads(config.threads)
    load_before = os.getloadavg()[0]
    gflops_peak = matmul_gflops(config.threads)
    rss_start = peak_rss_mb()

    policy, reference, reward_model, value_model = build_models(config)
    generator = torch.Generator().manual_seed(config.seed)
    prompts = torch.randint(2, config.vocab_size, (config.episodes, config.prompt_length), generator=generator)
    prompts[:, 0] = 0  # BOS
    ppo = PPOConfig(
        total_episodes=config.episodes,
        batch_size=config.batch_size,
        num_minibatches=config.num_minibatches,
        ppo_epochs=config.ppo_epochs,
        response_length=config.response_length,
        value_model=config.value_model,
        use_lora=config.use_lora,
        seed=config.seed,
    )
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
    trainable = sum(p.numel() for p in trainer.params)

    start, cpu_start = time.perf_counter(), time.process_time()
    log = trainer.train(progress=False)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    state = training_state_mb(trainer, reward_model)
    episodes = config.episodes // config.batch_size * config.batch_size
    tokens = sum(row["val/response_length"] * config.batch_size for row in log)
    phases = ("generation", "value_forward", "reference_forward", "scoring", "training")
    phase_seconds = {p: sum(row.get(f"time/{p}", 0.0) for row in log) for p in phases}
    phase_seconds["other"] = seconds - sum(phase_seconds.values())
    flops = flops_per_completion(config)
    achieved = flops["total"] * episodes / seconds / 1e9
    return {
        "config": config.__dict__,
        "params_policy": sum(p.numel() for p in policy.parameters()),
        "params_trainable": trainable,
        "threads": config.threads,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "matmul_gflops": gflops_peak,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "episodes_per_second": episodes / seconds,
        "episodes_per_cpu_second": episodes / cpu_seconds,
        "tokens_per_second": tokens / seconds,
        "first_update_seconds": log[0]["time/update"],
        "episodes_per_second_after_first_update": (episodes - config.batch_size) / (seconds - log[0]["time/update"])
        if len(log) > 1
        else float("nan"),
        "peak_rss_mb": peak_rss_mb(),
        "rss_growth_mb": peak_rss_mb() - rss_start,
        "training_state_mb": state,
        "gflop_per_completion": flops["total"] / 1e9,
        "achieved_gflops": achieved,
        "share_of_matmul_throughput": achieved / gflops_peak,
        "ceiling_episodes_per_second": gflops_peak * 1e9 / flops["total"],
        "phase_seconds": phase_seconds,
        "phase_gflop_per_completion": {k: v / 1e9 for k, v in flops.items() if k != "total"},
    }


def report(result: dict) -> str:
    """The result as readable text."""
    c = result["config"]
    lines = ["PPO benchmark (utils.bench)", "configuration:"]
    lines += [f"  {k} = {v}" for k, v in c.items()]
    lines += [
        f"policy parameters: {result['params_policy']:,} (trainable incl. value: {result['params_trainable']:,})",
        f"machine: {result['threads']} threads, load average {result['load_average_1min'][0]:.2f} -> "
        f"{result['load_average_1min'][1]:.2f}, bare fp32 matmul {result['matmul_gflops']:.1f} GFLOP/s",
        f"episodes/s: {result['episodes_per_second']:.1f}  (after the first update: "
        f"{result['episodes_per_second_after_first_update']:.1f}; ceiling at matmul speed: "
        f"{result['ceiling_episodes_per_second']:.1f})",
        f"episodes per CPU-second: {result['episodes_per_cpu_second']:.1f} (CPU time of all threads; on a busy "
        f"machine with 1 thread, about the wall-clock speed the idle machine would give)",
        f"tokens/s: {result['tokens_per_second']:.0f}",
        f"peak RSS: {result['peak_rss_mb']:.0f} MB (of which the run added {result['rss_growth_mb']:.0f} MB); "
        f"weights + gradients + Adam state: {result['training_state_mb']['total_mb']:.1f} MB",
        f"FLOPs per completion: {result['gflop_per_completion']:.2f} GFLOP -> {result['achieved_gflops']:.1f} GFLOP/s "
        f"= {100 * result['share_of_matmul_throughput']:.0f}% of the matmul throughput",
        "where the time goes (seconds, share, GFLOP/completion):",
    ]
    total = result["seconds"]
    for phase, seconds in result["phase_seconds"].items():
        gflop = result["phase_gflop_per_completion"].get(phase)
        lines.append(
            f"  {phase:<22}{seconds:7.2f} s {100 * seconds / total:5.1f}%"
            + (f"  {gflop:.3f}" if gflop is not None else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in defaults.__dict__.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        elif name == "value_model":
            parser.add_argument(flag, choices=VALUE_MODELS, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = vars(parser.parse_args(argv))
    json_path = args.pop("json")
    result = run(BenchConfig(**args))
    print(report(result))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
