"""The math of PPO as pure functions on tensors, shared by the CartPole agent and the language-model trainer.

Nothing here knows about environments, tokenizers or optimizers: every function takes tensors (and, for
language models, a mask of valid response tokens) and returns tensors. Two layouts appear:

- Token sequences (language models): tensors of shape (B, T), batch first, time along dim 1. The mask is
  1 (or True) on response tokens the policy generated and 0 on everything after EOS and on padding, so
  each row looks like 1 1 1 ... 1 0 0 ... 0 and the episode ends at the last valid token. Wherever a
  mask is accepted, None means "every position is valid".
- Environment rollouts (CartPole): tensors of shape (T, N), time first, N parallel environments, with a
  `dones` tensor saying where episodes ended and a bootstrap value for the state after the last step.

References: Schulman et al. 2017 (PPO) and 2016 (GAE); CleanRL's ppo.py; Huang et al., "The N
Implementation Details of RLHF with PPO" (2023) and TRL's original PPOTrainer; Ziegler et al. 2019 for
the adaptive KL controller; Schulman, "Approximating KL Divergence" (2020) for the k1/k2/k3 estimators.
"""

from __future__ import annotations

import math

import torch

# ---------------------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------------------


def _check_unit_interval(name: str, value: float) -> None:
    """gamma and lambda are discount factors: anything outside [0, 1] is a bug, not a hyperparameter."""
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _check_clip_range(name: str, value: float) -> None:
    """A ratio clip of 0 freezes the policy and one of 1 or more allows a ratio of 0: both are mistakes."""
    if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
        raise ValueError(f"{name} must be a number in the open interval (0, 1), got {value!r}")


def _check_same_shape(**tensors: torch.Tensor) -> None:
    """Broadcasting would silently turn a (B, T) vs (B, 1) mistake into wrong numbers, so insist on equality."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"expected tensors of the same shape, got {shapes}")


def _bool_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Accept a bool or 0/1 mask with the shape of `like` and return it as bool (None stays None)."""
    if mask is None:
        return None
    if mask.shape != like.shape:
        raise ValueError(f"mask must have shape {tuple(like.shape)}, got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not torch.all((mask == 0) | (mask == 1)):
        raise ValueError("mask must be boolean or contain only 0 and 1")
    return mask != 0


def _zero_padding(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Replace masked entries by 0 before any arithmetic, so that whatever padding holds (even NaN or inf)
    reaches neither a result nor a gradient (0 * NaN in a backward pass would still be NaN)."""
    return x if keep is None else torch.where(keep, x, torch.zeros_like(x))


# ---------------------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over positions where `mask` is set (over `dim`, or over everything when None).

    Masked positions are excluded with `torch.where`, not multiplied by 0, so even NaN or inf there
    cannot leak into the result or its gradient. mask=None means every position is valid (environment
    rollouts have no padding) and is just `values.mean(dim)`.
    """
    keep = _bool_mask(mask, values)
    if keep is None:
        return values.mean() if dim is None else values.mean(dim=dim)
    total = _zero_padding(values, keep)
    if dim is None:
        return total.sum() / keep.sum()
    return total.sum(dim=dim) / keep.sum(dim=dim)


def masked_var(values: torch.Tensor, mask: torch.Tensor | None, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` over the masked positions; unbiased (Bessel-corrected) by default, as in TRL."""
    keep = _bool_mask(mask, values)
    count = values.numel() if keep is None else int(keep.sum())
    if count < (2 if unbiased else 1):
        raise ValueError(
            f"masked_var needs at least {2 if unbiased else 1} valid entries (unbiased={unbiased}), got {count}"
        )
    values = _zero_padding(values, keep)
    mean = masked_mean(values, keep)
    variance = masked_mean((values - mean) ** 2, keep)
    if unbiased:
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor | None, shift_mean: bool = True) -> torch.Tensor:
    """Normalise the masked entries to mean 0 and (unbiased) std 1; masked positions come back as 0.

    With `shift_mean=False` only the scale changes and the mean is kept: TRL whitens rewards this way so
    that their sign, which carries meaning, survives.
    """
    keep = _bool_mask(mask, values)
    values = _zero_padding(values, keep)
    mean, var = masked_mean(values, keep), masked_var(values, keep)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened if keep is None else torch.where(keep, whitened, torch.zeros_like(whitened))


# ---------------------------------------------------------------------------------------------------------
# Generalized advantage estimation (Schulman et al. 2016)
#
#   delta_t = r_t + gamma * V(s_{t+1}) * (1 - done_t) - V(s_t)          one-step TD error
#   A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}            exponentially weighted sum of deltas
#   R_t     = A_t + V(s_t)                                              the value target (lambda-return)
#
# lam = 0 gives the low-variance, biased TD(0) advantage; lam = 1 gives the Monte-Carlo return minus V.
# ---------------------------------------------------------------------------------------------------------


def gae_for_token_sequences(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE for a batch of generated responses, all tensors (B, T), time along dim 1.

    Each row is one episode: the response tokens where `mask` is set, followed only by masked positions.
    The episode ends at the last valid token, so the value after it is 0 (nothing more can be earned).
    Rewards and values at masked positions are ignored. Returns `(advantages, returns)`, both (B, T) and
    0 at masked positions; they are detached because they are targets, not things to differentiate.
    Advantages are not whitened here: call `masked_whiten` on them if the trainer wants that.
    """
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("lam", lam)
    _check_same_shape(rewards=rewards, values=values)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape (B, T), got {tuple(rewards.shape)}")
    keep = _bool_mask(mask, rewards)
    if torch.any(keep[:, 1:] & ~keep[:, :-1]):
        raise ValueError("mask rows must look like 1...1 0...0 (valid response tokens, then padding)")

    zeros = torch.zeros_like(rewards)
    rewards, values = _zero_padding(rewards.detach(), keep), _zero_padding(values.detach(), keep)
    # "Is there a next token in this episode?" At the last valid token (and on padding) the answer is no.
    has_next = torch.cat([keep[:, 1:], torch.zeros_like(keep[:, :1])], dim=1).to(rewards.dtype)  # (B, T)

    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])  # (B,)
    next_value = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value * has_next[:, t] - values[:, t]
        next_advantage = delta + gamma * lam * has_next[:, t] * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    advantages = torch.where(keep, advantages, zeros)
    returns = torch.where(keep, advantages + values, zeros)
    return advantages, returns


def gae_for_env_rollout(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE for a rollout of N parallel environments, tensors (T, N), time along dim 0.

    `dones[t, n]` is 1 when the step taken at time t ended environment n's episode, so the observation at
    t + 1 starts a new one and no value flows back across that boundary. `next_value` (N,) is V of the
    observation after the last step, used to bootstrap episodes the rollout cut off mid-way. (For time-limit
    truncations, fold gamma * V(final observation) into the reward and pass done = 1.)
    Returns `(advantages, returns)`, both (T, N) and detached.
    """
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("lam", lam)
    _check_same_shape(rewards=rewards, values=values, dones=dones)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape (T, N), got {tuple(rewards.shape)}")
    if next_value.shape != rewards.shape[1:]:
        raise ValueError(f"next_value must have shape {tuple(rewards.shape[1:])}, got {tuple(next_value.shape)}")

    rewards, values, next_value = rewards.detach(), values.detach(), next_value.detach()
    not_done = 1.0 - dones.to(rewards.dtype)  # (T, N)

    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(next_value)  # (N,)
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * next_value * not_done[t] - values[t]
        next_advantage = delta + gamma * lam * not_done[t] * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages, advantages + values


# ---------------------------------------------------------------------------------------------------------
# The clipped surrogate objectives
# ---------------------------------------------------------------------------------------------------------


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate loss, averaged over valid positions; returns `(loss, stats)`.

    loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))), ratio = exp(logprobs - old_logprobs).
    Taking the max of the two losses (the min of the two objectives) removes the incentive to push the
    ratio beyond the clip range in the direction the advantage favours; outside it the gradient is zero.

    stats (detached scalars):
      approx_kl:         mean of (ratio - 1) - log ratio, an unbiased, non-negative estimator of
                         KL(old || new) (CleanRL's approx_kl, the "k3" estimator).
      approx_kl_squared: 0.5 * mean((log ratio)^2), the "k2" estimator TRL logs as approxkl.
      clipfrac:          fraction of positions with |ratio - 1| > clip_range.
      ratio_mean:        mean ratio; far from 1 means the policy moved a lot during the update.
    """
    _check_clip_range("clip_range", clip_range)
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    keep = _bool_mask(mask, logprobs)
    logprobs, old_logprobs, advantages = (_zero_padding(x, keep) for x in (logprobs, old_logprobs, advantages))

    log_ratio = logprobs - old_logprobs.detach()
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), keep)

    with torch.no_grad():
        stats = {
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, keep),
            "approx_kl_squared": 0.5 * masked_mean(log_ratio**2, keep),
            "clipfrac": masked_mean(((ratio - 1.0).abs() > clip_range).to(ratio.dtype), keep),
            "ratio_mean": masked_mean(ratio, keep),
        }
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor | None,
    clip_range_value: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Value-function loss 0.5 * mean(max((V - R)^2, (V_clipped - R)^2)); returns `(loss, stats)`.

    V_clipped = old_values + clip(values - old_values, -c, c) keeps the new prediction near the one made
    during the rollout, as TRL and CleanRL do. `clip_range_value` is in the units of the values (not a
    ratio), so any positive number is allowed; None disables clipping and gives 0.5 * mean((V - R)^2).

    stats (detached scalars): vf_clipfrac (fraction of positions where the clipped term is the larger one,
    so the gradient is cut), value_error (mean squared error of the unclipped prediction).
    """
    if clip_range_value is not None and not (isinstance(clip_range_value, (int, float)) and clip_range_value > 0):
        raise ValueError(f"clip_range_value must be a positive number or None, got {clip_range_value!r}")
    _check_same_shape(values=values, old_values=old_values, returns=returns)
    keep = _bool_mask(mask, values)
    values, old_values, returns = (_zero_padding(x, keep) for x in (values, old_values, returns))

    returns, old_values = returns.detach(), old_values.detach()
    unclipped = (values - returns) ** 2
    if clip_range_value is None:
        loss = 0.5 * masked_mean(unclipped, keep)
        clip_active = torch.zeros_like(unclipped)
    else:
        values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
        clipped = (values_clipped - returns) ** 2
        loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), keep)
        clip_active = (clipped > unclipped).to(values.dtype)

    with torch.no_grad():
        stats = {
            "vf_clipfrac": masked_mean(clip_active, keep),
            "value_error": masked_mean(unclipped, keep),
        }
    return loss, stats


# ---------------------------------------------------------------------------------------------------------
# Distributions from logits
# ---------------------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under softmax(logits): logits (..., V), tokens (...) -> (...).

    The one log-prob-of-tokens function of the course: PPO's rollout evaluation and training, and the
    evaluation of a policy, all call it, so the same logits always give the same bits. It goes through
    PyTorch's fused ``log_softmax`` kernel rather than ``gather - logsumexp`` (equal up to rounding, ~1e-6):
    on a CPU its forward and backward passes are about twice as fast, and the (..., V) intermediate it
    keeps is a few MB at the course's sizes.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"tokens must have shape {tuple(logits.shape[:-1])}, got {tuple(tokens.shape)}")
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim: (..., V) -> (...). Expects finite logits.

    H = -sum p log p = logsumexp(z) - sum p z, which never takes the log of a probability that has
    underflowed to 0, so it stays finite for very peaked distributions.
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


# ---------------------------------------------------------------------------------------------------------
# KL between the policy and a reference model, estimated from the sampled tokens
#
# With x ~ p (the policy that generated the text) and r = p_ref(x) / p(x):
#   k1 = -log r              unbiased for KL(p || p_ref), but single samples can be negative; high variance.
#   k2 = 0.5 * (log r)^2     biased (exact only to second order as p_ref -> p), always >= 0, low variance.
#   k3 = (r - 1) - log r     unbiased (E_p[r] = 1) and always >= 0, low variance: the usual choice.
# All three take per-token log-probabilities (B, T) and return per-token estimates (B, T).
# ---------------------------------------------------------------------------------------------------------


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k1 = log p - log p_ref: unbiased for KL(p || p_ref) under samples from p, can be negative."""
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k2 = 0.5 * (log p - log p_ref)^2: biased but non-negative and low-variance."""
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 = (r - 1) - log r with r = p_ref / p: unbiased for KL(p || p_ref) and non-negative."""
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


# ---------------------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------------------


def explained_variance(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - Var[target - pred] / Var[target] over the (masked) entries, as a detached scalar tensor.

    1 means the value function predicts the returns perfectly, 0 means it does no better than a constant,
    negative means worse than a constant. NaN when the targets have no variance (nothing to explain).
    """
    _check_same_shape(pred=pred, target=target)
    keep = _bool_mask(mask, target)
    pred, target = _zero_padding(pred.detach(), keep), _zero_padding(target.detach(), keep)
    var_target = masked_var(target, keep, unbiased=False)
    if var_target == 0:
        return torch.tensor(math.nan, dtype=target.dtype, device=target.device)
    return 1.0 - masked_var(target - pred, keep, unbiased=False) / var_target


# ---------------------------------------------------------------------------------------------------------
# KL penalty coefficient controllers (used by RLHF: reward = score - beta * KL(policy || reference))
# ---------------------------------------------------------------------------------------------------------


class FixedKLController:
    """A constant KL coefficient `beta`; `update` exists so trainers can treat both controllers alike."""

    def __init__(self, beta: float) -> None:
        if not (isinstance(beta, (int, float)) and beta >= 0):
            raise ValueError(f"beta must be a number >= 0, got {beta!r}")
        self.beta = float(beta)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Ignore the measurement and return the unchanged beta."""
        return self.beta


class AdaptiveKLController:
    """Ziegler et al. (2019): steer beta so the measured KL tracks a target.

    error = clip(current_kl / target - 1, -0.2, 0.2); beta *= 1 + error * n_steps / horizon.
    Too much KL raises beta (a stronger pull to the reference), too little lowers it. The clip bounds how
    fast beta can move, and `horizon` (in samples) sets the time scale of the adjustment.
    """

    def __init__(self, init_beta: float, target: float, horizon: int) -> None:
        if not (isinstance(init_beta, (int, float)) and init_beta >= 0):
            raise ValueError(f"init_beta must be a number >= 0, got {init_beta!r}")
        if not (isinstance(target, (int, float)) and target > 0):
            raise ValueError(f"target must be a positive number, got {target!r}")
        if not (isinstance(horizon, (int, float)) and horizon > 0):
            raise ValueError(f"horizon must be a positive number, got {horizon!r}")
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adjust beta after a batch of `n_steps` samples whose mean KL was `current_kl`; return new beta."""
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps!r}")
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta
