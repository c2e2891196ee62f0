"""What every TRL run of the course shares: CPU training arguments, and quiet trainers.

TRL and transformers are built for large GPU runs that log to dashboards. Our runs train a model of a
million parameters on a laptop CPU inside a notebook, so every trainer we build (``SFTTrainer`` in
:mod:`utils.sft`, ``RewardTrainer`` in :mod:`utils.reward_model`) gets the same CPU-sized arguments and
the same silence.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_training() -> Iterator[None]:
    """Silence the progress bars of ``datasets.map`` and known harmless library warnings (restored after)."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # PEFT still reads transformers' renamed `is_gradient_checkpointing`: harmless, and not ours to fix.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def silence_trainer(trainer):
    """Remove the callback that prints every log dict to stdout (we keep the log in ``state.log_history``)."""
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def offline_cpu_training_args(batch_size: int, seed: int) -> dict:
    """``TrainingArguments`` shared by our TRL runs: CPU, fp32, seeded, silent, no checkpoints, no network.

    TRL's defaults aim at large GPU runs: bf16 and gradient checkpointing are *on* by default, both wrong
    (and slow) for a 1M-parameter model on a CPU. We save the final model ourselves, so the trainer saves
    nothing, and it reports to nothing (no wandb/tensorboard).
    """
    return dict(
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        use_cpu=True,
        bf16=False,
        fp16=False,
        activation_checkpointing=False,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        log_level="error",
        logging_steps=10,
    )
