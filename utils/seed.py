"""One place that makes runs repeatable: the same seed gives the same numbers on the same machine.

Two environment variables steer a run:

* ``RLHF_SEED`` (default 0), the run seed: :func:`utils.profiles.get_profile` shifts every config's seed by
  it, so every dataset, model initialisation, batch order and sample changes together and the artifacts of
  different seeds live side by side in ``results/``; the notebooks seed their own cells from it too.
* ``RLHF_NUM_THREADS``, torch's intra-op thread count (see :func:`configure_threads`).

Another CPU, or another thread count, sums floating point in another order: the same seed then trains a
slightly different model. That is why every number the course claims is checked on several seeds
(:mod:`utils.seed_study`), and why a different seed is the honest stand-in for a student's machine.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) in one call."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _env_int(name: str, default: int, minimum: int) -> int:
    """The integer in ``$name`` (``default`` when unset or empty), with an error that names the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not an integer; set it to a whole number >= {minimum} or unset it"
        ) from None
    if value < minimum:
        raise ValueError(f"environment variable {name}={value} must be >= {minimum}")
    return value


def run_seed() -> int:
    """The run seed, ``$RLHF_SEED`` (default 0): which of several equally valid runs this one is."""
    return _env_int("RLHF_SEED", 0, minimum=0)


def configure_threads(num_threads: int | None = None) -> int:
    """Use every core we are given (2 on the course machines) and no more: oversubscription is slow."""
    n = num_threads or _env_int("RLHF_NUM_THREADS", os.cpu_count() or 1, minimum=1)
    torch.set_num_threads(n)
    return n


def default_device() -> torch.device:
    """CUDA when present (the optional hub profile), else CPU (the default course path)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
