"""Small plotting helpers shared by the notebooks, the pipeline and REPORT.md's figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from utils.artifacts import run_dir


def use_headless_backend_if_needed() -> None:
    """Scripts and tests have no display: draw with Agg unless a notebook backend is active."""
    if "inline" not in matplotlib.get_backend().lower() and "ipympl" not in matplotlib.get_backend().lower():
        matplotlib.use("Agg")


def save_figure(fig, name: str, folder: str | Path | None = None) -> Path:
    """Save ``fig`` as ``<run folder>/figures/<name>.png`` (``results/figures/``, or ``results/seed-N/figures/``
    for run seed N; see :func:`utils.artifacts.run_dir`), or under ``folder``, at a size fit for REPORT.md."""
    folder = Path(folder) if folder is not None else run_dir() / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
