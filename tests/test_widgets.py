"""The decoding explorer: build it, move its sliders programmatically, check what it redraws.

Everything a slider change shows is checked against an independent computation: the samples against
`sample_texts` (itself checked against transformers' generate) and the bars against `next_token_table`.
"""
from __future__ import annotations

import html

import ipywidgets as widgets
import pytest

from utils.lm_analysis import next_token_table, sample_texts
from utils.widgets import DecodingExplorer, render_distribution, render_samples

PROMPTS = ("the acting was", "i")
SAMPLES, NEW_TOKENS = 3, 16


def expected_texts(model, tokenizer, explorer, **knobs):
    settings = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "do_sample": True, "prompt": PROMPTS[0],
                "seed": explorer.seed, **knobs}
    return sample_texts(model, tokenizer, SAMPLES, max_new_tokens=NEW_TOKENS, **settings)[0]


@pytest.fixture()
def explorer(tiny_base_lm):
    model, tokenizer = tiny_base_lm
    return DecodingExplorer(model, tokenizer, prompts=PROMPTS, num_samples=SAMPLES, max_new_tokens=NEW_TOKENS,
                            top_n=6)


def test_builds_a_widget_tree_with_the_controls(explorer):
    assert isinstance(explorer.widget, widgets.VBox)
    controls = [child for row in explorer.widget.children for child in row.children]
    for control in (explorer.prompt, explorer.mode, explorer.temperature, explorer.top_k, explorer.top_p,
                    explorer.resample, explorer.distribution, explorer.samples):
        assert control in controls
    assert len(explorer.table) == 6 and len(explorer.texts) == SAMPLES


def test_initial_state_matches_plain_sampling(tiny_base_lm, explorer):
    model, tokenizer = tiny_base_lm
    assert explorer.texts == expected_texts(model, tokenizer, explorer)
    for text in explorer.texts:
        assert html.escape(text) in explorer.samples.value
    assert explorer.table == next_token_table(model, tokenizer, PROMPTS[0], top_n=6)


def test_temperature_slider_regenerates(tiny_base_lm, explorer):
    model, tokenizer = tiny_base_lm
    before_bars, before_texts = explorer.distribution.value, explorer.texts
    explorer.temperature.value = 0.3  # fires the observer, as dragging the slider would
    assert explorer.texts == expected_texts(model, tokenizer, explorer, temperature=0.3)
    assert explorer.table == next_token_table(model, tokenizer, PROMPTS[0], temperature=0.3, top_n=6)
    assert explorer.distribution.value != before_bars
    # Sharpening moves mass to the top token.
    assert explorer.table[0][2] > explorer.table[0][1]
    explorer.temperature.value = 1.0  # back: same seed, same samples
    assert explorer.texts == before_texts


def test_top_k_one_is_greedy(tiny_base_lm, explorer):
    model, tokenizer = tiny_base_lm
    explorer.top_k.value = 1
    assert [row[2] for row in explorer.table] == [1.0] + [0.0] * 5
    assert explorer.texts == expected_texts(model, tokenizer, explorer, do_sample=False)


def test_top_p_slider_keeps_the_nucleus(tiny_base_lm, explorer):
    model, tokenizer = tiny_base_lm
    explorer.top_p.value = 0.05
    assert explorer.texts == expected_texts(model, tokenizer, explorer, top_p=0.05)
    # By hand: keep the most likely tokens until their mass reaches p, renormalise, zero the rest.
    raw = [row[1] for row in explorer.table]
    kept = next(i + 1 for i in range(len(raw)) if sum(raw[:i + 1]) >= 0.05)
    for i, (_, p_raw, p_new) in enumerate(explorer.table):
        assert p_new == pytest.approx(p_raw / sum(raw[:kept]) if i < kept else 0.0, rel=1e-4, abs=1e-7)


def test_greedy_mode(tiny_base_lm, explorer):
    model, tokenizer = tiny_base_lm
    greedy = expected_texts(model, tokenizer, explorer, do_sample=False)
    explorer.mode.value = "greedy"
    assert explorer.texts == greedy and len(set(explorer.texts)) == 1 and "greedy" in explorer.distribution.value


def test_button_and_prompt_menu(tiny_base_lm, explorer):
    model, tokenizer = tiny_base_lm
    explorer.resample.click()
    assert explorer.seed == 1
    assert explorer.texts == expected_texts(model, tokenizer, explorer)
    explorer.prompt.value = "i"
    assert explorer.texts == expected_texts(model, tokenizer, explorer, prompt="i")
    assert all(t.startswith("i") for t in explorer.texts)


def test_renderers_by_hand():
    bars = render_distribution([("␣great", 0.5, 1.0), ("<|endoftext|>", 0.25, 0.0)], width_px=200)
    assert "width:100px" in bars and "width:200px" in bars and "width:50px" in bars and "width:0px" in bars
    assert "&lt;|endoftext|&gt;" in bars and "0.500 → 1.000" in bars
    items = render_samples(["the acting was great.", "the acting <b>"])
    assert "✓ the acting was great." in items and "✗ the acting &lt;b&gt;" in items


@pytest.mark.parametrize("kwargs, field", [({"prompts": ()}, "prompts"), ({"num_samples": 0}, "num_samples"),
                                           ({"max_new_tokens": 0}, "max_new_tokens"), ({"top_n": 1.5}, "top_n")])
def test_rejects_bad_arguments(tiny_base_lm, kwargs, field):
    model, tokenizer = tiny_base_lm
    with pytest.raises(ValueError, match=field):
        DecodingExplorer(model, tokenizer, **kwargs)
