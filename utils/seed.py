"""One place that makes runs repeatable: the same seed gives the same numbers on the same machine.

Two environment variables steer a run:

* ``RLHF_SEED`` (default 0), the run seed: :func:`utils.profiles.get_profile` shifts every config's seed by
  it, so every dataset, model initialisation, batch order and sample changes together and the artifacts of
  different seeds live side by side in ``results/``; the notebooks seed their own cells from it too.
* ``RLHF_NUM_THREADS``, torch's intra-op thread count (default: one per core that is idle when a notebook or
  a pipeline stage starts; see :func:`configure_threads`).

Another CPU, or another thread count, sums floating point in another order: the same seed then trains a
slightly different model. That is why every number the course claims is checked on several seeds
(:mod:`utils.seed_study`), and why a different seed is the honest stand-in for a student's machine.
"""

from __future__ import annotations

import math
import os
import random
import time

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


def cpu_busy_cores(interval: float = 0.25) -> float | None:
    """How many of this process's cores other processes keep busy right now: their non-idle CPU time over
    ``interval`` seconds (read from ``/proc/stat`` while this process sleeps), in cores. None where there is
    no ``/proc/stat`` (macOS, Windows)."""
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None

    def sample() -> tuple[int, int] | None:  # (total, idle) jiffies summed over our cores
        try:
            with open("/proc/stat") as handle:
                lines = [line.split() for line in handle if line.startswith("cpu") and line[3].isdigit()]
            total = idle = 0
            for name, *fields in lines:
                if cores is None or int(name[3:]) in cores:
                    values = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                    total, idle = total + sum(values), idle + values[3] + values[4]
        except (OSError, ValueError, IndexError):
            return None
        return total, idle

    first = sample()
    time.sleep(interval)
    second = sample()
    if first is None or second is None or second[0] <= first[0]:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    return (total - idle) / total * (len(cores) if cores else os.cpu_count() or 1)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_for_load(available: int, busy_cores: float | None) -> int:
    """Torch threads for a machine with ``available`` cores of which ``busy_cores`` are in use by others.

    One thread per core that nobody else is using, and at least one. Why not always every core: the course's
    models are so small that each operation lasts microseconds, and torch's threads meet after each one.
    When another process holds a core, one of our threads waits for it at every meeting and the run slows
    down 2 to 6 times (``python -m utils.thread_bench``); a single thread just shares the free core.
    """
    if busy_cores is None:
        return available
    return max(1, min(available, math.floor(available - busy_cores + 0.5)))


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count and return it.

    ``num_threads``, else ``$RLHF_NUM_THREADS``, else one thread per core that is idle now (every core of an
    idle machine, fewer when other processes are busy: see :func:`threads_for_load`). The load is sampled
    for a quarter of a second each time this is called (once per notebook, once per pipeline stage).
    """
    n = num_threads or _env_int("RLHF_NUM_THREADS", 0, minimum=1)
    if not n:
        n = threads_for_load(available_cores(), cpu_busy_cores())
    torch.set_num_threads(n)
    return n


def default_device() -> torch.device:
    """CUDA when present (the optional hub profile), else CPU (the default course path)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
