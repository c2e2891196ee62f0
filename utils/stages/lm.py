"""Stage ``lm``: the base language model, trained on the review corpus against the source-entropy floor."""

from __future__ import annotations

import time
from pathlib import Path

from transformers import GPT2LMHeadModel

from utils import review_world as rw
from utils.artifacts import atomic_write_json, get_or_build, read_meta, write_jsonl
from utils.language_model import build_model, count_parameters, encode_reviews, nll_per_review, train_lm
from utils.lm_analysis import grammatical_fraction
from utils.profiles import Profile
from utils.stages.data import load_course_tokenizer, load_dataset_rows, tokenizer_key
from utils.stages.profile import resolve_profile
from utils.tokenizer import load_tokenizer


def lm_key(profile: Profile) -> dict:
    """What the base LM depends on: the tokenizer (and its data), the architecture and the training run."""
    return {**tokenizer_key(profile), "lm": profile.lm, "lm_train": profile.lm_train}


def base_lm_dir(profile: Profile | None = None, progress: bool = True) -> Path:
    """Folder of the trained base LM, its tokenizer, training log and free samples, built on first use."""
    profile = resolve_profile(profile)

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
        fraction, samples = grammatical_fraction(model, tokenizer, profile.grammar_samples, seed=profile.lm_train.seed)
        write_jsonl(folder / "samples.jsonl", [{"text": t, "grammatical": rw.is_grammatical(t)} for t in samples])
        return {
            "params": count_parameters(model),
            "train_seconds": seconds,
            "val_nll_per_review": nll_per_review(model, val, tokenizer.pad_token_id),
            "source_entropy_per_review": rw.source_entropy(val_rows)[0],
            "grammatical_fraction": fraction,
        }

    return get_or_build("lm", lm_key(profile), build)


def load_base_lm(profile: Profile | None = None):
    """(model, tokenizer) of the trained base LM, training it first if needed (about 3 minutes)."""
    folder = base_lm_dir(profile)
    return GPT2LMHeadModel.from_pretrained(str(folder)).eval(), load_tokenizer(folder)


def lm_metrics(profile: Profile) -> dict:
    """Stage ``lm``: builds (or loads) the base LM; its size, training time, NLL and grammar, as ``lm.*``."""
    return {f"lm.{k}": v for k, v in read_meta(base_lm_dir(profile)).items()}
