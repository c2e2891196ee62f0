"""Interactive widgets for the notebooks (ipywidgets 7.7 on Colab and 8 elsewhere).

- :class:`DecodingExplorer` (notebook 05): three sliders (temperature, top-k, top-p), a prompt menu, a
  greedy/sample switch and a "new samples" button. Every change redraws the next-token distribution after
  the prompt (raw probability as a pale bar, probability after the knobs as a dark bar) and regenerates a
  few continuations, each marked with whether the review grammar accepts it.
- :class:`KLExplorer` (notebook 10): a slider over the KL coefficients of the pipeline's sweep that shows
  each precomputed run (reward and KL curves, final metrics, samples), and a button that trains a short run
  of one's own at the chosen beta and shows it beside the precomputed one. The training is a callable the
  notebook builds from its loaded models, usually :func:`short_ppo_run` with the models bound.

The widgets take models, records and callables as arguments and never load pipeline artifacts themselves.
Only widgets and calls common to ipywidgets 7 and 8 are used (``FloatSlider``, ``IntSlider``,
``SelectionSlider``, ``Dropdown``, ``Button``, ``HTML``, ``Image``, ``HBox``, ``VBox``, ``Layout`` with
``border``/``padding``/``width``/``flex``, ``observe(..., names="value")``, ``on_click``). What they show
is HTML, or a PNG drawn off-screen with matplotlib, rather than output captured in an ``Output`` widget:
it redraws without flicker, and the tests can read it back.
"""

from __future__ import annotations

import dataclasses
import html
import io
import time
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from utils import review_world as rw
from utils.decoding import SamplingConfig
from utils.evaluation import SweepConfig, kl_sweep
from utils.lm_analysis import next_token_table, sample_texts
from utils.ppo import PPOConfig, RewardFn

DEFAULT_PROMPTS = ("the acting was", "i", "the plot was very good, but", "although the music was")


class DecodingExplorer:
    """Sliders that regenerate text and redraw the next-token distribution of a causal LM.

    ``display(explorer)`` (or ``display(explorer.widget)``) shows it. Changing any control calls
    :meth:`refresh`, which updates ``table`` (the rows drawn as bars), ``texts`` (the samples) and the
    two HTML panes. Samples are seeded (``seed``, advanced by the button), so the same settings give
    the same texts, and moving a slider back restores them.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[str] = DEFAULT_PROMPTS,
        num_samples: int = 4,
        max_new_tokens: int = 48,
        top_n: int = 12,
        seed: int = 0,
    ):
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
        self.temperature = widgets.FloatSlider(
            value=1.0, min=0.1, max=2.0, step=0.05, description="temperature", continuous_update=False, style=wide
        )
        self.top_k = widgets.IntSlider(
            value=0, min=0, max=50, step=1, description="top-k (0 = off)", continuous_update=False, style=wide
        )
        self.top_p = widgets.FloatSlider(
            value=1.0, min=0.05, max=1.0, step=0.05, description="top-p (1 = off)", continuous_update=False, style=wide
        )
        self.resample = widgets.Button(description="new samples")
        self.distribution = widgets.HTML()
        self.samples = widgets.HTML()

        for control in (self.prompt, self.mode, self.temperature, self.top_k, self.top_p):
            control.observe(self._on_change, names="value")
        self.resample.on_click(self._on_resample)
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.prompt, self.mode, self.resample]),
                widgets.HBox([self.temperature, self.top_k, self.top_p]),
                widgets.HBox([self.distribution, self.samples]),
            ]
        )
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
        self.texts, _ = sample_texts(
            self.model,
            self.tokenizer,
            self.num_samples,
            do_sample=self.mode.value == "sample",
            max_new_tokens=self.max_new_tokens,
            prompt=self.prompt.value,
            seed=self.seed,
            **knobs,
        )
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


# ---------------------------------------------------------------------------------------------------------
# The KL coefficient: browse the precomputed sweep, and train a short run at the chosen beta
# ---------------------------------------------------------------------------------------------------------
# A short run of one's own: 16 updates of 32 episodes, evaluated once at the end on 32 held-out prompts.
# With the course models it takes about 14 s of CPU time on one thread (see short_ppo_run), evaluations
# included, inside the 30 s a student should wait on a 2-core CPU. Many small updates move the policy
# further per episode than a few large ones, so the run already shows what beta does: at temperature 1,
# beta = 0 ends ungrammatical with the proxy up and the gold reward down, beta = 0.1 with both up.
# The temperature is left to the caller: pass the precomputed sweep's to compare like with like.
SHORT_RUN = SweepConfig(
    betas=(0.0,), total_episodes=512, batch_size=32, evaluations=1, eval_prompts=32, samples_kept=8, temperature=None
)

RECORD_KEYS = ("beta", "kl", "proxy_reward", "gold_reward", "grammatical_fraction", "length_words", "log", "samples")
LOG_KEYS = ("episode", "objective/scores", "objective/gold_reward", "objective/kl")


def short_ppo_run(
    policy: nn.Module,
    proxy_fn: RewardFn,
    tokenizer: PreTrainedTokenizerBase,
    train_prompts: Sequence[str],
    eval_prompts: Sequence[str],
    ppo: PPOConfig,
    beta: float,
    run: SweepConfig = SHORT_RUN,
    seed: int = 0,
    value_model: nn.Module | None = None,
    num_threads: int | None = 1,
) -> dict:
    """One short PPO run at ``beta`` from a copy of ``policy`` against ``proxy_fn``, evaluated at its end.

    It is the sweep's run (:func:`utils.evaluation.kl_sweep` with the single beta), so it trains and is
    evaluated exactly as the precomputed runs were, only shorter: ``run`` sets the length, batch size,
    temperature (None: ``ppo``'s) and how many of ``eval_prompts`` the evaluation samples; ``ppo`` every
    other hyperparameter. ``policy`` is not modified; the reference is a frozen copy of it.

    ``num_threads`` sets torch's CPU threads for the run (restored afterwards; None: leave them). One thread,
    the default, is about as fast as two for models this small, and unlike two it does not slow down several
    fold when something else keeps the cores busy (measured on a loaded 2-core machine: 16-20 s against
    40-90 s).

    Returns the sweep's record for that beta (final metrics, ``log`` with one row per update, ``samples``,
    ``checkpoints``, ``train_seconds``), plus ``eval_prompts``, the number of held-out prompts evaluated.
    """
    run = dataclasses.replace(run, betas=(beta,))  # SweepConfig rejects a negative or non-finite beta
    eval_prompts = list(eval_prompts)[: run.eval_prompts]
    sampling = SamplingConfig(
        max_new_tokens=ppo.response_length,
        temperature=ppo.temperature,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise ValueError(f"short_ppo_run: num_threads must be None or an int >= 1, got {num_threads!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or threads)
    try:
        [record] = kl_sweep(
            policy,
            proxy_fn,
            tokenizer,
            train_prompts,
            eval_prompts,
            ppo,
            run,
            sampling,
            seed=seed,
            value_model=value_model,
        )
    finally:
        torch.set_num_threads(threads)
    return {**record, "eval_prompts": len(eval_prompts)}


def _check_record(record: object, where: str) -> dict:
    """``record`` if it has what the explorer draws (a kl_sweep record); a ValueError naming what lacks if not."""
    if not isinstance(record, dict):
        raise ValueError(f"{where} must be a dict (a kl_sweep record), got {type(record).__name__}")
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise ValueError(f"{where} lacks {missing}; a kl_sweep record has {list(RECORD_KEYS)}")
    if not record["log"]:
        raise ValueError(f"{where}: 'log' is empty: a run logs one row per update")
    for i, row in enumerate(record["log"]):
        lacking = [key for key in LOG_KEYS if key not in row]
        if lacking:
            raise ValueError(f"{where}: log row {i} lacks {lacking}; each row needs {list(LOG_KEYS)}")
    return record


def _episodes(record: dict) -> int:
    return record["log"][-1]["episode"]


class KLExplorer:
    """A beta slider over a precomputed KL sweep, and a button that trains a short run of one's own at that beta.

    ``display(explorer)`` shows it. Moving the slider calls :meth:`refresh`, which redraws ``summary`` (the
    final metrics of the SFT start, the precomputed run and, if there is one, your run at that beta),
    ``curves`` (a PNG: proxy and gold reward, and KL, per update) and the samples of both runs. The button
    calls ``train_fn(beta)``, times it, keeps the record in ``runs`` (one per beta) and redraws; without a
    ``train_fn`` it is disabled. Every number shown is read from the records, none is fixed in the text.

    Args:
        sweep: kl_sweep records (:func:`utils.evaluation.load_sweep`), one per beta.
        train_fn: beta -> a kl_sweep record of a run trained now, e.g. :func:`short_ppo_run` with the models
            bound (``functools.partial`` or a small function).
        num_samples: samples shown per run.
        beta: the beta selected at first; None: the middle one of the sweep.
    """

    def __init__(
        self,
        sweep: Sequence[dict],
        train_fn: Callable[[float], dict] | None = None,
        num_samples: int = 4,
        beta: float | None = None,
    ):
        if not sweep:
            raise ValueError("KLExplorer: sweep must hold at least one kl_sweep record, got none")
        self.sweep = {float(r["beta"]): r for r in (_check_record(r, f"sweep[{i}]") for i, r in enumerate(sweep))}
        if len(self.sweep) != len(sweep):
            raise ValueError(f"KLExplorer: sweep repeats a beta: {[r['beta'] for r in sweep]}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"KLExplorer: num_samples must be an int >= 1, got {num_samples!r}")
        betas = sorted(self.sweep)
        if beta is None:
            beta = betas[len(betas) // 2]
        if beta not in self.sweep:
            raise ValueError(f"KLExplorer: beta must be one of the sweep's {betas}, got {beta!r}")
        self.train_fn, self.num_samples = train_fn, num_samples
        self.runs: dict[float, dict] = {}  # your runs, by beta
        self.seconds: dict[float, float] = {}  # how long each of your runs took here, wall clock
        self.curve_data: dict[str, dict[str, list[float]]] = {}  # what the figure draws, per run

        self.beta = widgets.SelectionSlider(
            options=[(f"{b:g}", b) for b in betas], value=beta, description="beta", continuous_update=False
        )
        self.train = widgets.Button(
            description="train here",
            disabled=train_fn is None,
            tooltip="train a short PPO run at this beta on this machine",
        )
        self.status = widgets.HTML()
        self.summary = widgets.HTML()
        self.curves = widgets.Image(format="png")
        self.precomputed_samples, self.your_samples = widgets.HTML(), widgets.HTML()

        self.beta.observe(self._on_change, names="value")
        self.train.on_click(self._on_train)
        boxed = {"border": "1px solid #9e9e9e", "padding": "4px 10px", "width": "50%", "flex": "1 1 0%"}
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.beta, self.train, self.status]),
                self.summary,
                self.curves,
                widgets.HBox(
                    [
                        widgets.VBox([self.precomputed_samples], layout=widgets.Layout(**boxed)),
                        widgets.VBox([self.your_samples], layout=widgets.Layout(**boxed)),
                    ],
                    layout=widgets.Layout(width="100%"),
                ),
            ]
        )
        self.refresh()

    # -- callbacks ------------------------------------------------------------------------------
    def _on_change(self, change: dict) -> None:
        self.refresh()

    def _on_train(self, button: widgets.Button) -> None:
        self.train_here()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- the work -------------------------------------------------------------------------------
    def train_here(self) -> dict | None:
        """Train a run at the selected beta with ``train_fn``, keep it, redraw; return its record.

        A failure is shown in the status line (a widget callback's exception would otherwise only reach
        the browser's log) and returns None.
        """
        if self.train_fn is None:
            raise RuntimeError("KLExplorer: no train_fn was given, so there is nothing to train with")
        beta = self.beta.value
        self.train.disabled = self.beta.disabled = True  # one run at a time, at the beta it was asked for
        self.status.value = f"training a short run at beta = {beta:g} on this machine..."
        begin = time.perf_counter()
        try:
            record = _check_record(self.train_fn(beta), f"train_fn({beta:g})")
        except Exception as error:  # noqa: BLE001 -- shown to the student, who can fix the cell and retry
            self.status.value = f"<b>training failed</b>: {html.escape(f'{type(error).__name__}: {error}')}"
            return None
        finally:
            self.train.disabled = self.beta.disabled = False
        self.seconds[beta], self.runs[beta] = time.perf_counter() - begin, record
        self.refresh()
        return record

    def refresh(self) -> None:
        """Redraw the summary, the curves and the samples for the selected beta."""
        beta = self.beta.value
        precomputed, yours = self.sweep[beta], self.runs.get(beta)
        if yours is None:
            self.status.value = (
                "no run of yours at this beta yet" if self.train_fn is not None else "browsing only (no train_fn given)"
            )
        else:
            self.status.value = (
                f"your run: {_episodes(yours):,} episodes, trained in {self.seconds[beta]:.0f} s on this machine"
            )
        self.summary.value = render_summary(precomputed, yours)
        self.curve_data = {"precomputed": curve_data(precomputed)}
        if yours is not None:
            self.curve_data["yours"] = curve_data(yours)
        self.curves.value = render_curves(self.curve_data, beta)
        self.precomputed_samples.value = render_run_samples(
            f"precomputed run, after {_episodes(precomputed):,} episodes", precomputed["samples"][: self.num_samples]
        )
        self.your_samples.value = render_run_samples(
            "your run" + (f", after {_episodes(yours):,} episodes" if yours else ""),
            yours["samples"][: self.num_samples] if yours else [],
            empty="press the button to train a short run at this beta on this machine",
        )


def curve_data(record: dict) -> dict[str, list[float]]:
    """The per-update curves of a run's log: episodes, proxy and gold reward of the training batch, and KL."""
    log = record["log"]
    return {
        "episodes": [row["episode"] for row in log],
        "proxy": [row["objective/scores"] for row in log],
        "gold": [row["objective/gold_reward"] for row in log],
        "kl": [row["objective/kl"] for row in log],
    }


def render_curves(curves: dict[str, dict[str, list[float]]], beta: float, dpi: int = 80) -> bytes:
    """A PNG of rewards (left) and KL (right) against episodes: the precomputed run solid, yours dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2), dpi=dpi, layout="constrained")  # no pyplot: nothing is shown by itself
    rewards, kl = fig.subplots(1, 2)
    styles = {"precomputed": {"ls": "-", "lw": 1.5}, "yours": {"ls": "--", "lw": 1.5, "marker": "o", "ms": 3}}
    for name, data in curves.items():
        for key, colour, label in (("proxy", "C0", "proxy (RM score)"), ("gold", "C1", "gold")):
            rewards.plot(data["episodes"], data[key], color=colour, label=f"{label}, {name}", **styles[name])
        kl.plot(data["episodes"], data["kl"], color="C3", label=name, **styles[name])
    rewards.set(title=f"beta = {beta:g}: reward of the training batches", xlabel="episodes")
    kl.set(title="KL to the reference (nats / response)", xlabel="episodes")
    for ax in (rewards, kl):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def render_summary(precomputed: dict, yours: dict | None = None) -> str:
    """An HTML table of final metrics: the SFT start, the precomputed run and (if given) yours."""
    rows = []
    if precomputed.get("checkpoints"):
        rows.append(("SFT policy (start)", 0, precomputed["checkpoints"][0]))
    rows.append(("precomputed run", _episodes(precomputed), precomputed))
    if yours is not None:
        rows.append(("your run (this machine)", _episodes(yours), yours))
    header = (
        "<tr><th></th><th>episodes</th><th>KL (nats)</th><th>proxy</th><th>gold</th><th>grammatical</th>"
        "<th>words</th></tr>"
    )
    cells = "".join(
        f"<tr><td>{name}</td><td>{episodes:,}</td><td>{m['kl']:.2f}</td><td>{m['proxy_reward']:+.2f}</td>"
        f"<td>{m['gold_reward']:+.2f}</td><td>{m['grammatical_fraction']:.2f}</td><td>{m['length_words']:.1f}</td>"
        "</tr>"
        for name, episodes, m in rows
    )
    note = "final evaluation on held-out prompts: proxy and gold reward of fresh samples, KL to the SFT policy"
    if yours is not None and "eval_prompts" in yours:
        note += f"; your run on {yours['eval_prompts']} prompts, so its figures are noisier"
    note = f"<br><i>{html.escape(note)}</i>"
    return f"<table style='font-family:monospace'>{header}{cells}</table>{note}"


def render_run_samples(title: str, samples: Sequence[dict], empty: str = "no samples") -> str:
    """HTML list of a run's samples with their gold and proxy rewards, ✓/✗ for grammatical."""
    if not samples:
        return f"<b>{html.escape(title)}</b><br><i>{html.escape(empty)}</i>"
    items = "".join(
        f"<li>{'✓' if s['grammatical'] else '✗'} gold {s['gold_reward']:+.2f}, proxy {s['proxy_reward']:+.2f} | "
        f"{html.escape(s['prompt'])}<b>{html.escape(s['response'])}</b></li>"
        for s in samples
    )
    return f"<b>{html.escape(title)}</b><ul style='padding-left:18px'>{items}</ul>"
