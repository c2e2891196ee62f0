"""Checks for the exercises of notebook 09 (RL basics and PPO). Each compares the student's answer with
``utils.ppo_losses`` on inputs the student has not seen, or with a property that must hold."""

from __future__ import annotations

import math

import torch

from utils.exercises import NotYet, exercise
from utils.ppo_losses import clipped_policy_loss, gae_for_env_rollout, gae_for_token_sequences, kl_k1


@exercise("09.1")
def check_gae_reference(gae_reference) -> None:
    """``gae_reference(rewards, values, dones, next_value, gamma, lam)`` -> advantages (T, N)."""
    generator = torch.Generator().manual_seed(91)
    T, N = 8, 4
    rewards = torch.rand(T, N, generator=generator, dtype=torch.float64)
    values = torch.randn(T, N, generator=generator, dtype=torch.float64)
    dones = torch.zeros(T, N, dtype=torch.float64)
    dones[1, 0] = dones[4, 0] = dones[6, 1] = dones[7, 2] = 1.0  # env 3 never ends: bootstrapped throughout
    next_value = torch.randn(N, generator=generator, dtype=torch.float64)
    for lam in (0.0, 0.5, 0.95, 1.0):
        got = gae_reference(rewards, values, dones, next_value, 0.9, lam)
        if isinstance(got, tuple):
            got = got[0]  # (advantages, returns) is fine too
        expected, _ = gae_for_env_rollout(rewards, values, dones, next_value, gamma=0.9, lam=lam)
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            raise NotYet(f"return the advantages as a (T, N) = {tuple(expected.shape)} tensor")
        wrong = ~torch.isclose(got.to(expected.dtype), expected, atol=1e-6)
        if wrong.any():
            t, n = wrong.nonzero()[0].tolist()
            where = (
                "in an episode that ends in the rollout" if dones[t:, n].any() else "in an episode the rollout cut off"
            )
            raise NotYet(f"with lambda = {lam}, A[t={t}, env {n}] is off ({where}: check the bootstrap and the sum)")


@exercise("09.2")
def check_clip_predictions(predictions: object) -> None:
    """``{(ratio, advantage): (objective, gradient)}`` for the four (rho, A) of the exercise, epsilon = 0.2."""
    asked = ((1.3, 2.0), (0.7, 2.0), (1.3, -2.0), (0.7, -2.0))
    if not isinstance(predictions, dict) or set(predictions) != set(asked):
        raise NotYet(f"give a dict with exactly the keys {list(asked)}")
    for ratio, advantage in asked:
        logprob = torch.tensor([math.log(ratio)], dtype=torch.float64, requires_grad=True)
        loss, _ = clipped_policy_loss(
            logprob, torch.zeros(1, dtype=torch.float64), torch.tensor([advantage], dtype=torch.float64), None, 0.2
        )
        (grad,) = torch.autograd.grad(loss, logprob)
        predicted = predictions[(ratio, advantage)]
        if not (isinstance(predicted, tuple) and len(predicted) == 2):
            raise NotYet(f"predictions[{(ratio, advantage)}] should be a pair (objective, gradient)")
        objective, gradient = predicted
        if not math.isclose(objective, -loss.item(), abs_tol=1e-6):
            raise NotYet(f"the objective at rho = {ratio}, A = {advantage:+g} is off: which of the two terms is lower?")
        if not math.isclose(gradient, -grad.item(), abs_tol=1e-6):
            raise NotYet(
                f"the gradient at rho = {ratio}, A = {advantage:+g} is off: is the objective flat there, and if not, "
                "what is d(rho A) / d(log pi)?"
            )


_PROBS = torch.tensor([0.7, 0.3], dtype=torch.float64)  # the toy problem of section 1
_RETURNS = torch.tensor([1.0, 2.7], dtype=torch.float64)


def _variance(b: float) -> float:
    scores = torch.eye(2, dtype=torch.float64) - _PROBS  # grad of log softmax, one row per action
    estimates = (_RETURNS - b).unsqueeze(1) * scores
    mean = (_PROBS.unsqueeze(1) * estimates).sum(0)
    return (_PROBS * ((estimates - mean) ** 2).sum(1)).sum().item()


@exercise("09.3a")
def check_estimator_variance(estimator_variance) -> None:
    """``estimator_variance(b)``: variance (trace of the covariance) of the one-sample REINFORCE estimate on the
    toy problem, with a constant baseline b."""
    for b in (0.0, 1.51, -1.0, 2.0, 3.3):
        got = estimator_variance(b)
        got = got.item() if isinstance(got, torch.Tensor) else got
        if not math.isclose(got, _variance(b), rel_tol=1e-4, abs_tol=1e-9):
            hint = " (at b = 0 it is 2.014, as in section 2)" if b != 0.0 else " (section 2 printed 2.014)"
            raise NotYet(f"estimator_variance({b}) gave {got:.4f}{hint}")


@exercise("09.3b")
def check_best_baseline(b_star: object) -> None:
    """The constant baseline that minimises the variance."""
    if isinstance(b_star, torch.Tensor):
        b_star = b_star.item()
    if isinstance(b_star, bool) or not isinstance(b_star, (int, float)):
        raise NotYet(f"b_star should be a number, got {type(b_star).__name__}")
    best = 0.9198 / 0.42
    if abs(b_star - 1.51) < 0.01:
        raise NotYet("V(s0) = 1.51 is a good baseline, but not the one with the least variance")
    if abs(b_star - best) > 0.01:
        raise NotYet(f"the variance at b = {b_star:.3f} is {_variance(b_star):.3f}; a lower one exists")


@exercise("09.4")
def check_epoch_comparison(results: object) -> None:
    """``{1: {...}, 20: {...}}``: each with the greedy_return, mean approx_kl and mean clipfrac of a 25k-step run
    with that many update epochs."""
    keys = {"greedy_return", "approx_kl", "clipfrac"}
    if (
        not isinstance(results, dict)
        or set(results) != {1, 20}
        or not all(isinstance(r, dict) and keys <= set(r) for r in results.values())
    ):
        raise NotYet(f"results should be {{1: {{...}}, 20: {{...}}}}, each holding {sorted(keys)}")
    one, twenty = results[1], results[20]
    if abs(one["approx_kl"]) > 1e-6 or one["clipfrac"] != 0:
        raise NotYet("with one epoch, approx_kl and clipfrac should be 0: did the run use update_epochs=1?")
    if not twenty["clipfrac"] > 0.01:
        raise NotYet("with 20 epochs the clip should act on some samples (clipfrac > 0.01)")
    if not 8 <= twenty["greedy_return"] <= 500 or not 8 <= one["greedy_return"] <= 500:
        raise NotYet("a CartPole-v1 return lies between about 8 and 500: use evaluate(agent, greedy=True)")


@exercise("09.5")
def check_kl_penalised_rewards(kl_penalised_rewards) -> None:
    """``kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, beta)`` -> per-token rewards (B, T)."""
    generator = torch.Generator().manual_seed(95)
    B, T, beta = 4, 7, 0.05
    lengths = torch.tensor([7, 1, 3, 5])
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # right padding
    logprobs = torch.where(mask, -3 * torch.rand(B, T, generator=generator), torch.nan)  # NaN: padding is junk
    ref_logprobs = torch.where(mask, -3 * torch.rand(B, T, generator=generator), torch.nan)
    scores = torch.tensor([0.8, -0.5, 0.3, 1.2])
    rewards = kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, beta)
    if not isinstance(rewards, torch.Tensor) or rewards.shape != (B, T):
        raise NotYet(f"return the rewards as a (B, T) = {(B, T)} tensor")
    if not torch.isfinite(rewards).all() or torch.any(rewards[~mask] != 0):
        raise NotYet("padding positions should get reward 0 (and nothing from the junk stored there)")
    expected = torch.where(mask, -beta * kl_k1(logprobs, ref_logprobs), 0.0)
    expected[torch.arange(B), lengths - 1] += scores
    if not torch.allclose(rewards, expected, atol=1e-6):
        row = (~torch.isclose(rewards, expected, atol=1e-6)).any(dim=1).nonzero()[0].item()
        raise NotYet(f"row {row} (a response of {lengths[row].item()} tokens) is off: where does its score land?")
    advantages, _ = gae_for_token_sequences(rewards, torch.zeros(B, T), mask, gamma=1.0, lam=1.0)
    kl_sums = torch.where(mask, logprobs - ref_logprobs, 0.0).sum(dim=1)
    assert torch.allclose(advantages[:, 0], scores - beta * kl_sums, atol=1e-5), "first-token advantages are off"
