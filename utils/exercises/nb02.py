"""Checks for the exercises of notebook 02 (the transformer architecture). Each compares the student's answer
with ``utils.positional`` / ``utils.transformer`` or PyTorch on inputs the student has not seen."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from utils.exercises import NotYet, exercise
from utils.positional import LearnedPositionalEmbedding, sinusoidal_table
from utils.transformer import (
    GPT,
    BlockConfig,
    DecoderBlock,
    EncoderOnlyConfig,
    EncoderOnlyModel,
    GPTConfig,
    count_parameters,
)


def _as_number(value: object, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NotYet(f"{what} should be a number, got {type(value).__name__}")
    return float(value)


@exercise("02.1")
def check_offset_matrix(offset_matrix) -> None:
    """``offset_matrix(k, d)``: the (d, d) matrix M_k with PE[p + k] = M_k PE[p] for every position p."""
    for d in (64, 16):
        table = sinusoidal_table(200, d)
        for k in (1, 7, 50):
            M = offset_matrix(k, d)
            if not isinstance(M, torch.Tensor) or M.shape != (d, d):
                raise NotYet(f"offset_matrix({k}, {d}) should be a ({d}, {d}) tensor")
            shifted = table[:-k] @ M.to(table.dtype).T  # row p: M_k PE[p]
            if not torch.allclose(shifted, table[k:], atol=1e-4):
                worst = (shifted - table[k:]).abs().max().item()
                raise NotYet(
                    f"with d = {d}, k = {k}: M_k PE[p] misses PE[p + k] by up to {worst:.3g}; each (sin, cos) "
                    "pair needs its own 2 x 2 rotation by k times its frequency"
                )


def _meta_count(model_class: type[nn.Module], config: object) -> int:
    with torch.device("meta"):  # shapes only, no memory
        return count_parameters(model_class(config))["total"]


@exercise("02.2a")
def check_gpt_parameters(gpt_parameters) -> None:
    """``gpt_parameters(n_layer, d, vocab_size, block_size)``: the exact parameter count of our GPT."""
    for n_layer, d, vocab, block in ((24, 1024, 50257, 1024), (3, 96, 700, 40), (1, 8, 11, 5)):
        predicted = _as_number(gpt_parameters(n_layer, d, vocab, block), "the count")
        counted = _meta_count(GPT, GPTConfig(n_layer=n_layer, n_head=4, n_embd=d, vocab_size=vocab, block_size=block))
        if predicted != counted:
            raise NotYet(
                f"for n_layer={n_layer}, d={d}, V={vocab}, T_max={block} you predict {predicted:,.0f}, "
                f"count_parameters says {counted:,}"
            )


@exercise("02.2b")
def check_bert_parameters(bert_parameters) -> None:
    """``bert_parameters(n_layers, d, vocab_size, max_len)``: the exact count of an EncoderOnlyModel, d_ff = 4d."""
    for n_layers, d, vocab, max_len in ((12, 768, 30522, 512), (2, 64, 300, 33)):
        predicted = _as_number(bert_parameters(n_layers, d, vocab, max_len), "the count")
        config = EncoderOnlyConfig(
            vocab_size=vocab, max_len=max_len, d_model=d, n_heads=4, n_layers=n_layers, d_ff=4 * d
        )
        counted = _meta_count(EncoderOnlyModel, config)
        if predicted != counted:
            raise NotYet(
                f"for n_layers={n_layers}, d={d}, V={vocab}, max_len={max_len} you predict {predicted:,.0f}, "
                f"count_parameters says {counted:,} (differs by {counted - predicted:+,.0f}): look at what BERT "
                "has at its edges that a GPT has not"
            )


@exercise("02.3")
def check_nll_per_token(nll_per_token) -> None:
    """``nll_per_token(model, input_ids, attention_mask, offset)``: mean next-token NLL over real tokens, with
    position_ids = offset + arange(T)."""
    config = GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(31)
        model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(1, 40, (3, 9), generator=torch.Generator().manual_seed(32))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding
    mask[2, 7:] = 0
    for offset in (0, 5):
        with torch.no_grad():
            got = _as_number(nll_per_token(model, ids, mask, offset), "the loss")
            positions = offset + torch.arange(ids.size(1)).expand_as(ids)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        logprobs = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        expected = -(logprobs * mask[:, 1:]).sum().item() / mask[:, 1:].sum().item()
        if not math.isclose(got, expected, rel_tol=1e-4):
            raise NotYet(
                f"at offset {offset} you got {got:.4f} nats per token; check that logits at t predict token t + 1, "
                "that padding targets are left out, and that the positions start at the offset"
            )


@exercise("02.4")
def check_shift_gap(shift_gap) -> None:
    """``shift_gap(f, x, shift)``: max |f(x, arange(T)) - f(x, shift + arange(T))| for f(x, positions)."""
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(41))
    with torch.random.fork_rng():
        torch.manual_seed(42)
        rotary = DecoderBlock(BlockConfig(32, 4, 64, dropout=0.0, rotary=True), cross_attention=False)
        plain = DecoderBlock(BlockConfig(32, 4, 64, dropout=0.0), cross_attention=False)
        learned = LearnedPositionalEmbedding(max_len=200, d_model=32)
    rotary_f = lambda x, positions: rotary.eval()(x, positions=positions)  # noqa: E731
    learned_f = lambda x, positions: plain.eval()(x + learned(positions))  # noqa: E731
    with torch.no_grad():
        rotary_gap = _as_number(shift_gap(rotary_f, x, 100), "the gap")
        learned_gap = _as_number(shift_gap(learned_f, x, 100), "the gap")
        expected = (learned_f(x, torch.arange(10)) - learned_f(x, torch.arange(100, 110))).abs().max().item()
    if not rotary_gap < 1e-4:
        raise NotYet(f"a RoPE block should give the same output after a shift, but your gap is {rotary_gap:.3g}")
    if not math.isclose(learned_gap, expected, rel_tol=1e-3):
        raise NotYet(
            f"with learned positions the gap is {learned_gap:.3g}, which is not the largest difference between "
            "the outputs at positions 0.. and at positions shift.."
        )


@exercise("02.5a")
def check_rms_norm(rms_norm) -> None:
    """``rms_norm(x, weight, eps)``: gamma * x / sqrt(mean(x^2) + eps) over the last dimension."""
    generator = torch.Generator().manual_seed(51)
    x = 2 + 3 * torch.randn(4, 5, 24, generator=generator)
    weight = torch.randn(24, generator=generator)
    for eps in (1e-6, 0.5):
        got = rms_norm(x, weight, eps)
        expected = F.rms_norm(x, (24,), weight, eps)
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            raise NotYet(f"rms_norm should keep the shape {tuple(x.shape)}")
        if torch.allclose(got, F.layer_norm(x, (24,), weight, None, eps), atol=1e-4):
            raise NotYet("that is LayerNorm: RMSNorm does not subtract the mean")
        if not torch.allclose(got, expected, atol=1e-5):
            raise NotYet(f"with eps = {eps} your output differs from torch.nn.functional.rms_norm")


@exercise("02.5b")
def check_swiglu(swiglu) -> None:
    """``swiglu(x, w_gate, w_up, w_down)``: w_down (SiLU(w_gate x) * w_up x), weights stored as nn.Linear's
    (out, in)."""
    generator = torch.Generator().manual_seed(52)
    d, h = 12, 32
    x = torch.randn(3, 4, d, generator=generator)
    w_gate, w_up = torch.randn(h, d, generator=generator), torch.randn(h, d, generator=generator)
    w_down = torch.randn(d, h, generator=generator) / math.sqrt(h)
    got = swiglu(x, w_gate, w_up, w_down)
    expected = F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)
    if not isinstance(got, torch.Tensor) or got.shape != x.shape:
        raise NotYet(f"swiglu should map (B, T, d) to (B, T, d), here {tuple(x.shape)}")
    if torch.allclose(got, F.linear(F.silu(F.linear(x, w_up)) * F.linear(x, w_gate), w_down), atol=1e-5) and not (
        torch.allclose(got, expected, atol=1e-5)
    ):
        raise NotYet("the SiLU goes on the gate projection, not on the other one")
    if not torch.allclose(got, expected, atol=1e-4):
        raise NotYet("the output differs from W_down (SiLU(W_gate x) * W_up x)")


@exercise("02.5c")
def check_swiglu_hidden(swiglu_hidden) -> None:
    """``swiglu_hidden(d)``: the hidden width giving a bias-free SwiGLU the parameters of a d -> 4d -> d MLP."""
    for d in (768, 96, 3):
        h = swiglu_hidden(d)
        if isinstance(h, bool) or not isinstance(h, int):
            raise NotYet(f"swiglu_hidden({d}) should be a whole number of units, got {h!r}")
        swiglu = [nn.Linear(d, h, bias=False), nn.Linear(d, h, bias=False), nn.Linear(h, d, bias=False)]
        mlp = [nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)]
        n_swiglu, n_mlp = (sum(p.numel() for layer in m for p in layer.parameters()) for m in (swiglu, mlp))
        if n_swiglu != n_mlp:
            raise NotYet(f"with d = {d}, a SwiGLU of width {h} has {n_swiglu:,} weights, the MLP {n_mlp:,}")


def _text_infilling_reference(tokens: list[int], noise_mask: list[bool], mask_id: int) -> list[int]:
    return [
        mask_id if dropped else token
        for i, (token, dropped) in enumerate(zip(tokens, noise_mask))
        if not dropped or i == 0 or not noise_mask[i - 1]
    ]


@exercise("02.6")
def check_text_infilling(text_infilling) -> None:
    """``text_infilling(tokens, noise_mask, mask_id)``: BART's corrupted input, each dropped span replaced by
    one ``mask_id`` (lists of ints and bools in, a list of ints out)."""
    generator = torch.Generator().manual_seed(62)
    cases = [([5, 6, 7, 8, 9, 10], [False, True, True, False, True, False])]
    for length in (12, 30, 7):
        tokens = torch.randint(2, 50, (length,), generator=generator).tolist()
        cases.append((tokens, (torch.rand(length, generator=generator) < 0.4).tolist()))
    cases.append(([3, 4, 5], [True, True, False]))  # a text that starts with a dropped span
    for tokens, noise_mask in cases:
        got = text_infilling(list(tokens), list(noise_mask), 99)
        if not isinstance(got, (list, tuple)) or not all(isinstance(t, int) for t in got):
            raise NotYet("text_infilling should return a list of token ids (ints)")
        expected = _text_infilling_reference(tokens, noise_mask, 99)
        if list(got) == expected:
            continue
        if list(got) == [99 if m else t for t, m in zip(tokens, noise_mask)]:
            raise NotYet("one [MASK] per dropped token is BERT's corruption: BART puts ONE [MASK] per span")
        if list(got) == [t for t, m in zip(tokens, noise_mask) if not m]:
            raise NotYet("deleting the spans hides where something is missing: each span leaves one [MASK]")
        raise NotYet(f"on tokens {tokens} with mask {[int(m) for m in noise_mask]} expected {expected}, got {got}")
