"""An interactive decoding explorer for notebook 05 (ipywidgets 7.7 on Colab and 8 elsewhere).

Three sliders (temperature, top-k, top-p), a prompt menu, a greedy/sample switch and a "new samples"
button. Every change redraws the next-token distribution after the prompt (raw probability as a pale
bar, probability after the knobs as a dark bar) and regenerates a few continuations, each marked with
whether the review grammar accepts it.

Only widgets and calls common to ipywidgets 7 and 8 are used (``FloatSlider``, ``IntSlider``,
``Dropdown``, ``Button``, ``HTML``, ``HBox``, ``VBox``, ``observe(..., names="value")``), and the
distribution is drawn as HTML rather than a matplotlib figure: it redraws instantly, needs no
``Output`` capture, and the tests can read it back.
"""
from __future__ import annotations

import html
from typing import Sequence

import ipywidgets as widgets
from torch import nn
from transformers import PreTrainedTokenizerBase

from utils import review_world as rw
from utils.lm_analysis import next_token_table, sample_texts

DEFAULT_PROMPTS = ("the acting was", "i", "the plot was very good, but", "although the music was")


class DecodingExplorer:
    """Sliders that regenerate text and redraw the next-token distribution of a causal LM.

    ``display(explorer)`` (or ``display(explorer.widget)``) shows it. Changing any control calls
    :meth:`refresh`, which updates ``table`` (the rows drawn as bars), ``texts`` (the samples) and the
    two HTML panes. Samples are seeded (``seed``, advanced by the button), so the same settings give
    the same texts, and moving a slider back restores them.
    """

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                 prompts: Sequence[str] = DEFAULT_PROMPTS, num_samples: int = 4, max_new_tokens: int = 48,
                 top_n: int = 12, seed: int = 0):
        if not prompts:
            raise ValueError("DecodingExplorer: prompts must hold at least one prompt, got none")
        for name, value in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens), ("top_n", top_n)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DecodingExplorer: {name} must be an int >= 1, got {value!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.num_samples, self.max_new_tokens, self.top_n, self.seed = num_samples, max_new_tokens, top_n, seed
        self.table: list[tuple[str, float, float]] = []  # (token, raw prob, processed prob) as drawn
        self.texts: list[str] = []  # the samples as shown

        wide = {"description_width": "initial"}
        self.prompt = widgets.Dropdown(options=list(prompts), value=prompts[0], description="prompt", style=wide)
        self.mode = widgets.Dropdown(options=["sample", "greedy"], value="sample", description="decoding", style=wide)
        self.temperature = widgets.FloatSlider(value=1.0, min=0.1, max=2.0, step=0.05, description="temperature",
                                               continuous_update=False, style=wide)
        self.top_k = widgets.IntSlider(value=0, min=0, max=50, step=1, description="top-k (0 = off)",
                                       continuous_update=False, style=wide)
        self.top_p = widgets.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top-p (1 = off)",
                                         continuous_update=False, style=wide)
        self.resample = widgets.Button(description="new samples")
        self.distribution = widgets.HTML()
        self.samples = widgets.HTML()

        for control in (self.prompt, self.mode, self.temperature, self.top_k, self.top_p):
            control.observe(self._on_change, names="value")
        self.resample.on_click(self._on_resample)
        self.widget = widgets.VBox([
            widgets.HBox([self.prompt, self.mode, self.resample]),
            widgets.HBox([self.temperature, self.top_k, self.top_p]),
            widgets.HBox([self.distribution, self.samples]),
        ])
        self.refresh()

    # -- callbacks ------------------------------------------------------------------------------
    def _on_change(self, change: dict) -> None:
        self.refresh()

    def _on_resample(self, button: widgets.Button) -> None:
        self.seed += 1
        self.refresh()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- the work -------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Recompute the distribution and the samples for the current controls, and redraw both panes."""
        knobs = {"temperature": self.temperature.value, "top_k": self.top_k.value, "top_p": self.top_p.value}
        self.table = next_token_table(self.model, self.tokenizer, self.prompt.value, top_n=self.top_n, **knobs)
        self.texts, _ = sample_texts(self.model, self.tokenizer, self.num_samples, do_sample=self.mode.value == "sample",
                                     max_new_tokens=self.max_new_tokens, prompt=self.prompt.value, seed=self.seed,
                                     **knobs)
        self.distribution.value = render_distribution(self.table, greedy=self.mode.value == "greedy")
        self.samples.value = render_samples(self.texts)


def render_distribution(table: Sequence[tuple[str, float, float]], greedy: bool = False, width_px: int = 220) -> str:
    """HTML bars: for each token, its raw probability (pale) under its probability after the knobs (dark)."""
    title = "next token (greedy takes the top row)" if greedy else "next token: raw (pale) vs after the knobs (dark)"
    rows = []
    for label, raw, processed in table:
        raw_px, processed_px = round(raw * width_px), round(processed * width_px)
        rows.append(
            "<tr>"
            f"<td style='font-family:monospace;text-align:right;padding-right:6px'>{html.escape(label)}</td>"
            f"<td style='width:{width_px}px'><div style='position:relative;height:14px'>"
            f"<div style='position:absolute;height:14px;width:{raw_px}px;background:#c6dbef'></div>"
            f"<div style='position:absolute;top:3px;height:8px;width:{processed_px}px;background:#08519c'></div>"
            "</div></td>"
            f"<td style='font-family:monospace;padding-left:6px'>{raw:.3f} → {processed:.3f}</td>"
            "</tr>"
        )
    return f"<b>{title}</b><table>{''.join(rows)}</table>"


def render_samples(texts: Sequence[str]) -> str:
    """HTML list of samples, each marked ✓ if the review grammar accepts it and ✗ if not."""
    items = "".join(f"<li>{'✓' if rw.is_grammatical(t) else '✗'} {html.escape(t)}</li>" for t in texts)
    return f"<b>samples (✓ = grammatical review)</b><ul style='max-width:520px'>{items}</ul>"
