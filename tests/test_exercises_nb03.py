"""Notebook 03's exercise checks: a right answer passes, a plausible wrong one fails (and says why)."""

import re

import pytest
import torch

from utils.exercises import check

PRETOKEN = re.compile(r" ?[a-z]+| ?[^\sa-z]+|\s+")  # as in the notebook


def pretokenize(text):
    return [tuple(piece.replace(" ", "Ġ")) for piece in PRETOKEN.findall(text)]


def merge_word(word, pair):
    out, i = [], 0
    while i < len(word):
        if word[i : i + 2] == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def chars_per_token(tokenizer, texts):
    return sum(map(len, texts)) / sum(len(tokenizer.tokenize(t)) for t in texts)


def bpe_encode(text, merges):
    symbols = []
    for word in pretokenize(text):
        for pair in merges:
            word = merge_word(word, tuple(pair))
        symbols.extend(word)
    return symbols


def collate_lm(sequences, pad_id):
    length = max(map(len, sequences))
    input_ids = torch.full((len(sequences), length), pad_id)
    attention_mask = torch.zeros_like(input_ids)
    for i, seq in enumerate(sequences):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": input_ids.masked_fill(attention_mask == 0, -100),
    }


def ordered_pairs(direction, pos_vectors, neg_vectors):
    pos, neg = pos_vectors @ direction, neg_vectors @ direction
    return (pos[:, None] > neg[None, :]).float().mean().item()


RIGHT = {"03.1": chars_per_token, "03.2": bpe_encode, "03.3": collate_lm, "03.4": ordered_pairs}


@pytest.mark.parametrize("exercise_id", sorted(RIGHT))
def test_right_answer_passes(exercise_id, capsys):
    assert check(exercise_id, RIGHT[exercise_id])
    assert capsys.readouterr().out.strip() == f"Exercise {exercise_id}: passed"


def collate_masking_by_id(sequences, pad_id):  # the classic bug: every EOS is masked when pad == EOS
    batch = collate_lm(sequences, pad_id)
    batch["labels"] = batch["input_ids"].masked_fill(batch["input_ids"] == pad_id, -100)
    return batch


def bpe_encode_characters_only(text, merges):  # applies only merges of two single characters, not merges of merges
    symbols = []
    for word in pretokenize(text):
        for pair in merges:
            if len(pair[0]) == 1 and len(pair[1]) == 1:
                word = merge_word(word, tuple(pair))
        symbols.extend(word)
    return symbols


WRONG = {
    "03.1": lambda tokenizer, texts: sum(map(len, texts)) / sum(len(ids) for ids in tokenizer(texts)["input_ids"]),
    "03.2": bpe_encode_characters_only,
    "03.3": collate_masking_by_id,
    "03.4": lambda direction, pos, neg: float((pos @ direction).mean() > (neg @ direction).mean()),
}


@pytest.mark.parametrize("exercise_id", sorted(WRONG))
def test_wrong_answer_fails(exercise_id, capsys):
    assert not check(exercise_id, WRONG[exercise_id])
    assert capsys.readouterr().out.startswith(f"Exercise {exercise_id}: not yet.")


def test_merges_in_reverse_order_fail(capsys):
    assert not check("03.2", lambda text, merges: bpe_encode(text, merges[::-1]))
    assert "not yet" in capsys.readouterr().out


def wordpiece_encode(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return ["[UNK]"]
    return pieces


def wordpiece_shortest_first(word, vocab):  # the shortest piece that fits, not the longest
    pieces, start = [], 0
    while start < len(word):
        for end in range(start + 1, len(word) + 1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return ["[UNK]"]
    return pieces


def wordpiece_partial_unk(word, vocab):  # keeps the pieces found before the unknown character
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return [*pieces, "[UNK]"]
    return pieces


def wordpiece_no_prefix(word, vocab):  # forgets the ## of continuation pieces
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            if word[start:end] in vocab:
                pieces.append(word[start:end])
                start = end
                break
        else:
            return ["[UNK]"]
    return pieces


@pytest.mark.parametrize("wrong", [wordpiece_shortest_first, wordpiece_partial_unk, wordpiece_no_prefix])
def test_wrong_wordpiece_fails(wrong, capsys):
    assert not check("03.5", wrong)
    assert capsys.readouterr().out.startswith("Exercise 03.5: not yet.")


def test_wordpiece_passes(capsys):
    assert check("03.5", wordpiece_encode)
    assert capsys.readouterr().out.strip() == "Exercise 03.5: passed"
