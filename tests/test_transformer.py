"""The transformer models: exact agreement with HF GPT-2, causality, bidirectionality, parameter counts."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from utils.attention import padding_mask
from utils.seed import set_seed
from utils.transformer import (
    GPT,
    BlockConfig,
    DecoderBlock,
    EncoderBlock,
    EncoderDecoderConfig,
    EncoderDecoderTransformer,
    EncoderOnlyConfig,
    EncoderOnlyModel,
    GPTConfig,
    count_parameters,
    flops_per_token,
)

TINY_GPT2 = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=101, n_positions=64)  # tiny


@pytest.fixture(autouse=True)
def _seed():
    set_seed(0)


@pytest.fixture(scope="module")
def hf_and_ours():
    set_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**TINY_GPT2)).eval()
    return hf, GPT.from_hf_gpt2(hf).eval()


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() > 1e-4


# --------------------------------------------------------------------------- GPT vs Hugging Face
def test_gpt_matches_hf_gpt2_logits(hf_and_ours):
    hf, ours = hf_and_ours
    ids = torch.randint(0, 101, (3, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits)


def test_gpt_matches_hf_gpt2_with_right_padding(hf_and_ours):
    hf, ours = hf_and_ours
    ids = torch.randint(0, 101, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    with torch.no_grad():
        ref, got = hf(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], ref[real])


def test_gpt_matches_hf_gpt2_with_left_padding_and_position_ids(hf_and_ours):
    hf, ours = hf_and_ours
    ids = torch.randint(0, 101, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :4] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=position_ids).logits
        got = ours(ids, attention_mask=mask, position_ids=position_ids)
    real = mask.bool()
    torch.testing.assert_close(got[real], ref[real])
    # The left-padded row's real tokens score exactly like the same tokens unpadded.
    with torch.no_grad():
        torch.testing.assert_close(got[0, 4:], ours(ids[:1, 4:])[0])


def test_gpt_is_causal_and_ties_embeddings():
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    assert model.lm_head.weight is model.wte.weight
    ids = torch.randint(0, 50, (1, 10))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1) % 50
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert _differs(a[:, 6:], b[:, 6:])


def test_parameter_counts_match_sum_hf_and_hand_formula(hf_and_ours):
    hf, ours = hf_and_ours
    counts = count_parameters(ours)
    total = sum(p.numel() for p in ours.parameters())
    assert counts["total"] == total == sum(p.numel() for p in hf.parameters())
    V, P, d, L = 101, 64, 64, 2
    assert counts["embeddings"] == V * d + P * d
    assert counts["attention"] == L * 4 * (d * d + d)
    assert counts["feed_forward"] == L * (d * 4 * d + 4 * d + 4 * d * d + d)
    assert counts["norms"] == (2 * L + 1) * 2 * d
    assert counts["head"] == 0 and counts["other"] == 0  # the head is tied to the embedding


def test_flops_per_token_is_6n_plus_attention(hf_and_ours):
    _, ours = hf_and_ours
    counts = count_parameters(ours)
    n_non_embedding = counts["total"] - counts["embeddings"]
    cfg, T = ours.config, 32
    attention = 2 * cfg.n_layer * T * cfg.n_embd
    assert flops_per_token(cfg, T, training=False) == 2 * n_non_embedding + attention
    assert flops_per_token(cfg, T) == 6 * n_non_embedding + 3 * attention
    head = 6 * cfg.n_embd * cfg.vocab_size
    assert flops_per_token(cfg, T, include_lm_head=True) - flops_per_token(cfg, T) == head
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(cfg, cfg.block_size + 1)


def test_bad_inputs_raise_clear_errors(hf_and_ours):
    _, ours = hf_and_ours
    with pytest.raises(ValueError, match="length 65"):
        ours(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="activation_function"):
        GPT.from_hf_gpt2(GPT2LMHeadModel(GPT2Config(**TINY_GPT2, activation_function="relu")))
    with pytest.raises(ValueError, match="activation"):
        BlockConfig(activation="swish")
    with pytest.raises(ValueError, match="memory"):
        DecoderBlock(BlockConfig(d_model=16, n_heads=2, d_ff=32))(torch.randn(1, 3, 16))


# --------------------------------------------------------------------------- encoder-decoder
TINY_SEQ2SEQ = dict(src_vocab_size=30, tgt_vocab_size=40, d_model=32, n_heads=4, d_ff=64, max_len=32)  # tiny


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_decoder_shapes_and_causality(norm_first):
    model = EncoderDecoderTransformer(EncoderDecoderConfig(**TINY_SEQ2SEQ, norm_first=norm_first)).eval()
    src, tgt = torch.randint(0, 30, (2, 7)), torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        logits = model(src, tgt)
        assert logits.shape == (2, 9, 40)

        future = tgt.clone()
        future[:, 5] = (tgt[:, 5] + 1) % 40  # change target token 5
        changed = model(src, future)
        torch.testing.assert_close(changed[:, :5], logits[:, :5])  # earlier positions untouched
        assert _differs(changed[:, 5:], logits[:, 5:])

        for j in (0, 6):  # any source token is visible to every target position
            other_src = src.clone()
            other_src[:, j] = (src[:, j] + 1) % 30
            after = model(other_src, tgt)
            assert all(_differs(after[:, t], logits[:, t]) for t in range(9))


def test_encoder_decoder_ignores_padded_source_tokens():
    model = EncoderDecoderTransformer(EncoderDecoderConfig(**TINY_SEQ2SEQ)).eval()
    src, tgt = torch.randint(0, 30, (1, 6)), torch.randint(0, 40, (1, 4))
    src_mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    other = src.clone()
    other[0, 4:] = (src[0, 4:] + 3) % 30  # rewrite only the padding
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt, src_mask), model(other, tgt, src_mask))
        torch.testing.assert_close(model(src, tgt, src_mask), model(src[:, :4], tgt))


# --------------------------------------------------------------------------- encoder-only
def test_encoder_only_is_bidirectional_and_respects_padding():
    config = EncoderOnlyConfig(vocab_size=50, max_len=16, d_model=32, n_heads=4, n_layers=2, d_ff=64)  # tiny
    model = EncoderOnlyModel(config).eval()
    assert model.lm_head.decoder.weight is model.token_embed.weight
    ids = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        logits = model(ids)
        assert logits.shape == (2, 8, 50)
        changed = ids.clone()
        changed[:, -1] = (ids[:, -1] + 1) % 50  # change the LAST token...
        assert _differs(model(changed)[:, 0], logits[:, 0])  # ...and the FIRST position notices

        mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
        padded_other = ids.clone()
        padded_other[1, 5:] = (ids[1, 5:] + 1) % 50
        torch.testing.assert_close(model(ids, mask)[1, :5], model(padded_other, mask)[1, :5])
    counts = count_parameters(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["head"] == 32 * 32 + 32 + 2 * 32 + 50  # dense, its norm and the vocab bias (weight tied)


def test_padding_mask_broadcasts_in_blocks():
    """An encoder block given a (B, 1, 1, T) padding mask equals running it on the unpadded prefix."""
    block = EncoderBlock(BlockConfig(d_model=16, n_heads=2, d_ff=32)).eval()
    x = torch.randn(1, 6, 16)
    mask = padding_mask(torch.tensor([[1, 1, 1, 1, 0, 0]]))
    with torch.no_grad():
        torch.testing.assert_close(block(x, mask)[:, :4], block(x[:, :4]))
