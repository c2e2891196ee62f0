"""RLOO and GRPO with TRL (utils.group_rl): the config, the rewards as PPO reads them, TRL's log-probabilities and
advantages against ours, and short runs that must raise a reward a broken trainer would not."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

from utils.evaluation import response_logprobs
from utils.group_advantages import grpo_advantages, rloo_advantages
from utils.group_rl import (
    GroupRLConfig,
    build_group_rl_trainer,
    episodes,
    log_series,
    positions_from_mask,
    reward_model_reward,
    train_group_rl,
    trl_args,
    verifiable_reward_fn,
)
from utils.language_model import gpt2_config
from utils.ppo import penalise_missing_eos, reward_model_fn
from utils.verifiable_reward import verifiable_rewards

# ---------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------


def test_config_defaults_match_ppo_budget():
    from utils.ppo import PPOConfig

    config, ppo = GroupRLConfig(), PPOConfig()
    assert config.total_completions == ppo.total_episodes
    assert (config.temperature, config.response_length) == (ppo.temperature, ppo.response_length)
    assert (config.kl_coef, config.missing_eos_penalty) == (ppo.kl_coef, ppo.missing_eos_penalty)
    assert config.generation_batches == 1536 // 64
    assert config.optimizer_steps == config.generation_batches * config.num_minibatches * config.num_iterations
    assert config.prompts_used == 1536 // config.group_size


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"group_size": 1}, "group_size"),
        ({"group_size": 0}, "group_size"),
        ({"kl_coef": -0.1}, "kl_coef"),
        ({"clip_range": 1.0}, "clip_range"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"batch_size": 60}, "batch_size"),  # 60 is not a multiple of 2 minibatches x 4 completions
        ({"total_completions": 1000}, "total_completions"),  # not whole batches of 64
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_config_rejects(changes, field):
    with pytest.raises(ValueError, match=rf"GroupRLConfig\.{field} must be"):
        GroupRLConfig(**changes)


def test_trl_args_map_the_config():
    config = GroupRLConfig(group_size=4, total_completions=256, batch_size=32, num_minibatches=2, num_iterations=3)
    for method in ("rloo", "grpo"):
        args = trl_args(method, config, "/tmp/unused")
        assert args.generation_batch_size == 32 and args.per_device_train_batch_size == 16
        assert args.num_generations == 4 and args.num_iterations == 3
        assert args.max_steps == (256 // 32) * 2 * 3
        assert (args.temperature, args.max_completion_length, args.beta) == (0.7, 32, 0.2)
        assert (args.top_k, args.top_p) == (0, 1.0)
    assert trl_args("grpo", config, "/tmp/unused").scale_rewards == "group"
    with pytest.raises(ValueError, match="method must be one of"):
        trl_args("ppo", config, "/tmp/unused")


# ---------------------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_profile):
    from utils.stages import load_course_tokenizer

    return load_course_tokenizer(tiny_profile)


@pytest.fixture(scope="module")
def prompts(tiny_profile):
    from utils.stages import load_dataset_rows

    return [r["prompt"] for r in load_dataset_rows("rl_prompts_train", tiny_profile)]


def tiny_gpt2(tokenizer, cls=GPT2LMHeadModel, seed=0, **extra):
    torch.manual_seed(seed)
    config = gpt2_config(
        len(tokenizer), 64, 32, 2, 2, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, **extra
    )
    return cls(config).eval()


def test_episodes_layout():
    ids, mask, P = episodes([[5, 6, 7], [8]], [[1, 2, 0], [3]], pad_token_id=9)
    assert P == 3
    assert ids.tolist() == [[5, 6, 7, 1, 2, 0], [9, 9, 8, 3, 9, 9]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]]


def test_reward_model_reward_equals_ppo_scoring_one_episode_at_a_time(tokenizer, prompts):
    """Batched and padded (left prompts, right completions), the wrapper gives each episode the score PPO's
    reward_model_fn gives it alone and unpadded, minus the missing-EOS penalty where there is no EOS."""
    rm = tiny_gpt2(tokenizer, GPT2ForSequenceClassification, seed=1, num_labels=1)
    rm.config.reward_mean, rm.config.reward_std = 0.3, 2.0  # normalisation, as set_normalisation stores it
    eos = tokenizer.eos_token_id
    chosen = prompts[:6]
    completions = ["", " the plot was dull.", " and", " great acting", "!", " a"]
    completion_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    completion_ids = [ids + [eos] if i % 2 == 0 else ids for i, ids in enumerate(completion_ids)]  # some without EOS
    got = reward_model_reward(rm, tokenizer, missing_eos_penalty=1.5)(
        prompts=chosen, completions=completions, completion_ids=completion_ids
    )
    score = reward_model_fn(rm)
    for i, (prompt, ids) in enumerate(zip(chosen, completion_ids)):
        prompt_ids = tokenizer(prompt)["input_ids"]
        full = torch.tensor([prompt_ids + ids])
        with torch.no_grad():
            expected = score(full, torch.ones_like(full), len(prompt_ids))
        expected = penalise_missing_eos(expected, torch.tensor([ids or [tokenizer.pad_token_id]]), eos, 1.5)
        assert got[i] == pytest.approx(expected.item(), abs=1e-5)
    assert len({round(g, 4) for g in got}) > 3  # the scores differ: not a constant


def test_verifiable_reward_fn(tokenizer):
    eos = tokenizer.eos_token_id
    prompts = ["the plot was", "the plot was", "the acting was"]
    completions = [" great. i would recommend it.", " great. i would recommend it.", " very"]
    completion_ids = [[3, eos], [3], [4, eos]]
    got = verifiable_reward_fn(tokenizer, missing_eos_penalty=1.0)(
        prompts=prompts, completions=completions, completion_ids=completion_ids
    )
    rule = verifiable_rewards([p + c for p, c in zip(prompts, completions)])
    assert got == [rule[0], rule[1] - 1.0, rule[2]]
    assert rule[0] == 1.0 and rule[2] == -1.0  # a positive review; a fragment


# ---------------------------------------------------------------------------------------------------------
# TRL's trainers
# ---------------------------------------------------------------------------------------------------------


def test_trl_logprobs_equal_ours_on_left_padded_prompts(tokenizer, prompts, tmp_path):
    """With positions_from_mask, TRL's per-token log-probs of a left-padded batch are the ones our evaluation
    computes (same positions, same temperature); without it they are not."""
    policy = tiny_gpt2(tokenizer)
    config = GroupRLConfig(total_completions=16, batch_size=16, num_minibatches=1, temperature=0.7)
    trainer = build_group_rl_trainer("rloo", policy, tokenizer, lambda **kw: [0.0], prompts, config, tmp_path)
    prompt_ids = [tokenizer(p)["input_ids"] for p in ("the plot was", "the music was very good and")]
    assert len(prompt_ids[0]) != len(prompt_ids[1])
    completion_ids = [[7, 8, 9, tokenizer.eos_token_id], [10, 11]]
    ids, mask, P = episodes(prompt_ids, completion_ids, tokenizer.pad_token_id)
    R = ids.shape[1] - P
    ours = response_logprobs(policy, ids, mask, P, 0.7)
    completion_mask = mask[:, P:].bool()
    for model in (trainer.model, trainer.ref_model):
        with torch.no_grad():
            theirs, _, _ = trainer._get_per_token_logps_and_entropies(model.eval(), ids, mask, R)
        diff = (theirs - ours).abs()[completion_mask].max().item()
        assert diff < 1e-4, diff
    fresh = GPT2LMHeadModel.from_pretrained(str(tmp_path / "start")).eval()  # without the position fix
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(fresh, temperature=0.7)
    with torch.no_grad():
        unfixed, _, _ = trainer._get_per_token_logps_and_entropies(fresh, ids, mask, R)
    assert (unfixed - ours).abs()[completion_mask].max().item() > 1e-3


def low_ids_reward(vocab_size):
    """A reward that favours one half of the vocabulary: the share of completion tokens with id < V / 2."""

    def low_ids(prompts, completions, completion_ids, **kwargs):
        return [sum(t < vocab_size // 2 for t in ids) / max(1, len(ids)) for ids in completion_ids]

    return low_ids


SHORT_RUN = dict(
    group_size=4,
    total_completions=640,
    batch_size=32,
    num_minibatches=2,
    lr=1e-2,
    response_length=8,
    temperature=1.0,
    missing_eos_penalty=0.0,
)


@pytest.fixture(scope="module")
def short_runs(tokenizer, prompts):
    """A 40-step RLOO run (no KL, so TRL's advantages are RLOO's of the logged rewards) and GRPO run (KL in the
    loss) from a random tiny GPT-2, rewarded for tokens from the lower half of the vocabulary (~0.5 at start)."""
    reward = low_ids_reward(len(tokenizer))
    runs = {}
    for method, kl_coef in (("rloo", 0.0), ("grpo", 0.05)):
        config = GroupRLConfig(kl_coef=kl_coef, **SHORT_RUN)
        runs[method] = train_group_rl(method, tiny_gpt2(tokenizer), tokenizer, reward, prompts, config)
    return runs


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_short_run_raises_the_reward(short_runs, method):
    trainer = short_runs[method]
    batches = SHORT_RUN["total_completions"] // SHORT_RUN["batch_size"]
    assert trainer.state.global_step == batches * SHORT_RUN["num_minibatches"]  # optimiser steps
    rewards = log_series(trainer.state.log_history, "reward")  # one mean per generation batch
    assert len(rewards) == batches
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert 0.35 < first < 0.65  # a random policy: about half its tokens are from the lower half
    assert last > first + 0.15, (first, last)  # measured ~0.5 -> ~0.8; no update, or a flipped sign, misses it


def test_trl_advantages_equal_ours_on_the_logged_batch(short_runs):
    """TRL keeps the last generation batch's rewards and advantages: RLOO's (no KL) and GRPO's are ours."""
    for method, ours in (("rloo", rloo_advantages), ("grpo", grpo_advantages)):
        logs = short_runs[method]._logs
        rewards = torch.tensor(list(logs["rewards"]["low_ids"]))
        advantages = torch.tensor(list(logs["advantages"]))
        assert rewards.numel() == SHORT_RUN["batch_size"] and rewards.std() > 0
        torch.testing.assert_close(advantages, ours(rewards, SHORT_RUN["group_size"]), atol=1e-5, rtol=1e-5)


def test_positions_from_mask_is_idempotent(tokenizer):
    model = tiny_gpt2(tokenizer)
    positions_from_mask(positions_from_mask(model))
    assert len(model.transformer._forward_pre_hooks) == 1
