"""The checks of notebook 02's exercises: a right answer passes, a plausible wrong one is told why."""

import math

import torch
import torch.nn.functional as F
from exercise_cases import exercise_tests


def offset_matrix(k, d):
    frequencies = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
    blocks = [
        torch.tensor([[math.cos(k * w), math.sin(k * w)], [-math.sin(k * w), math.cos(k * w)]])
        for w in frequencies.tolist()
    ]
    return torch.block_diag(*blocks)


def gpt_parameters(n_layer, d, vocab_size, block_size):
    return n_layer * (12 * d * d + 13 * d) + vocab_size * d + block_size * d + 2 * d


def bert_parameters(n_layers, d, vocab_size, max_len):
    blocks_and_embeddings = n_layers * (12 * d * d + 13 * d) + vocab_size * d + max_len * d
    return blocks_and_embeddings + 2 * d + (d * d + d + 2 * d) + vocab_size  # embedding LN, MLM head, output bias


def nll_per_token(model, input_ids, attention_mask, offset):
    positions = offset + torch.arange(input_ids.size(1)).expand_as(input_ids)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return -(logprobs * attention_mask[:, 1:]).sum().item() / attention_mask[:, 1:].sum().item()


def shift_gap(f, x, shift):
    T = x.size(1)
    return (f(x, torch.arange(T)) - f(x, shift + torch.arange(T))).abs().max().item()


def rms_norm(x, weight, eps):
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def swiglu(x, w_gate, w_up, w_down):
    return F.silu(x @ w_gate.T) * (x @ w_up.T) @ w_down.T


def swiglu_hidden(d):
    return 8 * d // 3


def text_infilling(tokens, noise_mask, mask_id):
    out = []
    for i, (token, dropped) in enumerate(zip(tokens, noise_mask)):
        if not dropped:
            out.append(token)
        elif i == 0 or not noise_mask[i - 1]:  # the first token of a span leaves one [MASK]
            out.append(mask_id)
    return out


RIGHT = {
    "02.1": offset_matrix,
    "02.2a": gpt_parameters,
    "02.2b": bert_parameters,
    "02.3": nll_per_token,
    "02.4": shift_gap,
    "02.5a": rms_norm,
    "02.5b": swiglu,
    "02.5c": swiglu_hidden,
    "02.6": text_infilling,
}


def rotation_the_wrong_way(k, d):
    return offset_matrix(k, d).T


def gpt_without_position_table(n_layer, d, vocab_size, block_size):
    return n_layer * (12 * d * d + 13 * d) + vocab_size * d + 2 * d


def bert_as_a_gpt(n_layers, d, vocab_size, max_len):
    return gpt_parameters(n_layers, d, vocab_size, max_len)


def nll_including_padding(model, input_ids, attention_mask, offset):
    positions = offset + torch.arange(input_ids.size(1)).expand_as(input_ids)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return -logprobs.mean().item()


def gap_at_one_position(f, x, shift):
    T = x.size(1)
    return (f(x, torch.arange(T)) - f(x, shift + torch.arange(T)))[:, 0].abs().max().item()


def layer_norm_instead(x, weight, eps):
    return F.layer_norm(x, x.shape[-1:], weight, None, eps)


def silu_on_the_wrong_branch(x, w_gate, w_up, w_down):
    return F.silu(x @ w_up.T) * (x @ w_gate.T) @ w_down.T


def hidden_of_the_mlp(d):
    return 4 * d


def one_mask_per_token(tokens, noise_mask, mask_id):
    return [mask_id if dropped else token for token, dropped in zip(tokens, noise_mask)]


def spans_deleted(tokens, noise_mask, mask_id):
    return [token for token, dropped in zip(tokens, noise_mask) if not dropped]


WRONG = [
    ("02.1", rotation_the_wrong_way, "each (sin, cos) pair needs its own 2 x 2 rotation"),
    ("02.2a", gpt_without_position_table, "count_parameters says 354,823,168"),
    ("02.2b", bert_as_a_gpt, "look at what BERT has at its edges"),
    ("02.3", nll_including_padding, "padding targets are left out"),
    ("02.4", gap_at_one_position, "with learned positions the gap is"),
    ("02.5a", layer_norm_instead, "that is LayerNorm"),
    ("02.5b", silu_on_the_wrong_branch, "the SiLU goes on the gate projection"),
    ("02.5c", hidden_of_the_mlp, "with d = 768, a SwiGLU of width 3072"),
    ("02.6", one_mask_per_token, "BART puts ONE [MASK] per span"),
    ("02.6", spans_deleted, "each span leaves one [MASK]"),
]


test_right_answer_passes, test_wrong_answer_fails_with_a_hint, test_stub_is_not_done = exercise_tests(RIGHT, WRONG)


def test_rms_norm_answer_matches_torch():
    x, weight = torch.randn(3, 8), torch.randn(8)
    reference = torch.nn.RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        reference.weight.copy_(weight)
        torch.testing.assert_close(rms_norm(x, weight, 1e-6), reference(x))
