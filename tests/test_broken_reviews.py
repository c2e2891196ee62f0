"""``utils.broken_reviews``: every ungrammatical text gets one form, from the grammar's own verdict; the table
counts them and averages the reward model's scores by hand."""

from __future__ import annotations

import random

import pytest

from utils import review_world as rw
from utils.broken_reviews import BROKEN_FORMS, broken_form, broken_form_table

BODY = "the plot was good. the acting felt dull. i loved the music. the cast was very solid."  # 4 sentences


@pytest.mark.parametrize(
    ("text", "form"),
    [
        ("the plot was good and", "stops mid-sentence"),
        ("the plot was good. i would recommend", "stops mid-sentence"),  # cut off inside its verdict
        ("the music was great. the plot was good. i did", "stops mid-sentence"),
        (BODY + " the plot was good.", "too many sentences"),
        (BODY + " the plot was good. i would recommend it.", "too many sentences"),
        ("the plot was good. i would recommend it. the cast was solid.", "text after the verdict"),
        ("the plot was good. i did recommend.", "a misplaced verdict"),
        ("the plot was good, but i would recommend it.", "a misplaced verdict"),
        ("the cast was great and overall, a solid film.", "a misplaced verdict"),
        ("the music was great. i would rather brilliant film.", "a misplaced verdict"),  # a garbled verdict
        ("overall, a good film.", "a misplaced verdict"),  # a verdict and no review before it
        ("the cast was very and the cast was excellent.", "a word out of place"),
        ("the plot was was good. i would recommend it.", "a word out of place"),
        ("the and plot was good.", "a word out of place"),
        ("The plot was good.", "not canonical text"),
        ("the plot was good; overall, a good film.", "not canonical text"),
    ],
)
def test_forms_of_hand_made_texts(text, form):
    assert not rw.is_grammatical(text)
    assert broken_form(text) == form


def test_reviews_have_no_form():
    rows = rw.lm_corpus(200, seed=3)
    assert all(broken_form(r["text"]) is None for r in rows)
    assert broken_form(BODY + " i would recommend it.") is None


def test_every_breakage_of_the_review_world_gets_a_form():
    """The breakages that taught the reward model (review_world.BREAKAGES) land in the forms they make: a cut
    always stops mid-sentence; a repeated word is mostly out of place (in a verdict it garbles the verdict, a
    repeated final full stop is text after it)."""
    rng = random.Random(0)
    prompts = [r["prompt"] for r in rw.rl_prompts(60, seed=5)]
    completions = [c for (c,) in rw.sample_completions(prompts, 1, seed=6)]

    def forms(kind):
        return [broken_form(p + rw.break_completion(p, c, rng, kinds=(kind,))) for p, c in zip(prompts, completions)]

    assert set(forms("cut")) == {"stops mid-sentence"}
    repeats = forms("repeat")
    assert set(repeats) <= {"a word out of place", "a misplaced verdict", "text after the verdict"}
    assert repeats.count("a word out of place") > len(repeats) // 2
    # Padding copies whole sentences; a copy of the completion's first piece (the end of the prompt's sentence,
    # " good.") is a word out of place, a copy of the verdict is text after it
    assert set(forms("pad")) == {"too many sentences", "a word out of place", "text after the verdict"}
    for kind in ("drop", "swap"):  # a dropped word can leave " , but" after the prompt: not canonical text
        assert set(forms(kind)) <= set(BROKEN_FORMS), kind


def test_table_counts_and_means_by_hand():
    samples = [
        {"prompt": "the plot was", "response": " good.", "proxy_reward": 5.0},  # a review: no row
        {"prompt": "the plot was", "response": " good and", "proxy_reward": -1.0},
        {"prompt": "the plot was", "response": " good. i did recommend.", "proxy_reward": 2.0},
        {"prompt": "the cast was", "response": " great, but i would recommend it.", "proxy_reward": 1.0},
        {"prompt": "the plot was", "response": " good. i would", "proxy_reward": -2.0},
    ]
    table = broken_form_table(samples)
    assert [row["form"] for row in table] == ["stops mid-sentence", "a misplaced verdict"]  # BROKEN_FORMS order
    cut, verdict = table
    assert (cut["count"], cut["share"], cut["proxy_reward"]) == (2, 2 / 5, -1.5)
    assert (verdict["count"], verdict["share"], verdict["proxy_reward"]) == (2, 2 / 5, 1.5)
    assert broken_form_table(samples[:1]) == []
    with pytest.raises(ValueError):
        broken_form_table([])
