"""Decoding from scratch: logit transforms, greedy and sampled generation with a KV cache.

Every causal LM ends in the same loop: run the model, look at the logits of the last position, turn them
into a choice of next token, append it, repeat. This module writes that loop out for any Hugging Face
causal LM (`GPT2LMHeadModel`, ...), with the three standard sampling knobs written out as plain functions:

    logits --temperature--> --top-k--> --top-p--> softmax --> torch.multinomial

The order and arithmetic are exactly those of `transformers` (`TemperatureLogitsWarper`, `TopKLogitsWarper`,
`TopPLogitsWarper`, then `torch.multinomial(probs, num_samples=1)`), so with the same seed `generate` returns
the very tokens `model.generate` returns; the tests check that claim mode by mode.

PPO reuses `generate_with_logprobs` for its rollouts: besides the tokens it returns the log-probability of
every sampled token under the distribution it was actually drawn from, and a mask of the real (pre-EOS)
tokens, so nothing has to be recomputed to know what the policy did.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utils.config_checks import check_bool, check_int, check_number, is_int, is_number

# ---------------------------------------------------------------------------------------------------------
# Validation of the transforms' arguments, worded as utils.config_checks words SamplingConfig's fields, so that
# a bad value reads the same whether it reached a transform directly or through the config.
# ---------------------------------------------------------------------------------------------------------


def _check_temperature(temperature: float) -> None:
    if not (is_number(temperature) and temperature > 0):  # an infinite temperature would sample uniformly
        raise ValueError(
            f"temperature must be a finite number > 0, got {temperature!r} (for greedy decoding use do_sample=False)"
        )


def _check_top_k(top_k: int) -> None:
    if not (is_int(top_k) and top_k >= 0):
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r} (0 disables top-k)")


def _check_top_p(top_p: float) -> None:
    if not (is_number(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be a finite number in (0, 1], got {top_p!r} (1 disables top-p)")


# ---------------------------------------------------------------------------------------------------------
# Logit transforms. Each takes logits (..., V) and returns new logits (..., V); filtered tokens get -inf so
# that softmax gives them exactly zero probability.
# ---------------------------------------------------------------------------------------------------------


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by `temperature`: < 1 sharpens the distribution, > 1 flattens it, 1 leaves it."""
    _check_temperature(temperature)
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the `k` largest logits of each row and set the rest to -inf; `k=0` disables the filter.

    Ties with the k-th largest value are all kept (as in transformers), so a row can keep more than k tokens.
    A `k` larger than the vocabulary keeps everything.
    """
    _check_top_k(k)
    if k == 0:
        return logits
    k = min(k, logits.size(-1))
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability mass is >= `p`.

    The most likely token is always kept, so even a tiny `p` leaves one token to sample. `p=1` disables
    the filter.
    """
    _check_top_p(p)
    if p == 1:
        return logits
    # Sort ascending and drop every token whose own mass plus the mass of all less likely tokens is
    # <= 1 - p: the tokens above it then already hold >= p, so it is not needed in the nucleus. This is the
    # same set as "grow from the top until the mass reaches p"; we use transformers' form so that float
    # rounding at the boundary falls the same way and sampling matches token for token.
    sorted_logits, sorted_indices = torch.sort(logits, descending=False)  # (..., V) ascending
    cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (..., V)
    sorted_to_remove = cumulative_probs <= (1 - p)
    sorted_to_remove[..., -1:] = False  # the most likely token always survives
    to_remove = sorted_to_remove.scatter(-1, sorted_indices, sorted_to_remove)  # back to vocabulary order
    return logits.masked_fill(to_remove, float("-inf"))


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Apply temperature, then top-k, then top-p (transformers' order) to logits (..., V).

    Transforms whose setting is the identity (temperature 1, top_k 0, top_p 1) are skipped, which is both
    faster and what transformers does.
    """
    if temperature != 1:
        logits = apply_temperature(logits, temperature)
    logits = top_k_filter(logits, top_k)
    return top_p_filter(logits, top_p)


# ---------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SamplingConfig:
    """How `generate` picks tokens and when it stops. Validated on construction (ValueError on bad values)."""

    max_new_tokens: int = 32
    """most tokens to append per row; generation stops earlier once every row hit EOS"""
    do_sample: bool = True
    """True: draw from the processed distribution; False: greedy argmax of the raw logits"""
    temperature: float = 1.0
    """divides the logits before sampling; finite and > 0 (ignored when greedy, as in transformers)"""
    top_k: int = 0
    """keep only the k most likely tokens when sampling; 0 disables"""
    top_p: float = 1.0
    """nucleus mass in (0, 1] kept when sampling; 1 disables"""
    eos_token_id: int | None = None
    """a row is finished once it emits this token; None: always run max_new_tokens"""
    pad_token_id: int | None = None
    """written after a row's EOS; None falls back to eos_token_id (GPT-2 convention)"""

    def __post_init__(self) -> None:
        check_int(self, "max_new_tokens", ge=1)
        check_bool(self, "do_sample")
        check_number(self, "temperature", gt=0)
        check_int(self, "top_k", ge=0)
        check_number(self, "top_p", gt=0, le=1)
        for name in ("eos_token_id", "pad_token_id"):
            check_int(self, name, ge=0, none_ok=True)
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id


@dataclass
class GenerationOutput:
    """What a rollout needs: the tokens, how likely each new one was, and which ones are real."""

    sequences: torch.Tensor  # (B, T + N) prompt then N generated tokens; pad_token_id after a row's EOS
    logprobs: torch.Tensor  # (B, N) log-prob of each new token under the distribution it was drawn from; 0 after EOS
    completion_mask: torch.Tensor  # (B, N) bool, True for generated tokens up to and including the row's EOS
    scores: torch.Tensor | None = None  # (B, N, V) processed logits of every step, only if output_scores=True


def _accepts_kwarg(model: torch.nn.Module, name: str) -> bool:
    """Whether `model.forward` takes keyword `name` (wrappers with **kwargs, e.g. PEFT, pass it on)."""
    parameters = inspect.signature(model.forward).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, 2, ... counted over real tokens only, so a left-padded row sees the same positions
    as the unpadded prompt. Pad slots get 0 (their value is irrelevant: they are masked out)."""
    position_ids = attention_mask.long().cumsum(-1) - 1  # (B, T)
    return position_ids.masked_fill(attention_mask == 0, 0)


def _check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    if input_ids.ndim != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be a (B, T) LongTensor, got shape {tuple(input_ids.shape)} {input_ids.dtype}")
    if input_ids.size(1) == 0:
        raise ValueError("input_ids must hold at least one prompt token per row, got T=0")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        # New tokens are appended on the right, so padding there would end up in the middle of the text.
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("attention_mask has padding on the right; pad prompts on the LEFT for generation")


@torch.no_grad()  # not inference_mode: PPO feeds these tensors back into a forward pass that needs grad
def generate_with_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    output_scores: bool = False,
) -> GenerationOutput:
    """Continue left-padded prompts (B, T) with a causal LM, greedy or sampled, using the KV cache.

    The prompt is run once (prefill); after that each step feeds only the newly chosen token and reuses the
    cached keys and values. A row that emits `eos_token_id` is finished: from then on it receives
    `pad_token_id`, and the loop ends as soon as every row is finished (or after `max_new_tokens`).

    Sampling draws with `torch.multinomial(probs, 1, generator=generator)`; with `generator=None` it uses
    the global RNG exactly like `model.generate`, so `torch.manual_seed(s)` before either gives the same
    tokens. Put the model in eval mode first: dropout would change the logits and, via its own RNG draws,
    the samples.

    Returns the sequences (B, T + N), the log-prob of every generated token under the processed
    distribution it was drawn from (B, N) (for greedy, the plain softmax of the logits), the mask of real
    generated tokens (B, N) and, if `output_scores`, the processed logits (B, N, V).
    """
    config = config if config is not None else SamplingConfig()
    if not isinstance(config, SamplingConfig):
        raise ValueError(f"config must be a SamplingConfig, got {type(config).__name__}")
    _check_inputs(input_ids, attention_mask)
    batch_size, prompt_len = input_ids.shape
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and prompt_len + config.max_new_tokens > max_positions:
        raise ValueError(
            f"prompt length {prompt_len} + max_new_tokens {config.max_new_tokens} exceeds the model's "
            f"max_position_embeddings {max_positions}"
        )
    device = input_ids.device
    total_len = prompt_len + config.max_new_tokens

    # Positions come from the mask (left padding); after that the mask only matters if it has zeros.
    # An all-ones mask is dropped, as transformers does, so attention can take its plain causal path.
    if attention_mask is None:
        position_ids = torch.arange(prompt_len, device=device).expand(batch_size, -1)  # (B, T)
        full_mask = None
    else:
        position_ids = position_ids_from_mask(attention_mask)  # (B, T)
        if bool(attention_mask.all()):
            full_mask = None
        else:
            # Preallocated: step t attends over the first prompt_len + t columns, a slice rather than a cat.
            full_mask = attention_mask.new_ones(batch_size, total_len)  # (B, T + max_new)
            full_mask[:, :prompt_len] = attention_mask

    # Output buffers, filled one column per step and trimmed to the steps actually taken.
    sequences = input_ids.new_zeros(batch_size, total_len)  # (B, T + max_new)
    sequences[:, :prompt_len] = input_ids
    logprobs = torch.zeros(batch_size, config.max_new_tokens, device=device)  # (B, max_new)
    completion_mask = torch.zeros(batch_size, config.max_new_tokens, dtype=torch.bool, device=device)
    scores = [] if output_scores else None
    unfinished = torch.ones(batch_size, dtype=torch.bool, device=device)  # (B,)

    model_kwargs = {"use_cache": True}
    if _accepts_kwarg(model, "logits_to_keep"):
        model_kwargs["logits_to_keep"] = 1  # only the last position's logits are needed: skip the (B, T, V) rest

    next_input = input_ids  # prefill with the whole prompt, then one token per step
    past_key_values = None
    steps = 0
    for step in range(config.max_new_tokens):
        # Attend over everything seen: the cached prompt_len + step - 1 tokens plus next_input (step 0: the prompt).
        mask = full_mask[:, : prompt_len + step] if full_mask is not None else None
        out = model(
            input_ids=next_input,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            **model_kwargs,
        )
        past_key_values = out.past_key_values
        logits = out.logits[:, -1].float()  # (B, V)

        if config.do_sample:
            step_scores = process_logits(logits, config.temperature, config.top_k, config.top_p)  # (B, V)
            probs = F.softmax(step_scores, dim=-1)
            next_token = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)  # (B,)
        else:
            step_scores = logits  # greedy ignores the sampling knobs, as in transformers
            next_token = step_scores.argmax(dim=-1)  # (B,)

        token_logprob = F.log_softmax(step_scores, dim=-1).gather(-1, next_token[:, None]).squeeze(1)  # (B,)
        if config.eos_token_id is not None:
            # Finished rows still consume their RNG draw above (as in transformers) but are overwritten here.
            next_token = torch.where(unfinished, next_token, config.pad_token_id)
            token_logprob = torch.where(unfinished, token_logprob, 0.0)

        sequences[:, prompt_len + step] = next_token
        logprobs[:, step] = token_logprob
        completion_mask[:, step] = unfinished
        if output_scores:
            scores.append(step_scores)
        steps = step + 1

        if config.eos_token_id is not None:
            unfinished &= next_token != config.eos_token_id
            if not bool(unfinished.any()):  # the one host sync per step: needed to stop early
                break
        next_input = next_token[:, None]  # (B, 1)
        position_ids = position_ids[:, -1:] + 1  # (B, 1) each row continues from its own last position

    return GenerationOutput(
        sequences=sequences[:, : prompt_len + steps].contiguous(),
        logprobs=logprobs[:, :steps].contiguous(),
        completion_mask=completion_mask[:, :steps].contiguous(),
        scores=torch.stack(scores, dim=1) if output_scores else None,
    )


def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Token ids (B, T + N): the prompts followed by their continuations. See `generate_with_logprobs`."""
    return generate_with_logprobs(model, input_ids, attention_mask, config, generator).sequences


@torch.no_grad()
def next_token_distribution(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Probabilities over the vocabulary for the token after `input_ids`, after temperature/top-k/top-p.

    `input_ids` is (T,) or left-padded (B, T) with its `attention_mask`; returns (V,) or (B, V). Filtered
    tokens get probability exactly 0. Meant for plotting how the knobs reshape the distribution.
    """
    _check_temperature(temperature)
    _check_top_k(top_k)
    _check_top_p(top_p)
    single = input_ids.ndim == 1
    if single:
        input_ids = input_ids[None]  # (1, T)
        attention_mask = attention_mask[None] if attention_mask is not None else None
    _check_inputs(input_ids, attention_mask)
    position_ids = None if attention_mask is None else position_ids_from_mask(attention_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    probs = F.softmax(process_logits(logits[:, -1].float(), temperature, top_k, top_p), dim=-1)  # (B, V)
    return probs[0] if single else probs


def left_pad(
    prompts: Sequence[Sequence[int]], pad_token_id: int, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (input_ids, attention_mask), both (B, P), padded on the LEFT so generation appends
    new tokens right after the last real one. ``length`` defaults to the longest prompt."""
    length = length or max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)  # (B, P)
    attention_mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        input_ids[i, length - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
        attention_mask[i, length - len(prompt) :] = 1
    return input_ids, attention_mask
