"""Position information for a transformer.

Attention is permutation-invariant: shuffle the tokens and every token gets the same output, just
shuffled. Word order has to be injected. Three classic ways, all here:

* ``SinusoidalPositionalEncoding`` (Vaswani et al., 2017): a fixed table of sines and cosines of
  geometrically spaced frequencies, *added* to the token embeddings. No parameters.
* ``LearnedPositionalEmbedding`` (BERT, GPT-2): one trainable vector per position, also added.
  Simple and strong, but cannot go past the ``max_len`` it was built with.
* ``RotaryEmbedding`` (RoPE, Su et al., 2021): nothing is added to the embeddings; instead the query
  and key vectors of each head are *rotated* by an angle proportional to their position. The dot
  product of a rotated query at position m and key at position n then depends only on m - n, so
  attention sees relative positions for free. Used by LLaMA, Mistral, Qwen, ...

Positions are always passed explicitly as integer tensors (``(T,)`` or ``(B, T)``) so that callers
with left padding can hand in their own position ids.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(num_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The (num_positions, dim) sinusoidal table of "Attention Is All You Need", handy for plotting.

    PE[pos, 2i]   = sin(pos / base^(2i / dim))
    PE[pos, 2i+1] = cos(pos / base^(2i / dim))

    Column pair i oscillates with wavelength 2*pi*base^(2i/dim): the first pairs change every token,
    the last ones barely move over thousands of tokens, like the hands of a clock.
    """
    if num_positions <= 0:
        raise ValueError(f"num_positions must be positive, got {num_positions}")
    if dim <= 0 or dim % 2 != 0:
        raise ValueError(f"dim must be a positive even number (sin/cos pairs), got {dim}")
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]  # (T, 1)
    # base^(-2i/dim) computed in log space, as in the reference implementation.
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(base) / dim))  # (dim/2,)
    angles = position * inv_freq  # (T, dim/2)
    table = torch.empty(num_positions, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table


def _check_positions(positions: torch.Tensor, max_len: int) -> None:
    if positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"positions must be an integer tensor, got dtype {positions.dtype}")
    if positions.numel() and (positions.min() < 0 or positions.max() >= max_len):
        raise ValueError(
            f"positions must lie in [0, {max_len}), got range [{int(positions.min())}, {int(positions.max())}]"
        )


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal encodings: ``forward(positions)`` returns (..., d_model) vectors to add to tokens.

    Stored as a non-trainable buffer, so it moves with ``.to(device)`` but is not in ``parameters()``.
    """

    def __init__(self, d_model: int, max_len: int = 2048, base: float = 10000.0):
        super().__init__()
        self.max_len = max_len
        self.register_buffer("table", sinusoidal_table(max_len, d_model, base), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions: integer (T,) or (B, T) -> encodings (T, d_model) or (B, T, d_model)."""
        _check_positions(positions, self.max_len)
        return self.table[positions]


class LearnedPositionalEmbedding(nn.Module):
    """One trainable d_model vector per position (GPT-2's ``wpe``, BERT's position embeddings)."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        if max_len <= 0 or d_model <= 0:
            raise ValueError(f"max_len and d_model must be positive, got {max_len=}, {d_model=}")
        self.max_len = max_len
        self.embedding = nn.Embedding(max_len, d_model)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions: integer (T,) or (B, T) -> embeddings (T, d_model) or (B, T, d_model)."""
        _check_positions(positions, self.max_len)
        return self.embedding(positions)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Map each pair (x1, x2) -> (-x2, x1), pairing dim j with dim j + D/2.

    That is multiplication by i in the complex plane, i.e. a 90-degree turn; RoPE mixes it with
    ``x`` itself: x*cos + rotate_half(x)*sin is a rotation by the angle.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) for one attention head of size ``head_dim``.

    The head vector is split into head_dim/2 two-dimensional pairs; pair i at position m is rotated
    by the angle m * theta_i with theta_i = base^(-2i/head_dim) (the same frequencies as the
    sinusoidal table). Because rotations compose, <R(m) q, R(n) k> = <q, R(n - m) k>: the score depends
    on the offset only, and rotations keep vector norms.

    We pair dim j with dim j + head_dim/2 (the GPT-NeoX / LLaMA-in-HF convention) instead of the
    paper's adjacent (2i, 2i+1) pairs; the two differ only by a fixed permutation of the head dims.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim <= 0 or head_dim % 2 != 0:
            raise ValueError(f"head_dim must be a positive even number for RoPE, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (D/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation tables for ``positions`` (T,) or (B, T) -> cos, sin of shape (..., T, head_dim)."""
        angles = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq  # (..., T, D/2)
        angles = torch.cat((angles, angles), dim=-1)  # (..., T, D): dims j and j+D/2 share an angle
        return angles.cos(), angles.sin()

    def apply_rotary(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate queries and keys (B, H, T, head_dim) by their positions ((T,) or (B, T))."""
        if positions.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"positions must be an integer tensor, got dtype {positions.dtype}")
        cos, sin = self.cos_sin(positions)
        if cos.dim() == 3:  # (B, T, D): add the head axis so it broadcasts over H
            cos, sin = cos[:, None], sin[:, None]
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
