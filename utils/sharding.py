"""Sharded data parallelism (FSDP / ZeRO-3) against plain data parallelism (DDP), measured on 2 CPU processes.

With **DDP** every process holds a full copy of the parameters, the gradients and the optimiser state, and
the processes average their gradients (one ``all_reduce``) before every step. With **FSDP** (PyTorch's
Fully Sharded Data Parallel, the idea of ZeRO stage 3) each of the :math:`W` processes keeps only a
:math:`1/W` *shard* of each of the three; a layer's full parameters are gathered (``all_gather``) just
before it runs and freed after, and the gradients are summed and scattered back to their shards
(``reduce_scatter``). Per process, for :math:`N` fp32 parameters trained with Adam (two states each):

* DDP:  :math:`4N` (parameters) + :math:`4N` (gradients) + :math:`8N` (Adam) = :math:`16N` bytes;
* FSDP: :math:`16N / W` bytes, plus the full parameters of the one layer being computed.

:func:`sharded_bytes` is that arithmetic; :func:`run_data_parallel` runs one training step of a small model
on ``world_size`` CPU processes (gloo) under both strategies (FSDP2's ``fully_shard``) and reports what each
process actually holds, and the updated parameters, so the two strategies can be checked to make the same
update.
"""

from __future__ import annotations

import os
import socket
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class ProcessMemory:
    """Bytes one process holds for each part of the training state."""

    parameters: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer


def sharded_bytes(
    n_params: int, world_size: int, strategy: str, bytes_per_value: int = 4, optimizer_states: int = 2
) -> ProcessMemory:
    """Bytes per process for ``n_params`` parameters: full copies under DDP, a ``ceil(1/world_size)`` shard
    of each under FSDP (``optimizer_states`` values per parameter: 2 for Adam, 0 for plain SGD)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    held = n_params if strategy == "ddp" else -(-n_params // world_size)
    return ProcessMemory(held * bytes_per_value, held * bytes_per_value, held * bytes_per_value * optimizer_states)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor's shard on this process


def _bytes(tensors) -> int:
    return sum(_local(t).numel() * _local(t).element_size() for t in tensors if t is not None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TinyLM(torch.nn.Module):
    """A small next-token model in plain torch (embedding, residual MLP blocks, output layer): each block is
    a natural unit to shard, and the worker processes start fast because they need no ``transformers``."""

    def __init__(self, vocab_size: int = 64, width: int = 32, n_blocks: int = 2):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, width)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, 4 * width), torch.nn.GELU(),
                                torch.nn.Linear(4 * width, width))
            for _ in range(n_blocks)
        )  # fmt: skip
        self.head = torch.nn.Linear(width, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Mean next-token NLL of ``input_ids`` (B, T), each position predicting the next from its own token."""
        h = self.embed(input_ids)
        for block in self.blocks:
            h = h + block(h)
        logits = self.head(h)[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), input_ids[:, 1:].reshape(-1))


def _one_step(strategy: str, rank: int) -> tuple[ProcessMemory, float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)  # the same initial weights in every process and for both strategies
    model = TinyLM()
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:  # each block is gathered only while it runs
            fully_shard(block)
        fully_shard(model)  # the rest (embedding, output layer) as one more group
    else:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(100 + rank)  # each process its own half of the batch
    loss = model(torch.randint(64, (4, 16), generator=generator))
    loss.backward()
    optimizer.step()
    params = list(model.parameters())
    memory = ProcessMemory(
        parameters=_bytes(params),
        gradients=_bytes(p.grad for p in params),
        optimizer=_bytes(v for state in optimizer.state.values() for v in state.values() if v.dim() > 0),
    )
    full = [p.full_tensor() if hasattr(p, "full_tensor") else p.detach() for p in params]  # a collective
    names = [n.removeprefix("module.") for n, _ in model.named_parameters()]
    return memory, loss.item(), {n: t.detach().clone() for n, t in zip(names, full)}


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    # FSDP2 warns that a block's output is a view (an in-place op on it would bypass its hooks); we do none.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results = {strategy: _one_step(strategy, rank) for strategy in STRATEGIES}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_data_parallel(world_size: int = 2) -> dict[str, dict]:
    """One AdamW step of :class:`TinyLM` on ``world_size`` CPU processes (gloo), under DDP and then FSDP.

    Returns, for each strategy, ``{"memory": [ProcessMemory per rank], "loss": [per rank], "params": {name:
    updated full tensor}}``. (The processes are started once for both strategies: starting them is the
    slow part.) Run it from a notebook or under ``if __name__ == "__main__"``: the processes are spawned.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_worker, args=(world_size, _free_port(), out_dir), nprocs=world_size, start_method="spawn")
        ranks = [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
    return {
        strategy: {
            "memory": [r[strategy][0] for r in ranks],
            "loss": [r[strategy][1] for r in ranks],
            "params": ranks[0][strategy][2],
        }
        for strategy in STRATEGIES
    }
