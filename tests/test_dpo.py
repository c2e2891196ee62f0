"""DPO: the loss against hand computations, its gradient, beta validation, and TRL's DPOTrainer loss.

The TRL check builds TRL 1.16's ``DPOTrainer`` on a tiny random GPT-2 and a 2-pair dataset in TRL's
prompt/chosen/rejected format, lets it compute its loss on its own collated batch (``compute_loss``, whose
``_compute_loss`` holds the sigmoid loss), and recomputes the loss with our :func:`sequence_logprobs` and
:func:`dpo_loss` from the same tensors, policy and reference.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from utils import dpo
from utils import review_world as rw
from utils.language_model import gpt2_config
from utils.tokenizer import train_bpe


def logps(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# The loss by hand
# ------------------------------------------------------------------------------------------------
def test_equal_log_ratios_give_log_two():
    # the policy moved chosen and rejected by the same amount: the margin is 0 and the loss log 2
    policy_chosen, policy_rejected = logps(-3.0, -7.0), logps(-5.0, -2.0)
    ref_chosen, ref_rejected = logps(-4.0, -8.0), logps(-6.0, -3.0)  # every log-ratio is +1
    loss, chosen, rejected = dpo.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.5)
    torch.testing.assert_close(loss, torch.tensor(math.log(2), dtype=torch.float64))
    torch.testing.assert_close(chosen, logps(0.5, 0.5))  # beta * (log pi - log pi_ref) = 0.5 * 1
    torch.testing.assert_close(rejected, logps(0.5, 0.5))


def test_loss_matches_a_hand_computation():
    # margin = (-1 - -2) - (-3 - -2.5) = 1.5; beta = 2: loss = log(1 + exp(-3))
    loss, chosen, rejected = dpo.dpo_loss(logps(-1.0), logps(-3.0), logps(-2.0), logps(-2.5), beta=2.0)
    torch.testing.assert_close(loss, torch.tensor(math.log1p(math.exp(-3.0)), dtype=torch.float64))
    torch.testing.assert_close(chosen, logps(2.0))
    torch.testing.assert_close(rejected, logps(-1.0))


def test_label_smoothing_is_conservative_dpo_and_hinge_is_slic():
    margin = 0.7  # chosen log-ratio 0.7, rejected 0
    args = (logps(0.7), logps(0.0), logps(0.0), logps(0.0))
    smoothed, _, _ = dpo.dpo_loss(*args, beta=1.0, label_smoothing=0.2)
    expected = -0.8 * math.log(1 / (1 + math.exp(-margin))) - 0.2 * math.log(1 / (1 + math.exp(margin)))
    torch.testing.assert_close(smoothed, torch.tensor(expected, dtype=torch.float64))
    hinge, _, _ = dpo.dpo_loss(*args, beta=1.0, loss_type="hinge")
    torch.testing.assert_close(hinge, torch.tensor(1 - margin, dtype=torch.float64))


def test_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([-4.0, -1.0], requires_grad=True)
    rejected = torch.tensor([-2.0, -6.0], requires_grad=True)
    loss, _, _ = dpo.dpo_loss(chosen, rejected, torch.tensor([-3.0, -2.0]), torch.tensor([-3.0, -5.0]), beta=0.1)
    loss.backward()
    # gradient descent moves log pi(chosen) up and log pi(rejected) down, by equal and opposite amounts
    assert torch.all(chosen.grad < 0) and torch.all(rejected.grad > 0)
    torch.testing.assert_close(chosen.grad, -rejected.grad)
    # d loss / d log pi(chosen_i) = -beta * sigmoid(-beta * margin_i) / B
    margin = torch.tensor([(-4.0 + 3.0) - (-2.0 + 3.0), (-1.0 + 2.0) - (-6.0 + 5.0)])
    torch.testing.assert_close(chosen.grad, -0.1 * torch.sigmoid(-0.1 * margin) / 2)


def test_rewards_are_detached_and_loss_is_stable_for_large_margins():
    chosen = torch.tensor([0.0, 0.0], requires_grad=True)
    loss, rewards, _ = dpo.dpo_loss(chosen, logps(-1e4, 1e4).float(), logps(0, 0).float(), logps(0, 0).float(), 1.0)
    assert not rewards.requires_grad
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, torch.tensor(1e4 / 2))  # (0 + 1e4) / 2: logsigmoid(-1e4) = -1e4


@pytest.mark.parametrize("beta", [0.0, -0.1, math.nan, math.inf, True])
def test_bad_beta_fails_naming_the_field(beta):
    with pytest.raises(ValueError, match=r"^DPOConfig\.beta must be a finite number > 0, got "):
        dpo.DPOConfig(beta=beta)
    with pytest.raises(ValueError, match=r"^beta must be a finite number > 0"):
        dpo.dpo_loss(logps(0.0), logps(0.0), logps(0.0), logps(0.0), beta=beta)


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"^DPOConfig\.label_smoothing must be a finite number in \[0, 0\.5\)"):
        dpo.DPOConfig(label_smoothing=0.5)
    with pytest.raises(ValueError, match=r"^DPOConfig\.loss_type must be one of \('sigmoid', 'hinge'\)"):
        dpo.DPOConfig(loss_type="ipo")
    with pytest.raises(ValueError, match=r"^DPOConfig\.label_smoothing must be 0 with loss_type='hinge'"):
        dpo.DPOConfig(loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="same shape"):
        dpo.dpo_loss(logps(0.0, 1.0), logps(0.0), logps(0.0), logps(0.0), beta=0.1)


def test_loss_from_config_uses_its_settings():
    args = (logps(-1.0, -2.0), logps(-3.0, -1.0), logps(-2.0, -2.0), logps(-2.5, -2.0))
    config = dpo.DPOConfig(beta=0.3, label_smoothing=0.1)
    expected = dpo.dpo_loss(*args, beta=0.3, label_smoothing=0.1)
    for got, want in zip(dpo.dpo_loss_from_config(*args, config), expected):
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------------------
# Sequence log-probs, and TRL's DPOTrainer
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    """A small BPE trained on review-world text (a second or less)."""
    return train_bpe([r["text"] for r in rw.lm_corpus(500, seed=3)], vocab_size=300)


def tiny_gpt2(tokenizer, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = gpt2_config(
        len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config).eval()


def test_sequence_logprobs_sum_the_completion_tokens_only(tokenizer):
    model = tiny_gpt2(tokenizer, seed=0)
    ids = torch.tensor([tokenizer("the plot was good.")["input_ids"]])
    completion = torch.zeros_like(ids)
    completion[0, 3:] = 1
    got = dpo.sequence_logprobs(model, ids, torch.ones_like(ids), completion)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0], dim=-1)
    expected = sum(log_probs[t - 1, ids[0, t]] for t in range(3, ids.shape[1]))
    torch.testing.assert_close(got, expected.reshape(1))
    # right padding changes nothing (padding is masked out of the sum)
    padded = torch.cat([ids, torch.full((1, 4), tokenizer.pad_token_id)], dim=1)
    attention = torch.cat([torch.ones_like(ids), torch.zeros(1, 4, dtype=ids.dtype)], dim=1)
    completion_padded = torch.cat([completion, torch.zeros(1, 4, dtype=ids.dtype)], dim=1)
    torch.testing.assert_close(dpo.sequence_logprobs(model, padded, attention, completion_padded), got)


def test_our_loss_equals_trl_dpo_trainer_loss(tokenizer, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    from utils.trl_helpers import offline_cpu_training_args, quiet_training, silence_trainer

    policy = tiny_gpt2(tokenizer, seed=0)
    reference = tiny_gpt2(tokenizer, seed=1)  # a different reference, so log pi - log pi_ref is not 0
    rows = [
        {"prompt": "the acting", "chosen": " was great.", "rejected": " was dull. i hated the plot."},
        {"prompt": "i loved", "chosen": " the music. overall, a superb film.", "rejected": " the ending, but"},
    ]
    beta = 0.7
    args = TRLDPOConfig(
        output_dir=str(tmp_path),
        beta=beta,
        max_length=None,
        disable_dropout=True,
        **offline_cpu_training_args(batch_size=2, seed=0),
    )
    with quiet_training():
        trainer = silence_trainer(
            DPOTrainer(
                model=policy,
                ref_model=reference,
                args=args,
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
            )
        )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)

    # TRL's batch: the chosen rows, then the rejected rows, each prompt + completion
    assert batch["input_ids"].shape[0] == 4
    inputs = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad():
        policy_logps = dpo.sequence_logprobs(trainer.model, *inputs)
        ref_logps = dpo.sequence_logprobs(trainer.ref_model, *inputs)
    ours, chosen_rewards, rejected_rewards = dpo.dpo_loss(*policy_logps.chunk(2), *ref_logps.chunk(2), beta=beta)
    torch.testing.assert_close(ours, trl_loss, rtol=1e-5, atol=1e-6)
    assert abs(float(ours) - math.log(2)) > 1e-3  # the models differ: not the trivial value
    # TRL logs the same implicit rewards
    logged = trainer._metrics["eval"]  # eval mode: no dropout (there is none anyway)
    torch.testing.assert_close(float(chosen_rewards.mean()), logged["rewards/chosen"][-1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(float(rejected_rewards.mean()), logged["rewards/rejected"][-1], rtol=1e-5, atol=1e-6)
    # and the same completion log-probs, computed by our one log-prob function
    torch.testing.assert_close(float(policy_logps.chunk(2)[0].mean()), logged["logps/chosen"][-1], rtol=1e-5, atol=1e-5)


def test_trl_loss_depends_on_beta_like_ours():
    # the margin scales with beta exactly as F.logsigmoid(beta * margin) in TRL's "sigmoid" branch
    margin = torch.tensor([0.3, -1.2, 2.0])
    for beta in (0.05, 0.5, 5.0):
        loss, _, _ = dpo.dpo_loss(margin, torch.zeros(3), torch.zeros(3), torch.zeros(3), beta=beta)
        torch.testing.assert_close(loss, (-F.logsigmoid(beta * margin)).mean())


def test_reference_copy_gives_log_two(tokenizer):
    # at the start of training the policy IS the reference: every margin is 0, every loss log 2
    model = tiny_gpt2(tokenizer, seed=0)
    reference = copy.deepcopy(model)
    ids = torch.randint(len(tokenizer), (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    completion = mask.clone()
    completion[:, :2] = 0
    with torch.no_grad():
        policy = dpo.sequence_logprobs(model, ids, mask, completion)
        ref = dpo.sequence_logprobs(reference, ids, mask, completion)
    loss, _, _ = dpo.dpo_loss(policy[:1], policy[1:], ref[:1], ref[1:], beta=0.1)
    torch.testing.assert_close(loss, torch.tensor(math.log(2)))
