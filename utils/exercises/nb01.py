"""Checks for the exercises of notebook 01 (self-attention). Each compares the student's answer with the
finished code of ``utils.attention`` (or PyTorch) on inputs the student has not seen."""

from __future__ import annotations

import math

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from utils.attention import AttentionConfig, MultiHeadAttention, causal_mask, scaled_dot_product_attention
from utils.exercises import NotYet, exercise


def _as_float(value: object, what: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise NotYet(f"{what} should be one number, got a tensor of shape {tuple(value.shape)}")
        return value.item()
    if not isinstance(value, (int, float)):
        raise NotYet(f"{what} should be a number, got {type(value).__name__}")
    return float(value)


@exercise("01.1")
def check_equivariance_gap(equivariance_gap) -> None:
    """``equivariance_gap(layer, x, permutation)``: max |layer(x[:, perm]) - layer(x)[:, perm]|."""
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(2, 7, 16, generator=generator)
    permutation = torch.tensor([6, 2, 0, 5, 1, 3, 4])
    with torch.random.fork_rng():
        torch.manual_seed(12)
        bidirectional = MultiHeadAttention(AttentionConfig(d_model=16, n_heads=4, causal=False)).eval()
        causal = MultiHeadAttention(AttentionConfig(d_model=16, n_heads=4, causal=True)).eval()
    with torch.no_grad():
        gap = _as_float(equivariance_gap(bidirectional, x, permutation), "the gap")
        causal_gap = _as_float(equivariance_gap(causal, x, permutation), "the gap")
        expected_causal = (causal(x[:, permutation]) - causal(x)[:, permutation]).abs().max().item()
    if not gap < 1e-5:
        raise NotYet(f"for attention without a mask the gap should be ~0 (below 1e-5), got {gap:.3g}")
    if not math.isclose(causal_gap, expected_causal, rel_tol=1e-3):
        raise NotYet(
            f"for a causal layer the gap is not 0 (the mask knows the order); yours gave {causal_gap:.3g}: "
            "compare the output of the permuted input with the permuted output, at every position"
        )


@exercise("01.2")
def check_softmax_entropy(softmax_entropy) -> None:
    """``softmax_entropy(scores, c)``: entropy in nats of softmax(c * scores) for one query's scores (K,)."""
    scores = torch.randn(10, generator=torch.Generator().manual_seed(21))
    for c in (0.0, 0.5, 1.0, 2.0, 8.0):
        got = _as_float(softmax_entropy(scores, c), f"softmax_entropy(scores, {c})")
        expected = torch.distributions.Categorical(logits=c * scores).entropy().item()
        if not math.isclose(got, expected, abs_tol=1e-4):
            hint = " (at c = 0 every key gets the same weight)" if c == 0.0 else ""
            raise NotYet(f"softmax_entropy(scores, {c}) gave {got:.4f} nats, which is off{hint}")


@exercise("01.3a")
def check_local_causal_mask(local_causal_mask) -> None:
    """``local_causal_mask(T, window)``: bool, True where query t may attend to key j: t - window < j <= t."""
    for T, window in ((12, 3), (6, 1), (5, 5), (4, 10)):
        mask = local_causal_mask(T, window)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise NotYet("the mask should be a bool tensor (True = may attend)")
        if mask.numel() != T * T:
            raise NotYet(f"local_causal_mask({T}, {window}) should hold T x T entries, got shape {tuple(mask.shape)}")
        mask = mask.reshape(T, T)
        t, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        expected = (j <= t) & (j > t - window)
        if torch.any(mask & ~(j <= t)):
            raise NotYet(f"local_causal_mask({T}, {window}) lets a query see a future key")
        if not torch.equal(mask, expected):
            row = (mask != expected).any(dim=1).nonzero()[0].item()
            raise NotYet(
                f"local_causal_mask({T}, {window}): query {row} sees keys {mask[row].nonzero().flatten().tolist()}; "
                f"it should see the last {window} positions up to and including itself"
            )
        q, k, v = torch.randn(3, 1, 2, T, 4, generator=torch.Generator().manual_seed(T)).unbind(0)
        torch.testing.assert_close(
            scaled_dot_product_attention(q, k, v, mask[None, None]),
            torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None]),
        )


@exercise("01.3b")
def check_layers_needed(layers: object) -> None:
    """How many layers of window-3 attention until position 10 receives information from position 0."""
    if isinstance(layers, bool) or not isinstance(layers, int):
        raise NotYet(f"the answer is a whole number of layers, got {layers!r}")
    offset = torch.arange(11)[:, None] - torch.arange(11)[None, :]  # query - key
    step = (offset >= 0) & (offset < 3)  # one layer of window-3 attention: who hears from whom
    reach = step.clone()
    needed = 1
    while not reach[10, 0]:
        reach = (reach.int() @ step.int()) > 0
        needed += 1
    if layers < needed:
        raise NotYet(f"{layers} layers are not enough: each layer moves information only window - 1 positions")
    if layers > needed:
        raise NotYet(f"{layers} layers is more than needed: count how far one layer moves information")


def _tiny_gpt2(seed: int) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).eval()
    model.set_attn_implementation("eager")  # the weights are needed
    return model


@exercise("01.4")
def check_weight_on_position_0(weight_on_position_0) -> None:
    """``weight_on_position_0(model, input_ids, attention_mask)``: (layers, heads) mean attention weight on
    position 0 over the real queries at positions t >= 1 of every row."""
    model = _tiny_gpt2(seed=41)
    generator = torch.Generator().manual_seed(42)
    input_ids = torch.randint(1, 50, (4, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # right padding: queries 6..8 of row 1 are not real
    attention_mask[3, 3:] = 0
    with torch.no_grad():
        got = weight_on_position_0(model, input_ids, attention_mask)
        output = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
    weights = torch.stack(output.attentions, dim=1)  # (B, L, H, T, T)
    queries = attention_mask.bool().clone()
    queries[:, 0] = False
    expected = (weights[..., 0] * queries[:, None, None]).sum((0, -1)) / queries.sum()  # (L, H)
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise NotYet(f"expected a tensor of shape (layers, heads) = {tuple(expected.shape)}, got {shape}")
    if torch.allclose(got, expected, atol=1e-5):
        return
    all_queries = weights[..., 0].mean(dim=(0, -1))
    if torch.allclose(got, all_queries, atol=1e-5):
        raise NotYet("average only over real queries at t >= 1: padding queries and position 0 itself do not count")
    raise NotYet("the weights on position 0 are off: average weights[..., 0] over the real queries at t >= 1")


@exercise("01.5")
def check_kv_cache(cached_causal_attention) -> None:
    """``cached_causal_attention(q, k, v)`` -> (output, score_entries): token by token with a KV cache."""
    for T in (1, 9, 64):
        q, k, v = torch.randn(3, 2, 3, T, 8, generator=torch.Generator().manual_seed(T)).unbind(0)
        result = cached_causal_attention(q, k, v)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise NotYet("return two things: the (B, H, T, D) output and the number of score entries computed")
        output, entries = result
        full = scaled_dot_product_attention(q, k, v, causal_mask(T))
        if not isinstance(output, torch.Tensor) or output.shape != full.shape:
            raise NotYet(f"the output should have shape {tuple(full.shape)} for T = {T}")
        if not torch.allclose(output, full, atol=1e-5):
            raise NotYet(f"for T = {T} the cached outputs differ from one full causal pass")
        per_head = _as_float(entries, "the number of score entries")
        if per_head not in (T * (T + 1) // 2, 2 * 3 * T * (T + 1) // 2):
            raise NotYet(
                f"for T = {T} you counted {per_head:g} score entries; each step scores one new query against "
                "every key in the cache (count per head, or for the whole batch)"
            )
