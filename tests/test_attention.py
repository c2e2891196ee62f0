"""Attention against PyTorch's own implementations (F.scaled_dot_product_attention, nn.MultiheadAttention)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.attention import (
    AttentionConfig,
    MultiHeadAttention,
    causal_mask,
    combine_masks,
    padding_mask,
    scaled_dot_product_attention,
)
from utils.seed import set_seed

B, H, T, D = 2, 3, 5, 8  # tiny


@pytest.fixture(autouse=True)
def _seed():
    set_seed(0)


def _qkv(tq: int = T, tk: int = T):
    return torch.randn(B, H, tq, D), torch.randn(B, H, tk, D), torch.randn(B, H, tk, D)


RIGHT_PADDED = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # second row: 2 padding tokens


@pytest.mark.parametrize("kind", ["none", "causal", "padding", "causal+padding"])
def test_sdpa_matches_torch(kind):
    q, k, v = _qkv()
    mask = {
        "none": None,
        "causal": causal_mask(T),
        "padding": padding_mask(RIGHT_PADDED),
        "causal+padding": combine_masks(causal_mask(T), padding_mask(RIGHT_PADDED)),
    }[kind]
    ours = scaled_dot_product_attention(q, k, v, mask)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, reference)
    if kind == "causal":
        torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_sdpa_cross_lengths_and_weights_rows_sum_to_one():
    q, k, v = _qkv(tq=3, tk=7)
    out, weights = scaled_dot_product_attention(q, k, v, return_weights=True)
    assert out.shape == (B, H, 3, D) and weights.shape == (B, H, 3, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, 3))
    # By hand for one (batch, head, query): softmax of scaled dot products.
    expected = torch.softmax(k[1, 2] @ q[1, 2, 0] / D**0.5, dim=-1)
    torch.testing.assert_close(weights[1, 2, 0], expected)


def test_masked_keys_get_zero_weight_and_fully_masked_rows_give_zeros():
    q, k, v = _qkv()
    q.requires_grad_(True)
    left_padded = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    mask = combine_masks(causal_mask(T), padding_mask(left_padded))  # row 0, queries 0-1: nothing to see
    out, weights = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, :, :2], torch.zeros(H, 2, D))
    torch.testing.assert_close(weights[0, :, :2], torch.zeros(H, 2, T))
    torch.testing.assert_close(weights[0, :, 2:].sum(-1), torch.ones(H, 3))  # other rows still sum to 1
    assert (weights[0, :, :, :2] == 0).all()  # padding keys are never attended
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_mask_helpers_shapes_and_validation():
    cm = causal_mask(4)
    assert cm.shape == (1, 1, 4, 4) and cm.dtype == torch.bool
    assert cm[0, 0].tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, True],
    ]
    pm = padding_mask(torch.tensor([[1, 1, 0]]))
    assert pm.shape == (1, 1, 1, 3) and pm.flatten().tolist() == [True, True, False]
    assert combine_masks(None, None) is None
    with pytest.raises(ValueError, match="bool"):
        scaled_dot_product_attention(*_qkv(), mask=torch.ones(1, 1, T, T))
    with pytest.raises(ValueError, match="attention_mask"):
        padding_mask(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="divisible"):
        AttentionConfig(d_model=10, n_heads=4)


def _copy_from_torch(torch_mha: nn.MultiheadAttention, config: AttentionConfig) -> MultiHeadAttention:
    ours = MultiHeadAttention(config)
    w_q, w_k, w_v = torch_mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = torch_mha.in_proj_bias.chunk(3)
    with torch.no_grad():
        for proj, w, b in [(ours.q_proj, w_q, b_q), (ours.k_proj, w_k, b_k), (ours.v_proj, w_v, b_v)]:
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        ours.out_proj.weight.copy_(torch_mha.out_proj.weight)
        ours.out_proj.bias.copy_(torch_mha.out_proj.bias)
    return ours.eval()


C, N_HEADS = 16, 4


def test_self_attention_matches_torch_multihead_attention_with_padding():
    reference = nn.MultiheadAttention(C, N_HEADS, batch_first=True).eval()
    ours = _copy_from_torch(reference, AttentionConfig(d_model=C, n_heads=N_HEADS))
    x = torch.randn(2, T, C)
    ref_out, ref_w = reference(x, x, x, key_padding_mask=RIGHT_PADDED == 0, average_attn_weights=False)
    out, w = ours(x, mask=padding_mask(RIGHT_PADDED), return_weights=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w, ref_w)


def test_causal_config_matches_torch_with_causal_mask():
    reference = nn.MultiheadAttention(C, N_HEADS, batch_first=True).eval()
    ours = _copy_from_torch(reference, AttentionConfig(d_model=C, n_heads=N_HEADS, causal=True))
    x = torch.randn(2, T, C)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # torch: True = blocked
    ref_out, _ = reference(x, x, x, attn_mask=future, key_padding_mask=RIGHT_PADDED == 0)
    torch.testing.assert_close(ours(x, mask=padding_mask(RIGHT_PADDED)), ref_out)


def test_cross_attention_matches_torch_multihead_attention():
    reference = nn.MultiheadAttention(C, N_HEADS, batch_first=True).eval()
    ours = _copy_from_torch(reference, AttentionConfig(d_model=C, n_heads=N_HEADS))
    x, context = torch.randn(2, 3, C), torch.randn(2, T, C)  # 3 queries read 5 context tokens
    ref_out, ref_w = reference(x, context, context, key_padding_mask=RIGHT_PADDED == 0, average_attn_weights=False)
    out, w = ours(x, context=context, mask=padding_mask(RIGHT_PADDED), return_weights=True)
    assert out.shape == (2, 3, C) and w.shape == (2, N_HEADS, 3, T)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w, ref_w)
    with pytest.raises(ValueError, match="self-attention only"):
        MultiHeadAttention(AttentionConfig(d_model=C, n_heads=N_HEADS, causal=True))(x, context=context)


def test_rotary_attention_is_invariant_to_shifting_all_positions():
    """With RoPE only relative positions matter: positions 0..T-1 and 40..40+T-1 give the same output."""
    mha = MultiHeadAttention(AttentionConfig(d_model=C, n_heads=N_HEADS, causal=True, rotary=True)).eval()
    x = torch.randn(2, T, C)
    torch.testing.assert_close(mha(x), mha(x, positions=torch.arange(T) + 40), atol=1e-5, rtol=1e-4)
    # Different relative positions do change it.
    spread = mha(x, positions=torch.arange(T) * 3)
    assert (spread - mha(x)).abs().max() > 1e-3
