"""Attention, written out: the one operation that makes a transformer a transformer.

Every token asks a question (query q), advertises what it holds (key k) and carries a payload
(value v). A query scores every key with a dot product, the scores go through a softmax, and the
output is the resulting weighted average of the values:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V

Dividing by sqrt(d_k) keeps the scores at unit variance whatever the head size (a dot product of
d_k unit-variance terms has variance d_k); without it the softmax saturates and gradients vanish.

Masks say which keys a query may look at. Convention throughout the course: a **boolean** tensor
broadcastable to (B, H, T_q, T_k) where **True = may attend** (the same as
``torch.nn.functional.scaled_dot_product_attention``; note that ``torch.nn.MultiheadAttention``'s
``key_padding_mask`` uses the opposite, True = ignore).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils.config_checks import check, check_bool, check_int, check_number
from utils.positional import RotaryEmbedding


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(D)) v for q (B, H, Tq, D), k and v (B, H, Tk, D) -> (B, H, Tq, D).

    ``mask``: bool, broadcastable to (B, H, Tq, Tk), True = may attend. A query whose keys are all
    masked (e.g. a padding token under left padding) has nothing to average; it gets an all-zero
    weight row and a zero output instead of the NaN a naive softmax of all -inf would give.
    ``dropout_p`` drops attention weights (pass 0.0 at eval time). With ``return_weights`` also
    returns the (B, H, Tq, Tk) weights, e.g. for heatmaps.
    """
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = may attend), got dtype {mask.dtype}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, Tq, Tk)
    if mask is not None:
        # The most negative finite number rather than -inf: exp() of it is exactly 0 next to any real
        # score, and a fully masked row stays finite (uniform), which we then zero out below.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v  # (B, H, Tq, D)
    return (out, weights) if return_weights else out


def causal_mask(T: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(1, 1, T, T) bool lower triangle: query t may look at keys 0..t, never the future."""
    if T <= 0:
        raise ValueError(f"T must be positive, got {T}")
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()[None, None]


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """HF-style (B, T) mask (1 = real token, 0 = padding) -> (B, 1, 1, T) bool over the keys.

    The singleton axes broadcast over heads and queries: no query may look at a padding key.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must have shape (B, T), got {tuple(attention_mask.shape)}")
    return attention_mask.bool()[:, None, None, :]


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Logical AND of broadcastable bool masks (None entries are skipped; all None -> None).

    E.g. ``combine_masks(causal_mask(T), padding_mask(am))`` -> (B, 1, T, T): the past, minus padding.
    """
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = out & m
    return out


@dataclass
class AttentionConfig:
    """Shape and options of a multi-head attention layer. Validated on construction (ValueError on bad values)."""

    d_model: int = 128
    """width of the token vectors coming in and going out"""
    n_heads: int = 4
    """heads run in parallel on d_model / n_heads dims each"""
    dropout: float = 0.0
    """dropout on the attention weights (training only)"""
    bias: bool = True
    """bias terms in the q/k/v/output projections (GPT-2 and BERT have them)"""
    causal: bool = False
    """self-attention sees only the past (decoders); added to any mask passed in"""
    rotary: bool = False
    """rotate q and k by position (RoPE) instead of adding position vectors"""
    rotary_base: float = 10000.0
    """RoPE frequency base; larger = slower rotations, longer contexts"""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads"):
            check_int(self, name, ge=1)
        check(self, "d_model", self.d_model % self.n_heads == 0, f"divisible by n_heads ({self.n_heads})")
        check_number(self, "dropout", ge=0, lt=1)
        for name in ("bias", "causal", "rotary"):
            check_bool(self, name)
        check_number(self, "rotary_base", gt=0)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class MultiHeadAttention(nn.Module):
    """Multi-head attention: n_heads small attentions on separate slices, then mixed by ``out_proj``.

    Each head gets its own learned projection of the input, so different heads can track different
    relations (the previous token, the matching bracket, the subject of the verb, ...).

    * Self-attention: ``forward(x)``: queries, keys and values all come from x.
    * Cross-attention: ``forward(x, context=enc)``: queries from x, keys and values from ``context``
      (the decoder reading the encoder's output in an encoder-decoder model).
    """

    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.q_proj = nn.Linear(d, d, bias=config.bias)
        self.k_proj = nn.Linear(d, d, bias=config.bias)
        self.v_proj = nn.Linear(d, d, bias=config.bias)
        self.out_proj = nn.Linear(d, d, bias=config.bias)
        self.rotary = RotaryEmbedding(config.head_dim, config.rotary_base) if config.rotary else None

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.config.n_heads, self.config.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d_model) -> (B, T, d_model) [, weights (B, H, T, T_context)].

        ``context``: (B, S, d_model) for cross-attention, None for self-attention.
        ``mask``: bool, broadcastable to (B, H, T, S), True = may attend (see ``padding_mask``).
        ``positions``: (T,) or (B, T) integer positions for RoPE (default 0..T-1).
        """
        cfg = self.config
        if context is not None and (cfg.causal or cfg.rotary):
            raise ValueError("causal and rotary apply to self-attention only; got a cross-attention context")
        if x.dim() != 3 or x.size(-1) != cfg.d_model:
            raise ValueError(f"x must have shape (B, T, {cfg.d_model}), got {tuple(x.shape)}")
        source = x if context is None else context
        q = self._split_heads(self.q_proj(x))  # (B, H, T, D)
        k = self._split_heads(self.k_proj(source))  # (B, H, S, D)
        v = self._split_heads(self.v_proj(source))  # (B, H, S, D)

        if self.rotary is not None:
            if positions is None:
                positions = torch.arange(x.size(1), device=x.device)
            q, k = self.rotary.apply_rotary(q, k, positions)
        if cfg.causal:
            mask = combine_masks(causal_mask(x.size(1), device=x.device), mask)

        dropout_p = cfg.dropout if self.training else 0.0
        out, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p, return_weights=True)
        B, H, T, D = out.shape
        out = self.out_proj(out.transpose(1, 2).reshape(B, T, H * D))  # heads side by side, then mixed
        return (out, weights) if return_weights else out
