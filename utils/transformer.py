"""The transformer, from blocks to three complete models.

A transformer block is two sublayers, each wrapped in a residual connection and a LayerNorm:

    attention    : tokens exchange information with each other
    feed-forward : each token is processed on its own by a small MLP (most of the parameters)

Where the norm goes matters. *Post-norm* (the 2017 paper, BERT) normalises after adding the residual,
``x = norm(x + f(x))``; *pre-norm* (GPT-2 and nearly everything since) normalises the sublayer's
input, ``x = x + f(norm(x))``, leaving an untouched residual "highway" from input to output that
makes deep stacks train without careful warm-up. Pre-norm stacks need one final norm at the top.

From the same blocks we build:

* ``EncoderDecoderTransformer``: "Attention Is All You Need" (translation): a bidirectional encoder
  reads the source, a causal decoder writes the target while cross-attending to the encoder.
* ``EncoderOnlyModel``: BERT: the encoder alone, every token sees every token, trained to fill in
  masked tokens (masked-LM head).
* ``GPT``: the decoder alone without cross-attention, trained to predict the next token. Laid out
  exactly like GPT-2 so ``GPT.from_hf_gpt2`` can load Hugging Face weights.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

from utils.attention import AttentionConfig, MultiHeadAttention, padding_mask
from utils.config_checks import check, check_bool, check_choice, check_int, check_number
from utils.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding

if TYPE_CHECKING:
    from transformers import BertConfig

ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": lambda: nn.ReLU(),  # the 2017 paper
}


@dataclass
class BlockConfig:
    """One transformer block: attention, feed-forward, norms. Validated on construction (ValueError on bad values)."""

    d_model: int = 128
    """width of the residual stream"""
    n_heads: int = 4
    """attention heads per block"""
    d_ff: int = 512
    """hidden width of the feed-forward MLP (4 * d_model by convention)"""
    dropout: float = 0.1
    """on attention weights and on each sublayer's output (training only)"""
    norm_first: bool = True
    """True: pre-norm x + f(norm(x)); False: post-norm norm(x + f(x))"""
    activation: str = "gelu"
    """feed-forward non-linearity: one of ACTIVATIONS"""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon (GPT-2 1e-5, BERT 1e-12)"""
    bias: bool = True
    """biases in the linear layers"""
    rotary: bool = False
    """RoPE on self-attention queries/keys"""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "d_ff"):
            check_int(self, name, ge=1)
        check(self, "d_model", self.d_model % self.n_heads == 0, f"divisible by n_heads ({self.n_heads})")
        check_number(self, "dropout", ge=0, lt=1)
        check_choice(self, "activation", sorted(ACTIVATIONS))
        check_number(self, "layer_norm_eps", gt=0)
        for name in ("norm_first", "bias", "rotary"):
            check_bool(self, name)

    def attention(self, causal: bool, rotary: bool | None = None) -> AttentionConfig:
        """The AttentionConfig of a block's attention sublayer."""
        rotary = self.rotary if rotary is None else rotary
        return AttentionConfig(self.d_model, self.n_heads, self.dropout, self.bias, causal, rotary)


class FeedForward(nn.Module):
    """Position-wise MLP: d_model -> d_ff -> activation -> d_model, applied to each token alone."""

    def __init__(self, config: BlockConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]()
        self.proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))  # (B, T, d_model)


class _ResidualBlock(nn.Module):
    """Shared residual wiring; subclasses decide which sublayers run."""

    def __init__(self, config: BlockConfig):
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout)

    def _residual(self, x: torch.Tensor, norm: nn.LayerNorm, sublayer: Callable) -> torch.Tensor:
        if self.config.norm_first:
            return x + self.dropout(sublayer(norm(x)))  # pre-norm: the residual path stays clean
        return norm(x + self.dropout(sublayer(x)))  # post-norm


class EncoderBlock(_ResidualBlock):
    """Bidirectional self-attention + feed-forward: every token may look at every (real) token."""

    def __init__(self, config: BlockConfig):
        super().__init__(config)
        self.norm_attn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = MultiHeadAttention(config.attention(causal=False))
        self.norm_ff = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ff = FeedForward(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d_model), mask bool broadcastable to (B, H, T, T) -> (B, T, d_model)."""
        x = self._residual(x, self.norm_attn, partial(self.attn, mask=mask))
        return self._residual(x, self.norm_ff, self.ff)


class DecoderBlock(_ResidualBlock):
    """Causal self-attention, then (optionally) cross-attention to the encoder, then feed-forward.

    With ``cross_attention=False`` this is exactly a GPT block: a decoder-only model is the
    decoder of the 2017 paper with the encoder (and the sublayer that reads it) removed.
    """

    def __init__(self, config: BlockConfig, cross_attention: bool = True):
        super().__init__(config)
        self.norm_attn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = MultiHeadAttention(config.attention(causal=True))
        if cross_attention:
            self.norm_cross = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
            self.cross_attn = MultiHeadAttention(config.attention(causal=False, rotary=False))
        else:
            self.norm_cross = self.cross_attn = None
        self.norm_ff = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ff = FeedForward(config)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model).

        ``mask``: padding of x (the causal part is built in). ``memory``: encoder output (B, S, d_model),
        required iff the block has cross-attention; ``memory_mask``: its padding, (B, 1, 1, S).
        ``positions``: RoPE positions of x, if rotary.
        """
        if (memory is None) != (self.cross_attn is None):
            raise ValueError("memory must be given exactly when the block has cross-attention")
        x = self._residual(x, self.norm_attn, partial(self.attn, mask=mask, positions=positions))
        if self.cross_attn is not None:
            x = self._residual(x, self.norm_cross, partial(self.cross_attn, context=memory, mask=memory_mask))
        return self._residual(x, self.norm_ff, self.ff)


def _final_norm(config: BlockConfig) -> nn.Module:
    # Pre-norm blocks leave the residual stream un-normalised, so the stack ends with a LayerNorm;
    # post-norm blocks already end with one.
    return nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm_first else nn.Identity()


class Encoder(nn.Module):
    """A stack of EncoderBlocks (plus the final LayerNorm that pre-norm stacks need)."""

    def __init__(self, config: BlockConfig, n_layers: int):
        super().__init__()
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(n_layers))
        self.norm = _final_norm(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d_model), optional padding mask (B, 1, 1, T) -> (B, T, d_model)."""
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


class Decoder(nn.Module):
    """A stack of DecoderBlocks (plus the final LayerNorm that pre-norm stacks need)."""

    def __init__(self, config: BlockConfig, n_layers: int, cross_attention: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(DecoderBlock(config, cross_attention) for _ in range(n_layers))
        self.norm = _final_norm(config)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Arguments as in ``DecoderBlock.forward``."""
        for block in self.blocks:
            x = block(x, mask, memory, memory_mask, positions)
        return self.norm(x)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """GPT-2 / BERT initialisation: N(0, std) for linear and embedding weights, zero biases.

    LayerNorms keep PyTorch's (weight 1, bias 0). Use as ``model.apply(init_weights)``.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)


def _check_ids(input_ids: torch.Tensor, max_len: int, name: str = "input_ids") -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must have shape (B, T), got {tuple(input_ids.shape)}")
    if input_ids.size(1) > max_len:
        raise ValueError(f"{name} has length {input_ids.size(1)} > max length {max_len} of the model")


def _optional_padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if attention_mask is None else padding_mask(attention_mask)


# --------------------------------------------------------------------------- encoder-decoder (2017)
@dataclass
class EncoderDecoderConfig:
    """The encoder-decoder transformer of "Attention Is All You Need" (2017), small. Validated on construction."""

    src_vocab_size: int = 1000
    """source-language vocabulary"""
    tgt_vocab_size: int = 1000
    """target-language vocabulary"""
    d_model: int = 128
    """residual stream width (paper: 512)"""
    n_heads: int = 4
    """attention heads (paper: 8)"""
    n_encoder_layers: int = 2
    """encoder depth (paper: 6)"""
    n_decoder_layers: int = 2
    """decoder depth (paper: 6)"""
    d_ff: int = 512
    """feed-forward width (paper: 2048)"""
    max_len: int = 256
    """longest source or target sequence (sinusoids could go further; we check)"""
    dropout: float = 0.1
    """paper: 0.1"""
    norm_first: bool = False
    """the paper is post-norm; set True for the more stable pre-norm"""
    activation: str = "relu"
    """the paper's feed-forward used ReLU; one of ACTIVATIONS"""
    tie_target_embeddings: bool = True
    """share target embedding and output projection, as the paper"""

    def __post_init__(self) -> None:
        for name in (
            "src_vocab_size",
            "tgt_vocab_size",
            "d_model",
            "n_heads",
            "n_encoder_layers",
            "n_decoder_layers",
            "d_ff",
            "max_len",
        ):
            check_int(self, name, ge=1)
        check(self, "d_model", self.d_model % self.n_heads == 0, f"divisible by n_heads ({self.n_heads})")
        check_number(self, "dropout", ge=0, lt=1)
        check_choice(self, "activation", sorted(ACTIVATIONS))
        for name in ("norm_first", "tie_target_embeddings"):
            check_bool(self, name)

    def block_config(self) -> BlockConfig:
        """The BlockConfig shared by every block of the model."""
        return BlockConfig(self.d_model, self.n_heads, self.d_ff, self.dropout, self.norm_first, self.activation)


class EncoderDecoderTransformer(nn.Module):
    """The "Attention Is All You Need" architecture (Vaswani et al., 2017), tiny by default.

    Token embeddings are scaled by sqrt(d_model) (so they are not drowned by the unit-scale
    sinusoids) and summed with sinusoidal positions.
    """

    def __init__(self, config: EncoderDecoderConfig):
        super().__init__()
        self.config = config
        block = config.block_config()
        self.src_embed = nn.Embedding(config.src_vocab_size, config.d_model)
        self.tgt_embed = nn.Embedding(config.tgt_vocab_size, config.d_model)
        self.positions = SinusoidalPositionalEncoding(config.d_model, config.max_len)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = Encoder(block, config.n_encoder_layers)
        self.decoder = Decoder(block, config.n_decoder_layers, cross_attention=True)
        self.lm_head = nn.Linear(config.d_model, config.tgt_vocab_size, bias=False)
        for embedding in (self.src_embed, self.tgt_embed):  # std 1/sqrt(d): unit scale after * sqrt(d)
            nn.init.normal_(embedding.weight, mean=0.0, std=config.d_model**-0.5)
        if config.tie_target_embeddings:
            self.lm_head.weight = self.tgt_embed.weight

    def _embed(self, embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.size(1), device=ids.device)
        x = embedding(ids) * math.sqrt(self.config.d_model) + self.positions(positions)
        return self.dropout(x)  # (B, T, d_model)

    def encode(self, src_ids: torch.Tensor, src_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src_ids (B, S) -> memory (B, S, d_model), computed once and reused for every target step."""
        _check_ids(src_ids, self.config.max_len, "src_ids")
        return self.encoder(self._embed(self.src_embed, src_ids), _optional_padding_mask(src_attention_mask))

    def decode(
        self,
        tgt_ids: torch.Tensor,
        memory: torch.Tensor,
        tgt_attention_mask: torch.Tensor | None = None,
        src_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tgt_ids (B, T), memory (B, S, d_model) -> next-token logits (B, T, tgt_vocab_size)."""
        _check_ids(tgt_ids, self.config.max_len, "tgt_ids")
        x = self._embed(self.tgt_embed, tgt_ids)
        x = self.decoder(
            x, _optional_padding_mask(tgt_attention_mask), memory, _optional_padding_mask(src_attention_mask)
        )
        return self.lm_head(x)

    def forward(
        self,
        src_ids: torch.Tensor,
        tgt_ids: torch.Tensor,
        src_attention_mask: torch.Tensor | None = None,
        tgt_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, S) source and (B, T) target ids (HF-style 0/1 masks optional) -> logits (B, T, V_tgt)."""
        memory = self.encode(src_ids, src_attention_mask)
        return self.decode(tgt_ids, memory, tgt_attention_mask, src_attention_mask)


# --------------------------------------------------------------------------- encoder-only (BERT)
@dataclass
class EncoderOnlyConfig:
    """A BERT-style encoder, small. Validated on construction (ValueError on bad values)."""

    vocab_size: int = 1000
    """token vocabulary (including [MASK], [PAD], ...)"""
    max_len: int = 256
    """number of learned position embeddings"""
    d_model: int = 128
    """residual stream width (BERT-base: 768)"""
    n_heads: int = 4
    """attention heads (BERT-base: 12)"""
    n_layers: int = 2
    """encoder depth (BERT-base: 12)"""
    d_ff: int = 512
    """feed-forward width (BERT-base: 3072)"""
    dropout: float = 0.1
    """BERT: 0.1"""
    norm_first: bool = False
    """BERT is post-norm"""
    layer_norm_eps: float = 1e-12
    """BERT's epsilon"""
    type_vocab_size: int = 0
    """segment (token type) embeddings: BERT has 2, one for each text of a pair ([CLS] A [SEP] B [SEP]);
    0 = none, the sum of token and position embeddings alone"""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "d_model", "n_heads", "n_layers", "d_ff"):
            check_int(self, name, ge=1)
        check_int(self, "type_vocab_size", ge=0)
        check(self, "d_model", self.d_model % self.n_heads == 0, f"divisible by n_heads ({self.n_heads})")
        check_number(self, "dropout", ge=0, lt=1)
        check_number(self, "layer_norm_eps", gt=0)
        check_bool(self, "norm_first")

    def block_config(self) -> BlockConfig:
        """The BlockConfig shared by every block of the model."""
        return BlockConfig(
            self.d_model, self.n_heads, self.d_ff, self.dropout, self.norm_first, "gelu", self.layer_norm_eps
        )

    def hf_bert_config(self, **overrides: object) -> BertConfig:
        """The transformers ``BertConfig`` of the same model (``overrides``: e.g. ``num_labels=1``).

        BERT always has segment embeddings; a model without them (``type_vocab_size=0``) maps to one segment
        whose embedding is zero (:meth:`EncoderOnlyModel.hf_bert_state_dict`).
        """
        from transformers import BertConfig

        fields = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "intermediate_size": self.d_ff,
            "max_position_embeddings": self.max_len,
            "type_vocab_size": max(1, self.type_vocab_size),
            "hidden_dropout_prob": self.dropout,
            "attention_probs_dropout_prob": self.dropout,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": "gelu",  # the exact GELU, as our encoder's
        }
        return BertConfig(**{**fields, **overrides})


class MaskedLMHead(nn.Module):
    """BERT's prediction head: dense -> GELU -> LayerNorm -> vocabulary logits (weight tied to input)."""

    def __init__(self, config: EncoderOnlyConfig, token_embedding: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.d_model, config.vocab_size)
        self.decoder.weight = token_embedding.weight  # tied: one matrix maps ids <-> vectors both ways

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(h))))  # (B, T, vocab_size)


class EncoderOnlyModel(nn.Module):
    """A small BERT: learned positions, embedding LayerNorm, bidirectional encoder, masked-LM head.

    No causal mask: the output at a position depends on tokens on both sides, which is why BERT is
    trained by hiding tokens ([MASK]) and predicting them rather than by predicting the next one.
    """

    def __init__(self, config: EncoderOnlyConfig):
        super().__init__()
        self.config = config
        self.token_embed = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embed = LearnedPositionalEmbedding(config.max_len, config.d_model)
        self.embed_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = Encoder(config.block_config(), config.n_layers)
        self.lm_head = MaskedLMHead(config, self.token_embed)
        self.apply(init_weights)
        # Built and initialised after the rest, so that adding segments leaves every other initial weight as it was.
        self.token_type_embed = None
        if config.type_vocab_size:
            self.token_type_embed = nn.Embedding(config.type_vocab_size, config.d_model)
            init_weights(self.token_type_embed)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) -> contextual vectors (B, T, d_model), e.g. for a classifier on top.

        ``token_type_ids`` (B, T): the segment of each token (0 = first text, 1 = second), added as a learned
        vector like the position; default all 0. Only for a model with ``type_vocab_size > 0``.
        """
        _check_ids(input_ids, self.config.max_len)
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.token_embed(input_ids) + self.position_embed(positions)  # (B, T, d_model)
        if self.token_type_embed is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embed(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given to a model without segment embeddings (type_vocab_size=0)")
        x = self.dropout(self.embed_norm(x))
        return self.encoder(x, _optional_padding_mask(attention_mask))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T), optional 0/1 attention_mask and token_type_ids (B, T) -> MLM logits (B, T, vocab_size)."""
        return self.lm_head(self.encode(input_ids, attention_mask, token_type_ids))

    def hf_bert_state_dict(self) -> dict[str, torch.Tensor]:
        """Our weights under the names of transformers' ``BertForMaskedLM`` (config: ``config.hf_bert_config()``).

        The layouts agree piece for piece when the blocks are post-norm, as BERT's: embeddings -> LayerNorm,
        then per block self-attention (query, key, value, output dense), add & LayerNorm, feed-forward
        (intermediate, output dense), add & LayerNorm; the MLM head is dense -> GELU -> LayerNorm -> decoder
        tied to the word embeddings. Keys starting with ``bert.`` load into any BERT model (e.g.
        ``BertForSequenceClassification``, whose pooler is not part of our encoder).
        """
        if self.config.norm_first:
            raise ValueError("BERT is post-norm: a pre-norm encoder (norm_first=True) has no BERT equivalent")
        out = {
            "bert.embeddings.word_embeddings.weight": self.token_embed.weight,
            "bert.embeddings.position_embeddings.weight": self.position_embed.embedding.weight,
            "bert.embeddings.token_type_embeddings.weight": (
                self.token_type_embed.weight
                if self.token_type_embed is not None
                else torch.zeros(1, self.config.d_model)  # one segment that adds nothing
            ),
        }

        def norm(prefix: str, module: nn.LayerNorm) -> None:
            out[f"{prefix}.weight"], out[f"{prefix}.bias"] = module.weight, module.bias

        def linear(prefix: str, module: nn.Linear) -> None:
            out[f"{prefix}.weight"], out[f"{prefix}.bias"] = module.weight, module.bias

        norm("bert.embeddings.LayerNorm", self.embed_norm)
        for i, block in enumerate(self.encoder.blocks):
            layer = f"bert.encoder.layer.{i}"
            for name, proj in (("query", block.attn.q_proj), ("key", block.attn.k_proj), ("value", block.attn.v_proj)):
                linear(f"{layer}.attention.self.{name}", proj)
            linear(f"{layer}.attention.output.dense", block.attn.out_proj)
            norm(f"{layer}.attention.output.LayerNorm", block.norm_attn)
            linear(f"{layer}.intermediate.dense", block.ff.fc)
            linear(f"{layer}.output.dense", block.ff.proj)
            norm(f"{layer}.output.LayerNorm", block.norm_ff)
        head = self.lm_head
        linear("cls.predictions.transform.dense", head.dense)
        norm("cls.predictions.transform.LayerNorm", head.norm)
        out["cls.predictions.decoder.weight"] = head.decoder.weight
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"] = head.decoder.bias
        return {key: value.detach().clone() for key, value in out.items()}


# --------------------------------------------------------------------------- decoder-only (GPT-2)
@dataclass
class GPTConfig:
    """A GPT-2 (defaults: GPT-2 small's shape). Validated on construction (ValueError on bad values)."""

    vocab_size: int = 50257
    """GPT-2's BPE vocabulary"""
    block_size: int = 1024
    """context length = number of learned positions (HF: n_positions)"""
    n_layer: int = 12
    """number of transformer blocks (GPT-2 small: 12)"""
    n_head: int = 12
    """attention heads per block"""
    n_embd: int = 768
    """residual stream width; the MLP is 4x wider"""
    dropout: float = 0.0
    """one rate for embeddings, attention weights and residual branches"""
    layer_norm_eps: float = 1e-5
    """GPT-2's LayerNorm epsilon"""
    bias: bool = True
    """biases in the linear layers (GPT-2 has them; LayerNorms always keep theirs)"""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check_int(self, name, ge=1)
        check(self, "n_embd", self.n_embd % self.n_head == 0, f"divisible by n_head ({self.n_head})")
        check_number(self, "dropout", ge=0, lt=1)
        check_number(self, "layer_norm_eps", gt=0)
        check_bool(self, "bias")

    def block_config(self) -> BlockConfig:
        """The BlockConfig shared by every block of the model."""
        return BlockConfig(
            d_model=self.n_embd,
            n_heads=self.n_head,
            d_ff=4 * self.n_embd,
            dropout=self.dropout,
            norm_first=True,
            activation="gelu_tanh",
            layer_norm_eps=self.layer_norm_eps,
            bias=self.bias,
        )


class GPT(nn.Module):
    """A decoder-only language model with GPT-2's exact layout.

    token embedding + learned position embedding -> n_layer pre-norm DecoderBlocks (no
    cross-attention) -> final LayerNorm -> lm_head, whose weight *is* the token embedding matrix
    (tied: the same vectors read tokens in and score them out, saving vocab_size * n_embd parameters).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = LearnedPositionalEmbedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.decoder = Decoder(config.block_config(), config.n_layer, cross_attention=False)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self.apply(init_weights)
        # GPT-2: scale the init of layers that write into the residual stream by 1/sqrt(2 * n_layer),
        # so the stream's variance does not grow with depth (each block adds two such outputs).
        for name, p in self.named_parameters():
            if name.endswith(("attn.out_proj.weight", "ff.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) -> next-token logits (B, T, vocab_size); logits[:, t] predicts token t+1.

        ``attention_mask``: HF-style (B, T), 1 = real token, 0 = padding; padding keys are ignored.
        ``position_ids``: (B, T) or (T,); default 0..T-1 like HF. With left padding pass
        ``(attention_mask.cumsum(-1) - 1).clamp(min=0)`` so real tokens start at position 0.
        """
        _check_ids(input_ids, self.config.block_size)
        if position_ids is None:
            position_ids = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))  # (B, T, n_embd)
        x = self.decoder(x, mask=_optional_padding_mask(attention_mask))
        return self.lm_head(x)  # (B, T, vocab_size)

    @classmethod
    def from_hf_gpt2(cls, hf_model: nn.Module) -> GPT:
        """Build a GPT with the weights of a transformers ``GPT2LMHeadModel`` (or ``GPT2Model``).

        HF's GPT-2 uses ``Conv1D`` layers whose weight is stored (in, out), the transpose of
        ``nn.Linear``'s (out, in), and packs the q, k, v projections into one ``c_attn`` of width
        3 * n_embd; we transpose and split.
        """
        hf = hf_model.config
        unsupported = {
            "activation_function": (hf.activation_function, ("gelu_new", "gelu_pytorch_tanh")),
            "n_inner": (hf.n_inner, (None, 4 * hf.n_embd)),
            "scale_attn_weights": (hf.scale_attn_weights, (True,)),
            "scale_attn_by_inverse_layer_idx": (hf.scale_attn_by_inverse_layer_idx, (False,)),
            "add_cross_attention": (hf.add_cross_attention, (False,)),
        }
        for field, (value, allowed) in unsupported.items():
            if value not in allowed:
                raise ValueError(f"GPT2Config.{field}={value!r} is not supported; allowed: {allowed}")
        config = GPTConfig(
            vocab_size=hf.vocab_size,
            block_size=hf.n_positions,
            n_layer=hf.n_layer,
            n_head=hf.n_head,
            n_embd=hf.n_embd,
            dropout=0.0,
            layer_norm_eps=hf.layer_norm_epsilon,
        )
        model = cls(config)
        src = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()}
        C = config.n_embd

        def linear(dst: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
            dst.weight.copy_(weight.t())  # Conv1D (in, out) -> Linear (out, in)
            dst.bias.copy_(bias)

        def layer_norm(dst: nn.LayerNorm, prefix: str) -> None:
            dst.weight.copy_(src[f"{prefix}.weight"])
            dst.bias.copy_(src[f"{prefix}.bias"])

        with torch.no_grad():
            model.wte.weight.copy_(src["wte.weight"])  # also the lm_head, tied
            model.wpe.embedding.weight.copy_(src["wpe.weight"])
            for i, block in enumerate(model.decoder.blocks):
                h = f"h.{i}"
                layer_norm(block.norm_attn, f"{h}.ln_1")
                w, b = src[f"{h}.attn.c_attn.weight"], src[f"{h}.attn.c_attn.bias"]  # (C, 3C), (3C,)
                for j, proj in enumerate((block.attn.q_proj, block.attn.k_proj, block.attn.v_proj)):
                    linear(proj, w[:, j * C : (j + 1) * C], b[j * C : (j + 1) * C])
                linear(block.attn.out_proj, src[f"{h}.attn.c_proj.weight"], src[f"{h}.attn.c_proj.bias"])
                layer_norm(block.norm_ff, f"{h}.ln_2")
                linear(block.ff.fc, src[f"{h}.mlp.c_fc.weight"], src[f"{h}.mlp.c_fc.bias"])
                linear(block.ff.proj, src[f"{h}.mlp.c_proj.weight"], src[f"{h}.mlp.c_proj.bias"])
            layer_norm(model.decoder.norm, "ln_f")
        return model


# --------------------------------------------------------------------------- counting
def _component(name: str, module: nn.Module) -> str | None:
    if isinstance(module, MaskedLMHead) or name == "lm_head":
        return "head"
    if isinstance(module, (nn.Embedding, LearnedPositionalEmbedding)):
        return "embeddings"
    if isinstance(module, MultiHeadAttention):
        return "attention"
    if isinstance(module, FeedForward):
        return "feed_forward"
    if isinstance(module, nn.LayerNorm):
        return "norms"
    return None


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Parameters per component: embeddings, attention, feed_forward, norms, head, other, total.

    Each parameter is counted once, under its outermost recognised module (so a LayerNorm inside
    BERT's MLM head counts as head). A tied weight counts where it is first met: GPT's lm_head
    shares the token embedding, so it shows up under embeddings and the head adds 0.
    ``total`` equals ``sum(p.numel() for p in module.parameters())``.
    """
    counts: Counter[str] = Counter()
    seen: set[int] = set()

    def walk(mod: nn.Module, name: str, component: str | None) -> None:
        component = component or _component(name, mod)
        for p in mod.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                counts[component or "other"] += p.numel()
        for child_name, child in mod.named_children():
            walk(child, child_name, component)

    walk(module, "", None)
    keys = ("embeddings", "attention", "feed_forward", "norms", "head", "other")
    result = {k: counts[k] for k in keys}
    result["total"] = sum(counts.values())
    return result


def flops_per_token(config: GPTConfig, seq_len: int, training: bool = True, include_lm_head: bool = False) -> int:
    """Approximate FLOPs to process one token with a GPT, by the rule of Kaplan et al. (2020).

    A matrix multiply costs 2 FLOPs (multiply + add) per weight per token, so the forward pass costs

        C_forward = 2 N + 2 n_layer * seq_len * n_embd

    where N is the number of non-embedding parameters (blocks + final norm) and the second term is
    the attention scores QK^T and the weighted sum AV (each seq_len * n_embd multiply-adds per layer;
    Kaplan counts the full context, ignoring that a causal mask could skip half). The backward pass
    costs about twice the forward, so training costs C = 3 C_forward = 6 N + 6 n_layer seq_len n_embd:
    the "6N" rule (Chinchilla's C ~ 6 N D for D training tokens). ``include_lm_head`` adds the
    2 * n_embd * vocab_size of the output projection, which Kaplan leaves out and which dominates
    for tiny models with big vocabularies.
    """
    if seq_len <= 0 or seq_len > config.block_size:
        raise ValueError(f"seq_len must be in [1, {config.block_size}], got {seq_len}")
    d, L, b = config.n_embd, config.n_layer, int(config.bias)
    per_block = (
        4 * (d * d + b * d)  # q, k, v and output projections
        + (d * 4 * d + b * 4 * d)
        + (4 * d * d + b * d)  # MLP d -> 4d -> d
        + 2 * 2 * d  # two LayerNorms (weight and bias each)
    )
    n_non_embedding = L * per_block + 2 * d  # + final LayerNorm
    forward = 2 * n_non_embedding + 2 * L * seq_len * d
    if include_lm_head:
        forward += 2 * d * config.vocab_size
    return 3 * forward if training else forward
