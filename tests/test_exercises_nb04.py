"""Notebook 04's exercise checks: a right answer passes, a plausible wrong one fails (and says why)."""

import math

import pytest
import torch
import torch.nn.functional as F

from utils.exercises import check


def perplexity(logits, targets):
    return math.exp(F.cross_entropy(logits, targets).item())


def review_perplexity(rows):
    return math.exp(sum(-r["log_prob"] for r in rows) / len(rows))


def masked_token_nll(logits, input_ids, attention_mask):
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = attention_mask[:, 1:].float()
    return (nll * mask).sum() / mask.sum()


def nats_per_two_clause_sentence(texts, gap):
    from utils import review_world as rw

    return _fit([sum(f != "simple" for f in rw.parse(t).forms) for t in texts], gap)


class LossScaler:
    def __init__(self, scale=2.0**16, growth_interval=3):
        self.scale, self.growth_interval, self.good_steps = scale, growth_interval, 0

    def unscale(self, grad):
        scaled = (grad * self.scale).half()
        if not torch.isfinite(scaled).all():
            self.scale, self.good_steps = self.scale / 2, 0
            return None
        out = scaled.float() / self.scale
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale, self.good_steps = self.scale * 2, 0
        return out


def compute_optimal(flops):
    n_star = math.sqrt(flops / 120)
    return n_star, 20 * n_star


def warmup_cosine_lr(step, config):
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


RIGHT = {
    "04.1a": perplexity,
    "04.1b": review_perplexity,
    "04.2": masked_token_nll,
    "04.3": nats_per_two_clause_sentence,
    "04.4": LossScaler,
    "04.5": compute_optimal,
    "04.6": warmup_cosine_lr,
}


@pytest.mark.parametrize("exercise_id", sorted(RIGHT))
def test_right_answer_passes(exercise_id, capsys):
    assert check(exercise_id, RIGHT[exercise_id])
    assert capsys.readouterr().out.strip() == f"Exercise {exercise_id}: passed"


class ScalerWithoutScaling(LossScaler):
    def unscale(self, grad):  # forgets the scale: tiny gradients underflow in fp16
        half = grad.half()
        if not torch.isfinite(half).all():
            self.scale /= 2
            return None
        return half.float()


class ScalerThatNeverGrows(LossScaler):
    def unscale(self, grad):
        scaled = (grad * self.scale).half()
        if not torch.isfinite(scaled).all():
            self.scale /= 2
            return None
        return scaled.float() / self.scale


class UnfilledScaler:
    def __init__(self, scale=2.0**16, growth_interval=3): ...

    def unscale(self, grad): ...  # your code here


def _fit(counts, gap):
    counts = torch.tensor(counts, dtype=torch.float)
    design = torch.stack([counts, torch.ones_like(counts)], 1)
    slope, intercept = torch.linalg.lstsq(design, torch.as_tensor(gap, dtype=torch.float)[:, None]).solution[:, 0]
    return slope.item(), intercept.item()


WRONG = {
    "04.1a": lambda logits, targets: 2 ** F.cross_entropy(logits, targets).item(),  # bits, not nats
    "04.1b": lambda rows: 2 ** (sum(-r["log_prob"] for r in rows) / len(rows)),  # 2 to the nats
    "04.2": lambda logits, ids, mask: F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1)
    ),
    "04.3": lambda texts, gap: _fit([t.count(", but") for t in texts], gap),  # misses "and" and "although"
    "04.5": lambda flops: (math.sqrt(flops / 6), 20 * math.sqrt(flops / 6)),  # forgot D = 20N in the product
    "04.6": lambda step, config: config.lr * min(1.0, step / max(1, config.warmup_steps)),  # no cosine decay
}


@pytest.mark.parametrize("exercise_id", sorted(WRONG))
def test_wrong_answer_fails(exercise_id, capsys):
    assert not check(exercise_id, WRONG[exercise_id])
    assert capsys.readouterr().out.startswith(f"Exercise {exercise_id}: not yet.")


@pytest.mark.parametrize("scaler", [ScalerWithoutScaling, ScalerThatNeverGrows])
def test_wrong_loss_scaler_fails(scaler, capsys):
    assert not check("04.4", scaler)
    assert capsys.readouterr().out.startswith("Exercise 04.4: not yet.")


def test_unfilled_loss_scaler_is_not_done(capsys):
    assert not check("04.4", UnfilledScaler)
    assert capsys.readouterr().out.strip() == "Exercise 04.4: not done yet"


def test_masked_nll_without_the_mask_fails(capsys):
    def unmasked(logits, input_ids, attention_mask):  # averages the padding positions too
        return masked_token_nll(logits, input_ids, torch.ones_like(attention_mask))

    assert not check("04.2", unmasked)
    assert "not yet" in capsys.readouterr().out
