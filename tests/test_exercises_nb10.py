"""Notebook 10's exercise checks: a right answer passes, a plausible wrong one fails (and says why)."""

from __future__ import annotations

import functools

import pytest
import torch

from utils.exercises import check

# ----- right answers ------------------------------------------------------------------------------------


def rewards_by_hand(logp, ref_logp, mask, scores, beta):
    rewards = torch.zeros_like(logp)
    for i in range(logp.shape[0]):
        n = int(mask[i].sum())
        for t in range(n):
            rewards[i, t] = -beta * (logp[i, t] - ref_logp[i, t])
        rewards[i, n - 1] += scores[i]
    return rewards


def response_kl(logp, ref_logp, mask):
    log_r = torch.where(mask, ref_logp - logp, 0.0)
    return (-log_r).sum(1), (0.5 * log_r**2).sum(1), (torch.exp(log_r) - 1 - log_r).sum(1)


def adapt_beta(beta, kl, target, horizon, n):
    error = min(max(kl / target - 1, -0.2), 0.2)
    return beta * (1 + error * n / horizon)


def clip_fraction(train_logp, sample_logp, mask, clip_range):
    ratio = torch.exp(train_logp - sample_logp)[mask]
    return ((ratio - 1).abs() > clip_range).float().mean().item()


def penalise(scores, responses, eos_token_id, penalty):
    return scores - penalty * (~(responses == eos_token_id).any(1)).float()


def ppo_step(model, optimizer, rollout, config, beta, whiten=True, clip_grad=True, reuse_old_values=True):
    mask, P = rollout.mask, rollout.context_length
    rewards = torch.where(mask, -beta * (rollout.logprobs - rollout.ref_logprobs), 0.0)
    rewards[torch.arange(len(mask)), mask.sum(1) - 1] += rollout.scores
    values = torch.where(mask, rollout.values, 0.0)
    advantages, next_advantage, next_value = torch.zeros_like(rewards), 0.0, 0.0
    for t in reversed(range(mask.shape[1])):
        has_next = mask[:, t + 1].float() if t + 1 < mask.shape[1] else torch.zeros(len(mask))
        delta = rewards[:, t] + config.gamma * next_value * has_next - values[:, t]
        next_advantage = delta + config.gamma * config.lam * has_next * next_advantage
        advantages[:, t], next_value = next_advantage, values[:, t]
    advantages = torch.where(mask, advantages, 0.0)
    returns = advantages + values
    if whiten:
        valid = advantages[mask]
        advantages = torch.where(mask, (advantages - valid.mean()) / torch.sqrt(valid.var() + 1e-8), 0.0)
    losses = []
    for _ in range(config.ppo_epochs):
        logits, new_values = model(rollout.query_responses, rollout.attention_mask, P, config.temperature)
        logp = torch.log_softmax(logits, -1).gather(-1, rollout.responses.unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logp - rollout.logprobs)
        eps = config.clip_range
        pg_loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - eps, 1 + eps))[mask].mean()
        old_values = rollout.values if reuse_old_values else new_values.detach()
        clipped = old_values + (new_values - old_values).clamp(-config.clip_range_value, config.clip_range_value)
        vf_loss = 0.5 * torch.maximum((new_values - returns) ** 2, (clipped - returns) ** 2)[mask].mean()
        loss = pg_loss + config.vf_coef * vf_loss
        optimizer.zero_grad()
        loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
    return losses


def slider_answer(sweep):
    start = sweep[0]["checkpoints"][0]["gold_reward"]
    return min(r["beta"] for r in sweep if r["gold_reward"] > start)


def fake_sweep(golds, start=-0.2):
    betas = (0.0, 0.01, 0.03, 0.1, 0.3)
    return [{"beta": b, "gold_reward": g, "checkpoints": [{"gold_reward": start}]} for b, g in zip(betas, golds)]


# ----- the checks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exercise_id", "answer"),
    [
        ("10.1", rewards_by_hand),
        ("10.2", response_kl),
        ("10.4", adapt_beta),
        ("10.5", clip_fraction),
        ("10.6", ppo_step),
        ("10.7", penalise),
    ],
)
def test_right_answers_pass(exercise_id, answer, capsys):
    assert check(exercise_id, answer)
    assert capsys.readouterr().out.strip() == f"Exercise {exercise_id}: passed"


def score_on_every_row_end(logp, ref_logp, mask, scores, beta):
    rewards = torch.where(mask, -beta * (logp - ref_logp), 0.0)
    rewards[:, 0] += scores  # wrong: the score goes to the first token
    return rewards


def score_at_last_column(logp, ref_logp, mask, scores, beta):
    rewards = torch.where(mask, -beta * (logp - ref_logp), 0.0)
    rewards[:, -1] += scores  # wrong: the last column is padding in most rows
    return rewards


def kl_over_padding(logp, ref_logp, mask):
    log_r = ref_logp - logp  # wrong: sums the garbage after each row's end too
    return (-log_r).sum(1), (0.5 * log_r**2).sum(1), (torch.exp(log_r) - 1 - log_r).sum(1)


def k3_with_wrong_ratio(logp, ref_logp, mask):
    k1, k2, _ = response_kl(logp, ref_logp, mask)
    log_r = torch.where(mask, logp - ref_logp, 0.0)  # wrong: r = p / p_ref
    return k1, k2, (torch.exp(log_r) - 1 - log_r).sum(1)


def adapt_unclipped(beta, kl, target, horizon, n):
    return beta * (1 + (kl / target - 1) * n / horizon)  # wrong: the error is not clipped


def adapt_backwards(beta, kl, target, horizon, n):
    error = min(max(kl / target - 1, -0.2), 0.2)
    return beta * (1 - error * n / horizon)  # wrong sign: too much KL would lower beta


def clip_fraction_with_padding(train_logp, sample_logp, mask, clip_range):
    ratio = torch.exp(train_logp - sample_logp)  # wrong: padding counted
    return ((ratio - 1).abs() > clip_range).float().mean().item()


def penalise_last_token_only(scores, responses, eos_token_id, penalty):
    return scores - penalty * (responses[:, -1] != eos_token_id).float()  # wrong: EOS is rarely in the last column


@pytest.mark.parametrize(
    ("exercise_id", "answer", "hint"),
    [
        ("10.1", score_at_last_column, "padding"),
        ("10.1", score_on_every_row_end, "where does the score go"),
        ("10.2", kl_over_padding, "real tokens only"),
        ("10.2", k3_with_wrong_ratio, "k3 differs"),
        ("10.4", adapt_unclipped, "clipped"),
        ("10.4", adapt_backwards, "should lower beta"),
        ("10.5", clip_fraction_with_padding, "real tokens only"),
        ("10.7", penalise_last_token_only, "without any EOS"),
        ("10.6", functools.partial(ppo_step, whiten=False), "first step differs"),
        ("10.6", functools.partial(ppo_step, clip_grad=False), "parameters differ"),
        ("10.6", functools.partial(ppo_step, reuse_old_values=False), "parameters differ"),
    ],
)
def test_wrong_answers_fail_with_a_hint(exercise_id, answer, hint, capsys):
    assert not check(exercise_id, answer)
    out = capsys.readouterr().out
    assert out.startswith(f"Exercise {exercise_id}: not yet.") and hint in out


def test_ppo_step_that_does_not_step_is_told_so(capsys):
    def no_step(model, optimizer, rollout, config, beta):
        return [0.0] * config.ppo_epochs

    assert not check("10.6", no_step)
    assert "did not change" in capsys.readouterr().out


def test_slider_exercise_follows_the_sweep(capsys):
    sweep = fake_sweep([-1.9, -1.4, 0.4, 0.45, 0.2])
    assert check("10.3", {"beta": slider_answer(sweep), "sweep": sweep})
    assert not check("10.3", {"beta": 0.1, "sweep": sweep})  # the best final gold, but not the smallest beta
    assert "smaller beta" in capsys.readouterr().out
    assert not check("10.3", {"beta": 0.01, "sweep": sweep})  # ends below the start
    assert not check("10.3", {"beta": 0.05, "sweep": sweep})  # not a beta of the sweep
    # On another seed's sweep the answer moves with the data
    other = fake_sweep([-1.9, 0.3, 0.0, 0.4, 0.3])
    assert slider_answer(other) == 0.01 and check("10.3", {"beta": 0.01, "sweep": other})
    assert not check("10.3", {"beta": 0.03, "sweep": other})


def test_unfilled_slider_answer_is_not_done(capsys):
    assert not check("10.3", {"beta": None, "sweep": fake_sweep([-1, -1, 0.4, 0.4, 0.2])})
    assert capsys.readouterr().out.strip() == "Exercise 10.3: not done yet"
