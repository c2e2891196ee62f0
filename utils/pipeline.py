"""The course's main job: data -> tokenizer -> LM -> SFT -> RM -> PPO -> evaluation.

Run it with ``python -m utils.pipeline`` (what ``make run`` does). Every stage is a cached artifact
(see :mod:`utils.artifacts`): a finished stage is loaded, not redone, so an interrupted run resumes
where it stopped, and a notebook that needs, say, the base LM can call :func:`load_base_lm` and get it
whether or not the pipeline ran before. Each stage's measured figures are merged into
``results/metrics.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from utils import review_world as rw
from utils.artifacts import (atomic_write_json, get_or_build, read_jsonl, read_meta, results_dir,
                             write_jsonl)
from utils.decoding import SamplingConfig, generate
from utils.language_model import (build_model, count_parameters, encode_reviews, nll_per_review,
                                  train_lm)
from utils.profiles import Profile, get_profile
from utils.seed import configure_threads, set_seed
from utils.tokenizer import load_tokenizer, train_bpe

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# Stage: data
# ------------------------------------------------------------------------------------------------
DATA_FILES = ("lm_train", "lm_val", "instructions_train", "instructions_test", "preferences_train",
              "preferences_test", "rl_prompts_train", "rl_prompts_test")


def _build_data(profile: Profile, folder: Path) -> dict:
    d, g = profile.data, profile.grammar
    s = d.seed
    datasets = {
        "lm_train": rw.lm_corpus(d.lm_train_size, seed=s + 1, config=g),
        "lm_val": rw.lm_corpus(d.lm_val_size, seed=s + 2, config=g),
        "instructions_train": rw.instruction_pairs(d.instruction_train_size, seed=s + 3, config=g),
        "instructions_test": rw.instruction_pairs(d.instruction_test_size, seed=s + 4, config=g),
        "preferences_train": rw.preference_pairs(d.preference_train_size, seed=s + 5, config=g),
        "preferences_test": rw.preference_pairs(d.preference_test_size, seed=s + 6, config=g),
        "rl_prompts_train": rw.rl_prompts(d.rl_prompt_train_size, seed=s + 7, config=g),
        "rl_prompts_test": rw.rl_prompts(d.rl_prompt_test_size, seed=s + 8, config=g),
    }
    for name, rows in datasets.items():
        write_jsonl(folder / f"{name}.jsonl", rows)
    entropy, stderr = rw.source_entropy(datasets["lm_val"])
    return {"source_entropy_per_review": entropy, "source_entropy_stderr": stderr}


def _data_key(profile: Profile) -> dict:
    return {"data": profile.data, "grammar": profile.grammar}


def data_dir(profile: Profile | None = None) -> Path:
    """Folder of the generated datasets (JSONL in TRL's formats), built on first use."""
    profile = profile or get_profile()
    return get_or_build("data", _data_key(profile), lambda folder: _build_data(profile, folder))


def load_dataset_rows(name: str, profile: Profile | None = None) -> list[dict]:
    """Rows of one generated dataset, e.g. ``load_dataset_rows("preferences_train")``."""
    if name not in DATA_FILES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATA_FILES)}")
    return read_jsonl(data_dir(profile) / f"{name}.jsonl")


# ------------------------------------------------------------------------------------------------
# Stage: tokenizer
# ------------------------------------------------------------------------------------------------
def _tokenizer_key(profile: Profile) -> dict:
    return {"tokenizer": profile.tokenizer, **_data_key(profile)}


def tokenizer_dir(profile: Profile | None = None) -> Path:
    profile = profile or get_profile()

    def build(folder: Path) -> dict:
        n = profile.tokenizer.corpus_size
        reviews = [r["text"] for r in load_dataset_rows("lm_train", profile)[:n]]
        instructions = [r["prompt"] + r["completion"] for r in load_dataset_rows("instructions_train", profile)[:n]]
        tokenizer = train_bpe(reviews + instructions, profile.tokenizer.vocab_size, profile.tokenizer.min_frequency)
        tokenizer.save_pretrained(str(folder))
        return {"vocab_size": len(tokenizer)}

    return get_or_build("tokenizer", _tokenizer_key(profile), build)


def load_course_tokenizer(profile: Profile | None = None):
    """The course's BPE tokenizer (``PreTrainedTokenizerFast``), trained on first use."""
    return load_tokenizer(tokenizer_dir(profile))


# ------------------------------------------------------------------------------------------------
# Stage: base language model
# ------------------------------------------------------------------------------------------------
def _lm_key(profile: Profile) -> dict:
    return {**_tokenizer_key(profile), "lm": profile.lm, "lm_train": profile.lm_train}


def grammatical_fraction(model, tokenizer, n: int, seed: int, max_new_tokens: int = 96,
                         temperature: float = 1.0) -> tuple[float, list[str]]:
    """Share of ``n`` free samples (from BOS, pure sampling) that the review grammar accepts."""
    set_seed(seed)
    model.eval()
    input_ids = torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long)
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    generator = torch.Generator().manual_seed(seed)
    sequences = generate(model, input_ids, config=config, generator=generator)
    texts = tokenizer.batch_decode(sequences, skip_special_tokens=True)
    return sum(rw.is_grammatical(t) for t in texts) / n, texts


def base_lm_dir(profile: Profile | None = None, progress: bool = True) -> Path:
    profile = profile or get_profile()

    def build(folder: Path) -> dict:
        tokenizer = load_course_tokenizer(profile)
        train = encode_reviews([r["text"] for r in load_dataset_rows("lm_train", profile)], tokenizer)
        val_rows = load_dataset_rows("lm_val", profile)
        val = encode_reviews([r["text"] for r in val_rows], tokenizer)
        model = build_model(profile.lm, tokenizer, seed=profile.lm_train.seed)
        start = time.perf_counter()
        log = train_lm(model, train, val, profile.lm_train, progress=progress)
        seconds = time.perf_counter() - start
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        atomic_write_json(folder / "train_log.json", log)
        fraction, samples = grammatical_fraction(model, tokenizer, profile.grammar_samples,
                                                 seed=profile.lm_train.seed)
        write_jsonl(folder / "samples.jsonl", [{"text": t, "grammatical": rw.is_grammatical(t)} for t in samples])
        return {
            "params": count_parameters(model),
            "train_seconds": seconds,
            "val_nll_per_review": nll_per_review(model, val, tokenizer.pad_token_id),
            "source_entropy_per_review": rw.source_entropy(val_rows)[0],
            "grammatical_fraction": fraction,
        }

    return get_or_build("lm", _lm_key(profile), build)


def load_base_lm(profile: Profile | None = None):
    """(model, tokenizer) of the trained base LM, training it first if needed (about 3 minutes)."""
    from transformers import GPT2LMHeadModel

    folder = base_lm_dir(profile)
    return GPT2LMHeadModel.from_pretrained(str(folder)).eval(), load_tokenizer(folder)


# ------------------------------------------------------------------------------------------------
# Running stages, metrics
# ------------------------------------------------------------------------------------------------
def _data_stage(profile: Profile) -> dict:
    meta = read_meta(data_dir(profile))
    return {"data.source_entropy_per_review": meta["source_entropy_per_review"]}


def _tokenizer_stage(profile: Profile) -> dict:
    return {"tokenizer.vocab_size": read_meta(tokenizer_dir(profile))["vocab_size"]}


def _lm_stage(profile: Profile) -> dict:
    return {f"lm.{k}": v for k, v in read_meta(base_lm_dir(profile)).items()}


# The later stages live in their own modules, which import this one for the loaders above; importing
# them lazily keeps the dependency one-way.
def _sft_stage(profile: Profile) -> dict:
    from utils.sft import sft_stage

    return sft_stage(profile)


def _rm_stage(profile: Profile) -> dict:
    from utils.reward_model import rm_stage

    return rm_stage(profile)


def _ppo_stage(profile: Profile) -> dict:
    from utils.ppo import ppo_stage

    return ppo_stage(profile)


def _eval_stage(profile: Profile) -> dict:
    from utils.evaluation import eval_stage

    return eval_stage(profile)


# Stage name -> function returning its metrics, in the order the pipeline runs them.
STAGES: dict[str, Callable[[Profile], dict]] = {
    "data": _data_stage,
    "tokenizer": _tokenizer_stage,
    "lm": _lm_stage,
    "sft": _sft_stage,
    "rm": _rm_stage,
    "ppo": _ppo_stage,
    "eval": _eval_stage,
}


# What `make run` runs: every stage, in order (each one loads the cached artifacts of the ones before).
DEFAULT_STAGES = tuple(STAGES)


def metrics_path() -> Path:
    return results_dir() / "metrics.json"


def update_metrics(new: dict, stage: str | None = None) -> dict:
    """Merge ``new`` into ``results/metrics.json`` (atomically) and return the whole file.

    With ``stage``, the file's old ``<stage>.*`` keys are dropped first, so a key that a stage no longer
    reports (say, after a config change) does not linger beside the fresh ones.
    """
    path = metrics_path()
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    if stage is not None:
        metrics = {k: v for k, v in metrics.items() if not k.startswith(f"{stage}.")}
    metrics.update(new)
    atomic_write_json(path, metrics)
    return metrics


def run(stages: list[str] | None = None, profile_name: str | None = None) -> dict:
    """Run ``stages`` (default: ``DEFAULT_STAGES``) in order, and return the merged metrics."""
    profile = get_profile(profile_name)
    stages = stages or list(DEFAULT_STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    configure_threads()
    metrics = {}
    for stage in stages:
        start = time.perf_counter()
        logger.info("stage %s ...", stage)
        metrics = update_metrics({**STAGES[stage](profile), "profile": profile.name}, stage=stage)
        logger.info("stage %s done in %.1f s", stage, time.perf_counter() - start)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="course (default) or tiny")
    parser.add_argument("--stages", nargs="*", default=None,
                        help=f"stages to run, from {list(STAGES)} (default: {list(DEFAULT_STAGES)})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        metrics = run(args.stages, args.profile)
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
