"""One place that makes runs repeatable: the same seed gives the same numbers on the same machine."""
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


def configure_threads(num_threads: int | None = None) -> int:
    """Use every core we are given (2 on the course machines) and no more: oversubscription is slow."""
    n = num_threads or int(os.environ.get("RLHF_NUM_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n


def default_device() -> torch.device:
    """CUDA when present (the optional hub profile), else CPU (the default course path)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
