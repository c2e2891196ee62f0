"""A PPO run's log (one dict per update, with TRL's names) on disk, and its dashboard figure."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from utils.artifacts import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_log(log: Sequence[dict], folder: str | Path) -> None:
    """Write ``log`` (one dict per update) as ``log.json`` and ``log.csv`` in ``folder``, atomically."""
    folder = Path(folder)
    atomic_write_json(folder / "log.json", list(log))
    columns = list(dict.fromkeys(k for row in log for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(log)
    atomic_write_text(folder / "log.csv", buffer.getvalue())


def read_log(path: str | Path) -> list[dict]:
    """A log written by :func:`write_log` (``log.json``, or the folder holding it)."""
    path = Path(path)
    return json.loads((path / "log.json" if path.is_dir() else path).read_text())


DASHBOARD_PANELS = (  # (title, [(log key, label), ...])
    (
        "reward",
        [
            ("objective/scores", "score (proxy)"),
            ("objective/rlhf_reward", "score - beta KL"),
            ("objective/gold_reward", "gold"),
        ],
    ),
    ("KL to reference (nats / response)", [("objective/kl", "k1"), ("objective/kl_k3", "k3")]),
    ("beta", [("beta", "beta")]),
    ("clip fraction", [("policy/clipfrac_avg", "policy"), ("val/clipfrac_avg", "value")]),
    ("approx. KL(old || new) per token", [("policy/approxkl_avg", "k2 (TRL)"), ("policy/approxkl_k3_avg", "k3")]),
    ("value loss", [("loss/value_avg", "value loss")]),
    ("explained variance", [("val/explained_variance", "explained variance")]),
    ("response length (tokens)", [("val/response_length", "mean length")]),
)


def plot_dashboard(log: Sequence[dict] | str | Path) -> Figure:
    """A 2 x 4 matplotlib figure of a PPO run: rewards, KL, beta, clipping, approx. KL, value loss,
    explained variance and response length against episodes. ``log`` is a list of dicts or a log path."""
    import matplotlib.pyplot as plt

    rows = read_log(log) if isinstance(log, (str, Path)) else list(log)
    if not rows:
        raise ValueError("the log is empty: nothing to plot")
    episodes = [r["episode"] for r in rows]
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5), constrained_layout=True)
    for ax, (title, series) in zip(axes.flat, DASHBOARD_PANELS):
        for key, label in series:
            if key in rows[0]:
                ax.plot(episodes, [r.get(key, math.nan) for r in rows], label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("episodes")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    return fig
