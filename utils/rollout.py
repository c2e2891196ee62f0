"""Rollout sampling for PPO: a GPT-2 policy continues a batch of prompts and records what it thought.

Like CleanRL's rollout (``action, logprob, _, value = agent.get_action_and_value(obs)``), the policy records
what it "thought" while acting: the log-probability of each token it sampled (these ARE the old
log-probs of the ratio, nothing is recomputed), the entropy of the distribution it sampled from, and,
with a value head, the value of the state. This is ``utils.decoding.generate_with_logprobs`` specialised to
GPT-2 and written against its blocks directly: transformers' generic forward spends most of a
1-token decoding step in Python bookkeeping, and ``torch.multinomial`` draws a random number per
vocabulary entry where inverse-CDF sampling needs one per row. On the benchmark this halves the
generation time. The test suite checks every recorded number against a plain teacher-forced forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from utils.decoding import position_ids_from_mask
from utils.policy_model import gpt2_parts, lm_head, tempered_logits


@dataclass
class Samples:
    """What the policy did and thought during a rollout; (B, R) each, R = longest response."""

    responses: torch.Tensor  # sampled tokens, PAD after EOS
    mask: torch.Tensor  # bool, True up to and including EOS
    logprobs: torch.Tensor  # log p(token) at the sampling temperature, 0 after EOS
    entropy: torch.Tensor  # entropy of the (tempered) next-token distribution, 0 after EOS
    values: torch.Tensor | None  # value-head output for the state before each token, None without a head


def sample_token(
    logits: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one token per row from softmax(logits) (B, V) by inverse CDF: one uniform number per row.

    Returns (tokens (B,), their log-probabilities (B,), the entropy of each row's distribution (B,)).
    """
    logp = torch.log_softmax(logits, dim=-1)  # (B, V)
    probs = logp.exp()
    cdf = probs.cumsum(dim=-1)  # (B, V)
    u = torch.rand(logits.shape[0], 1, generator=generator, device=logits.device) * cdf[:, -1:]  # scaled: no overshoot
    tokens = torch.searchsorted(cdf, u).clamp_(max=logits.shape[-1] - 1).squeeze(1)  # (B,)
    entropy = -(probs * logp).sum(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(1), entropy


@torch.no_grad()
def sample_responses(
    policy: nn.Module,
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None,
    value_head: nn.Module | None = None,
) -> Samples:
    """Continue left-padded prompts (B, P) with a GPT-2 policy (a PEFT wrapper keeps its adapters active).

    The prompt goes through once (prefill), then each step feeds one token per row, reusing keys and values
    from a preallocated cache. A row that emits EOS is finished: it gets PAD from then on, masked out, and
    the loop ends when every row is finished or after ``max_new_tokens``.
    """
    backbone, head = gpt2_parts(policy), lm_head(policy)
    B, P = queries.shape
    T = P + max_new_tokens
    H = backbone.config.n_head
    C = backbone.config.n_embd
    D = C // H
    keys = torch.empty(len(backbone.h), B, H, T, D)  # the KV cache, one slot per position
    values_cache = torch.empty_like(keys)
    key_ok = torch.ones(B, T, dtype=torch.bool)  # which cached positions may be attended to (not padding)
    key_ok[:, :P] = query_mask.bool()
    # Prefill: causal attention among real tokens; each position also sees itself, so that padding rows
    # attend to something and stay finite (their outputs are never used).
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    attend = (causal & key_ok[:, None, :P]) | torch.eye(P, dtype=torch.bool)  # (B, P, P)

    responses = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long)
    mask = torch.zeros(B, max_new_tokens, dtype=torch.bool)
    logprobs, entropy = torch.zeros(B, max_new_tokens), torch.zeros(B, max_new_tokens)
    values = torch.zeros(B, max_new_tokens) if value_head is not None else None
    unfinished = torch.ones(B, dtype=torch.bool)

    tokens, positions = queries, position_ids_from_mask(query_mask)  # (B, P) first, then (B, 1)
    start, steps = 0, 0  # cache slots filled so far; response tokens sampled so far
    for step in range(max_new_tokens):
        n = tokens.shape[1]  # P at prefill, then 1
        x = backbone.wte(tokens) + backbone.wpe(positions)  # (B, n, C)
        mask_now = attend[:, None] if step == 0 else key_ok[:, None, None, : start + n]  # (B, 1, n, keys)
        for layer, block in enumerate(backbone.h):
            q, k, v = block.attn.c_attn(block.ln_1(x)).split(C, dim=-1)  # (B, n, C) each
            keys[layer, :, :, start : start + n] = k.view(B, n, H, D).transpose(1, 2)
            values_cache[layer, :, :, start : start + n] = v.view(B, n, H, D).transpose(1, 2)
            attn = nn.functional.scaled_dot_product_attention(
                q.view(B, n, H, D).transpose(1, 2),
                keys[layer, :, :, : start + n],
                values_cache[layer, :, :, : start + n],
                attn_mask=mask_now,
            )  # (B, H, n, D)
            x = x + block.attn.c_proj(attn.transpose(1, 2).reshape(B, n, C))
            x = x + block.mlp(block.ln_2(x))
        last = backbone.ln_f(x[:, -1])  # (B, C): the state the next token is sampled from
        token, token_logprob, token_entropy = sample_token(tempered_logits(head, last, temperature), generator)
        token = torch.where(unfinished, token, pad_token_id)
        responses[:, step] = token
        mask[:, step] = unfinished
        logprobs[:, step] = torch.where(unfinished, token_logprob, 0.0)
        entropy[:, step] = torch.where(unfinished, token_entropy, 0.0)
        if values is not None:
            values[:, step] = torch.where(unfinished, value_head(last).squeeze(-1), 0.0)
        steps = step + 1
        unfinished &= token != eos_token_id
        if not bool(unfinished.any()):
            break
        start += n
        tokens, positions = token[:, None], positions[:, -1:] + 1
    trim = slice(0, steps)
    return Samples(
        responses[:, trim].contiguous(),
        mask[:, trim].contiguous(),
        logprobs[:, trim].contiguous(),
        entropy[:, trim].contiguous(),
        values[:, trim].contiguous() if values is not None else None,
    )
