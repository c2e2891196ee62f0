"""Checks for the exercises of notebook 10 (PPO for language models).

Each check runs the student's answer on inputs of its own (random log-probabilities with padded rows, a tiny
randomly initialised GPT-2 policy) and compares it with the finished version in ``utils``: ``per_token_rewards``,
the KL estimators, ``AdaptiveKLController``, ``clipped_policy_loss``, ``penalise_missing_eos`` and one update
of ``PPOTrainer``. The slider exercise is checked against the sweep the student passes in.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
from transformers import GPT2LMHeadModel

from utils.exercises import NotYet, _NotDone, exercise
from utils.language_model import gpt2_config
from utils.ppo import PolicyAndValue, PPOConfig, PPOTrainer, Rollout, penalise_missing_eos, per_token_rewards
from utils.ppo_losses import AdaptiveKLController, clipped_policy_loss, kl_k1, kl_k2, kl_k3

LENGTHS = (7, 1, 3, 5, 2)  # valid response tokens of each row of the random batches (one full, one of 1)


def _random_batch(seed: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p, log p_ref (B, R) with garbage after each row's end, a bool mask (B, R) and scores (B,)."""
    generator = torch.Generator().manual_seed(seed)
    B, R = len(LENGTHS), max(LENGTHS)
    mask = torch.arange(R) < torch.tensor(LENGTHS)[:, None]
    logp = -torch.rand(B, R, generator=generator) * 3
    ref_logp = -torch.rand(B, R, generator=generator) * 3
    logp, ref_logp = logp.masked_fill(~mask, -50.0), ref_logp.masked_fill(~mask, 7.0)  # padding is garbage
    return logp, ref_logp, mask, torch.randn(B, generator=generator)


def _tensor(value, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise NotYet(f"{name} should be a tensor, got {type(value).__name__}")
    if tuple(value.shape) != shape:
        raise NotYet(f"{name} should have shape {shape}, got {tuple(value.shape)}")
    return value.detach().float()


@exercise("10.1")
def check_rewards_by_hand(rewards_by_hand) -> None:
    """``rewards_by_hand(logp, ref_logp, mask, scores, beta)`` -> per-token rewards (B, R)."""
    logp, ref_logp, mask, scores = _random_batch()
    for beta in (0.2, 0.0):
        got = _tensor(rewards_by_hand(logp, ref_logp, mask, scores, beta), "the rewards", tuple(logp.shape))
        want = per_token_rewards(logp, ref_logp, mask, scores, beta)[1]
        if (got[~mask] != 0).any():
            raise NotYet("rewards after a row's last real token (padding) must be 0")
        sums = got.sum(1)
        kl = torch.where(mask, logp - ref_logp, 0.0).sum(1)
        if not torch.allclose(sums, scores - beta * kl, atol=1e-5):
            raise NotYet(
                f"with beta = {beta:g}, a row's rewards must sum to its score - beta * sum_t (log p - log p_ref)"
            )
        if not torch.allclose(got, want, atol=1e-5):
            raise NotYet(
                f"with beta = {beta:g} the sums are right but not the tokens: where does the score go "
                "in a row that stops before the last column?"
            )


@exercise("10.2")
def check_response_kl(response_kl) -> None:
    """``response_kl(logp, ref_logp, mask)`` -> (k1, k2, k3): each response's sum over its tokens, (B,) each."""
    logp, ref_logp, mask, _ = _random_batch(seed=11)
    got = response_kl(logp, ref_logp, mask)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise NotYet("return a tuple (k1, k2, k3) of per-response sums")
    for name, value, estimator in zip(("k1", "k2", "k3"), got, (kl_k1, kl_k2, kl_k3)):
        value = _tensor(value, name, (len(LENGTHS),))
        want = torch.where(mask, estimator(logp, ref_logp), 0.0).sum(1)
        if not torch.allclose(value, want, atol=1e-4):
            raise NotYet(
                f"{name} differs from its definition: per token, with log r = log p_ref - log p, then summed "
                "over each response's real tokens only"
            )


@exercise("10.3")
def check_slider_beta(answer) -> None:
    """``{"beta": b, "sweep": sweep}``: the smallest beta of the sweep whose final gold reward is above the SFT
    policy's (the sweep's start)."""
    if not isinstance(answer, dict) or "sweep" not in answer or "beta" not in answer:
        raise NotYet('pass {"beta": the beta you found, "sweep": sweep}')
    if answer["beta"] is None:
        raise _NotDone
    sweep = answer["sweep"]
    start = sweep[0]["checkpoints"][0]["gold_reward"]
    by_beta = {record["beta"]: record for record in sweep}
    beta = next((b for b in by_beta if math.isclose(b, float(answer["beta"]), rel_tol=1e-6, abs_tol=1e-9)), None)
    if beta is None:
        raise NotYet(f"pick one of the sweep's betas: {sorted(by_beta)}")
    if by_beta[beta]["gold_reward"] <= start:
        raise NotYet(f"the beta = {beta:g} run does not end above the SFT policy's gold reward: look further right")
    if any(b < beta and record["gold_reward"] > start for b, record in by_beta.items()):
        raise NotYet(f"a smaller beta than {beta:g} also ends above the SFT policy's gold reward")


@exercise("10.4")
def check_adapt_beta(adapt_beta) -> None:
    """``adapt_beta(beta, kl, target, horizon, n)`` -> the beta after one batch of Ziegler et al.'s controller."""
    cases = [(0.3, kl, 4.0, horizon, 64) for kl in (0.5, 3.0, 4.0, 4.4, 6.0, 40.0) for horizon in (1_000, 10_000)]
    for beta, kl, target, horizon, n in cases:
        controller = AdaptiveKLController(beta, target, horizon)
        want = controller.update(kl, n)
        got = float(adapt_beta(beta, kl, target, horizon, n))
        if not math.isclose(got, want, rel_tol=1e-6):
            direction = "raise" if kl > target else "lower" if kl < target else "keep"
            raise NotYet(
                f"beta {beta}, KL {kl} against target {target}, horizon {horizon:,}, n {n}: gave {got:.6g}. "
                f"That KL should {direction} beta, by a relative step error * n / horizon, the error clipped to +-0.2"
            )


@exercise("10.5")
def check_clip_fraction(clip_fraction) -> None:
    """``clip_fraction(train_logp, sample_logp, mask, clip_range)`` -> share of valid tokens PPO would clip."""
    train_logp, sample_logp, mask, _ = _random_batch(seed=12)
    sample_logp = torch.where(
        mask, train_logp + 0.3 * torch.randn(train_logp.shape, generator=torch.Generator().manual_seed(3)), -9.0
    )
    for clip_range in (0.1, 0.2):
        _, stats = clipped_policy_loss(train_logp, sample_logp, torch.ones_like(train_logp), mask, clip_range)
        got = float(clip_fraction(train_logp, sample_logp, mask, clip_range))
        if not math.isclose(got, stats["clipfrac"].item(), abs_tol=1e-6):
            raise NotYet(
                f"with clip range {clip_range} you gave {got:.4f}: the share, over the real tokens only, of "
                "ratios exp(log p_train - log p_sample) further than the clip range from 1"
            )


@exercise("10.7")
def check_penalise(penalise) -> None:
    """``penalise(scores, responses, eos_token_id, penalty)`` -> the scores after the missing-EOS penalty."""
    eos, pad = 0, 1
    responses = torch.tensor([[5, 6, 0, 1, 1], [5, 6, 7, 8, 9], [0, 1, 1, 1, 1], [4, 4, 4, 4, 0], [3, 3, 3, 3, 3]])
    scores = torch.tensor([0.5, 1.5, -0.2, 0.0, 2.0])
    for penalty in (1.0, 0.0, 2.5):
        got = _tensor(penalise(scores.clone(), responses, eos, penalty), "the scores", (5,))
        want = penalise_missing_eos(scores, responses, eos, penalty)
        if not torch.allclose(got, want, atol=1e-6):
            raise NotYet(f"with penalty {penalty:g}: only the rows without any EOS lose the penalty (PAD = {pad})")


# ---------------------------------------------------------------------------------------------------------
# 10.6: ppo_step against one PPOTrainer update, on a tiny random GPT-2
# ---------------------------------------------------------------------------------------------------------
EOS, PAD, VOCAB, TARGET = 0, 1, 16, 7  # EOS doubles as BOS, as in the course tokenizer


def tiny_policy(seed: int) -> GPT2LMHeadModel:
    """A 2-layer GPT-2 of width 16 over 16 tokens (tests/test_ppo.py's tiny model), without touching the
    global random state."""
    config = gpt2_config(VOCAB, 32, 16, 2, 2, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config).eval()


def target_share(query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int) -> torch.Tensor:
    """Toy reward: the share of the response's real tokens that are TARGET."""
    responses, mask = query_responses[:, context_length:], attention_mask[:, context_length:].bool()
    return ((responses == TARGET) & mask).sum(1).float() / mask.sum(1).clamp(min=1)


STEP_CONFIG = PPOConfig(
    total_episodes=16,
    batch_size=16,
    num_minibatches=1,
    ppo_epochs=3,
    response_length=8,
    lr=1e-2,
    max_grad_norm=0.5,
    kl_coef=0.1,
    missing_eos_penalty=1.0,
    seed=3,
)


def tiny_rollout(config: PPOConfig = STEP_CONFIG) -> tuple[PPOTrainer, Rollout]:
    """A trainer on a tiny policy, with a reference that differs from it (so the KL penalty is not 0) and a
    random value head (so values and value clipping matter), and the rollout of its first update."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 6, (32,), generator=generator).tolist()
    prompts = [[EOS] + torch.randint(2, VOCAB, (k,), generator=generator).tolist() for k in lengths]
    trainer = PPOTrainer(config, tiny_policy(0), tiny_policy(1), target_share, prompts, PAD, EOS)
    with torch.no_grad():
        trainer.model.value_head.weight.normal_(0, 0.5, generator=generator)
        trainer.model.value_head.bias.fill_(0.1)
    rollout, _ = trainer.collect_rollout(0, config.kl_coef)
    return trainer, rollout


def without_targets(rollout: Rollout) -> Rollout:
    """A copy of the rollout with what the student computes (rewards, advantages, returns) removed."""
    fields = {f.name: getattr(rollout, f.name) for f in dataclasses.fields(rollout)}
    fields = {name: value.clone() if isinstance(value, torch.Tensor) else value for name, value in fields.items()}
    return Rollout(**{**fields, "non_score_rewards": None, "rewards": None, "advantages": None, "returns": None})


def max_param_diff(a: PolicyAndValue, b: PolicyAndValue) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@exercise("10.6")
def check_ppo_step(ppo_step) -> None:
    """``ppo_step(model, optimizer, rollout, config, beta)``: rewards, GAE, whitening, then ``config.ppo_epochs``
    Adam steps on the whole batch; returns each step's total loss. Compared with ``PPOTrainer.optimise``."""
    config = STEP_CONFIG
    trainer, rollout = tiny_rollout(config)
    model = copy.deepcopy(trainer.model)
    start = copy.deepcopy(trainer.model)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, eps=config.adam_eps, fused=True
    )
    losses = ppo_step(model, optimizer, without_targets(rollout), config, config.kl_coef)
    with torch.no_grad():
        first_loss, _ = trainer.minibatch_loss(rollout, torch.arange(config.batch_size))
    stats = trainer.optimise(rollout, 0)
    losses = [float(loss) for loss in losses]
    if len(losses) != config.ppo_epochs:
        raise NotYet(f"return the loss of every optimiser step: config.ppo_epochs = {config.ppo_epochs} of them")
    if max_param_diff(model, start) == 0:
        raise NotYet("the model did not change: backward, clip the gradients, optimizer.step()")
    if not math.isclose(losses[0], first_loss.item(), rel_tol=1e-4, abs_tol=1e-6):
        raise NotYet(
            "the loss of your first step differs from the trainer's: check the rewards (KL penalty, score at the "
            "last real token), GAE, the whitening and the two clipped losses"
        )
    mean_loss = stats["loss/policy_avg"] + config.vf_coef * stats["loss/value_avg"]
    if max_param_diff(model, trainer.model) > 1e-4 or not math.isclose(
        sum(losses) / len(losses), mean_loss, rel_tol=1e-3, abs_tol=1e-5
    ):
        raise NotYet(
            "the first step's loss is right but the updated parameters differ: clip the gradient norm, zero the "
            "gradients between steps, and keep the old log-probs, old values and advantages of the rollout"
        )
