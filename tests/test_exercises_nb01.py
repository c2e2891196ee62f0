"""The checks of notebook 01's exercises: a right answer passes, a plausible wrong one is told why."""

import math

import torch
from exercise_cases import exercise_tests

from utils.attention import causal_mask, scaled_dot_product_attention


def equivariance_gap(layer, x, permutation):
    return (layer(x[:, permutation]) - layer(x)[:, permutation]).abs().max().item()


def softmax_entropy(scores, c):
    log_weights = (c * scores).log_softmax(dim=-1)
    return -(log_weights.exp() * log_weights).sum().item()


def local_causal_mask(T, window):
    offset = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return (offset >= 0) & (offset < window)


def weight_on_position_0(model, input_ids, attention_mask):
    weights = torch.stack(
        model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True).attentions, 1
    )
    queries = attention_mask.bool().clone()
    queries[:, 0] = False
    return (weights[..., 0] * queries[:, None, None]).sum((0, -1)) / queries.sum()


def cached_causal_attention(q, k, v):
    outputs, entries = [], 0
    for t in range(q.size(2)):
        outputs.append(scaled_dot_product_attention(q[:, :, t : t + 1], k[:, :, : t + 1], v[:, :, : t + 1]))
        entries += t + 1
    return torch.cat(outputs, dim=2), entries


RIGHT = {
    "01.1": equivariance_gap,
    "01.2": softmax_entropy,
    "01.3a": local_causal_mask,
    "01.3b": 5,
    "01.4": weight_on_position_0,
    "01.5": cached_causal_attention,
}


def always_zero_gap(layer, x, permutation):
    return 0.0  # claims equivariance without measuring it


def entropy_in_bits(scores, c):
    weights = (c * scores).softmax(dim=-1)
    return -(weights * weights.log2()).sum().item()


def window_off_by_one(T, window):
    offset = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return (offset >= 0) & (offset <= window)


def weight_over_all_queries(model, input_ids, attention_mask):
    weights = torch.stack(
        model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True).attentions, 1
    )
    return weights[..., 0].mean(dim=(0, -1))


def attention_without_cache_count(q, k, v):
    T = q.size(2)
    return scaled_dot_product_attention(q, k, v, causal_mask(T)), T * T  # right output, full-pass count


def forgets_the_mask(q, k, v):
    return scaled_dot_product_attention(q, k, v), q.size(2) * (q.size(2) + 1) // 2


WRONG = [
    ("01.1", always_zero_gap, "for a causal layer the gap is not 0"),
    ("01.2", entropy_in_bits, "softmax_entropy(scores, 0.0) gave 3.3219"),
    ("01.3a", window_off_by_one, "query 3 sees keys [0, 1, 2, 3]"),
    ("01.3b", 10, "more than needed"),
    ("01.3b", 4, "not enough"),
    ("01.4", weight_over_all_queries, "average only over real queries"),
    ("01.5", attention_without_cache_count, "score entries"),
    ("01.5", forgets_the_mask, "differ from one full causal pass"),
]


test_right_answer_passes, test_wrong_answer_fails_with_a_hint, test_stub_is_not_done = exercise_tests(RIGHT, WRONG)


def test_entropy_answer_matches_the_closed_form_at_c_0():
    assert math.isclose(softmax_entropy(torch.randn(10), 0.0), math.log(10), rel_tol=1e-6)
