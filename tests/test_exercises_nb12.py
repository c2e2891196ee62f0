"""Notebook 12's exercise checks: a right answer passes, plausible wrong ones do not."""

import torch
import torch.nn.functional as F

from utils.exercises import check


def test_12_1_optimal_policy():
    def right(ref, reward, beta):
        w = ref * torch.exp(reward / beta)
        return w / w.sum()

    def unnormalised(ref, reward, beta):
        return ref * torch.exp(reward / beta)

    def beta_multiplies(ref, reward, beta):
        w = ref * torch.exp(reward * beta)
        return w / w.sum()

    assert check("12.1", right)
    assert not check("12.1", unnormalised)
    assert not check("12.1", beta_multiplies)


def test_12_2_dpo_loss():
    def right(pc, pr, rc, rr, beta):
        return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()

    def swapped(pc, pr, rc, rr, beta):
        return -F.logsigmoid(beta * ((pr - rr) - (pc - rc))).mean()

    def unstable(pc, pr, rc, rr, beta):
        return -torch.log(torch.sigmoid(beta * ((pc - rc) - (pr - rr)))).mean()

    def no_reference(pc, pr, rc, rr, beta):
        return -F.logsigmoid(beta * (pc - pr)).mean()

    assert check("12.2", right)
    for wrong in (swapped, unstable, no_reference):
        assert not check("12.2", wrong)


def test_12_3_rloo():
    def right(rewards, g):
        grouped = rewards.view(-1, g)
        return (grouped - (grouped.sum(1, keepdim=True) - grouped) / (g - 1)).reshape(-1)

    def centred_only(rewards, g):
        grouped = rewards.view(-1, g)
        return (grouped - grouped.mean(1, keepdim=True)).reshape(-1)

    def strided_groups(rewards, g):  # prompt i's completions at i, i + n, ...: not TRL's layout
        grouped = rewards.view(g, -1).T
        out = grouped - (grouped.sum(1, keepdim=True) - grouped) / (g - 1)
        return out.T.reshape(-1)

    assert check("12.3", right)
    assert not check("12.3", centred_only)
    assert not check("12.3", strided_groups)


def test_12_4_grpo():
    def right(rewards, g):
        grouped = rewards.view(-1, g)
        return ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).reshape(-1)

    def biased_std(rewards, g):
        grouped = rewards.view(-1, g)
        std = grouped.std(1, unbiased=False, keepdim=True)
        return ((grouped - grouped.mean(1, keepdim=True)) / (std + 1e-4)).reshape(-1)

    def whole_batch(rewards, g):
        return (rewards - rewards.mean()) / (rewards.std() + 1e-4)

    assert check("12.4", right)
    assert not check("12.4", biased_std)
    assert not check("12.4", whole_batch)
