"""A transformers language model read as an RL policy: its hidden states, its head, its tempered logits.

PPO, the evaluation and the reward model all ask the same few things of a GPT-2 (plain, a sequence
classifier, or wrapped by PEFT): the backbone's hidden states of a left-padded batch, the output
projection, and the logits of the response tokens at a sampling temperature. These helpers answer them
for any of those wrappers, so that the policy, the reference and the reward model are read the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.decoding import position_ids_from_mask


def last_true_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) index of the last set position of each row (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask.bool(), positions, 0).amax(dim=1)


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (B, T, C) of a transformers model's backbone (e.g. ``model.transformer`` of GPT-2).

    Works for a causal LM, a sequence classifier and a PEFT-wrapped LM (its adapters stay active). A mask
    without padding is dropped so that attention takes its fast, purely causal path.
    """
    if hasattr(model, "get_base_model"):  # PEFT: the wrapped model, LoRA layers injected in place
        model = model.get_base_model()
    backbone = getattr(model, model.base_model_prefix)
    if bool(attention_mask.all()):
        return backbone(input_ids=input_ids, use_cache=False).last_hidden_state
    return backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state


def lm_head(model: nn.Module) -> nn.Module:
    """The output projection (hidden -> vocabulary logits) of a causal LM, PEFT-wrapped or not."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.get_output_embeddings()


def response_logits(
    model: nn.Module,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    context_length: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tempered logits of the response tokens (B, R, V), and the hidden states that predicted them (B, R, C).

    The token at position t is predicted from position t - 1, so the response (positions P .. P+R-1) is
    predicted by positions P-1 .. P+R-2. Only those R positions go through the (vocabulary-sized) head.
    """
    # contiguous: a strided slice would send the head's matmul down a slower batched path
    hidden = hidden_states(model, query_responses, attention_mask)[:, context_length - 1 : -1].contiguous()  # (B, R, C)
    return tempered_logits(lm_head(model), hidden, temperature), hidden


def tempered_logits(head: nn.Module, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
    """``head(hidden) / temperature``: logits (..., V) of hidden states (..., C) at a sampling temperature."""
    if temperature == 1.0:
        return head(hidden)
    if getattr(head, "bias", None) is None:
        # head(h) / T == head(h / T) for a linear map without bias: C divisions per token instead of V.
        return head(hidden / temperature)
    return head(hidden) / temperature


def use_fused_gelu(model: nn.Module) -> nn.Module:
    """Replace GPT-2's ``gelu_new`` (the tanh approximation of GELU written as 8 elementwise Python-level
    ops, each kept for the backward pass) with PyTorch's fused kernel for the same function. Same values
    to ~1e-7, noticeably faster on a CPU. Changes ``model`` in place (its weights are untouched)."""
    from transformers.activations import NewGELUActivation

    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(module, name, nn.GELU(approximate="tanh"))
    return model


def gpt2_parts(model: nn.Module) -> nn.Module:
    """The ``GPT2Model`` inside a GPT-2 LM (PEFT-wrapped or not), checked to be a plain GPT-2."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    backbone = getattr(model, "transformer", None)
    config = getattr(model, "config", None)
    if backbone is None or not hasattr(backbone, "h") or getattr(config, "model_type", None) != "gpt2":
        raise ValueError(f"PPO's rollout sampler expects a GPT-2 language model, got {type(model).__name__}")
    if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx or config.add_cross_attention:
        raise ValueError("PPO's rollout sampler supports GPT-2's standard attention only")
    return backbone
