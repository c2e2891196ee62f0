"""Evaluation of policies (utils.evaluation) against hand computations and direct review-world calls.

Tiny random GPT-2 models and the tiny profile's tokenizer: the numbers mean nothing, the bookkeeping is
what is tested. The end-to-end stage test builds the tiny pipeline's SFT, RM and PPO artifacts (slow).
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from utils import evaluation as ev
from utils import review_world as rw
from utils.decoding import SamplingConfig
from utils.ppo import PPOConfig, text_reward_fn


# ------------------------------------------------------------------------------------------------
# Fixtures: the tiny tokenizer, tiny random policies
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tiny_profile):
    from utils.stages import load_course_tokenizer

    return load_course_tokenizer(tiny_profile)


def random_lm(tokenizer, seed: int) -> GPT2LMHeadModel:
    """A tiny (2 layers, width 32) randomly initialised GPT-2 over the course vocabulary."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config).eval()


PROMPTS = [
    "the acting was",
    "i",
    "the plot was very good, but",
    "although the music was",
    "the ending felt",
    "the cast was",
]


def words_over_ten(text: str) -> float:  # a transparent stand-in for the reward model
    return rw.word_count(text) / 10


def sampling(tokenizer, max_new_tokens: int = 12, temperature: float = 1.0) -> SamplingConfig:
    return SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# ------------------------------------------------------------------------------------------------
# Win rate
# ------------------------------------------------------------------------------------------------
def test_win_rate_by_hand_with_ties():
    a = [
        "the acting was great.",  # gold +0.8 vs -1.0: A wins
        "the plot was awful.",  # -1.0 vs +0.8: A loses
        "the music was good the",  # ungrammatical (-2) vs ungrammatical (-2): tie
        "the cast was good.",
    ]  # identical: tie
    b = ["the acting was awful.", "the plot was great.", "plot the", "the cast was good."]
    assert rw.gold_reward(a[0]) > rw.gold_reward(b[0]) and rw.gold_reward(a[1]) < rw.gold_reward(b[1])
    assert ev.pairwise_outcomes(a, b) == (1, 2, 1)
    assert ev.win_rate(a, b) == pytest.approx((1 + 0.5 * 2) / 4)
    assert ev.win_rate(b, a) == pytest.approx(1 - ev.win_rate(a, b))  # ties count half for both sides
    assert ev.win_rate(a, a) == 0.5


def test_win_rate_custom_judge_and_errors():
    assert ev.win_rate(["aaa", "b", "cc"], ["a", "bb", "cc"], judge=len) == pytest.approx((1 + 0 + 0.5) / 3)
    with pytest.raises(ValueError, match="pair up"):
        ev.win_rate(["x"], ["x", "y"])
    with pytest.raises(ValueError, match="no texts"):
        ev.win_rate([], [])


# ------------------------------------------------------------------------------------------------
# evaluate_policy
# ------------------------------------------------------------------------------------------------
def hand_logprobs(model: GPT2LMHeadModel, ids: list[int], n_prompt: int, temperature: float) -> torch.Tensor:
    """log p of each response token of ONE unpadded sequence, from a plain forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0] / temperature  # (T, V)
    logp = torch.log_softmax(logits.double(), dim=-1)
    return torch.stack([logp[t - 1, ids[t]] for t in range(n_prompt, len(ids))])


def test_kl_matches_a_hand_computation(tokenizer):
    policy, reference = random_lm(tokenizer, seed=0), random_lm(tokenizer, seed=1)
    config = sampling(tokenizer, max_new_tokens=10, temperature=0.7)
    proxy = text_reward_fn(words_over_ten, tokenizer)
    means, samples = ev.evaluate_policy(policy, reference, proxy, tokenizer, PROMPTS, config, seed=3, batch_size=4)
    assert len(samples) == len(PROMPTS)
    for prompt, sample in zip(PROMPTS, samples):
        prompt_ids = tokenizer(prompt)["input_ids"]  # BOS + prompt: unpadded, so no masks or positions involved
        ids = prompt_ids + sample["response_ids"]
        logp = hand_logprobs(policy, ids, len(prompt_ids), 0.7)
        ref = hand_logprobs(reference, ids, len(prompt_ids), 0.7)
        log_ratio = ref - logp
        assert sample["kl"] == pytest.approx((logp - ref).sum().item(), abs=1e-4)
        assert sample["kl_k3"] == pytest.approx((log_ratio.exp() - 1 - log_ratio).sum().item(), abs=1e-4)
        assert sample["entropy"] == pytest.approx(-logp.sum().item(), abs=1e-4)
        assert sample["length_tokens"] == len(sample["response_ids"])
    assert means["kl"] == pytest.approx(sum(s["kl"] for s in samples) / len(samples))
    assert means["kl_k3"] >= 0


def test_kl_is_zero_against_itself(tokenizer):
    policy = random_lm(tokenizer, seed=0)
    proxy = text_reward_fn(words_over_ten, tokenizer)
    means, samples = ev.evaluate_policy(policy, policy, proxy, tokenizer, PROMPTS, sampling(tokenizer), seed=0)
    assert all(s["kl"] == 0.0 and s["kl_k3"] == 0.0 for s in samples)
    assert means["kl"] == 0.0


def test_metrics_match_review_world(tokenizer):
    policy = random_lm(tokenizer, seed=2)
    proxy = text_reward_fn(words_over_ten, tokenizer)
    means, samples = ev.evaluate_policy(
        policy, random_lm(tokenizer, 5), proxy, tokenizer, PROMPTS * 2, sampling(tokenizer), seed=0, batch_size=5
    )
    for prompt, s in zip(PROMPTS * 2, samples):
        text = s["prompt"] + s["response"]
        assert s["prompt"] == prompt
        assert s["gold_reward"] == rw.gold_reward(text)
        assert s["grammatical"] == rw.is_grammatical(text.strip())
        assert s["positive"] == rw.is_positive(text)
        assert s["length_words"] == rw.word_count(s["response"])
        assert s["proxy_reward"] == pytest.approx(words_over_ten(text))
        assert s["eos"] == (s["response_ids"][-1] == tokenizer.eos_token_id)
        assert s["response"] == tokenizer.decode(s["response_ids"], skip_special_tokens=True)
    n = len(samples)
    assert means["gold_reward"] == pytest.approx(sum(rw.gold_reward(s["prompt"] + s["response"]) for s in samples) / n)
    assert means["eos_rate"] == pytest.approx(sum(s["eos"] for s in samples) / n)
    assert means["length_words"] == pytest.approx(sum(s["length_words"] for s in samples) / n)
    assert means["proxy_reward_se"] == pytest.approx(
        torch.tensor([s["proxy_reward"] for s in samples]).std().item() / math.sqrt(n), rel=1e-5
    )
    # The same seed gives the same samples.
    again, _ = ev.evaluate_policy(
        policy, random_lm(tokenizer, 5), proxy, tokenizer, PROMPTS * 2, sampling(tokenizer), seed=0, batch_size=5
    )
    assert again == means


def test_summarise_hand_made_samples():
    texts = [("the acting was", " great."), ("the plot was", " awful."), ("the music", " was was")]
    samples = [
        {
            "gold_reward": rw.gold_reward(p + r),
            "proxy_reward": x,
            "kl": k,
            "kl_k3": k,
            "entropy": 1.0,
            "positive": rw.is_positive(p + r),
            "grammatical": rw.is_grammatical(p + r),
            "length_words": rw.word_count(r),
            "length_tokens": 2,
            "eos": e,
        }
        for (p, r), x, k, e in zip(texts, [1.0, 2.0, 3.0], [0.0, 1.0, 2.0], [True, True, False])
    ]
    means = ev.summarise(samples)
    assert means["gold_reward"] == pytest.approx((0.8 - 1.0 - 2.0) / 3)
    assert means["positive_fraction"] == pytest.approx(1 / 3)
    assert means["grammatical_fraction"] == pytest.approx(2 / 3)
    assert means["length_words"] == pytest.approx((1 + 1 + 2) / 3)
    assert means["eos_rate"] == pytest.approx(2 / 3)
    assert means["proxy_reward_se"] == pytest.approx(1 / math.sqrt(3))  # std 1 (unbiased) over sqrt(3)


def test_evaluate_policy_rejects_filtered_sampling(tokenizer):
    policy = random_lm(tokenizer, seed=0)
    proxy = text_reward_fn(words_over_ten, tokenizer)
    config = SamplingConfig(
        max_new_tokens=4, top_k=5, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    with pytest.raises(ValueError, match="pure sampling"):
        ev.evaluate_policy(policy, policy, proxy, tokenizer, PROMPTS, config)
    with pytest.raises(ValueError, match="prompts is empty"):
        ev.evaluate_policy(policy, policy, proxy, tokenizer, [], sampling(tokenizer))


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
def test_samples_table_format():
    table = ev.samples_table(
        ["the acting was", "i"],
        [" great.", " loved | it"],
        [" superb.", ""],
        [0.8, -2.0],
        [1.0, -2.0],
        [0.123, -1.0],
        [2.5, 0.0],
    )
    lines = table.strip().split("\n")
    assert len(lines) == 2 + 2  # header, separator, one row per prompt
    assert lines[0] == ("| # | prompt | SFT response | SFT gold | SFT proxy | PPO response | PPO gold | PPO proxy |")
    assert lines[1] == "|---:|---|---|---:|---:|---|---:|---:|"
    assert lines[2] == "| 1 | the acting was | great. | +0.80 | +0.12 | superb. | +1.00 | +2.50 |"
    assert "loved \\| it" in lines[3] and "(empty)" in lines[3]  # a pipe is escaped, an empty cell marked
    assert all(line.count(" | ") == 7 for line in (lines[0], lines[2]))
    without_proxy = ev.samples_table(["p"], ["a"], ["b"], [0.0], [1.0], names=("before", "after"))
    assert without_proxy.startswith("| # | prompt | before response | before gold | after response | after gold |")
    with pytest.raises(ValueError, match="one entry per prompt"):
        ev.samples_table(["p", "q"], ["a"], ["b"], [0.0], [1.0])


def test_evaluation_updates():
    assert ev.evaluation_updates(8, 4) == [2, 4, 6, 8]
    assert ev.evaluation_updates(3, 4) == [1, 2, 3]
    assert ev.evaluation_updates(10, 1) == [10]
    with pytest.raises(ValueError):
        ev.evaluation_updates(0, 2)


def test_configs_reject_bad_values():
    with pytest.raises(ValueError, match="betas"):
        ev.SweepConfig(betas=(0.1, 0.0))
    with pytest.raises(ValueError, match="betas"):
        ev.SweepConfig(betas=(-0.1,))
    with pytest.raises(ValueError, match="evaluations"):
        ev.SweepConfig(evaluations=0)
    with pytest.raises(ValueError, match="temperature"):
        ev.EvalConfig(temperature=0.0)
    with pytest.raises(ValueError, match="SweepConfig.temperature"):
        ev.SweepConfig(temperature=-1.0)


def test_evaluation_samples_at_the_ppo_temperature_unless_told_otherwise(tokenizer):
    ppo = PPOConfig(temperature=0.7, response_length=20)
    assert ev.sampling_config(ev.EvalConfig(), ppo, tokenizer).temperature == 0.7
    assert ev.sampling_config(ev.EvalConfig(temperature=1.3), ppo, tokenizer).temperature == 1.3
    assert ev.sampling_config(ev.EvalConfig(), ppo, tokenizer).max_new_tokens == 20


# ------------------------------------------------------------------------------------------------
# The sweep
# ------------------------------------------------------------------------------------------------
def test_sweep_one_record_per_beta_and_kl_falls_with_beta(tiny_base_lm, tiny_profile):
    from utils.stages import load_dataset_rows

    policy, tokenizer = tiny_base_lm  # trained for a few steps: enough structure for PPO to move it quickly
    train = [r["prompt"] for r in load_dataset_rows("rl_prompts_train", tiny_profile)]
    test = [r["prompt"] for r in load_dataset_rows("rl_prompts_test", tiny_profile)]
    # Reward for short answers: learnt in a few updates, so beta = 0 drifts far and a large beta holds it back.
    proxy = text_reward_fn(lambda text: -rw.word_count(text) / 5, tokenizer)
    ppo = PPOConfig(batch_size=16, num_minibatches=2, response_length=16, lr=3e-3, total_episodes=128)
    sweep = ev.SweepConfig(
        betas=(0.0, 1.0, 10.0), total_episodes=128, batch_size=16, evaluations=2, eval_prompts=32, samples_kept=3
    )
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    records = ev.kl_sweep(
        policy, proxy, tokenizer, train, test, ppo, sweep, sampling(tokenizer, 16, temperature=0.5), seed=0
    )
    start, _ = ev.evaluate_policy(policy, policy, proxy, tokenizer, test[:32], sampling(tokenizer, 16), seed=0)

    assert [r["beta"] for r in records] == [0.0, 1.0, 10.0]
    for r in records:
        assert [c["update"] for c in r["checkpoints"]] == [0, 4, 8]
        assert r["checkpoints"][0]["kl"] == 0.0  # the shared start: the policy itself
        assert r["checkpoints"][-1]["kl"] == r["kl"]  # the final metrics are the last checkpoint's
        assert len(r["log"]) == 8 and len(r["samples"]) == 3
        assert set(ev.METRICS) <= set(r)
    kls = [r["kl"] for r in records]
    assert kls[0] > kls[1] > kls[2] > 0  # a sign error in the KL penalty would reverse this
    # The runs and their evaluations use the sweep's temperature (1), not the sampling config's (0.5) nor
    # PPO's (0.7): the start's entropy estimate is that of the untempered policy.
    assert ppo.temperature == 0.7 and sweep.temperature == 1.0
    assert all(r["temperature"] == 1.0 for r in records)  # what each run trained at
    assert records[0]["checkpoints"][0]["entropy"] == pytest.approx(start["entropy"], rel=1e-6)
    assert records[0]["proxy_reward"] > records[0]["checkpoints"][0]["proxy_reward"]  # PPO did learn
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())  # the input is untouched

    summary = ev.sweep_summary(records)
    best = max(records, key=lambda r: r["gold_reward"])
    assert summary["best_beta"] == best["beta"] and summary["lowest_beta"] == 0.0
    assert summary["lowest_beta_kl"] == kls[0]
    assert "| SFT (start) | 0.00 |" in ev.sweep_table(records)


def test_sweep_summary_by_hand():
    def point(gold, proxy, kl):
        return {"gold_reward": gold, "proxy_reward": proxy, "kl": kl}

    start = {"update": 0, **point(0.1, 0.0, 0.0)}
    records = [
        {"beta": 0.0, **point(-0.5, 3.0, 30.0), "checkpoints": [start, point(0.6, 1.5, 8.0), point(-0.5, 3.0, 30.0)]},
        {"beta": 0.1, **point(0.4, 1.0, 5.0), "checkpoints": [start, point(0.3, 0.5, 2.0), point(0.4, 1.0, 5.0)]},
    ]
    summary = ev.sweep_summary(records)
    assert summary["best_beta"] == 0.1 and summary["best_gold"] == 0.4
    assert summary["lowest_beta_gold"] == -0.5 and summary["lowest_beta_proxy"] == 3.0
    assert summary["peak_gold"] == 0.6 and summary["peak_gold_kl"] == 8.0  # mid-run, before the fall
    assert summary["start_gold"] == 0.1


def test_plots_draw(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    log = [
        {
            "episode": 16 * (i + 1),
            "objective/scores": i,
            "objective/gold_reward": -i,
            "objective/rlhf_reward": i,
            "objective/kl": i / 2,
        }
        for i in range(3)
    ]
    metrics = {k: 0.0 for k in ev.METRICS}
    records = [
        {"beta": b, **metrics, "log": log, "checkpoints": [{**metrics, "kl": float(k)} for k in range(3)]}
        for b in (0.0, 0.1)
    ]
    fig = ev.plot_overoptimisation(records)
    assert len(fig.axes) == 3 and len(fig.axes[0].lines) == 2
    fig = ev.plot_run(records[0])
    assert len(fig.axes) == 2


def test_health_report_flags_what_went_wrong():
    def row(kl, entropy, length, eos, clipfrac, ev_):
        return {
            "objective/kl": kl,
            "objective/entropy": entropy,
            "val/response_length": length,
            "val/eos_fraction": eos,
            "policy/clipfrac_avg": clipfrac,
            "val/explained_variance": ev_,
        }

    healthy = [row(0.0, 40.0, 20.0, 1.0, 0.05, 0.1)] + [row(4.0, 35.0, 22.0, 0.98, 0.1, 0.6)] * 9
    assert all(r["ok"] for r in ev.health_report(healthy))
    # A hacked run: KL explodes, entropy collapses, answers triple in length and stop ending.
    hacked = healthy[:9] + [row(25.0, 10.0, 60.0, 0.5, 0.4, -0.5)]
    report = {r["check"]: r for r in ev.health_report(hacked)}
    assert not any(r["ok"] for r in report.values())
    assert report["KL to the reference"]["start"] == 0.0 and report["KL to the reference"]["end"] == 25.0
    # Averaging the last 30% of 10 updates: (4 + 4 + 25) / 3 = 11 > 10, still flagged.
    tail = {r["check"]: r for r in ev.health_report(hacked, ev.HealthThresholds(tail=0.3))}
    assert tail["KL to the reference"]["end"] == pytest.approx(11.0) and not tail["KL to the reference"]["ok"]
    with pytest.raises(ValueError, match="no 'objective/kl'"):
        ev.health_report([{"episode": 1}])
