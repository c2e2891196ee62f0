"""Checks for the exercises of notebook 04 (training a causal language model).

Each check runs the student's answer on inputs of its own (random logits, a fixed corpus of the review world,
synthetic gradients) and compares it with a reference computed here or with the finished version in ``utils``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from utils import review_world as rw
from utils.exercises import NotYet, _NotDone, exercise, is_stub
from utils.language_model import LMTrainConfig, get_lr


def _close(got: float, want: float, rel: float = 1e-4) -> bool:
    return math.isfinite(got) and math.isclose(got, want, rel_tol=rel, abs_tol=1e-9)


@exercise("04.1a")
def check_perplexity(perplexity) -> None:
    """``perplexity(logits (N, V), targets (N,))``: e to the mean cross-entropy."""
    generator = torch.Generator().manual_seed(4)
    for vocab in (7, 525):
        targets = torch.randint(vocab, (64,), generator=generator)
        got = float(perplexity(torch.zeros(64, vocab), targets))
        if not _close(got, vocab):
            raise NotYet(f"all-zero logits over {vocab} tokens gave {got:.4g}; a uniform model's perplexity is V")
    logits = 3 * torch.randn(50, 11, generator=generator)
    targets = torch.randint(11, (50,), generator=generator)
    got = float(perplexity(logits, targets))
    if not _close(got, math.exp(F.cross_entropy(logits, targets).item())):
        raise NotYet(f"random logits gave {got:.4g}: the perplexity is e to the *mean* NLL per token, in nats")


@exercise("04.1b")
def check_review_perplexity(review_perplexity) -> None:
    """``review_perplexity(rows)``: e^H, H the source entropy estimated on rows with exact ``log_prob``."""
    for seed in (5, 6):
        rows = rw.lm_corpus(200, seed=seed)
        entropy, _ = rw.source_entropy(rows)
        got = float(review_perplexity(rows))
        if not _close(got, math.exp(entropy), rel=1e-6):
            raise NotYet(f"on 200 reviews you gave {got:.4g}: exponentiate the mean NLL per review (nats)")


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random logits over 13 tokens for 3 right-padded rows of different lengths, pad id 1."""
    generator = torch.Generator().manual_seed(2)
    lengths = (7, 4, 2)
    input_ids = torch.full((3, 7), 1)
    attention_mask = torch.zeros(3, 7, dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.randint(2, 13, (length,), generator=generator)
        attention_mask[row, :length] = 1
    return 2 * torch.randn(3, 7, 13, generator=generator), input_ids, attention_mask


@exercise("04.2")
def check_masked_token_nll(masked_token_nll) -> None:
    """``masked_token_nll(logits, input_ids, attention_mask)``: mean NLL over the real next-token targets."""
    logits, input_ids, attention_mask = _padded_batch()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1), ignore_index=-100)
    got = masked_token_nll(logits, input_ids, attention_mask)
    got = float(got)
    if not _close(got, want.item(), rel=1e-5):
        raise NotYet(
            f"gave {got:.4f} on a padded batch of random logits: predict token t+1 from position t, "
            "and average over the targets that are not padding (all rows together)"
        )


@exercise("04.3")
def check_nats_per_two_clause_sentence(nats_per_two_clause_sentence) -> None:
    """``nats_per_two_clause_sentence(texts, gap)``: (slope, intercept) of the least-squares line of ``gap``
    against each review's number of two-clause sentences."""
    texts = [row["text"] for row in rw.lm_corpus(300, seed=17)]
    counts = torch.tensor([sum(form != "simple" for form in rw.parse(t).forms) for t in texts], dtype=torch.float)
    for slope, intercept in ((0.4, 0.1), (0.25, -0.05)):
        gap = slope * counts + intercept  # an exactly linear gap: any correct count and fit recovers the line
        got = nats_per_two_clause_sentence(texts, gap)
        got_slope, got_intercept = (float(v) for v in got)
        if not (abs(got_slope - slope) < 1e-4 and abs(got_intercept - intercept) < 1e-4):
            raise NotYet(
                f"on a synthetic gap that is exactly linear in the number of two-clause sentences you gave slope "
                f"{got_slope:.3f}, intercept {got_intercept:.3f}: check the count (use rw.parse) and the fit"
            )


@exercise("04.4")
def check_loss_scaler(LossScaler) -> None:  # noqa: N803 -- the student's class, named as in the notebook
    """``LossScaler(scale=2**16, growth_interval=3)`` with ``unscale(grad)``: the fp32 gradient that survived
    fp16, or None for a skipped (overflowing) step."""
    if is_stub(getattr(LossScaler, "unscale", None)):
        raise _NotDone
    grads = [1e-7, 2e-6, 5.0, 2e-8, 4e-9, 3e-7, 1e-3, 1.5, 0.5, 1e-8]  # 5.0 * 2^16 overflows fp16
    scaler = LossScaler(scale=2.0**16, growth_interval=3)
    expected_scale, good = 2.0**16, 0
    for step, value in enumerate(grads):
        grad = torch.tensor([value, value / 10])
        out = scaler.unscale(grad)
        overflow = not torch.isfinite((grad * expected_scale).half()).all()
        if overflow:
            if out is not None:
                raise NotYet(f"step {step}: the scaled gradient overflows fp16, so the step must be skipped (None)")
            expected_scale, good = expected_scale / 2, 0
        else:
            if out is None:
                raise NotYet(f"step {step} ({value:g}) was skipped, but its scaled gradient fits in fp16")
            out = torch.as_tensor(out, dtype=torch.float32)
            if (out == 0).any() or not torch.allclose(out, grad, rtol=2e-3):
                raise NotYet(f"step {step}: got {out.tolist()} for {grad.tolist()}: unscale, and lose nothing")
            good += 1
            if good == 3:
                expected_scale, good = expected_scale * 2, 0
        if float(scaler.scale) != expected_scale:
            raise NotYet(
                f"after step {step} the scale is {float(scaler.scale):g}: halve it on an overflow, "
                "double it after 3 good steps in a row"
            )


@exercise("04.5")
def check_compute_optimal(compute_optimal) -> None:
    """``compute_optimal(flops)``: (N*, D*) with 6 N* D* = C and D* = 20 N*."""
    for flops in (7.68e12, 1e18, 5.9e23):
        n_star, d_star = (float(v) for v in compute_optimal(flops))
        if not (_close(6 * n_star * d_star, flops, rel=1e-9) and _close(d_star, 20 * n_star, rel=1e-9)):
            raise NotYet(f"for C = {flops:g} you gave N* = {n_star:.4g}, D* = {d_star:.4g}: need 6ND = C and D = 20N")


@exercise("04.6")
def check_warmup_cosine_lr(warmup_cosine_lr) -> None:
    """``warmup_cosine_lr(step, config)``: the learning rate ``train_lm`` uses at ``step`` (0-based)."""
    configs = (
        LMTrainConfig(),
        LMTrainConfig(steps=50, warmup_steps=5, lr=1e-2, min_lr_ratio=0.0),
        LMTrainConfig(steps=40, warmup_steps=0, lr=2e-3, min_lr_ratio=0.5),
    )
    for config in configs:
        for step in range(config.steps):
            got, want = float(warmup_cosine_lr(step, config)), get_lr(step, config)
            if not _close(got, want, rel=1e-9):
                phase = "warmup" if step < config.warmup_steps else "cosine decay"
                raise NotYet(
                    f"step {step} of a {config.steps}-step run (warmup {config.warmup_steps}, {phase}) gave "
                    f"{got:.4g}; the schedule should give {want:.4g}"
                )
