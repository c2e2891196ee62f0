"""Notebook 06's exercise checks: a right answer passes, a plausible wrong one does not."""

from __future__ import annotations

import re

from utils import review_world as rw
from utils import sft
from utils.exercises import check


def test_06_1_rouge2_by_hand():
    assert check("06.1", {"overlap": 7, "precision": 7 / 8, "recall": 7 / 8, "f1": 0.875})
    assert not check("06.1", {"overlap": 8, "precision": 1.0, "recall": 1.0, "f1": 1.0})  # unclipped


def test_06_2_lora_count():
    assert check("06.2", lambda r, d, n_layer: n_layer * 16 * r * d)
    assert not check("06.2", lambda r, d, n_layer: n_layer * 12 * r * d)  # counted d_out only
    assert check("06.2b", 96) and not check("06.2b", 128)


def flip_words():
    pairs = [
        *zip([w for w, *_ in rw.ADJECTIVES[+1]], [w for w, *_ in rw.ADJECTIVES[-1]]),
        *zip([w for w, *_ in rw.VERBS[+1]], [w for w, *_ in rw.VERBS[-1]]),
        ("would recommend", "would not recommend"),
    ]
    table = {good: bad for good, bad in pairs} | {bad: good for good, bad in pairs}
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, table), key=len, reverse=True)) + r")\b")
    return table, pattern


def test_06_3_flip():
    table, pattern = flip_words()
    assert check("06.3", lambda review: pattern.sub(lambda m: table[m.group(1)], review))
    adjectives_only = {k: v for k, v in table.items() if k in {w for t in rw.ADJECTIVES.values() for w, *_ in t}}
    pattern_adjectives = re.compile(r"\b(" + "|".join(adjectives_only) + r")\b")
    assert not check("06.3", lambda review: pattern_adjectives.sub(lambda m: adjectives_only[m.group(1)], review))


def test_06_4_forgetting():
    base = {"completion": 3.0, "review": 28.0}
    good = {"base": base, 2e-4: {"completion": 2.0, "review": 28.5}, 5e-3: {"completion": 0.8, "review": 60.0}}
    assert check("06.4", good)
    swapped = {"base": base, 2e-4: good[5e-3], 5e-3: good[2e-4]}
    assert not check("06.4", swapped)


def test_06_5_assistant_labels():
    def mask_labels(tokenizer, messages):
        return sft.assistant_only_labels(tokenizer, messages)

    def without_eos(tokenizer, messages):  # forgets to train the end-of-turn token
        ids, labels = sft.assistant_only_labels(tokenizer, messages)
        return ids, [-100 if t == tokenizer.eos_token_id else label for t, label in zip(ids, labels)]

    assert check("06.5", mask_labels)
    assert not check("06.5", without_eos)
