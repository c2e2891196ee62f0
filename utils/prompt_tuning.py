"""Prompt tuning (Lester et al., 2021): freeze every weight of the LM and learn only a *soft prompt*.

A soft prompt is ``n`` vectors of the embedding width, read by the model before every input as if they were the
embeddings of ``n`` extra tokens (*virtual tokens*: no word of the vocabulary has them). Training moves only
these ``n * n_embd`` numbers; the model stays exactly the pretrained one, so one frozen model can serve many
tasks, each with a prompt of a few kB. It sits at the far end of a scale of parameter-efficient fine-tuning:

* prompting alone (a hand-written instruction or a few examples in the context): nothing is trained;
* prompt tuning: ``n * n_embd`` input vectors;
* LoRA (``utils.sft.lora_config``): low-rank updates of the weight matrices inside every block;
* full fine-tuning: every weight.

The soft prompt is trained with PEFT's ``PromptTuningConfig`` inside TRL's ``SFTTrainer`` (the same
completion-only loss as full fine-tuning, :func:`train_prompt_tuning`). PEFT's model prepends the prompt in its
forward pass; :class:`SoftPromptLM` does the same in a few lines of our own, and, unlike PEFT's wrapper, also
shifts the position ids that our KV-cache decoder (``utils.decoding.generate``) passes, so that the course's
greedy evaluation (``utils.sft.evaluate_instructions``) runs on a prompt-tuned model unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from utils.config_checks import check, check_choice, check_int, check_number
from utils.sft import SFTConfig, train_sft
from utils.trl_helpers import quiet_training

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PROMPT_INITS = {"vocab": "SAMPLE_VOCAB", "random": "RANDOM", "text": "RANDOM"}  # ours -> PEFT's PromptTuningInit
# ("text" is PEFT's TEXT initialisation done by us, :func:`hard_prompt_embeddings`: PEFT's would load the tokenizer
# from a path or the hub.)


@dataclass(frozen=True)
class PromptTuningConfig:
    """A soft prompt of ``n_virtual_tokens`` vectors, trained with everything else frozen.
    Validated on construction (ValueError on bad values)."""

    n_virtual_tokens: int = 16
    """vectors in the soft prompt; each has the model's embedding width, and all of them are trained"""
    init: str = "vocab"
    """"vocab": start from the embeddings of randomly drawn vocabulary tokens (PEFT's SAMPLE_VOCAB);
    "text": from the embeddings of the tokens of ``init_text``, i.e. from a hand-written prompt (PEFT's TEXT; the
    initialisation Lester et al. found best, with vocabulary sampling close behind); "random": PEFT's unit normal
    vectors, far larger than our embeddings"""
    init_text: str = ""
    """the hand-written prompt of ``init="text"`` (its tokens are repeated or cut to ``n_virtual_tokens``)"""
    lr: float = 3e-2
    """peak learning rate: a few input vectors need far larger steps than weights (Lester et al. use 0.3)"""

    def __post_init__(self) -> None:
        check_int(self, "n_virtual_tokens", ge=1)
        check_choice(self, "init", list(PROMPT_INITS))
        check(self, "init_text", isinstance(self.init_text, str), "a string")
        check(self, "init_text", self.init != "text" or bool(self.init_text), "non-empty when init is 'text'")
        check_number(self, "lr", gt=0)


def peft_prompt_tuning_config(config: PromptTuningConfig):
    """PEFT's ``PromptTuningConfig`` for our causal LM."""
    from peft import PromptTuningConfig as PEFTPromptTuningConfig

    return PEFTPromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=config.n_virtual_tokens,
        prompt_tuning_init=PROMPT_INITS[config.init],
    )


class SoftPromptLM(nn.Module):
    """A frozen causal LM that reads ``prompt`` (n, d) before every input: the prompt-tuned model.

    Positions: the virtual tokens take positions 0..n-1 and the text continues from n (as in PEFT's training
    forward). Called by a KV-cache decoder, the first call (no cache) gets the prompt prepended and its
    logits for the virtual positions cut off; later calls only shift the positions and the mask. ``model`` is
    frozen in place (pass a copy to keep training the original).
    """

    def __init__(self, model: nn.Module, prompt: torch.Tensor):
        super().__init__()
        self.model = model.requires_grad_(False)
        self.prompt = nn.Parameter(prompt.detach().clone())  # (n, d): the only trainable weights
        self.config = copy.copy(model.config)
        self.config.max_position_embeddings = model.config.max_position_embeddings - self.n_virtual_tokens

    @property
    def n_virtual_tokens(self) -> int:
        return self.prompt.size(0)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool | None = None,
    ):
        batch, length = input_ids.shape
        n = self.n_virtual_tokens
        past = 0 if past_key_values is None else past_key_values.get_seq_length()  # includes the n virtual tokens
        if position_ids is None:
            position_ids = torch.arange(max(past - n, 0), max(past - n, 0) + length).expand(batch, -1)  # (B, T)
        position_ids = position_ids + n
        embeds = self.model.get_input_embeddings()(input_ids)  # (B, T, d)
        if past_key_values is None:
            embeds = torch.cat([self.prompt.expand(batch, -1, -1), embeds], dim=1)  # (B, n + T, d)
            virtual_positions = torch.arange(n).expand(batch, -1)  # (B, n)
            position_ids = torch.cat([virtual_positions, position_ids], dim=1)
        if attention_mask is not None:  # the virtual tokens are always attended to
            attention_mask = torch.cat([attention_mask.new_ones(batch, n), attention_mask], dim=1)
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        if past_key_values is None:
            out.logits = out.logits[:, n:]  # (B, T, V): the text's logits only
        return out


def hard_prompt_embeddings(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, text: str, n_virtual_tokens: int | None = None
) -> torch.Tensor:
    """The input embeddings (n, d) of the tokens of ``text`` (BOS first, as our tokenizer encodes every text):
    a *hard* prompt. ``SoftPromptLM(model, hard_prompt_embeddings(model, tokenizer, text))`` is exactly the
    model reading ``text`` before its input, so prompting is prompt tuning with nothing trained. With
    ``n_virtual_tokens``, the tokens are repeated or cut to that many, as PEFT's TEXT initialisation does."""
    ids = tokenizer(text)["input_ids"]
    if n_virtual_tokens is not None:
        ids = (ids * -(-n_virtual_tokens // len(ids)))[:n_virtual_tokens]
    return model.get_input_embeddings().weight[torch.tensor(ids)].detach().clone()  # (n, d)


def soft_prompt_of(peft_model) -> torch.Tensor:
    """The trained soft prompt (n, d) of a PEFT prompt-tuning model."""
    return peft_model.get_prompt_embedding_to_save(adapter_name=peft_model.active_adapter).detach()


def train_prompt_tuning(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    sft_config: SFTConfig,
    config: PromptTuningConfig,
) -> tuple[SoftPromptLM, dict]:
    """Train a soft prompt for ``model`` (left untouched) on prompt-completion ``rows`` with TRL's SFTTrainer.

    ``sft_config`` gives the schedule (epochs, batch size, warmup, seed), ``config`` the prompt and its learning
    rate. Returns the prompt-tuned model and a report like ``utils.sft.train_sft``'s.
    """
    from peft import get_peft_model

    torch.manual_seed(sft_config.seed)  # PEFT draws the initial prompt from torch's global generator
    with quiet_training():
        peft_model = get_peft_model(copy.deepcopy(model), peft_prompt_tuning_config(config))
    if config.init == "text":
        with torch.no_grad():
            prompt = hard_prompt_embeddings(model, tokenizer, config.init_text, config.n_virtual_tokens)
            peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight.copy_(prompt)
    trained, report = train_sft(peft_model, tokenizer, rows, dataclasses.replace(sft_config, lr=config.lr))
    tuned = SoftPromptLM(trained.get_base_model(), soft_prompt_of(trained)).eval()  # PEFT's frozen copy
    return tuned, report
