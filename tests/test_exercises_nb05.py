"""Notebook 05's exercise checks: a right answer passes, a plausible wrong one does not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from utils.exercises import check
from utils.exercises.nb05 import exact_next_words, reference_beam_search
from utils.lm_analysis import sample_texts


def test_05_1_min_p():
    def min_p_filter(probs, min_p):
        kept = torch.where(probs >= min_p * probs.max(), probs, torch.zeros_like(probs))
        return kept / kept.sum()

    def absolute_threshold(probs, min_p):  # compares with min_p itself, not min_p times the top probability
        kept = torch.where(probs >= min_p, probs, torch.zeros_like(probs))
        return kept / kept.sum()

    assert check("05.1", min_p_filter)
    assert not check("05.1", absolute_threshold)


def test_05_2_truncation_to_greedy(tiny_base_lm):
    model, tokenizer = tiny_base_lm

    def decode(knobs, seed):
        return sample_texts(model, tokenizer, 1, seed=seed, max_new_tokens=24, **knobs)[0][0]

    def ignores_knobs(knobs, seed):
        return sample_texts(model, tokenizer, 1, seed=seed, max_new_tokens=24, do_sample=knobs.get("do_sample", True))[
            0
        ][0]

    assert check("05.2", decode)
    assert not check("05.2", ignores_knobs)


def test_05_3_exact_distribution_and_kl():
    exact = exact_next_words()
    assert len(exact) == 24 and abs(sum(exact.values()) - 1) < 1e-12
    assert check("05.3", exact)
    adjectives_only = {w: p for w, p in exact.items() if w not in {"very", "really", "quite", "rather"}}
    total = sum(adjectives_only.values())
    assert not check("05.3", {w: p / total for w, p in adjectives_only.items()})  # forgot the degree words

    assert check("05.3b", lambda p, q: torch.special.xlogy(p, p / q).sum())
    assert not check("05.3b", lambda p, q: (p * (p / q).log()).sum())  # nan where p = 0
    assert not check("05.3b", lambda p, q: torch.special.xlogy(q, q / p).sum())  # the other direction


def test_05_4_largest_safe_top_p():
    def largest_safe_top_p(rows):
        return max(r["top_p"] for r in rows if r["grammatical_fraction"] >= 0.9)

    def first_unsafe_minus_one(rows):  # assumes the fractions fall monotonically
        rows = sorted(rows, key=lambda r: r["top_p"])
        safe = [r["top_p"] for r in rows]
        for i, r in enumerate(rows):
            if r["grammatical_fraction"] < 0.9:
                return safe[i - 1]
        return safe[-1]

    assert check("05.4", largest_safe_top_p)
    assert not check("05.4", first_unsafe_minus_one)


def test_05_5_beam_search():
    assert check("05.5", reference_beam_search)

    def without_sorting(model, bos_id, eos_id, width, max_new_tokens):  # returns the beams unsorted
        return sorted(reference_beam_search(model, bos_id, eos_id, width, max_new_tokens), key=lambda c: c[0])

    assert not check("05.5", without_sorting)


def fake_explorer(temperature, texts, kept=5, mode="sample"):
    table = [(f"t{i}", 0.1, 0.2 if i < kept else 0.0) for i in range(8)]
    return SimpleNamespace(
        refresh=lambda: None,
        mode=SimpleNamespace(value=mode),
        temperature=SimpleNamespace(value=temperature),
        table=table,
        texts=texts,
    )


def test_05_6_explorer_settings_logic():
    good = ["the acting was great.", "the plot was dull.", "i loved the music.", "the ending was weak."]
    assert check("05.6", fake_explorer(1.6, good))
    assert not check("05.6", fake_explorer(1.0, good))  # too cold
    assert not check("05.6", fake_explorer(1.6, good, kept=1))  # greedy in disguise
    assert not check("05.6", fake_explorer(1.6, [*good[:3], "the acting was"]))  # one broken sample
    assert not check("05.6", fake_explorer(1.6, [*good[:3], good[0]]))  # a repeat
    assert not check("05.6", fake_explorer(1.6, good, mode="greedy"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_05_6_reads_the_real_explorer(tiny_base_lm, capsys):
    from utils.widgets import DecodingExplorer

    model, tokenizer = tiny_base_lm
    explorer = DecodingExplorer(model, tokenizer, num_samples=2, max_new_tokens=8)
    explorer.temperature.value = 0.5
    assert not check("05.6", explorer)
    assert "the temperature is 0.5" in capsys.readouterr().out
