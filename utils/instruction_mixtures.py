"""Instruction data size and task mixtures (FLAN): how much instruction data, which tasks, and replaying
pretraining text against forgetting.

FLAN (Wei et al., 2021; Chung et al., 2022) fine-tunes one model on a *mixture* of many tasks, each phrased as
an instruction, and finds that more tasks and more examples help, also on tasks never trained on. LIMA (Zhou
et al., 2023) finds that 1,000 carefully chosen examples go a long way. InstructGPT mixes pretraining gradients
into RL ("PPO-ptx") so that the model does not forget its language. Our review world has three instruction
tasks (summarise, write, continue); this module builds the mixtures that test those three ideas on it:

* :func:`task_mixture`: exactly ``counts[task]`` rows of each task, drawn from a larger pool;
* :func:`pretraining_rows` and :func:`with_pretraining`: plain reviews as rows with an *empty* prompt, so the
  completion-only loss trains every token of the review, its first one included (a "continue" row trains only
  what follows its opening);
* :func:`fixed_steps`: an ``SFTConfig`` that takes the same number of optimiser steps whatever the data size,
  so that a comparison of data sizes is not a comparison of compute;
* :func:`per_task_nll`: the held-out completion NLL of each task (teacher forcing: no decoding needed).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from utils.sft import SFTConfig, completion_nll

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

PRETRAIN_TASK = "pretrain"  # the task name of replayed pretraining text


def rows_by_task(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """The rows of each task, in their original order."""
    tasks: dict[str, list[dict]] = {}
    for row in rows:
        tasks.setdefault(row["task"], []).append(row)
    return tasks


def task_mixture(rows: Sequence[dict], counts: Mapping[str, int], seed: int) -> list[dict]:
    """Exactly ``counts[task]`` rows of each task, drawn without replacement from ``rows`` and shuffled.

    ValueError if a task has fewer rows than asked for. A smaller mixture drawn with the same seed is not a
    subset of a larger one; use :func:`nested_mixtures` for that.
    """
    pool = rows_by_task(rows)
    rng = random.Random(seed)
    mixture: list[dict] = []
    for task, count in counts.items():
        available = pool.get(task, [])
        if count > len(available):
            raise ValueError(f"task_mixture: {count} {task!r} rows asked for, {len(available)} available")
        mixture += rng.sample(available, count)
    rng.shuffle(mixture)
    return mixture


def nested_mixtures(rows: Sequence[dict], sizes: Sequence[int], tasks: Sequence[str], seed: int) -> dict[int, list]:
    """For each size, that many rows split as evenly as possible over ``tasks``; each mixture contains every
    smaller one (so that a larger data set only *adds* examples, like collecting more data)."""
    largest = task_mixture(rows, even_counts(max(sizes), tasks), seed)
    by_task = rows_by_task(largest)
    mixtures = {}
    for size in sizes:
        chosen = [row for task, n in even_counts(size, tasks).items() for row in by_task[task][:n]]
        random.Random(seed).shuffle(chosen)
        mixtures[size] = chosen
    return mixtures


def even_counts(total: int, tasks: Sequence[str]) -> dict[str, int]:
    """``total`` split over ``tasks`` as evenly as possible (the first tasks get the remainder)."""
    share, remainder = divmod(total, len(tasks))
    return {task: share + (i < remainder) for i, task in enumerate(tasks)}


def pretraining_rows(reviews: Sequence[str]) -> list[dict]:
    """Plain reviews as prompt-completion rows with an empty prompt: ``[BOS] review [EOS]``, every token trained."""
    return [{"prompt": "", "completion": review, "task": PRETRAIN_TASK} for review in reviews]


def with_pretraining(rows: Sequence[dict], reviews: Sequence[str], share: float, seed: int) -> list[dict]:
    """``rows`` plus enough plain reviews that they make ``share`` of the result (rounded), shuffled."""
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share}")
    n_reviews = round(len(rows) * share / (1 - share))
    if n_reviews > len(reviews):
        raise ValueError(f"with_pretraining: {n_reviews} reviews needed, {len(reviews)} given")
    mixed = list(rows) + pretraining_rows(reviews[:n_reviews])
    random.Random(seed).shuffle(mixed)
    return mixed


def fixed_steps(config: SFTConfig, n_rows: int, steps: int) -> SFTConfig:
    """``config`` with ``epochs`` set so that training on ``n_rows`` rows takes exactly ``steps`` optimiser steps."""
    if n_rows < 1 or steps < 1:
        raise ValueError(f"fixed_steps needs n_rows >= 1 and steps >= 1, got {n_rows} and {steps}")
    steps_per_epoch = -(-n_rows // config.batch_size)  # the last batch may be partial
    # transformers trains ceil(epochs * steps_per_epoch) steps: half a step below the target rounds up to it
    # exactly, where steps / steps_per_epoch could round to a hair above it and take one step more.
    return dataclasses.replace(config, epochs=(steps - 0.5) / steps_per_epoch)


def per_task_nll(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], batch_size: int = 128
) -> dict[str, float]:
    """Held-out completion NLL per token (EOS included) of each task in ``rows``."""
    return {task: completion_nll(model, tokenizer, subset, batch_size) for task, subset in rows_by_task(rows).items()}
