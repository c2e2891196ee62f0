"""The course's main job: data -> tokenizer -> LM -> SFT -> RM -> PPO -> evaluation.

Run it with ``python -m utils.pipeline`` (what ``make run`` does). Every stage is a cached artifact
(see :mod:`utils.artifacts`), built by its module in :mod:`utils.stages`: a finished stage is loaded, not
redone, so an interrupted run resumes where it stopped, and a notebook that needs, say, the base LM can
call ``utils.stages.load_base_lm()`` and get it whether or not the pipeline ran before. This module only
runs stages in order and merges each stage's measured figures into ``results/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from utils.artifacts import atomic_write_json, read_json_or_reset, run_dir
from utils.profiles import HUB_PROFILES, Profile, get_hub_profile, get_profile
from utils.seed import configure_threads, run_seed
from utils.stages.data import data_metrics, tokenizer_metrics
from utils.stages.dpo import dpo_metrics
from utils.stages.evaluation import eval_metrics
from utils.stages.group_rl import grpo_metrics, grpo_verifiable_metrics, rloo_metrics
from utils.stages.hub import HUB_STAGES
from utils.stages.hub import metrics_path as hub_metrics_path
from utils.stages.limits import limits_metrics
from utils.stages.lm import lm_metrics
from utils.stages.methods import methods_metrics
from utils.stages.ppo import ppo_metrics
from utils.stages.rlaif import rlaif_metrics
from utils.stages.rm import rm_metrics
from utils.stages.sft import sft_metrics

logger = logging.getLogger(__name__)

# Stage name -> function returning its metrics, in the order the pipeline runs them.
STAGES: dict[str, Callable[[Profile], dict]] = {
    "data": data_metrics,
    "tokenizer": tokenizer_metrics,
    "lm": lm_metrics,
    "sft": sft_metrics,
    "rm": rm_metrics,
    "ppo": ppo_metrics,
    "eval": eval_metrics,
    "dpo": dpo_metrics,
    "rloo": rloo_metrics,
    "grpo": grpo_metrics,
    "grpo_verifiable": grpo_verifiable_metrics,
    "methods": methods_metrics,  # after every method stage it compares
    "rlaif": rlaif_metrics,
    "limits": limits_metrics,
}


# What `make run` runs: every stage, in order (each one loads the cached artifacts of the ones before).
DEFAULT_STAGES = tuple(STAGES)


class StageError(RuntimeError):
    """A stage failed while it ran (not a bad command line): names the stage; the cause is chained."""


def metrics_path(seed: int | None = None) -> Path:
    """``metrics.json`` of run seed ``seed`` (default ``$RLHF_SEED``): ``results/`` or ``results/seed-N/``."""
    return run_dir(seed) / "metrics.json"


def update_metrics(new: dict, stage: str | None = None, path: Path | None = None) -> dict:
    """Merge ``new`` into ``results/metrics.json`` (or ``path``; atomically) and return the whole file.

    With ``stage``, the file's old ``<stage>.*`` keys are dropped first, so a key that a stage no longer
    reports (say, after a config change) does not linger beside the fresh ones.
    """
    path = path or metrics_path()
    metrics = read_json_or_reset(path)  # a corrupt file is moved aside with a warning, not an error every run
    if stage is not None:
        metrics = {k: v for k, v in metrics.items() if not k.startswith(f"{stage}.")}
    metrics.update(new)
    atomic_write_json(path, metrics)
    return metrics


def run(stages: list[str] | None = None, profile_name: str | None = None) -> dict:
    """Run ``stages`` (default: ``DEFAULT_STAGES``) in order, and return the merged metrics.

    Bad arguments raise ``ValueError`` before anything runs; a stage that fails raises :class:`StageError`
    naming the stage, with the original exception (and its traceback) chained. A hub profile (``hub``,
    ``hub_smoke``) runs its own stages (``utils.stages.hub``) and writes its own metrics file.
    """
    if (profile_name or os.environ.get("RLHF_PROFILE")) in HUB_PROFILES:
        hub_profile = get_hub_profile(profile_name or os.environ["RLHF_PROFILE"])
        return _run_stages(HUB_STAGES, list(HUB_STAGES), stages, hub_profile, hub_metrics_path(hub_profile))
    return _run_stages(STAGES, DEFAULT_STAGES, stages, get_profile(profile_name), None)


def _run_stages(table: dict, default: tuple | list, stages: list[str] | None, profile, path: Path | None) -> dict:
    stages = list(default) if stages is None else list(stages)
    if not stages:
        raise ValueError(f"no stages given; name one or more of {list(table)}, or leave --stages out to run all")
    unknown = [s for s in stages if s not in table]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(table)}")
    logger.info("profile %s, run seed %d; outputs in %s", profile.name, run_seed(), run_dir())
    metrics = {}
    for stage in stages:
        start = time.perf_counter()
        threads = configure_threads()  # per stage: one thread per idle core, so a busy machine does not stall us
        logger.info("stage %s (%d thread%s) ...", stage, threads, "" if threads == 1 else "s")
        try:
            new = table[stage](profile)
        except Exception as err:
            raise StageError(f"stage {stage!r} failed: {type(err).__name__}: {err}") from err
        metrics = update_metrics({**new, "profile": profile.name, "seed": run_seed()}, stage=stage, path=path)
        logger.info("stage %s done in %.1f s", stage, time.perf_counter() - start)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile", default=None, help="course (default), tiny, or a hub profile: hub (Colab), hub_smoke (CPU smoke)"
    )
    parser.add_argument(
        "--stages",
        nargs="*",
        default=None,
        help=f"stages to run, from {list(STAGES)} (default: {list(DEFAULT_STAGES)})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:  # usage errors: the arguments and the environment, checked before any stage runs
        name = args.profile or os.environ.get("RLHF_PROFILE")
        if name in HUB_PROFILES:
            get_hub_profile(name)
        else:
            get_profile(args.profile)
        configure_threads()
        if args.stages is not None and not args.stages:
            raise ValueError(f"--stages needs at least one stage name from {list(STAGES)}")
    except ValueError as err:
        parser.error(str(err))
    try:
        metrics = run(args.stages, args.profile)
    except StageError as err:  # the whole traceback (file and line of the cause), then one line saying which stage
        logger.exception("%s", err)
        print(f"pipeline: {err}", file=sys.stderr)
        return 1
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
