"""The checks of notebook 09's exercises: a right answer passes, a plausible wrong one is told why."""

import torch
from exercise_cases import exercise_tests

from utils.ppo_losses import kl_k1


def gae_reference(rewards, values, dones, next_value, gamma, lam):
    T, N = rewards.shape
    advantages = torch.zeros_like(rewards)
    for n in range(N):
        for t in range(T):
            total, weight = 0.0, 1.0
            for k in range(t, T):
                value_after = next_value[n] if k == T - 1 else values[k + 1, n]
                total += weight * (rewards[k, n] + gamma * value_after * (1 - dones[k, n]) - values[k, n])
                if dones[k, n]:
                    break
                weight *= gamma * lam
            advantages[t, n] = total
    return advantages


def gae_that_never_bootstraps(rewards, values, dones, next_value, gamma, lam):
    return gae_reference(rewards, values, dones, torch.zeros_like(next_value), gamma, lam)


def gae_across_episode_ends(rewards, values, dones, next_value, gamma, lam):
    return gae_reference(rewards, values, torch.zeros_like(dones), next_value, gamma, lam)


CLIP_PREDICTIONS = {(1.3, 2.0): (2.4, 0.0), (0.7, 2.0): (1.4, 1.4), (1.3, -2.0): (-2.6, -2.6), (0.7, -2.0): (-1.6, 0.0)}
CLIP_EVERYWHERE = {(1.3, 2.0): (2.4, 0.0), (0.7, 2.0): (1.6, 0.0), (1.3, -2.0): (-2.4, 0.0), (0.7, -2.0): (-1.6, 0.0)}
GRADIENT_WITHOUT_RATIO = {**CLIP_PREDICTIONS, (0.7, 2.0): (1.4, 2.0)}  # d(rho A)/d log pi is rho A, not A

PROBS, RETURNS = torch.tensor([0.7, 0.3]), torch.tensor([1.0, 2.7])


def estimator_variance(b):
    scores = torch.eye(2) - PROBS
    estimates = (RETURNS - b).unsqueeze(1) * scores
    mean = (PROBS.unsqueeze(1) * estimates).sum(0)
    return (PROBS * ((estimates - mean) ** 2).sum(1)).sum().item()


def variance_of_the_weight(b):
    return (PROBS * (RETURNS - b) ** 2).sum().item()  # forgets the score vectors


def kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, beta):
    mask = mask.bool()
    rewards = torch.where(mask, -beta * kl_k1(logprobs, ref_logprobs), 0.0)
    rewards[torch.arange(len(scores)), mask.sum(1) - 1] += scores
    return rewards


def score_on_the_first_token(scores, logprobs, ref_logprobs, mask, beta):
    rewards = torch.where(mask.bool(), -beta * kl_k1(logprobs, ref_logprobs), 0.0)
    rewards[:, 0] += scores  # right only for one-token responses
    return rewards


def penalty_leaks_padding(scores, logprobs, ref_logprobs, mask, beta):
    rewards = -beta * kl_k1(logprobs, ref_logprobs) * mask  # NaN * 0 is NaN
    rewards[torch.arange(len(scores)), mask.sum(1) - 1] += scores
    return rewards


EPOCH_RESULTS = {
    1: {"greedy_return": 78.4, "approx_kl": 0.0, "clipfrac": 0.0},
    20: {"greedy_return": 500.0, "approx_kl": 2.9e-3, "clipfrac": 0.034},
}

RIGHT = {
    "09.1": gae_reference,
    "09.2": CLIP_PREDICTIONS,
    "09.3a": estimator_variance,
    "09.3b": 2.19,
    "09.4": EPOCH_RESULTS,
    "09.5": kl_penalised_rewards,
}

WRONG = [
    ("09.1", gae_that_never_bootstraps, "an episode the rollout cut off"),
    ("09.1", gae_across_episode_ends, "in an episode that ends in the rollout"),
    ("09.2", CLIP_EVERYWHERE, "the objective at rho = 0.7, A = +2"),
    ("09.2", GRADIENT_WITHOUT_RATIO, "the gradient at rho = 0.7, A = +2"),
    ("09.2", {(1.3, 2.0): (2.4, 0.0)}, "exactly the keys"),
    ("09.3a", variance_of_the_weight, "estimator_variance(0.0)"),
    ("09.3b", 1.51, "not the one with the least variance"),
    ("09.3b", 2.5, "a lower one exists"),
    ("09.4", {1: EPOCH_RESULTS[20], 20: EPOCH_RESULTS[20]}, "did the run use update_epochs=1"),
    ("09.4", {1: EPOCH_RESULTS[1], 20: EPOCH_RESULTS[1]}, "the clip should act"),
    ("09.5", score_on_the_first_token, "where does its score land"),
    ("09.5", penalty_leaks_padding, "padding positions should get reward 0"),
]


test_right_answer_passes, test_wrong_answer_fails_with_a_hint, test_stub_is_not_done = exercise_tests(RIGHT, WRONG)
