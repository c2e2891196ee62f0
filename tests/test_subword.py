"""WordPiece and Unigram beside BPE: the from-scratch encoders reproduce the library's cuts exactly."""

from __future__ import annotations

import math

import pytest

from utils import review_world as rw
from utils.subword import (
    UNIGRAM_UNK,
    WORDPIECE_UNK,
    train_unigram,
    train_wordpiece,
    unigram_encode,
    unigram_scores,
    wordpiece_encode,
)

UNSEEN = ["the acting was superbly Great!", "naïve 🎬 zzz", "cinematographically dull"]


@pytest.fixture(scope="module")
def corpus():
    return [row["text"] for row in rw.lm_corpus(1000, seed=2016)]


@pytest.fixture(scope="module")
def wordpiece(corpus):
    return train_wordpiece(corpus, vocab_size=400)


@pytest.fixture(scope="module")
def unigram(corpus):
    return train_unigram(corpus, vocab_size=400)


def held_out():
    return [row["text"] for row in rw.lm_corpus(100, seed=7)] + UNSEEN


def test_wordpiece_greedy_longest_match_is_the_library(wordpiece):
    vocab = wordpiece.get_vocab()
    words = [w for text in held_out() for w, _ in wordpiece.pre_tokenizer.pre_tokenize_str(text)]
    assert len(words) > 1500
    for word in words:
        assert wordpiece_encode(word, vocab) == wordpiece.encode(word, add_special_tokens=False).tokens, word


def test_wordpiece_hand_example():
    vocab = {"super", "superb", "##b", "##ly", "##l", "##y", "s", "##u"}
    assert wordpiece_encode("superbly", vocab) == ["superb", "##ly"]  # longest first: not super + ##b + ##ly
    assert wordpiece_encode("sux", vocab) == [WORDPIECE_UNK]  # no piece for "x": the whole word is unknown
    assert wordpiece_encode("su", vocab) == ["s", "##u"]


def test_unigram_viterbi_is_the_library(unigram):
    scores = unigram_scores(unigram)
    unk_id = unigram.token_to_id(UNIGRAM_UNK)
    words = [w for text in held_out() for w, _ in unigram.pre_tokenizer.pre_tokenize_str(text)]
    for word in words:
        want = [t.value if t.id != unk_id else UNIGRAM_UNK for t in unigram.model.tokenize(word)]
        assert unigram_encode(word, scores)[0] == want, word


def test_unigram_hand_example():
    scores = {"a": math.log(0.3), "b": math.log(0.3), "ab": math.log(0.05), "abb": math.log(0.01)}
    # a + b + b: 0.3^3 = 0.027 beats ab + b (0.015) and abb (0.01)
    pieces, logp = unigram_encode("abb", scores)
    assert pieces == ["a", "b", "b"] and logp == pytest.approx(3 * math.log(0.3))
    scores["abb"] = math.log(0.05)  # now one piece is the most probable cut
    assert unigram_encode("abb", scores)[0] == ["abb"]
    pieces, _ = unigram_encode("axxb", scores)
    assert pieces == ["a", UNIGRAM_UNK, "b"]  # a run of unknown characters is one unknown piece


def test_unigram_scores_are_log_probabilities(unigram):
    scores = unigram_scores(unigram)
    assert all(s < 0 for s in scores.values())
    assert 0.9 < sum(math.exp(s) for s in scores.values()) < 1.1  # EM's unigram distribution over pieces


def test_round_trips_and_unknowns(wordpiece, unigram, corpus):
    for text in corpus[:50]:
        assert unigram.decode(unigram.encode(text).ids) == text  # "▁" makes the spaces recoverable
        assert wordpiece.decode(wordpiece.encode(text).ids).replace(" ,", ",").replace(" .", ".") == text
    assert wordpiece.encode("Great").tokens == [WORDPIECE_UNK]  # "G" never seen: the whole word is lost
    assert unigram.encode("Great").ids[1] == unigram.token_to_id(UNIGRAM_UNK)  # only the "G" is lost


def test_bad_vocab_size(corpus):
    for train in (train_wordpiece, train_unigram):
        with pytest.raises(ValueError, match="vocab_size"):
            train(corpus, vocab_size=1)
