"""Three mistakes in PPO that every earlier test let through, each pinned by a test that fails under it.

A reliability probe mutated the code; these three mutations passed the whole suite:
- the entropy bonus added with the wrong sign (a penalty that sharpens the policy);
- a linear learning-rate schedule that reaches 0 one update early (the last update does nothing);
- reward whitening that also shifts the mean (TRL keeps it: the sign of a reward carries meaning).
Each test checks the public trainer (``utils.ppo.PPOTrainer``) against a hand computation, on tiny random
GPT-2 models (vocabulary 32, width 16): only the mechanics matter. The CartPole PPO of notebook 09
(``utils.cartpole.train_ppo``) has its own entropy bonus, which the same sign flip got past too.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from test_ppo import EOS, PAD, VOCAB, tiny_config  # one tiny GPT-2 for every PPO test
from transformers import GPT2LMHeadModel

from utils.cartpole import PPOConfig as CartPoleConfig
from utils.cartpole import train_ppo as train_cartpole_ppo
from utils.ppo import PPOConfig, PPOTrainer


def tiny_policy(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_config()).eval()


def prompts(n: int = 32, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        [EOS] + torch.randint(2, VOCAB, (int(k),), generator=generator).tolist()
        for k in torch.randint(2, 6, (n,), generator=generator)
    ]


def constant_reward(value: float):
    def score(query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int) -> torch.Tensor:
        return torch.full((query_responses.shape[0],), value)

    return score


def make_trainer(reward: float = 0.0, **overrides) -> PPOTrainer:
    fields = dict(
        total_episodes=64,
        batch_size=16,
        num_minibatches=2,
        ppo_epochs=1,
        response_length=8,
        lr=1e-2,
        kl_coef=0.0,
        missing_eos_penalty=0.0,
    )
    config = PPOConfig(**{**fields, **overrides})
    policy = tiny_policy()
    return PPOTrainer(config, policy, copy.deepcopy(policy), constant_reward(reward), prompts(), PAD, EOS)


def mean_entropy(trainer: PPOTrainer, batch, rows: torch.Tensor) -> torch.Tensor:
    """Mean entropy, over the valid response tokens of ``rows``, of the (tempered) policy the trainer samples."""
    logits, _ = trainer.model(
        batch.query_responses[rows], batch.attention_mask[rows], batch.context_length, trainer.config.temperature
    )
    entropy = torch.distributions.Categorical(logits=logits).entropy()
    mask = batch.mask[rows]
    return (entropy * mask).sum() / mask.sum()


# ------------------------------------------------------------------------------------------------
# (a) The entropy bonus is a bonus: loss = PPO loss - ent_coef * entropy
# ------------------------------------------------------------------------------------------------
def test_entropy_bonus_lowers_the_loss_by_ent_coef_times_the_entropy():
    trainer = make_trainer(ent_coef=0.5)
    batch, _ = trainer.collect_rollout(0, trainer.kl_controller.beta)
    rows = torch.arange(8)
    with_bonus, _ = trainer.minibatch_loss(batch, rows)
    trainer.config = dataclasses.replace(trainer.config, ent_coef=0.0)
    without_bonus, _ = trainer.minibatch_loss(batch, rows)
    entropy = mean_entropy(trainer, batch, rows)
    assert entropy > 1.0  # a random policy over 32 tokens: the bonus is far from negligible
    torch.testing.assert_close(without_bonus - with_bonus, 0.5 * entropy)


def test_an_update_driven_only_by_the_entropy_bonus_raises_the_entropy():
    """Constant reward, no KL: every advantage is 0, so the bonus is the only force; it must broaden the policy."""
    trainer = make_trainer(ent_coef=1.0, total_episodes=16)
    batch, _ = trainer.collect_rollout(0, trainer.kl_controller.beta)
    rows = torch.arange(16)
    assert torch.all(batch.advantages == 0)
    before = mean_entropy(trainer, batch, rows).item()
    trainer.train(progress=False)
    after = mean_entropy(trainer, batch, rows).item()
    assert after > before + 1e-3, (before, after)


def test_cartpole_entropy_bonus_keeps_the_policy_at_maximum_entropy():
    """Bonus 10, no critic loss: the policy stays at the two-action maximum, log 2; without it, it sharpens."""

    def final_entropy(ent_coef: float) -> float:
        config = CartPoleConfig(total_timesteps=3 * 512, ent_coef=ent_coef, vf_coef=0.0, update_epochs=10)
        return train_cartpole_ppo(config)[1][-1]["entropy"]

    with_bonus, without = final_entropy(10.0), final_entropy(0.0)
    assert with_bonus > math.log(2) - 2e-3  # measured: 0.6929 (a penalty instead: 0.661)
    assert with_bonus > without + 0.01  # measured: 0.6675


# ------------------------------------------------------------------------------------------------
# (b) The learning-rate schedule: linear to 0 AFTER the last update (TRL/CleanRL: lr * (1 - k / N))
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schedule", "factor"),
    [
        ("linear", lambda k, n: 1 - k / n),
        ("cosine", lambda k, n: 0.5 * (1 + math.cos(math.pi * k / n))),
        ("constant", lambda k, n: 1.0),
    ],
    ids=["linear", "cosine", "constant"],
)
def test_learning_rate_of_every_update(schedule, factor):
    n = 4
    trainer = make_trainer(reward=1.0, lr_schedule=schedule, total_episodes=16 * n, lr=1e-2)
    trainer.train(progress=False, max_updates=n - 1)
    before_last = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    log = trainer.train(progress=False)
    assert [r["update"] for r in log] == [1, 2, 3, 4]
    assert [r["lr"] for r in log] == pytest.approx([1e-2 * factor(k, n) for k in range(n)], rel=1e-12)
    assert log[-1]["lr"] > 0  # the last update still learns ...
    moved = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before_last[k])]
    assert moved  # ... and its step did move the weights


def test_cartpole_learning_rate_anneals_to_zero_after_the_last_iteration():
    config = CartPoleConfig(total_timesteps=4 * 512, learning_rate=1e-3, update_epochs=1)
    history = train_cartpole_ppo(config)[1]
    assert [r["learning_rate"] for r in history] == pytest.approx([1e-3 * (1 - k / 4) for k in range(4)], rel=1e-12)


# ------------------------------------------------------------------------------------------------
# (c) whiten_rewards rescales the per-token rewards to std 1 and KEEPS their mean
# ------------------------------------------------------------------------------------------------
def test_whitened_rewards_keep_their_mean():
    plain = make_trainer(reward=3.0, kl_coef=0.1)
    whitened = make_trainer(reward=3.0, kl_coef=0.1, whiten_rewards=True)
    beta = plain.kl_controller.beta
    raw, _ = plain.collect_rollout(0, beta)
    out, _ = whitened.collect_rollout(0, beta)
    assert torch.equal(raw.responses, out.responses)  # the same episodes: only the whitening differs
    mask = raw.mask
    values = raw.rewards[mask]
    mean, var = values.mean(), values.var(unbiased=True)
    by_hand = torch.where(mask, (raw.rewards - mean) / torch.sqrt(var + 1e-8) + mean, 0.0)
    torch.testing.assert_close(out.rewards, by_hand)
    assert mean.abs() > 0.1  # a mean that a shift would visibly remove
    torch.testing.assert_close(out.rewards[mask].mean(), mean)
    torch.testing.assert_close(out.rewards[mask].std(unbiased=True), torch.tensor(1.0), rtol=0, atol=1e-4)
