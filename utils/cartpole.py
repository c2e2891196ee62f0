"""Reinforcement learning on CartPole-v1, from REINFORCE to PPO, before we point PPO at a language model.

CartPole: push a cart left or right to keep a pole upright; +1 reward per step, the episode ends when the
pole falls (terminated) or after 500 steps (truncated), so the best possible return is 500.

- REINFORCE (Williams 1992): play whole episodes, then push up the log-probability of each action in
  proportion to the return that followed it. Unbiased but noisy; subtracting a baseline (a batch mean or
  a learned V(s)) keeps the expectation and cuts the variance, which `policy_gradient_variance` measures.
- PPO (Schulman et al. 2017), CleanRL-style: an actor-critic collects short rollouts from parallel
  environments, GAE turns rewards into advantages, and several epochs of minibatch updates maximise the
  clipped surrogate. All of its math comes from `utils.ppo_losses`, the same functions the language-model
  PPO trainer uses later in the course.

Everything runs on the CPU with one or two torch threads and is seeded end to end.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from utils.config_checks import check, check_bool, check_choice, check_int, check_number
from utils.ppo_losses import (
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    gae_for_env_rollout,
    logprobs_from_logits,
    masked_whiten,
)
from utils.seed import set_seed

ENV_ID = "CartPole-v1"
MAX_RETURN = 500.0  # CartPole-v1 truncates episodes at 500 steps of +1 reward
SOLVED_RETURN = 475.0  # gymnasium's reward_threshold for CartPole-v1

BASELINES = ("none", "mean", "value")


# ---------------------------------------------------------------------------------------------------------
# Environments and the agent
# ---------------------------------------------------------------------------------------------------------


def make_vector_env(num_envs: int) -> gym.vector.SyncVectorEnv:
    """`num_envs` CartPoles stepped in lockstep in this process (no subprocesses to start or debug).

    SAME_STEP autoreset: when an episode ends, `step` returns the first observation of the next episode
    and puts the last observation of the finished one in `info["final_obs"]` (needed to bootstrap
    truncated episodes). `envs.reset(seed=s)` seeds the environments with s, s+1, ..., s+num_envs-1.
    """
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make(ENV_ID) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights with gain `std` and constant bias, the initialisation CleanRL and baselines use."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def _mlp(in_dim: int, hidden_size: int, out_dim: int, out_std: float) -> nn.Sequential:
    """Two tanh hidden layers; `out_std` scales the last layer's init (tiny for the actor: near-uniform start)."""
    return nn.Sequential(
        layer_init(nn.Linear(in_dim, hidden_size)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden_size, hidden_size)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden_size, out_dim), std=out_std),
    )


class ActorCritic(nn.Module):
    """Separate policy (actor) and value (critic) MLPs over the observation vector.

    Separate networks avoid the policy and value losses fighting over shared features; for CartPole's
    4 numbers there is nothing to share anyway. REINFORCE uses the same class (the critic is its learned
    baseline, or unused).
    """

    def __init__(self, obs_dim: int = 4, n_actions: int = 2, hidden_size: int = 64) -> None:
        super().__init__()
        self.actor = _mlp(obs_dim, hidden_size, n_actions, out_std=0.01)
        self.critic = _mlp(obs_dim, hidden_size, 1, out_std=1.0)

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s): (B, obs_dim) -> (B,)."""
        return self.critic(obs).squeeze(-1)

    @torch.no_grad()
    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Sample a ~ pi(.|s) for acting only (no value, no entropy, no graph): (B, obs_dim) -> (B,)."""
        probs = torch.softmax(self.actor(obs), dim=-1)  # (B, n_actions)
        return torch.multinomial(probs, num_samples=1).squeeze(-1)

    def get_action_and_value(
        self, obs: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample an action (or score the given one); returns (action, logprob, entropy, value), each (B,)."""
        logits = self.actor(obs)  # (B, n_actions)
        if action is None:
            action = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).squeeze(-1)  # (B,)
        return action, logprobs_from_logits(logits, action), entropy_from_logits(logits), self.get_value(obs)


def _as_tensor(obs: np.ndarray) -> torch.Tensor:
    """Gymnasium observations are float32 (or float64) NumPy arrays; the networks want float32 tensors."""
    return torch.as_tensor(obs, dtype=torch.float32)


@contextlib.contextmanager
def _torch_threads(num_threads: int) -> Iterator[None]:
    """Use `num_threads` intra-op threads inside the block and restore the previous setting afterwards.

    Tiny MLPs run fastest on one or two threads; more threads only add synchronisation overhead.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def evaluate(agent: ActorCritic, episodes: int = 20, seed: int = 10_000, greedy: bool = True) -> float:
    """Mean return of `agent` over `episodes` fresh CartPole episodes (seeds seed, seed+1, ...).

    greedy=True plays the most likely action (the usual way to report a trained policy); greedy=False
    samples from the policy with a private generator, so evaluation never disturbs the global RNG.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes!r}")
    generator = torch.Generator().manual_seed(seed)
    env = gym.make(ENV_ID)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        episode_return, done = 0.0, False
        while not done:
            logits = agent.actor(_as_tensor(obs).unsqueeze(0))  # (1, n_actions)
            if greedy:
                action = int(logits.argmax(dim=-1))
            else:
                action = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))
            obs, reward, terminated, truncated, _ = env.step(action)
            episode_return += float(reward)
            done = terminated or truncated
        returns.append(episode_return)
    env.close()
    return float(np.mean(returns))


# ---------------------------------------------------------------------------------------------------------
# REINFORCE
# ---------------------------------------------------------------------------------------------------------


@dataclass
class REINFORCEConfig:
    """Hyperparameters of REINFORCE on CartPole-v1."""

    seed: int = 1
    """Seeds torch (action sampling, init) and the environment."""
    iterations: int = 30
    """Number of policy updates; each one uses a fresh batch of complete episodes."""
    episodes_per_iteration: int = 8
    """Episodes per batch: more episodes average away more of the gradient noise."""
    learning_rate: float = 1e-2
    """Adam step size for both the policy and the value baseline."""
    gamma: float = 0.99
    """Discount factor for the reward-to-go G_t = sum_k gamma^k r_{t+k}."""
    baseline: str = "value"
    """'none': weight log-probs by G_t; 'mean': by G_t minus the batch mean; 'value': by G_t - V(s_t)."""
    value_coef: float = 0.5
    """Weight of the baseline's regression loss 0.5 * (V(s_t) - G_t)^2 (only with baseline='value')."""
    hidden_size: int = 64
    """Width of the two hidden layers of the actor and of the critic."""
    torch_threads: int = 1
    """Intra-op threads while training: tiny networks are fastest on one."""

    def __post_init__(self) -> None:
        for name in ("iterations", "episodes_per_iteration", "hidden_size", "torch_threads"):
            check_int(self, name, ge=1)
        check_int(self, "seed", ge=0)
        check_number(self, "learning_rate", gt=0)
        check_number(self, "gamma", ge=0, le=1)
        check_choice(self, "baseline", BASELINES)
        check_number(self, "value_coef", ge=0)


@dataclass
class Episode:
    """One complete episode: observations (T, obs_dim), actions (T,), rewards (T,)."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor


@torch.no_grad()
def play_episode(agent: ActorCritic, env: gym.Env) -> Episode:
    """Play one episode from the env's current RNG state, sampling actions from the agent's policy."""
    obs, _ = env.reset()
    observations, actions, rewards = [], [], []
    done = False
    while not done:
        obs_t = _as_tensor(obs)
        action = agent.sample_action(obs_t.unsqueeze(0))  # (1,)
        obs, reward, terminated, truncated, _ = env.step(int(action))
        observations.append(obs_t)
        actions.append(action)
        rewards.append(float(reward))
        done = terminated or truncated
    return Episode(torch.stack(observations), torch.cat(actions), torch.tensor(rewards))


def rewards_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} for one episode: (T,) -> (T,)."""
    returns = torch.zeros_like(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def reinforce_loss(
    agent: ActorCritic,
    episodes: Sequence[Episode],
    gamma: float,
    baseline: str,
    mean_baseline: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """REINFORCE on a batch of episodes; returns (policy_loss, value_loss, weights), averaged over all steps.

    policy_loss = -mean_t[log pi(a_t|s_t) * (G_t - b_t)]; its gradient is the policy-gradient estimate.
    A baseline b_t that does not depend on a_t leaves the expected gradient unchanged (E[grad log pi] = 0)
    but shrinks its variance. baseline='mean' uses b = `mean_baseline`, by default the mean G_t of this
    batch; 'value' uses the critic's V(s_t), which value_loss (0 otherwise) regresses onto G_t.
    weights (sum T,) are the detached G_t - b_t that multiplied each log-probability.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    obs = torch.cat([e.observations for e in episodes])  # (sum T, obs_dim)
    actions = torch.cat([e.actions for e in episodes])  # (sum T,)
    returns = torch.cat([rewards_to_go(e.rewards, gamma) for e in episodes])  # (sum T,)

    value_loss = torch.zeros(())
    if baseline == "none":
        weights = returns
    elif baseline == "mean":
        weights = returns - (returns.mean() if mean_baseline is None else mean_baseline)
    else:
        values = agent.get_value(obs)  # (sum T,)
        weights = returns - values.detach()  # the baseline must not receive policy gradient
        value_loss = 0.5 * ((values - returns) ** 2).mean()
    logprobs = logprobs_from_logits(agent.actor(obs), actions)  # (sum T,)
    policy_loss = -(logprobs * weights).mean()
    return policy_loss, value_loss, weights


def train_reinforce(
    config: REINFORCEConfig, progress: Callable[[dict], None] | None = None
) -> tuple[ActorCritic, list[dict]]:
    """Train a policy with REINFORCE; returns (agent, history), one dict of diagnostics per iteration.

    Each history row: iteration, episodes (played so far), mean_return of this batch, policy_loss,
    value_loss, weight_std (std of the G_t - b_t that multiply grad log pi: the noise a baseline removes).
    `progress`, if given, is called with every row as it is produced (e.g. to print or plot live).
    """
    with _torch_threads(config.torch_threads):
        set_seed(config.seed)
        env = gym.make(ENV_ID)
        env.reset(seed=config.seed)  # later resets continue this RNG stream
        agent = ActorCritic(hidden_size=config.hidden_size)
        optimizer = torch.optim.Adam(agent.parameters(), lr=config.learning_rate)

        history: list[dict] = []
        for iteration in range(1, config.iterations + 1):
            episodes = [play_episode(agent, env) for _ in range(config.episodes_per_iteration)]
            policy_loss, value_loss, weights = reinforce_loss(agent, episodes, config.gamma, config.baseline)
            optimizer.zero_grad()
            (policy_loss + config.value_coef * value_loss).backward()
            optimizer.step()

            row = {
                "iteration": iteration,
                "episodes": iteration * config.episodes_per_iteration,
                "mean_return": float(np.mean([e.rewards.sum().item() for e in episodes])),
                "policy_loss": policy_loss.item(),
                "value_loss": value_loss.item(),
                "weight_std": weights.std().item(),
            }
            history.append(row)
            if progress is not None:
                progress(row)
        env.close()
    return agent, history


def policy_gradient_variance(
    agent: ActorCritic,
    num_episodes: int = 32,
    seed: int = 0,
    gamma: float = 0.99,
    baselines: Sequence[str] = BASELINES,
) -> dict[str, dict[str, float]]:
    """Measure how noisy the one-episode REINFORCE gradient is at the agent's current parameters.

    Plays `num_episodes` episodes once, then for every baseline computes each episode's policy gradient
    g_i and reports {"variance": mean_i ||g_i - g_mean||^2 (trace of the covariance), "mean_norm":
    ||g_mean||}. All baselines reuse the same episodes, so differences come from the baseline alone;
    'mean' subtracts the mean G_t of all the episodes, 'value' uses the agent's critic (train it first, or
    the comparison is meaningless). Parameters, their .grad and the global torch RNG are left untouched.
    """
    if num_episodes < 2:
        raise ValueError(f"num_episodes must be >= 2 to estimate a variance, got {num_episodes!r}")
    for baseline in baselines:
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        env = gym.make(ENV_ID)
        env.reset(seed=seed)
        episodes = [play_episode(agent, env) for _ in range(num_episodes)]
        env.close()

    batch_mean = torch.cat([rewards_to_go(e.rewards, gamma) for e in episodes]).mean().item()
    params = list(agent.actor.parameters())
    results: dict[str, dict[str, float]] = {}
    for baseline in baselines:
        grads = []
        for episode in episodes:
            loss, _, _ = reinforce_loss(agent, [episode], gamma, baseline, mean_baseline=batch_mean)
            grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
        stacked = torch.stack(grads)  # (num_episodes, n_params)
        mean = stacked.mean(dim=0)
        results[baseline] = {
            "variance": ((stacked - mean) ** 2).sum(dim=1).mean().item(),
            "mean_norm": mean.norm().item(),
        }
    return results


# ---------------------------------------------------------------------------------------------------------
# PPO
# ---------------------------------------------------------------------------------------------------------


@dataclass
class PPOConfig:
    """Hyperparameters of PPO on CartPole-v1.

    Tuned to solve CartPole (greedy evaluation >= 475) in 80k steps, well under a minute on two CPU cores.
    They start from rl-baselines3-zoo's CartPole settings (short rollouts, many epochs on the whole batch,
    gamma 0.98, lambda 0.8, lr 1e-3 annealed) with 16 environments, CleanRL's entropy bonus and a stronger
    critic, chosen by a sweep over seeds.
    """

    seed: int = 1
    """Seeds torch (init, action sampling, minibatch order) and the environments (seed, seed+1, ...)."""
    total_timesteps: int = 80_000
    """Environment steps over the whole run, summed over all parallel environments."""
    num_envs: int = 16
    """Parallel CartPoles in the SyncVectorEnv: more of them decorrelate the samples in a batch."""
    num_steps: int = 32
    """Steps per environment per rollout; the batch is num_envs * num_steps transitions."""
    learning_rate: float = 1e-3
    """Initial Adam step size."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run: big steps early, fine-tuning at the end."""
    gamma: float = 0.98
    """Discount factor; 0.98 looks about 50 steps ahead, plenty to keep a pole up."""
    gae_lambda: float = 0.8
    """GAE's lambda: 0 trusts the critic fully (TD), 1 uses raw Monte-Carlo returns."""
    num_minibatches: int = 1
    """Minibatches per epoch (1: each gradient step sees the whole batch); must divide batch_size."""
    update_epochs: int = 20
    """Passes over each rollout: reusing data is what the clipping makes safe."""
    norm_adv: bool = True
    """Whiten advantages per minibatch so the step size does not depend on the reward scale."""
    clip_coef: float = 0.2
    """PPO's epsilon: the probability ratio is clipped to [1 - eps, 1 + eps]."""
    clip_vloss: bool = False
    """Clip the value update to +-clip_coef around the rollout's values. CleanRL's default is True, but it
    lets V move by at most 0.2 per iteration, and here returns reach 1 / (1 - gamma) = 50."""
    ent_coef: float = 0.01
    """Weight of the entropy bonus, which keeps the policy from turning deterministic too early."""
    vf_coef: float = 1.0
    """Weight of the value loss in the total loss (0.5 is common; see max_grad_norm)."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip, a guard against occasional huge updates. Actor and critic share the clip,
    so a large value loss shrinks the policy step too; with 0.5/0.5 some seeds got stuck at ~170-step
    episodes (the cart drifting off the track) that 1.0/1.0 solves."""
    target_kl: float | None = None
    """Stop the epochs of an update early once its mean approx_kl exceeds this (None: never stop)."""
    hidden_size: int = 64
    """Width of the two hidden layers of the actor and of the critic."""
    torch_threads: int = 1
    """Intra-op threads while training: tiny networks are fastest on one."""

    @property
    def batch_size(self) -> int:
        """Transitions collected per iteration."""
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        """Transitions per gradient step."""
        return self.batch_size // self.num_minibatches

    @property
    def num_iterations(self) -> int:
        """Rollout-then-update cycles in the run."""
        return self.total_timesteps // self.batch_size

    def __post_init__(self) -> None:
        for name in (
            "total_timesteps",
            "num_envs",
            "num_steps",
            "num_minibatches",
            "update_epochs",
            "hidden_size",
            "torch_threads",
        ):
            check_int(self, name, ge=1)
        check_int(self, "seed", ge=0)
        check(
            self,
            "num_minibatches",
            self.batch_size % self.num_minibatches == 0,
            f"a divisor of the batch size num_envs * num_steps = {self.batch_size}",
        )
        check(
            self,
            "total_timesteps",
            self.total_timesteps >= self.batch_size,
            f">= one batch (num_envs * num_steps = {self.batch_size})",
        )
        for name in ("gamma", "gae_lambda"):
            check_number(self, name, ge=0, le=1)
        check_number(self, "clip_coef", gt=0, lt=1)
        for name in ("learning_rate", "max_grad_norm"):
            check_number(self, name, gt=0)
        for name in ("ent_coef", "vf_coef"):
            check_number(self, name, ge=0)
        check_number(self, "target_kl", gt=0, none_ok=True)
        for name in ("anneal_lr", "norm_adv", "clip_vloss"):
            check_bool(self, name)


def train_ppo(config: PPOConfig, progress: Callable[[dict], None] | None = None) -> tuple[ActorCritic, list[dict]]:
    """Train an actor-critic on CartPole-v1 with PPO; returns (agent, history), one dict per iteration.

    Each history row holds: iteration, global_step, learning_rate, episodic_return and episodic_length
    (means over episodes that finished during this rollout, NaN if none did), and, averaged over every
    minibatch of the update: policy_loss, value_loss, entropy, approx_kl, clipfrac, vf_clipfrac; plus
    explained_variance of the rollout's values against its returns, and elapsed seconds.
    `progress`, if given, is called with every row as it is produced.
    """
    with _torch_threads(config.torch_threads):
        set_seed(config.seed)
        envs = make_vector_env(config.num_envs)
        obs_dim = envs.single_observation_space.shape[0]
        agent = ActorCritic(obs_dim, envs.single_action_space.n, config.hidden_size)
        # fused: one kernel updates every parameter; for a network this small that halves the step time.
        optimizer = torch.optim.Adam(agent.parameters(), lr=config.learning_rate, eps=1e-5, fused=True)

        T, N = config.num_steps, config.num_envs
        obs = torch.zeros((T, N, obs_dim))
        actions = torch.zeros((T, N), dtype=torch.long)
        logprobs = torch.zeros((T, N))
        rewards = torch.zeros((T, N))
        dones = torch.zeros((T, N))
        values = torch.zeros((T, N))

        next_obs_np, _ = envs.reset(seed=config.seed)
        next_obs = _as_tensor(next_obs_np)  # (N, obs_dim)
        running_return = np.zeros(N)
        running_length = np.zeros(N, dtype=np.int64)
        start = time.perf_counter()
        global_step = 0
        history: list[dict] = []

        for iteration in range(1, config.num_iterations + 1):
            if config.anneal_lr:
                fraction_left = 1.0 - (iteration - 1) / config.num_iterations
                optimizer.param_groups[0]["lr"] = fraction_left * config.learning_rate

            # 1. Rollout: play num_steps steps in every environment with the current policy.
            finished_returns, finished_lengths = [], []
            for step in range(T):
                obs[step] = next_obs
                with torch.no_grad():
                    action, logprob, _, value = agent.get_action_and_value(next_obs)
                actions[step], logprobs[step], values[step] = action, logprob, value

                next_obs_np, reward, terminated, truncated, info = envs.step(action.numpy())
                global_step += N
                episode_over = terminated | truncated
                running_return += reward
                running_length += 1
                for env_index in np.flatnonzero(episode_over):
                    finished_returns.append(running_return[env_index])
                    finished_lengths.append(running_length[env_index])
                    running_return[env_index], running_length[env_index] = 0.0, 0

                reward = reward.astype(np.float32)
                # A time limit is not a failure: the pole was still up, so the return would have gone on.
                # Bootstrap the truncated episode with gamma * V(last observation) before cutting it.
                if truncated.any():
                    final_obs = _as_tensor(np.stack(info["final_obs"][truncated]))
                    with torch.no_grad():
                        reward[truncated] += config.gamma * agent.get_value(final_obs).numpy()
                rewards[step] = torch.from_numpy(reward)
                dones[step] = torch.from_numpy(episode_over.astype(np.float32))
                next_obs = _as_tensor(next_obs_np)

            # 2. Advantages and value targets for every transition of the rollout.
            with torch.no_grad():
                next_value = agent.get_value(next_obs)  # (N,)
            advantages, returns = gae_for_env_rollout(
                rewards, values, dones, next_value, gamma=config.gamma, lam=config.gae_lambda
            )  # (T, N) each

            # 3. Several epochs of minibatch updates on the flattened batch. A rollout has no padding, so
            #    every loss gets mask=None (all positions valid); the language-model trainer passes masks.
            b_obs = obs.reshape(-1, obs_dim)  # (T*N, obs_dim)
            b_actions, b_logprobs = actions.reshape(-1), logprobs.reshape(-1)  # (T*N,)
            b_advantages, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)
            update_stats: dict[str, list[float]] = {}
            for _ in range(config.update_epochs):
                epoch_kl = []
                permutation = torch.randperm(config.batch_size)
                for begin in range(0, config.batch_size, config.minibatch_size):
                    mb = permutation[begin : begin + config.minibatch_size]
                    _, new_logprob, entropy, new_value = agent.get_action_and_value(b_obs[mb], b_actions[mb])

                    mb_advantages = b_advantages[mb]
                    if config.norm_adv:
                        mb_advantages = masked_whiten(mb_advantages, mask=None)
                    policy_loss, policy_stats = clipped_policy_loss(
                        new_logprob, b_logprobs[mb], mb_advantages, mask=None, clip_range=config.clip_coef
                    )
                    value_loss, value_stats = clipped_value_loss(
                        new_value,
                        b_values[mb],
                        b_returns[mb],
                        mask=None,
                        clip_range_value=config.clip_coef if config.clip_vloss else None,
                    )
                    entropy_mean = entropy.mean()
                    loss = policy_loss - config.ent_coef * entropy_mean + config.vf_coef * value_loss

                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
                    optimizer.step()

                    epoch_kl.append(policy_stats["approx_kl"].item())
                    for name, stat in (
                        ("policy_loss", policy_loss),
                        ("value_loss", value_loss),
                        ("entropy", entropy_mean),
                        ("approx_kl", policy_stats["approx_kl"]),
                        ("clipfrac", policy_stats["clipfrac"]),
                        ("vf_clipfrac", value_stats["vf_clipfrac"]),
                    ):
                        update_stats.setdefault(name, []).append(stat.item())
                if config.target_kl is not None and np.mean(epoch_kl) > config.target_kl:
                    break

            # 4. Diagnostics for plotting.
            row = {
                "iteration": iteration,
                "global_step": global_step,
                "learning_rate": optimizer.param_groups[0]["lr"],
                "episodic_return": float(np.mean(finished_returns)) if finished_returns else math.nan,
                "episodic_length": float(np.mean(finished_lengths)) if finished_lengths else math.nan,
                **{name: float(np.mean(numbers)) for name, numbers in update_stats.items()},
                "explained_variance": explained_variance(b_values, b_returns).item(),
                "seconds": time.perf_counter() - start,
            }
            history.append(row)
            if progress is not None:
                progress(row)
        envs.close()
    return agent, history
