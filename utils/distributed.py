"""Several processes sharing every batch: the process group, and statistics over all processes' rows.

``torchrun --nproc_per_node 2 train.py`` (or ``accelerate launch --multi_gpu --num_processes 2``, which
starts CPU processes where there is no CUDA) runs one copy of a training script per process, each holding
a slice of the batch. A statistic that needs the whole batch (a mean, a variance, a whitening) is then a
sum over processes (one ``all_reduce`` with the gloo backend on a CPU); with one process every function
here is its single-process counterpart in :mod:`utils.ppo_losses`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def init_distributed() -> None:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe in the environment.

    Does nothing in a plain single-process run (no ``WORLD_SIZE`` > 1) or when the group already exists.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="gloo")


@dataclass(frozen=True)
class Processes:
    """Who we are among the processes sharing the work, and the one collective operation we need."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> Processes:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``tensor`` over all processes (the tensor itself with one process)."""
        if self.world_size > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def global_masked_mean(values: torch.Tensor, mask: torch.Tensor, processes: Processes) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is set, over the entries of every process.

    With one process this is ``ppo_losses.masked_mean``; with several, each contributes its sum and count.
    """
    total = processes.sum(torch.stack([torch.where(mask, values, 0.0).sum(), mask.sum().to(values.dtype)]))
    return total[0] / total[1]


def global_masked_var(
    values: torch.Tensor, mask: torch.Tensor, processes: Processes, unbiased: bool = True
) -> torch.Tensor:
    """Variance over the masked entries of every process (two passes: mean, then squared deviations)."""
    count = processes.sum(mask.sum().to(values.dtype))
    if count < 2:
        raise ValueError(f"need at least 2 valid entries for a variance, got {int(count)}")
    variance = global_masked_mean((values - global_masked_mean(values, mask, processes)) ** 2, mask, processes)
    return variance * count / (count - 1) if unbiased else variance


def global_masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, processes: Processes, shift_mean: bool = True
) -> torch.Tensor:
    """``ppo_losses.masked_whiten`` with the mean and variance taken over all processes' entries."""
    mean = global_masked_mean(values, mask, processes)
    whitened = (values - mean) * torch.rsqrt(global_masked_var(values, mask, processes) + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, 0.0)


class RunningMoments:
    """Mean and variance of every score seen so far (all processes), merged batch by batch (Chan et al.)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, values: torch.Tensor, processes: Processes) -> None:
        local = torch.stack([values.sum(), (values**2).sum(), torch.tensor(float(values.numel()))]).double()
        total, total_sq, n = processes.sum(local).tolist()
        batch_mean = total / n
        batch_var = max(total_sq / n - batch_mean**2, 0.0)
        count = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / count
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / count) / count
        self.count = int(count)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


def global_explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, processes: Processes
) -> float:
    """``ppo_losses.explained_variance`` over all processes: 1 - Var[returns - values] / Var[returns]."""
    var_returns = global_masked_var(returns, mask, processes, unbiased=False)
    if var_returns == 0:
        return math.nan
    return (1.0 - global_masked_var(returns - values, mask, processes, unbiased=False) / var_returns).item()
