"""The PPO building blocks against hand computations, slow reference loops and torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from utils.ppo_losses import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    gae_for_env_rollout,
    gae_for_token_sequences,
    kl_k1,
    kl_k2,
    kl_k3,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------------------


def test_masked_mean_and_var_use_only_valid_entries():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, float("nan")]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    valid = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert_close(masked_mean(values, mask), valid.mean())
    assert_close(masked_var(values, mask), valid.var(unbiased=True))
    assert_close(masked_var(values, mask, unbiased=False), valid.var(unbiased=False))
    assert_close(masked_mean(values, mask, dim=1), torch.tensor([2.0, 4.5]))
    assert_close(masked_mean(values[:, :2], None), values[:, :2].mean())


def test_masked_whiten_normalises_valid_entries_and_ignores_masked_ones():
    torch.manual_seed(0)
    values = 3.0 * torch.randn(4, 7) + 5.0
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[0, 4:], mask[2, 1:], mask[3, 6:] = False, False, False
    whitened = masked_whiten(values, mask)
    assert_close(whitened[mask].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert_close(whitened[mask].std(unbiased=True), torch.tensor(1.0), atol=1e-5, rtol=0)
    assert torch.all(whitened[~mask] == 0)

    perturbed = values.clone()
    perturbed[~mask] = 1e6
    assert_close(masked_whiten(perturbed, mask), whitened)


def test_masked_whiten_without_shift_keeps_the_mean():
    values = t(1.0, 2.0, 3.0, 6.0)
    out = masked_whiten(values, torch.ones(4), shift_mean=False)
    mean, std = values.mean(), values.std(unbiased=True)
    assert_close(out, (values - mean) / std + mean, atol=1e-6, rtol=1e-6)


def test_masked_var_rejects_too_few_entries_and_bad_masks():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(t(1.0, 2.0), t(1.0, 0.0))
    with pytest.raises(ValueError, match="only 0 and 1"):
        masked_mean(t(1.0, 2.0), t(0.5, 1.0))
    with pytest.raises(ValueError, match="shape"):
        masked_mean(t(1.0, 2.0), t(1.0, 1.0, 1.0))


# ---------------------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------------------


def test_gae_token_sequences_three_steps_by_hand():
    # One response of 3 valid tokens followed by one padding token; reward only at the end (as in RLHF).
    gamma, lam = 0.9, 0.8
    rewards = t(0.0, 0.0, 1.0, 5.0).unsqueeze(0)  # the 5.0 sits on padding and must be ignored
    values = t(0.5, 0.2, 0.4, 9.0).unsqueeze(0)
    mask = t(1, 1, 1, 0).unsqueeze(0)
    # deltas: d2 = 1 + 0 - 0.4 = 0.6 (no value after the last token)
    #         d1 = 0 + 0.9 * 0.4 - 0.2 = 0.16
    #         d0 = 0 + 0.9 * 0.2 - 0.5 = -0.32
    # A2 = 0.6; A1 = 0.16 + 0.72 * 0.6 = 0.592; A0 = -0.32 + 0.72 * 0.592 = 0.10624
    advantages, returns = gae_for_token_sequences(rewards, values, mask, gamma=gamma, lam=lam)
    assert_close(advantages, t(0.10624, 0.592, 0.6, 0.0).unsqueeze(0))
    assert_close(returns, t(0.60624, 0.792, 1.0, 0.0).unsqueeze(0))


def test_gae_env_rollout_three_steps_by_hand():
    # One environment: the episode ends after step 1, a new one starts at step 2 and is cut off.
    gamma, lam = 0.9, 0.8
    rewards = t(1.0, 1.0, 1.0).unsqueeze(1)  # (T, N=1)
    values = t(2.0, 1.0, 3.0).unsqueeze(1)
    dones = t(0.0, 1.0, 0.0).unsqueeze(1)
    next_value = t(4.0)
    # d2 = 1 + 0.9 * 4 - 3 = 1.6            (bootstrapped from next_value)
    # d1 = 1 + 0 - 1 = 0.0                   (terminal: no value after it)
    # d0 = 1 + 0.9 * 1 - 2 = -0.1
    # A2 = 1.6; A1 = 0 (chain cut by done); A0 = -0.1 + 0.72 * 0 = -0.1
    advantages, returns = gae_for_env_rollout(rewards, values, dones, next_value, gamma=gamma, lam=lam)
    assert_close(advantages, t(-0.1, 0.0, 1.6).unsqueeze(1))
    assert_close(returns, t(1.9, 1.0, 4.6).unsqueeze(1))


def reference_gae_tokens(rewards, values, lengths, gamma, lam):
    """Slow reference: each row's GAE as the explicit sum A_t = sum_l (gamma lam)^l delta_{t+l}."""
    advantages = torch.zeros_like(rewards)
    for b, length in enumerate(lengths):
        v = [values[b, i].item() for i in range(length)] + [0.0]
        deltas = [rewards[b, i].item() + gamma * v[i + 1] - v[i] for i in range(length)]
        for i in range(length):
            advantages[b, i] = sum((gamma * lam) ** k * deltas[i + k] for k in range(length - i))
    return advantages


def test_gae_token_sequences_matches_reference_sum():
    torch.manual_seed(1)
    lengths = [7, 1, 0, 4, 7]
    B, T = len(lengths), 7
    rewards, values = torch.randn(B, T, dtype=torch.float64), torch.randn(B, T, dtype=torch.float64)
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    for gamma, lam in [(1.0, 0.95), (0.9, 0.0), (0.99, 1.0)]:
        advantages, returns = gae_for_token_sequences(rewards, values, mask, gamma=gamma, lam=lam)
        expected = reference_gae_tokens(rewards, values, lengths, gamma, lam)
        assert_close(advantages, expected)
        assert_close(returns, torch.where(mask, expected + values, torch.zeros_like(values)))


def reference_gae_env(rewards, values, dones, next_value, gamma, lam):
    """Slow reference per environment: split at dones and sum discounted deltas explicitly."""
    T, N = rewards.shape
    advantages = torch.zeros_like(rewards)
    for n in range(N):
        for start in range(T):
            total, weight = 0.0, 1.0
            for i in range(start, T):
                if dones[i, n]:
                    following = 0.0
                else:
                    following = values[i + 1, n].item() if i + 1 < T else next_value[n].item()
                delta = rewards[i, n].item() + gamma * following - values[i, n].item()
                total += weight * delta
                if dones[i, n]:
                    break
                weight *= gamma * lam
            advantages[start, n] = total
    return advantages


def test_gae_env_rollout_matches_reference_sum():
    torch.manual_seed(2)
    T, N = 9, 3
    rewards, values = torch.randn(T, N, dtype=torch.float64), torch.randn(T, N, dtype=torch.float64)
    dones = (torch.rand(T, N) < 0.25).double()
    next_value = torch.randn(N, dtype=torch.float64)
    advantages, returns = gae_for_env_rollout(rewards, values, dones, next_value, gamma=0.97, lam=0.9)
    expected = reference_gae_env(rewards, values, dones, next_value, 0.97, 0.9)
    assert_close(advantages, expected)
    assert_close(returns, expected + values)


def test_gae_lambda_one_gives_discounted_return_minus_value():
    rewards = t(1.0, 2.0, 3.0).unsqueeze(0)
    values = t(0.3, -0.2, 0.7).unsqueeze(0)
    advantages, returns = gae_for_token_sequences(rewards, values, torch.ones(1, 3), gamma=0.5, lam=1.0)
    discounted = t(1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0).unsqueeze(0)
    assert_close(returns, discounted)
    assert_close(advantages, discounted - values)


def test_gae_ignores_values_and_rewards_on_padding():
    torch.manual_seed(3)
    rewards, values = torch.randn(2, 5), torch.randn(2, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    base = gae_for_token_sequences(rewards, values, mask)
    noisy_r, noisy_v = rewards.clone(), values.clone()
    noisy_r[0, 3:], noisy_v[0, 3:] = 100.0, -50.0
    for got, expected in zip(gae_for_token_sequences(noisy_r, noisy_v, mask), base):
        assert_close(got, expected)


def test_gae_validation():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="gamma"):
        gae_for_token_sequences(x, x, torch.ones(2, 3), gamma=1.5)
    with pytest.raises(ValueError, match="lam"):
        gae_for_env_rollout(x, x, x, torch.zeros(3), lam=-0.1)
    with pytest.raises(ValueError, match=r"1\.\.\.1 0\.\.\.0"):
        gae_for_token_sequences(x, x, torch.tensor([[1, 0, 1], [1, 1, 1]]))
    with pytest.raises(ValueError, match="next_value"):
        gae_for_env_rollout(x, x, x, torch.zeros(2))


# ---------------------------------------------------------------------------------------------------------
# Clipped losses
# ---------------------------------------------------------------------------------------------------------


def test_clipped_policy_loss_by_hand():
    # Four tokens, eps = 0.2: ratio inside the clip, above it with A > 0 (clipped), below it with A < 0
    # (clipped), and above it with A < 0 (the pessimistic max keeps the unclipped, larger loss).
    ratios = t(1.1, 1.5, 0.5, 1.5)
    advantages = t(2.0, 1.0, -1.0, -1.0)
    old = t(-1.0, -2.0, -0.5, -0.3)
    logprobs = old + torch.log(ratios)
    loss, stats = clipped_policy_loss(logprobs, old, advantages, torch.ones(4), clip_range=0.2)
    per_token = t(-2.0 * 1.1, -1.0 * 1.2, 1.0 * 0.8, 1.0 * 1.5)
    assert_close(loss, per_token.mean())
    assert_close(stats["clipfrac"], torch.tensor(0.75, dtype=torch.float64))
    assert_close(stats["ratio_mean"], ratios.mean())
    log_r = torch.log(ratios)
    assert_close(stats["approx_kl"], ((ratios - 1) - log_r).mean())
    assert_close(stats["approx_kl_squared"], 0.5 * (log_r**2).mean())


def test_clipped_policy_gradient_is_zero_where_clipped_and_exact_inside():
    old = t(-1.0, -1.0)
    logprobs = (old + torch.log(t(1.1, 1.5))).requires_grad_(True)
    loss, _ = clipped_policy_loss(logprobs, old, t(3.0, 1.0), None, clip_range=0.2)
    loss.backward()
    # d/dlogp of -A * exp(logp - old) / 2 is -A * ratio / 2 inside the clip, 0 once clipped.
    assert_close(logprobs.grad, t(-3.0 * 1.1 / 2, 0.0))


def test_zero_advantage_at_ratio_one_gives_exactly_zero_gradient_and_kl():
    torch.manual_seed(4)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    tokens = torch.randint(0, 11, (3, 5))
    logprobs = logprobs_from_logits(logits, tokens)
    loss, stats = clipped_policy_loss(logprobs, logprobs.detach(), torch.zeros(3, 5), torch.ones(3, 5))
    loss.backward()
    assert torch.all(logits.grad == 0)
    assert stats["approx_kl"] == 0 and stats["approx_kl_squared"] == 0 and stats["clipfrac"] == 0
    assert stats["ratio_mean"] == 1


def test_clipped_value_loss_by_hand():
    old_values = t(0.0, 0.0, 0.0)
    values = t(0.1, 0.5, -0.5)
    returns = t(1.0, 1.0, 1.0)
    loss, stats = clipped_value_loss(values, old_values, returns, torch.ones(3), clip_range_value=0.2)
    # unclipped: (0.9^2, 0.5^2, 1.5^2); clipped prediction (0.1, 0.2, -0.2): (0.9^2, 0.8^2, 1.2^2)
    expected = 0.5 * t(0.81, 0.64, 2.25).mean()
    assert_close(loss, expected)
    assert_close(stats["vf_clipfrac"], torch.tensor(1 / 3, dtype=torch.float64))
    assert_close(stats["value_error"], t(0.81, 0.25, 2.25).mean())
    unclipped, _ = clipped_value_loss(values, old_values, returns, None, clip_range_value=None)
    assert_close(unclipped, 0.5 * t(0.81, 0.25, 2.25).mean())


def test_losses_ignore_masked_positions():
    torch.manual_seed(5)
    shape = (3, 6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    tensors = {name: torch.randn(shape) for name in ("logp", "old_logp", "adv", "v", "old_v", "ret")}

    def all_losses(x):
        p_loss, p_stats = clipped_policy_loss(x["logp"], x["old_logp"], x["adv"], mask, clip_range=0.2)
        v_loss, v_stats = clipped_value_loss(x["v"], x["old_v"], x["ret"], mask, clip_range_value=0.2)
        return [p_loss, v_loss, *p_stats.values(), *v_stats.values(), explained_variance(x["v"], x["ret"], mask)]

    base = all_losses(tensors)
    perturbed = {name: torch.where(mask, x, torch.full_like(x, 37.0)) for name, x in tensors.items()}
    perturbed["logp"] = torch.where(mask, tensors["logp"], torch.full_like(tensors["logp"], float("inf")))
    perturbed["v"] = torch.where(mask, tensors["v"], torch.full_like(tensors["v"], float("nan")))
    for got, expected in zip(all_losses(perturbed), base):
        assert_close(got, expected)

    # Gradients too: garbage on padding must not turn into NaN gradients (0 * inf is NaN in backward).
    for name in ("logp", "v"):
        perturbed[name].requires_grad_(True)
    p_loss, v_loss = all_losses(perturbed)[:2]
    (p_loss + v_loss + masked_whiten(perturbed["v"], mask).sum()).backward()
    for name in ("logp", "v"):
        grad = perturbed[name].grad
        assert torch.isfinite(grad).all() and torch.all(grad[~mask] == 0), name


def test_loss_validation():
    x = torch.zeros(4)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="clip_range"):
            clipped_policy_loss(x, x, x, None, clip_range=bad)
    with pytest.raises(ValueError, match="clip_range_value"):
        clipped_value_loss(x, x, x, None, clip_range_value=0.0)
    with pytest.raises(ValueError, match="same shape"):
        clipped_policy_loss(x, torch.zeros(4, 1), x, None)


# ---------------------------------------------------------------------------------------------------------
# Distributions and KL estimators
# ---------------------------------------------------------------------------------------------------------


def test_entropy_and_logprobs_match_torch_categorical():
    torch.manual_seed(6)
    logits = 4.0 * torch.randn(2, 3, 50, dtype=torch.float64)
    logits[0, 0, :] = torch.linspace(-200.0, 200.0, 50, dtype=torch.float64)  # extremely peaked: stable?
    tokens = torch.randint(0, 50, (2, 3))
    dist = torch.distributions.Categorical(logits=logits)
    assert_close(entropy_from_logits(logits), dist.entropy())
    assert_close(logprobs_from_logits(logits, tokens), dist.log_prob(tokens))
    assert torch.isfinite(entropy_from_logits(logits.float())).all()
    with pytest.raises(ValueError, match="tokens"):
        logprobs_from_logits(logits, tokens[:, :2])


def test_kl_estimators_unbiasedness_against_exact_kl():
    gen = torch.Generator().manual_seed(7)
    p_logits = torch.randn(12, generator=gen, dtype=torch.float64)
    ref_logits = p_logits + 0.6 * torch.randn(12, generator=gen, dtype=torch.float64)
    p = torch.distributions.Categorical(logits=p_logits)
    ref = torch.distributions.Categorical(logits=ref_logits)
    true_kl = torch.distributions.kl_divergence(p, ref)

    samples = torch.multinomial(p.probs, 200_000, replacement=True, generator=gen)
    logp, logp_ref = p.log_prob(samples), ref.log_prob(samples)
    k1, k2, k3 = kl_k1(logp, logp_ref), kl_k2(logp, logp_ref), kl_k3(logp, logp_ref)
    # Unbiased estimators: sample means within ~4 standard errors of the exact KL.
    for estimate in (k1, k3):
        standard_error = estimate.std() / math.sqrt(len(estimate))
        assert abs(estimate.mean() - true_kl) < 4 * standard_error
    assert (k3 >= 0).all() and (k2 >= 0).all() and (k1 < 0).any()
    assert k3.var() < k1.var()  # the reason k3 is preferred
    # The exact expectation of k2 differs from the KL: it is biased (second-order close for nearby p, ref).
    exact_k2 = (p.probs * 0.5 * (p.logits - ref.logits) ** 2).sum()
    assert_close(k2.mean(), exact_k2, rtol=0.02, atol=0)
    assert abs(exact_k2 - true_kl) > 0.01 * true_kl


def test_kl_estimators_are_zero_for_identical_policies():
    logp = torch.log(t(0.2, 0.5, 0.9))
    for estimator in (kl_k1, kl_k2, kl_k3):
        assert torch.all(estimator(logp, logp) == 0)


# ---------------------------------------------------------------------------------------------------------
# Diagnostics and KL controllers
# ---------------------------------------------------------------------------------------------------------


def test_explained_variance():
    target = t(1.0, 2.0, 3.0, 4.0)
    assert_close(explained_variance(target, target), torch.tensor(1.0, dtype=torch.float64))
    assert_close(explained_variance(torch.full_like(target, 2.5), target), torch.tensor(0.0, dtype=torch.float64))
    pred = t(1.5, 2.0, 2.0, 5.0)
    expected = 1 - (target - pred).var() / target.var()
    assert_close(explained_variance(pred, target), expected)
    assert math.isnan(explained_variance(target, torch.ones(4)).item())


def test_fixed_kl_controller_is_constant():
    controller = FixedKLController(0.05)
    assert controller.update(current_kl=10.0, n_steps=256) == 0.05 and controller.beta == 0.05


def test_adaptive_kl_controller_moves_beta_towards_target():
    controller = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10_000)
    # KL far above target: error clipped to +0.2, beta *= 1 + 0.2 * 256 / 10000.
    assert controller.update(current_kl=60.0, n_steps=256) == pytest.approx(0.1 * (1 + 0.2 * 0.0256))
    high = controller.beta
    # KL below target: error = 3/6 - 1 = -0.5 -> clipped to -0.2, beta shrinks.
    assert controller.update(current_kl=3.0, n_steps=256) == pytest.approx(high * (1 - 0.2 * 0.0256))
    # A small error is used unclipped: 6.6/6 - 1 = 0.1.
    before = controller.beta
    assert controller.update(current_kl=6.6, n_steps=1000) == pytest.approx(before * (1 + 0.1 * 0.1))
    # On target: unchanged.
    before = controller.beta
    assert controller.update(current_kl=6.0, n_steps=1000) == pytest.approx(before)


def test_kl_controller_validation():
    with pytest.raises(ValueError, match="beta"):
        FixedKLController(-0.1)
    with pytest.raises(ValueError, match="init_beta"):
        AdaptiveKLController(-1.0, target=6.0, horizon=10_000)
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=10_000)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, target=6.0, horizon=0)
