"""The course tokenizer: byte-level BPE with BOS added, a pad token that is not EOS, exact round trips."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from utils import review_world as rw
from utils.tokenizer import EOS_TOKEN, PAD_TOKEN, TokenizerConfig, load_tokenizer, train_bpe


@pytest.fixture(scope="module")
def tokenizer():
    texts = [r["text"] for r in rw.lm_corpus(2000, seed=0)]
    return train_bpe(texts, vocab_size=1024)


def test_special_tokens(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.eos_token == tokenizer.bos_token == EOS_TOKEN
    assert tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_bos_is_added_and_round_trip_is_exact(tokenizer):
    for row in rw.lm_corpus(200, seed=5):
        ids = tokenizer(row["text"])["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in ids[1:]
        assert tokenizer.decode(ids, skip_special_tokens=True) == row["text"]


def test_any_string_encodes(tokenizer):
    text = "Ünïcode & CAPITALS 123 — never seen"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_merges_make_frequent_words_single_tokens(tokenizer):
    assert len(tokenizer("the acting was superb.")["input_ids"]) == 6  # BOS + 4 words + "."
    assert len(tokenizer) < 1024  # merging stopped early: the review world has few word types


def test_save_and_load(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "although the plot was dull, i loved the cast."
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.pad_token_id == tokenizer.pad_token_id


def test_bad_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        TokenizerConfig(vocab_size=100)
