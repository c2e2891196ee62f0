"""Worker for tests/test_ppo_multiprocess.py: a few tiny PPO updates, then the parameters are saved.

Run as ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ppo_multiprocess_worker.py OUT``
(or ``accelerate launch --num_processes 2 --cpu ...``), or imported and called with one process. Tiny: the
models are 2-layer GPT-2s of width 16 over 32 tokens; what matters is that any number of processes
makes the same updates.
"""

from __future__ import annotations

import copy
import sys

import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from utils.distributed import Processes, init_distributed
from utils.language_model import gpt2_config
from utils.ppo import PPOConfig, PPOTrainer, reward_model_fn

VOCAB, EOS, PAD = 32, 0, 1

# Two configurations that between them touch every statistic that must be global: advantage whitening,
# reward whitening and running score normalisation; minibatches whose rows are split unevenly between the
# processes; the value head and the separate value model.
CONFIGS = {
    "head": PPOConfig(
        total_episodes=32,
        batch_size=16,
        num_minibatches=4,
        ppo_epochs=2,
        generation_batch_size=4,
        response_length=10,
        lr=3e-3,
        whiten_rewards=True,
        normalize_scores=True,
        missing_eos_penalty=0.5,
    ),
    "model": PPOConfig(
        total_episodes=32,
        batch_size=16,
        num_minibatches=2,
        ppo_epochs=2,
        generation_batch_size=8,
        response_length=10,
        lr=3e-3,
        value_model="model",
        kl_estimator="k3",
        adaptive_kl=True,
        kl_horizon=100,
    ),
}


def tiny_config() -> GPT2Config:
    return gpt2_config(VOCAB, 32, 16, 2, 2, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD, num_labels=1)


def run(name: str) -> dict:
    """Train configuration ``name`` in this process (alone or as one of several); return state and log."""
    config = CONFIGS[name]
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(tiny_config())
    reward_model = GPT2ForSequenceClassification(tiny_config()).requires_grad_(False)
    value_model = copy.deepcopy(reward_model).requires_grad_(True) if config.value_model == "model" else None
    generator = torch.Generator().manual_seed(0)
    prompts = [
        [EOS] + torch.randint(2, VOCAB, (int(n),), generator=generator).tolist()
        for n in torch.randint(1, 6, (48,), generator=generator)
    ]
    trainer = PPOTrainer(
        config, policy, copy.deepcopy(policy), reward_model_fn(reward_model), prompts, PAD, EOS, value_model=value_model
    )
    log = trainer.train(progress=False)
    return {"state": trainer.model.state_dict(), "log": log, "world_size": Processes.current().world_size}


def main(out_path: str) -> None:
    torch.set_num_threads(1)
    init_distributed()
    results = {name: run(name) for name in CONFIGS}
    if Processes.current().rank == 0:
        torch.save(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
