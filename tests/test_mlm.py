"""Masked-LM pretraining, segment embeddings, and the pretrained encoder as a reward model (utils.mlm).

Our encoder with segment embeddings is checked against transformers' BERT (same weights, same outputs),
BERT's corruption against a hand-written reference and its 15% / 80-10-10 rates, and the pretraining loop
by what it learns on a tiny language whose masked tokens are predictable from their context.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertForMaskedLM

from utils import mlm
from utils import review_world as rw
from utils.reward_model import RewardModelConfig, collate_pairs, encode_pairs
from utils.tokenizer import train_bpe
from utils.transformer import EncoderOnlyConfig, EncoderOnlyModel

TINY = {"vocab_size": 40, "max_len": 16, "d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 64, "dropout": 0.0}


@pytest.fixture(scope="module")
def tokenizer():
    """A small BPE trained on review-world text (a second or less)."""
    return train_bpe([r["text"] for r in rw.lm_corpus(1_000, seed=3)], vocab_size=400)


@pytest.fixture(scope="module")
def tokens(tokenizer):
    return mlm.EncoderTokens.from_tokenizer(tokenizer)


def _randomise_norms(model: torch.nn.Module, seed: int) -> None:
    """LayerNorms start at (1, 0), which would hide a norm copied to the wrong place: give them random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))


# ------------------------------------------------------------------------------------------------ BERT equality
@pytest.mark.parametrize("type_vocab_size", [2, 0])
def test_encoder_equals_transformers_bert_with_segments_and_padding(type_vocab_size):
    torch.manual_seed(0)
    ours = EncoderOnlyModel(EncoderOnlyConfig(**TINY, type_vocab_size=type_vocab_size)).eval()
    _randomise_norms(ours, seed=1)
    if type_vocab_size:
        with torch.no_grad():  # segment vectors as large as the token ones, so that a lost segment shows
            ours.token_type_embed.weight.normal_(0, 1)
    theirs = BertForMaskedLM(ours.config.hf_bert_config()).eval()
    theirs.load_state_dict(ours.hf_bert_state_dict(), strict=True)

    ids = torch.randint(0, 40, (3, 10))
    attention_mask = torch.tensor([[1] * 10, [1] * 7 + [0] * 3, [1] * 4 + [0] * 6])
    token_types = torch.tensor([[0] * 5 + [1] * 5, [0] * 3 + [1] * 7, [0] * 10]) if type_vocab_size else None
    hf_types = token_types if type_vocab_size else torch.zeros_like(ids)
    real = attention_mask.bool()
    with torch.no_grad():
        hidden = ours.encode(ids, attention_mask, token_types)
        hf_hidden = theirs.bert(ids, attention_mask=attention_mask, token_type_ids=hf_types).last_hidden_state
        logits = ours(ids, attention_mask, token_types)
        hf_logits = theirs(ids, attention_mask=attention_mask, token_type_ids=hf_types).logits
    torch.testing.assert_close(hidden[real], hf_hidden[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[real], hf_logits[real], rtol=1e-5, atol=1e-5)
    if type_vocab_size:  # the segments matter: all-zero token types give other outputs
        with torch.no_grad():
            assert (ours.encode(ids, attention_mask) - hidden)[real].abs().max() > 0.1


def test_segments_leave_the_plain_encoder_unchanged():
    """Adding segment embeddings draws the other weights exactly as before (same seed, same values)."""
    torch.manual_seed(3)
    plain = EncoderOnlyModel(EncoderOnlyConfig(**TINY))
    torch.manual_seed(3)
    with_segments = EncoderOnlyModel(EncoderOnlyConfig(**TINY, type_vocab_size=2))
    plain_state = plain.state_dict()
    segment_state = with_segments.state_dict()
    assert set(segment_state) - set(plain_state) == {"token_type_embed.weight"}
    for name, value in plain_state.items():
        assert torch.equal(value, segment_state[name]), name
    ids = torch.randint(0, 40, (2, 6))
    with torch.no_grad():  # token types default to segment 0
        torch.testing.assert_close(with_segments(ids), with_segments(ids, token_type_ids=torch.zeros_like(ids)))
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        plain(ids, token_type_ids=torch.zeros_like(ids))
    with pytest.raises(ValueError, match="post-norm"):
        EncoderOnlyModel(EncoderOnlyConfig(**TINY, norm_first=True)).hf_bert_state_dict()


# ------------------------------------------------------------------------------------------------ corruption
def _reference_mask(ids, maskable, mask_id, low, high, generator, p=0.15):
    """BERT's corruption written out step by step, drawing in the same order as mlm.mask_tokens."""
    chosen = torch.rand(ids.shape, generator=generator) < p
    chosen &= maskable
    action = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(low, high, ids.shape, generator=generator)
    inputs, labels = ids.clone(), torch.full_like(ids, -100)
    for index in zip(*torch.nonzero(chosen, as_tuple=True)):
        labels[index] = ids[index]
        if action[index] < 0.8:
            inputs[index] = mask_id
        elif action[index] < 0.9:
            inputs[index] = random_ids[index]
    return inputs, labels


def test_mask_tokens_equals_the_reference_and_never_touches_unmaskable_positions():
    ids = torch.randint(2, 30, (8, 25), generator=torch.Generator().manual_seed(0))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = False  # BOS
    maskable[5:, 20:] = False  # padding
    ours = mlm.mask_tokens(ids, maskable, 99, (2, 30), torch.Generator().manual_seed(7), mask_prob=0.4)
    reference = _reference_mask(ids, maskable, 99, 2, 30, torch.Generator().manual_seed(7), p=0.4)
    assert torch.equal(ours[0], reference[0]) and torch.equal(ours[1], reference[1])
    inputs, labels = ours
    assert torch.equal(inputs[~maskable], ids[~maskable]) and (labels[~maskable] == -100).all()
    predicted = labels != -100
    assert torch.equal(labels[predicted], ids[predicted])  # the labels are the original tokens
    assert torch.equal(inputs[~predicted], ids[~predicted])  # nothing else is touched


def test_mask_tokens_rates_are_berts():
    n = 400_000
    ids = torch.randint(2, 1000, (1, n), generator=torch.Generator().manual_seed(1))
    inputs, labels = mlm.mask_tokens(
        ids, torch.ones_like(ids, dtype=torch.bool), 5000, (2, 1000), torch.Generator().manual_seed(2)
    )
    chosen = labels != -100
    k = int(chosen.sum())
    assert abs(k / n - 0.15) < 5 * math.sqrt(0.15 * 0.85 / n)  # 15% chosen
    masked = (inputs == 5000) & chosen
    unchanged = (inputs == ids) & chosen
    # A random replacement equals the original with probability 1/998: "unchanged" is 10% + 10% / 998.
    for observed, expected in (
        (masked, 0.8),
        (unchanged, 0.1 + 0.1 / 998),
        (chosen & ~masked & ~unchanged, 0.1 - 0.1 / 998),
    ):
        share = int(observed.sum()) / k
        assert abs(share - expected) < 5 * math.sqrt(expected * (1 - expected) / k), (share, expected)


def test_mask_tokens_extremes():
    ids = torch.arange(2, 12)[None]  # (1, 10)
    maskable = torch.tensor([[False] + [True] * 8 + [False]])
    all_masked, labels = mlm.mask_tokens(
        ids, maskable, 50, (2, 12), torch.Generator(), mask_prob=1.0, mask_token_share=1.0
    )
    assert all_masked.tolist() == [[2] + [50] * 8 + [11]]
    assert labels.tolist() == [[-100, *range(3, 11), -100]]
    random_only, _ = mlm.mask_tokens(
        ids, maskable, 50, (20, 30), torch.Generator(), mask_prob=1.0, mask_token_share=0.0, random_token_share=1.0
    )
    assert ((random_only[0, 1:9] >= 20) & (random_only[0, 1:9] < 30)).all()


def test_config_rejects_shares_above_one():
    with pytest.raises(ValueError, match="random_token_share"):
        mlm.MLMConfig(mask_token_share=0.8, random_token_share=0.3)


# ------------------------------------------------------------------------------------------------ pairs and segments
def test_segment_ids_by_hand():
    sep = 9
    ids = torch.tensor([[0, 5, 6, sep, 7, 8, 0, 1], [0, 5, 6, 7, 0, 1, 1, 1]])
    assert mlm.segment_ids(ids, sep).tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0] * 8]


def test_encode_segment_pairs_puts_sep_between_prompt_and_completion(tokenizer, tokens):
    rows = rw.preference_pairs(6, seed=5)
    pairs = mlm.encode_segment_preferences(rows, tokenizer, tokens)
    plain = encode_pairs(rows, tokenizer)  # [BOS] prompt completion [EOS]
    for row, (chosen, _), (plain_chosen, _) in zip(rows, pairs, plain):
        n_prompt = len(tokenizer(row["prompt"])["input_ids"])  # BOS + prompt
        assert chosen[n_prompt] == tokens.sep_id and chosen.count(tokens.sep_id) == 1
        assert chosen[:n_prompt] + chosen[n_prompt + 1 :] == plain_chosen  # the same tokens, plus [SEP]
        types = mlm.segment_ids(torch.tensor([chosen]), tokens.sep_id)[0].tolist()
        assert types == [0] * (n_prompt + 1) + [1] * (len(chosen) - n_prompt - 1)
    assert tokens.mask_id == len(tokenizer) and tokens.vocab_size == len(tokenizer) + 2
    assert tokens.decode_token(tokens.sep_id, tokenizer) == "[SEP]"


# ------------------------------------------------------------------------------------------------ pretraining
def _topic_language(n: int, seed: int) -> list[list[int]]:
    """[BOS] + 8 tokens + [EOS]; each sequence draws its 8 tokens uniformly from one of 6 "topics" of 3 ids
    (topic k: ids 2 + 3k .. 4 + 3k). The other tokens give the topic away, never which of its 3 ids."""
    generator = torch.Generator().manual_seed(seed)
    topic = torch.randint(0, 6, (n, 1), generator=generator)
    ids = 2 + 3 * topic + torch.randint(0, 3, (n, 8), generator=generator)  # (n, 8)
    return [[0, *row, 0] for row in ids.tolist()]


TOPIC_TOKENS = mlm.EncoderTokens(tokenizer_size=20, bos_id=0, eos_id=0, pad_id=1, first_word_id=2)  # 18 ordinary ids


def _bayes_loss_of_the_topic_language() -> float:
    """The lowest expected masked-LM loss, by hand. A chosen token of topic C (3 ids) is shown as [MASK] (80%):
    the context says C, nothing more, loss log 3. Shown unchanged (10%), or replaced by a random ordinary id (10%,
    1 in 18) that happens to be itself: an id x of C is seen, which is the original with probability
    (0.1 + 0.1/18) / (0.1 + 3 * 0.1/18) = 19/21. A random id of C other than the original (2 in 18): the original
    is one of the other two, each 1/21. A random id of another topic (15 in 18): log 3 again."""
    seen_itself = math.log(21 / 19)
    random_token = (1 / 18) * seen_itself + (2 / 18) * math.log(21) + (15 / 18) * math.log(3)
    return 0.8 * math.log(3) + 0.1 * seen_itself + 0.1 * random_token


def test_pretraining_reaches_the_bayes_loss_of_a_language_it_can_read():
    config = EncoderOnlyConfig(
        vocab_size=22, max_len=12, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0, type_vocab_size=2
    )  # tiny
    torch.manual_seed(0)
    model = EncoderOnlyModel(config)
    train, held_out = _topic_language(2000, seed=0), _topic_language(400, seed=1)
    mlm_config = mlm.MLMConfig(steps=250, batch_size=64, lr=3e-3, warmup_steps=20, seed=0)
    before = mlm.evaluate_mlm(model, held_out, TOPIC_TOKENS, mlm_config, seed=5)
    log = mlm.pretrain_mlm(model, train, TOPIC_TOKENS, mlm_config)
    after = mlm.evaluate_mlm(model, held_out, TOPIC_TOKENS, mlm_config, seed=5)
    unigram = mlm.unigram_baseline(train, held_out, TOPIC_TOKENS)
    bayes = _bayes_loss_of_the_topic_language()  # 1.015 nats
    assert len(log) == 250 and [r["step"] for r in log[:2]] == [1, 2]
    assert before["loss"] > math.log(18) - 0.5  # untrained: about uniform over the 18 ordinary ids (or worse)
    assert abs(unigram["loss"] - math.log(18)) < 0.05  # the context-free floor: log 18 = 2.89
    # Near the floor the context allows, and not below it (a model shown the answers would go below: ~400
    # predictions give the held-out loss a standard error of about 0.05).
    assert bayes - 0.15 < after["loss"] < bayes + 0.3
    assert (
        after["accuracy"] > 0.25
    )  # the best possible is 0.8/3 + 0.1 + 0.1 (1/18 + 15/54) = 0.40; token frequencies alone get 1/18
    assert mlm.evaluate_mlm(model, held_out, TOPIC_TOKENS, mlm_config, seed=5) == after  # fixed masks


def test_unigram_baseline_by_hand():
    tokens = mlm.EncoderTokens(tokenizer_size=6, bos_id=0, eos_id=0, pad_id=1, first_word_id=2)
    train = [[0, 2, 2, 3, 0]]  # counts: 2 -> 2, 3 -> 1; smoothed over 6 ids: total 3 + 6 = 9
    held_out = [[0, 2, 4, 0]]
    result = mlm.unigram_baseline(train, held_out, tokens)
    assert result["loss"] == pytest.approx(-(math.log(3 / 9) + math.log(1 / 9)) / 2)
    assert result["accuracy"] == 0.5  # predicts 2 everywhere


# ------------------------------------------------------------------------------------------------ reward model
def _tiny_pair_encoder(tokens: mlm.EncoderTokens, n_layers: int) -> tuple[EncoderOnlyConfig, EncoderOnlyModel]:
    """A tiny encoder with segments over the test tokenizer's ids plus [MASK] and [SEP] (seeded)."""
    config = EncoderOnlyConfig(
        vocab_size=tokens.vocab_size,
        max_len=128,
        d_model=32,
        n_heads=4,
        n_layers=n_layers,
        d_ff=64,
        dropout=0.0,
        type_vocab_size=2,
    )
    torch.manual_seed(0)
    return config, EncoderOnlyModel(config)


def test_encoder_reward_model_reads_the_pretrained_encoder_at_cls(tokenizer, tokens):
    config, encoder = _tiny_pair_encoder(tokens, n_layers=2)
    encoder.eval()
    _randomise_norms(encoder, seed=2)
    pretrained = mlm.encoder_reward_model(config, tokens, seed=4, pretrained=encoder).eval()
    frozen = mlm.encoder_reward_model(config, tokens, seed=4, pretrained=encoder, freeze=True)
    scratch = mlm.encoder_reward_model(config, tokens, seed=4)
    pairs = mlm.encode_segment_preferences(rw.preference_pairs(4, seed=5), tokenizer, tokens)
    batch = collate_pairs(pairs, tokens.pad_id)
    types = mlm.segment_ids(batch["input_ids"], tokens.sep_id)
    with torch.no_grad():
        scores = pretrained(**batch).logits.squeeze(-1)  # (2B,)
        cls = encoder.encode(batch["input_ids"], batch["attention_mask"], types)[:, 0]  # (2B, d): our encoder
        head = pretrained.model
        manual = head.classifier(torch.tanh(head.bert.pooler.dense(cls))).squeeze(-1)
    torch.testing.assert_close(scores, manual, rtol=1e-5, atol=1e-5)
    # the same head from the same seed in every arm; the encoder differs only when not pretrained
    for a, b in ((pretrained, frozen), (pretrained, scratch)):
        assert torch.equal(a.model.classifier.weight, b.model.classifier.weight)
        assert torch.equal(a.model.bert.pooler.dense.weight, b.model.bert.pooler.dense.weight)
    assert not torch.equal(
        scratch.model.bert.encoder.layer[0].attention.self.query.weight,
        pretrained.model.bert.encoder.layer[0].attention.self.query.weight,
    )
    d = config.d_model
    assert mlm.trainable_parameters(frozen) == (d * d + d) + (d + 1)  # pooler dense + classifier
    assert mlm.trainable_parameters(pretrained) == sum(p.numel() for p in pretrained.parameters())
    with pytest.raises(ValueError, match="pretrained"):
        mlm.encoder_reward_model(config, tokens, seed=4, freeze=True)


def test_compare_initialisations_trains_each_arm_on_the_same_footing(tokenizer, tokens):
    config, encoder = _tiny_pair_encoder(tokens, n_layers=1)
    encoder_before = {k: v.clone() for k, v in encoder.hf_bert_state_dict().items()}
    pairs = mlm.encode_segment_preferences(rw.preference_pairs(40, seed=5), tokenizer, tokens)
    schedule = mlm.encoder_schedule(RewardModelConfig(), steps=4, seed=0)
    assert (schedule.steps, schedule.batch_size, schedule.lr) == (4, 32, RewardModelConfig().encoder_lr)
    results = mlm.compare_initialisations(encoder, pairs[:32], pairs[32:], tokens, schedule)
    assert list(results) == list(mlm.ARMS)
    for result in results.values():
        assert len([loss for record in result["log"] for loss in record["step_losses"]]) == 4
        assert 0 <= result["heldout_accuracy"] <= 1
    assert results["MLM-pretrained, frozen (head only)"]["trainable_parameters"] == 32 * 32 + 32 + 33
    # training a reward model never writes back into the pretrained encoder
    for key, value in encoder.hf_bert_state_dict().items():
        assert torch.equal(value, encoder_before[key])


def test_review_pairs_split_each_review_at_its_opening():
    texts = [r["text"] for r in rw.lm_corpus(200, seed=4)]
    pairs = mlm.review_pairs(texts)
    kept = [t for t in texts if rw.opening(t) is not None]
    assert 0 < len(pairs) == len(kept) < len(texts)  # reviews opening with "i loved ..." have no 2-word opening
    for (opening, rest), text in zip(pairs, kept):
        assert opening == rw.opening(text) and opening + rest == text
