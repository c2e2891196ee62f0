"""REINFORCE and PPO on CartPole-v1: they must actually learn, and the same seed must give the same run."""

from __future__ import annotations

import math

import gymnasium as gym
import pytest
import torch
from torch.testing import assert_close

from utils.cartpole import (
    SOLVED_RETURN,
    ActorCritic,
    Episode,
    PPOConfig,
    REINFORCEConfig,
    evaluate,
    policy_gradient_variance,
    reinforce_loss,
    rewards_to_go,
    train_ppo,
    train_reinforce,
)
from utils.ppo_losses import logprobs_from_logits


def test_rewards_to_go_by_hand():
    assert_close(rewards_to_go(torch.tensor([1.0, 1.0, 1.0]), gamma=0.5), torch.tensor([1.75, 1.5, 1.0]))


def test_reinforce_loss_by_hand():
    torch.manual_seed(0)
    agent = ActorCritic(hidden_size=8)
    episode = Episode(torch.randn(3, 4), torch.tensor([0, 1, 1]), torch.tensor([1.0, 1.0, 1.0]))
    returns = torch.tensor([1.75, 1.5, 1.0])  # gamma = 0.5
    logprobs = logprobs_from_logits(agent.actor(episode.observations), episode.actions)

    loss_none, value_loss_none, weights_none = reinforce_loss(agent, [episode], gamma=0.5, baseline="none")
    assert_close(loss_none, -(logprobs * returns).mean())
    assert value_loss_none == 0
    assert_close(weights_none, returns)

    loss_mean, _, _ = reinforce_loss(agent, [episode], gamma=0.5, baseline="mean")
    assert_close(loss_mean, -(logprobs * (returns - returns.mean())).mean())
    loss_fixed, _, _ = reinforce_loss(agent, [episode], gamma=0.5, baseline="mean", mean_baseline=1.0)
    assert_close(loss_fixed, -(logprobs * (returns - 1.0)).mean())

    values = agent.get_value(episode.observations)
    loss_value, value_loss, _ = reinforce_loss(agent, [episode], gamma=0.5, baseline="value")
    assert_close(loss_value, -(logprobs * (returns - values)).mean())
    assert_close(value_loss, 0.5 * ((values - returns) ** 2).mean())
    # The policy loss must not train the critic: its gradient w.r.t. the critic is zero.
    critic_grads = torch.autograd.grad(loss_value, list(agent.critic.parameters()), allow_unused=True)
    assert all(g is None or torch.all(g == 0) for g in critic_grads)


class AlwaysLeft(ActorCritic):
    """A fixed policy whose logits always prefer action 0: its returns are known from gymnasium directly."""

    def __init__(self) -> None:
        super().__init__(hidden_size=4)
        self.actor = torch.nn.Linear(4, 2)
        torch.nn.init.zeros_(self.actor.weight)
        self.actor.bias.data = torch.tensor([1.0, 0.0])


def test_evaluate_matches_direct_gymnasium_rollouts():
    expected = []
    for episode in range(3):
        env = gym.make("CartPole-v1")
        env.reset(seed=100 + episode)
        steps, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(0)
            steps, done = steps + 1, terminated or truncated
        expected.append(steps)
    assert evaluate(AlwaysLeft(), episodes=3, seed=100, greedy=True) == pytest.approx(sum(expected) / 3)


def test_evaluate_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(1)
    agent = ActorCritic()
    state = torch.get_rng_state()
    first = evaluate(agent, episodes=5, seed=7, greedy=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert evaluate(agent, episodes=5, seed=7, greedy=False) == first
    with pytest.raises(ValueError, match="episodes"):
        evaluate(agent, episodes=0)


def test_a_baseline_reduces_policy_gradient_variance():
    torch.manual_seed(2)
    agent = ActorCritic()
    before = [p.detach().clone() for p in agent.parameters()]
    rng_state = torch.get_rng_state()
    result = policy_gradient_variance(agent, num_episodes=32, seed=3)
    # Returns are all positive, so without a baseline every action is pushed up: large, noisy gradients.
    assert result["mean"]["variance"] < 0.5 * result["none"]["variance"]
    assert set(result) == {"none", "mean", "value"} and math.isfinite(result["value"]["variance"])
    assert all(torch.equal(a, b) for a, b in zip(before, agent.parameters()))
    assert all(p.grad is None for p in agent.parameters())
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert policy_gradient_variance(agent, num_episodes=32, seed=3) == result


def test_reinforce_with_baseline_learns():
    # A random policy keeps the pole up for ~22 steps; a broken gradient (wrong sign, no update, baseline
    # leaking into the policy gradient) stays there or gets worse.
    agent, history = train_reinforce(REINFORCEConfig(seed=1, iterations=10, baseline="value"))
    random_policy = evaluate(ActorCritic(), episodes=10, seed=0, greedy=False)
    trained = evaluate(agent, episodes=10, seed=0, greedy=False)
    assert random_policy < 40
    assert trained > 100, f"REINFORCE reached only {trained:.1f} (history: {[h['mean_return'] for h in history]})"


def test_ppo_is_deterministic_for_a_seed():
    tiny = dict(total_timesteps=2 * 8 * 16, num_envs=8, num_steps=16, update_epochs=2, num_minibatches=2)
    first = train_ppo(PPOConfig(seed=5, **tiny))
    second = train_ppo(PPOConfig(seed=5, **tiny))
    other = train_ppo(PPOConfig(seed=6, **tiny))

    def numbers(row):
        return {k: v for k, v in row.items() if k != "seconds"}

    assert [numbers(r) for r in first[1]] == [numbers(r) for r in second[1]]
    for a, b in zip(first[0].parameters(), second[0].parameters()):
        assert torch.equal(a, b)
    assert numbers(first[1][0]) != numbers(other[1][0])
    row = first[1][0]
    for key in ("approx_kl", "clipfrac", "explained_variance", "entropy", "value_loss", "policy_loss"):
        assert math.isfinite(row[key]), key
    assert 0 < row["entropy"] <= math.log(2) + 1e-6


def test_config_validation():
    with pytest.raises(ValueError, match="num_minibatches"):
        PPOConfig(num_envs=8, num_steps=16, num_minibatches=3)
    with pytest.raises(ValueError, match="clip_coef"):
        PPOConfig(clip_coef=1.0)
    with pytest.raises(ValueError, match="gae_lambda"):
        PPOConfig(gae_lambda=1.2)
    with pytest.raises(ValueError, match="total_timesteps"):
        PPOConfig(total_timesteps=10)
    with pytest.raises(ValueError, match="baseline"):
        REINFORCEConfig(baseline="critic")


@pytest.mark.slow
def test_ppo_solves_cartpole():
    config = PPOConfig()
    agent, history = train_ppo(config)
    score = evaluate(agent, episodes=20, seed=10_000, greedy=True)
    assert score >= SOLVED_RETURN, f"PPO scored {score:.1f} after {history[-1]['global_step']} steps"
