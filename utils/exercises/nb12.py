"""Checks of notebook 12's exercises (DPO, RLOO and GRPO). Each tests the student's function on inputs made here
(random log-probs, rewards and distributions) against the finished versions in ``utils.dpo`` and
``utils.group_advantages``, or against a property the right answer has, without saying what the answer is."""

from __future__ import annotations

import math

import torch

from utils import dpo
from utils import group_advantages as ga
from utils.exercises import NotYet, exercise


def _logps(seed: int, n: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g, dtype=torch.float64) * 20 + 1) for _ in range(4)]


def _close(a, b, tol: float = 1e-6) -> bool:
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=tol, atol=tol))


@exercise("12.1")
def _check_optimal_policy(optimal_policy):
    g = torch.Generator().manual_seed(3)
    ref = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    reward = torch.randn(6, generator=g, dtype=torch.float64)
    for beta in (0.1, 1.0, 10.0):
        got = torch.as_tensor(optimal_policy(ref, reward, beta), dtype=torch.float64)
        if got.shape != ref.shape or not torch.isfinite(got).all():
            raise NotYet("return a probability vector of the same shape as pi_ref")
        if abs(float(got.sum()) - 1) > 1e-6:
            raise NotYet("the probabilities do not sum to 1: did you divide by Z?")
        want = ref * torch.exp(reward / beta)
        if not _close(got, want / want.sum()):
            raise NotYet(f"off at beta={beta}: pi* is pi_ref reweighted by exp(r / beta)")
    # the implicit reward of pi* recovers r up to a constant: beta log pi*/pi_ref - r is the same everywhere
    got = torch.as_tensor(optimal_policy(ref, reward, 0.5), dtype=torch.float64)
    if float((0.5 * torch.log(got / ref) - reward).std()) > 1e-6:
        raise NotYet("beta log(pi*/pi_ref) should equal r up to a constant")


@exercise("12.2")
def _check_dpo_loss(loss_fn):
    for seed, beta in ((0, 0.1), (1, 0.5), (2, 2.0)):
        pc, pr, rc, rr = _logps(seed)
        want, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=beta)
        got = loss_fn(pc, pr, rc, rr, beta)
        if not isinstance(got, torch.Tensor) or got.dim() != 0:
            raise NotYet("return the batch's mean loss as a 0-d tensor")
        if abs(float(got) - float(want)) > 1e-6:
            if abs(float(got) - float(dpo.dpo_loss(pr, pc, rr, rc, beta=beta)[0])) < 1e-6:
                raise NotYet("chosen and rejected are the wrong way round")
            raise NotYet(f"off at beta={beta}: -log sigmoid(beta * (chosen log-ratio - rejected log-ratio))")
    # numerically stable for large margins
    big = loss_fn(torch.tensor([0.0]), torch.tensor([-1e4]), torch.tensor([0.0]), torch.tensor([0.0]), 1.0)
    small = loss_fn(torch.tensor([-1e4]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), 1.0)
    if not (math.isfinite(float(big)) and math.isfinite(float(small))):
        raise NotYet("the loss overflows for large margins: use F.logsigmoid, not log(sigmoid(...))")


@exercise("12.3")
def _check_rloo(rloo):
    g = torch.Generator().manual_seed(5)
    for group in (2, 4, 8):
        rewards = torch.randn(3 * group, generator=g, dtype=torch.float64)
        got = rloo(rewards, group)
        if not _close(got, ga.rloo_advantages(rewards, group)):
            if _close(got, rewards - rewards.view(-1, group).mean(1).repeat_interleave(group)):
                raise NotYet("that is r_i - mean(r) over the whole group: leave completion i out of its own baseline")
            raise NotYet(f"off with group size {group}: the completions of one prompt are consecutive")


@exercise("12.4")
def _check_grpo(grpo):
    g = torch.Generator().manual_seed(6)
    for group in (2, 4, 8):
        rewards = torch.randn(3 * group, generator=g, dtype=torch.float64)
        got = grpo(rewards, group)
        if _close(got, ga.grpo_advantages(rewards, group)):
            continue
        grouped = rewards.view(-1, group)
        biased = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, unbiased=False, keepdim=True) + 1e-4)
        if _close(got, biased.reshape(-1)):
            raise NotYet("TRL's std is the unbiased one (divides by G - 1)")
        raise NotYet(f"off with group size {group}: (r - group mean) / (group std + 1e-4)")
    same = grpo(torch.ones(8, dtype=torch.float64), 4)
    if not _close(same, torch.zeros(8)):
        raise NotYet("a group whose rewards are all equal must get advantage 0 everywhere")
