"""T5's span corruption (utils.span_corruption): the paper's example by hand, the noise mask's counts and
shape, the invariant that input and target rebuild the original, the batch layout, and a tiny denoiser
that learns to fill in spans that its context gives away."""

from __future__ import annotations

import random

import pytest
import torch

from utils import span_corruption as sc
from utils.transformer import EncoderDecoderConfig, EncoderDecoderTransformer

WORDS = "Thank you for inviting me to your party last week .".split()
SENTINELS = [100, 101, 102, 103]  # <extra_id_0> ... <extra_id_3>
NAMES = {100: "<X>", 101: "<Y>", 102: "<Z>"}


def test_the_t5_papers_example_by_hand():
    ids = list(range(len(WORDS)))
    dropped = {"for", "inviting", "last"}
    mask = [w in dropped for w in WORDS]
    inputs, target = sc.corrupt(ids, mask, SENTINELS)

    def show(seq):
        return " ".join(NAMES.get(i) or WORDS[i] for i in seq)

    assert show(inputs) == "Thank you <X> me to your party <Y> week ."
    assert show(target) == "<X> for inviting <Y> last <Z>"
    assert sc.reconstruct(inputs, target, SENTINELS) == ids


def test_interleaving_input_and_target_rebuilds_any_text():
    rng = random.Random(0)
    sentinels = list(range(1000, 1040))
    for _ in range(500):
        length = rng.randint(1, 40)
        tokens = [rng.randrange(50) for _ in range(length)]
        mask = [rng.random() < rng.choice((0.15, 0.5, 0.9)) for _ in range(length)]  # any mask, noise first too
        inputs, target = sc.corrupt(tokens, mask, sentinels)
        assert sc.reconstruct(inputs, target, sentinels) == tokens
        n_spans = sum(m and (i == 0 or not mask[i - 1]) for i, m in enumerate(mask))
        assert len(inputs) == length - sum(mask) + n_spans  # each span shrinks to one sentinel
        assert len(target) == sum(mask) + n_spans + 1  # the dropped tokens, a sentinel each, one to close
        assert target[-1] == sentinels[n_spans]


def test_noise_mask_counts_and_shape_are_t5s():
    generator = torch.Generator().manual_seed(0)
    span_lengths = []
    for length in (2, 5, 20, 37, 64, 100):
        for _ in range(200):
            mask = sc.random_spans_noise_mask(length, 0.15, 3.0, generator).tolist()
            n_noise = min(max(round(length * 0.15), 1), length - 1)
            assert len(mask) == length and sum(mask) == n_noise
            starts = [i for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1])]
            assert len(starts) == min(max(round(n_noise / 3), 1), n_noise, length - n_noise)
            assert not mask[0] and mask[-1]  # kept first, dropped last
            if length == 100:
                span_lengths += [next((j for j in range(s, length) if not mask[j]), length) - s for s in starts]
    # 15 noise tokens in 5 spans: the mean span is exactly 3, and the cuts are random (not all spans 3)
    assert sum(span_lengths) / len(span_lengths) == 3.0 and len(set(span_lengths)) > 3
    with pytest.raises(ValueError, match="at least 2"):
        sc.random_spans_noise_mask(1, 0.15, 3.0, generator)


def test_too_few_sentinels_is_an_error():
    with pytest.raises(ValueError, match="sentinels"):
        sc.corrupt([1, 2, 3, 4, 5], [True, False, True, False, True], [100, 101, 102])


def test_batch_layout_is_teacher_forcing():
    texts = [list(range(2, 2 + n)) for n in (20, 7, 33)]
    config = sc.SpanCorruptionConfig()
    batch = sc.span_corruption_batch(texts, config, list(range(100, 116)), 0, 1, torch.Generator().manual_seed(0))
    for i, text in enumerate(texts):
        src = batch["src_ids"][i][batch["src_attention_mask"][i].bool()].tolist()
        labels = batch["labels"][i][batch["tgt_attention_mask"][i].bool()].tolist()
        assert src[-1] == 0 and labels[-1] == 0  # EOS ends both sides
        assert sc.reconstruct(src[:-1], labels[:-1], list(range(100, 116))) == text
        tgt_in = batch["tgt_in"][i][: len(labels)].tolist()
        assert tgt_in == [0, *labels[:-1]]  # EOS starts the decoder, then the target shifted right
    assert (batch["labels"][batch["tgt_attention_mask"] == 0] == sc.IGNORE).all()
    assert (batch["tgt_in"][batch["tgt_attention_mask"] == 0] == 1).all()  # padding id, never a label


def test_a_tiny_denoiser_learns_to_write_the_dropped_span():
    """Texts of one id repeated 24 times: T5's mask drops the last 4 tokens (round(0.15 * 24) = 4 in one span),
    and only the encoder knows which id they were. A decoder that reads the encoder through cross-attention, fed
    its target shifted right, learns to write them; one that saw its own labels, or ignored the encoder, would not.
    """
    rng = random.Random(0)

    def texts(n):
        return [[rng.randrange(2, 60)] * 24 for _ in range(n)]

    sentinels = [60, 61, 62, 63]
    config = EncoderDecoderConfig(
        src_vocab_size=64,
        tgt_vocab_size=64,
        d_model=32,
        n_heads=4,
        n_encoder_layers=1,
        n_decoder_layers=1,
        d_ff=64,
        max_len=32,
        dropout=0.0,
        norm_first=True,
    )  # tiny
    torch.manual_seed(0)
    model = EncoderDecoderTransformer(config)
    losses = sc.train_denoiser(
        model, texts(1000), sc.SpanCorruptionConfig(steps=150, batch_size=32, lr=3e-3), sentinels, eos_id=0, pad_id=1
    )
    assert len(losses) == 150
    assert sum(losses[:10]) / 10 > 2.0 and sum(losses[-20:]) / 20 < 0.3  # from ~log 64 to nearly solved
    generator = torch.Generator().manual_seed(1)
    exact = 0
    for text in texts(40):
        inputs, target = sc.corrupt(text, sc.random_spans_noise_mask(24, 0.15, 3.0, generator).tolist(), sentinels)
        assert len(target) == 4 + 2  # <extra_id_0> x x x x <extra_id_1>
        exact += sc.reconstruct(inputs, sc.greedy_target(model, [*inputs, 0], eos_id=0), sentinels) == text
    assert exact >= 38
