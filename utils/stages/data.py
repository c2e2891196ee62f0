"""Stages ``data`` and ``tokenizer``: the review world's datasets, and the BPE tokenizer trained on them.

The datasets are JSONL files in TRL's formats (``load_dataset_rows("preferences_train")``); the
tokenizer is trained on the language-model reviews and the instruction rows, so that every later
stage shares its vocabulary.
"""

from __future__ import annotations

from pathlib import Path

from utils import review_world as rw
from utils.artifacts import get_or_build, read_jsonl, read_meta, write_jsonl
from utils.profiles import Profile
from utils.stages.profile import resolve_profile
from utils.tokenizer import load_tokenizer, train_bpe

DATA_FILES = (
    "lm_train",
    "lm_val",
    "instructions_train",
    "instructions_test",
    "preferences_train",
    "preferences_test",
    "rl_prompts_train",
    "rl_prompts_test",
)


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def data_key(profile: Profile) -> dict:
    """What the datasets depend on: their sizes and seed, and the grammar that generates them."""
    return {"data": profile.data, "grammar": profile.grammar}


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


def data_dir(profile: Profile | None = None) -> Path:
    """Folder of the generated datasets (JSONL in TRL's formats), built on first use."""
    profile = resolve_profile(profile)
    return get_or_build("data", data_key(profile), lambda folder: _build_data(profile, folder))


def load_dataset_rows(name: str, profile: Profile | None = None) -> list[dict]:
    """Rows of one generated dataset, e.g. ``load_dataset_rows("preferences_train")``."""
    if name not in DATA_FILES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATA_FILES)}")
    return read_jsonl(data_dir(profile) / f"{name}.jsonl")


def annotator_config(profile: Profile) -> rw.AnnotatorConfig:
    """The simulated annotator that labelled ``preferences_test`` (default noise and length bias).

    ``rw.preference_pairs`` labels with ``AnnotatorConfig(seed=<dataset seed> + 2)``, and the test pairs
    are generated with seed ``data.seed + 6``. The seed only drives the coin flips, not the preference
    probabilities, so the Bayes-optimal accuracy of any dataset can be computed with this config.
    """
    return rw.AnnotatorConfig(seed=profile.data.seed + 8)


def data_metrics(profile: Profile) -> dict:
    """Stage ``data``: builds (or loads) the datasets; the source entropy, as ``data.*``."""
    return {"data.source_entropy_per_review": read_meta(data_dir(profile))["source_entropy_per_review"]}


# ------------------------------------------------------------------------------------------------
# tokenizer
# ------------------------------------------------------------------------------------------------
def tokenizer_key(profile: Profile) -> dict:
    """What the tokenizer depends on: its config and the datasets it is trained on."""
    return {"tokenizer": profile.tokenizer, **data_key(profile)}


def tokenizer_dir(profile: Profile | None = None) -> Path:
    """Folder of the course's BPE tokenizer, trained on first use."""
    profile = resolve_profile(profile)

    def build(folder: Path) -> dict:
        n = profile.tokenizer.corpus_size
        reviews = [r["text"] for r in load_dataset_rows("lm_train", profile)[:n]]
        instructions = [r["prompt"] + r["completion"] for r in load_dataset_rows("instructions_train", profile)[:n]]
        tokenizer = train_bpe(reviews + instructions, profile.tokenizer.vocab_size, profile.tokenizer.min_frequency)
        tokenizer.save_pretrained(str(folder))
        return {"vocab_size": len(tokenizer)}

    return get_or_build("tokenizer", tokenizer_key(profile), build)


def load_course_tokenizer(profile: Profile | None = None):
    """The course's BPE tokenizer (``PreTrainedTokenizerFast``), trained on first use."""
    return load_tokenizer(tokenizer_dir(profile))


def tokenizer_metrics(profile: Profile) -> dict:
    """Stage ``tokenizer``: builds (or loads) the tokenizer; its vocabulary size, as ``tokenizer.*``."""
    return {"tokenizer.vocab_size": read_meta(tokenizer_dir(profile))["vocab_size"]}
