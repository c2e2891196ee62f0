"""Positional encodings: hand-computed sinusoids, RoPE's relative-position and norm properties."""

from __future__ import annotations

import math

import pytest
import torch

from utils.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    sinusoidal_table,
)
from utils.seed import set_seed


@pytest.fixture(autouse=True)
def _seed():
    set_seed(0)


def test_sinusoidal_table_matches_formula_by_hand():
    d = 8
    table = sinusoidal_table(50, d)
    assert table.shape == (50, d)
    for pos, i in [(0, 0), (1, 0), (3, 1), (17, 2), (49, 3)]:
        angle = pos / 10000 ** (2 * i / d)
        assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
        assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    # Position 0: all sines 0, all cosines 1.
    torch.testing.assert_close(table[0], torch.tensor([0.0, 1.0] * (d // 2)))


def test_sinusoidal_rejects_odd_dim_and_module_has_no_parameters():
    with pytest.raises(ValueError, match="dim"):
        sinusoidal_table(10, 7)
    pe = SinusoidalPositionalEncoding(d_model=16, max_len=32)
    assert list(pe.parameters()) == []
    positions = torch.tensor([[0, 1, 2], [5, 6, 7]])
    torch.testing.assert_close(pe(positions), sinusoidal_table(32, 16)[positions])
    with pytest.raises(ValueError, match="positions"):
        pe(torch.tensor([31, 32]))


def test_learned_embedding_shape_and_gradient_only_reaches_used_rows():
    emb = LearnedPositionalEmbedding(max_len=10, d_model=6)
    out = emb(torch.tensor([[0, 1, 2], [0, 1, 2]]))
    assert out.shape == (2, 3, 6)
    out.sum().backward()
    grad = emb.embedding.weight.grad
    torch.testing.assert_close(grad[:3], torch.full((3, 6), 2.0))  # each used row appears twice
    assert grad[3:].abs().sum() == 0
    with pytest.raises(ValueError, match="positions"):
        emb(torch.tensor([10]))


def _rotate_at(rope: RotaryEmbedding, q: torch.Tensor, k: torch.Tensor, m: int, n: int) -> float:
    """Score <R(m) q, R(n) k> of a single query/key pair, q and k shaped (D,)."""
    qr, _ = rope.apply_rotary(q[None, None, None], q[None, None, None], torch.tensor([m]))
    kr, _ = rope.apply_rotary(k[None, None, None], k[None, None, None], torch.tensor([n]))
    return (qr * kr).sum().item()


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(head_dim=16)
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    rope = rope.double()
    for m, n in [(0, 0), (3, 1), (2, 9), (10, 4)]:
        base = _rotate_at(rope, q, k, m, n)
        for shift in (1, 7, 100):
            assert _rotate_at(rope, q, k, m + shift, n + shift) == pytest.approx(base, abs=1e-9)
    # ...and it does depend on the offset (otherwise the test above proves nothing).
    assert abs(_rotate_at(rope, q, k, 5, 0) - _rotate_at(rope, q, k, 0, 0)) > 1e-3


def test_rope_preserves_norms_and_is_identity_at_position_zero():
    rope = RotaryEmbedding(head_dim=8)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    qr, kr = rope.apply_rotary(q, k, torch.arange(5) * 13)
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(kr.norm(dim=-1), k.norm(dim=-1))
    q0, k0 = rope.apply_rotary(q, k, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(q0, q)
    torch.testing.assert_close(k0, k)


def test_rope_equals_complex_multiplication():
    """Pair (x_j, x_{j+D/2}) as the complex number x_j + i x_{j+D/2}, times e^{i m theta_j}."""
    D, m = 6, 4
    rope = RotaryEmbedding(head_dim=D, base=10000.0)
    x = torch.randn(1, 1, 1, D)
    xr, _ = rope.apply_rotary(x, x, torch.tensor([m]))
    for j in range(D // 2):
        theta = 10000.0 ** (-2 * j / D)
        z = complex(x[0, 0, 0, j], x[0, 0, 0, j + D // 2]) * complex(math.cos(m * theta), math.sin(m * theta))
        assert xr[0, 0, 0, j].item() == pytest.approx(z.real, abs=1e-5)
        assert xr[0, 0, 0, j + D // 2].item() == pytest.approx(z.imag, abs=1e-5)


def test_rope_batched_positions_match_shared_positions():
    rope = RotaryEmbedding(head_dim=8)
    q, k = torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8)
    shared = rope.apply_rotary(q, k, torch.arange(4))
    batched = rope.apply_rotary(q, k, torch.arange(4).expand(2, 4))
    torch.testing.assert_close(shared, batched)
    with pytest.raises(ValueError, match="head_dim"):
        RotaryEmbedding(head_dim=7)
