"""Stage ``rm``: the pipeline's reward model (GPT-style head on the SFT model, our Bradley-Terry loop,
normalised scores), with TRL's ``RewardTrainer`` and a BERT-style encoder beside it if configured."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

from transformers import GPT2ForSequenceClassification, PreTrainedTokenizerBase

from utils import review_world as rw
from utils.artifacts import atomic_write_json, get_or_build, read_meta, write_jsonl
from utils.profiles import Profile
from utils.reward_model import (
    RewardModelConfig,
    build_encoder_reward_model,
    build_gpt_reward_model,
    build_trl_reward_trainer,
    encode_pairs,
    evaluate_pairs,
    evaluate_reward_model,
    set_normalisation,
    train_reward_model,
    trl_step_losses,
)
from utils.stages.data import annotator_config, load_dataset_rows
from utils.stages.lm import lm_key, load_base_lm
from utils.stages.profile import resolve_profile
from utils.stages.sft import load_sft_model, sft_key
from utils.tokenizer import load_tokenizer
from utils.trl_helpers import quiet_training

TRAIN_ACCURACY_PAIRS = 4_000
"""Training accuracy (beside the held-out one, to show over-fitting) is measured on this many training pairs:
as many as the held-out set, so both have the same sampling error (about 0.6 points), at a quarter of the
cost of scoring all 16,000 (a minute on 2 cores)."""


def rm_key(profile: Profile) -> dict:
    """What the RM artifact depends on: the model it starts from (and all upstream of it) and our config."""
    upstream = sft_key(profile) if profile.rm.init == "sft" else lm_key(profile)
    return {**upstream, "rm": profile.rm}


def defective_rows(profile: Profile) -> tuple[list[dict], list[dict]]:
    """(train, held-out) pairs with one broken completion (``rm.defective_pairs`` and
    ``rm.defective_heldout_pairs`` of them), from seeds of the RM's own: the datasets use data.seed + 1 ... 11."""
    config = profile.rm
    annotator = rw.AnnotatorConfig(seed=config.seed + 103)
    train = rw.defective_pairs(config.defective_pairs, config.seed + 100, annotator, profile.grammar)
    held_out = rw.defective_pairs(config.defective_heldout_pairs, config.seed + 200, annotator, profile.grammar)
    return train, held_out


def _initial_lm(profile: Profile):
    return load_sft_model(profile) if profile.rm.init == "sft" else load_base_lm(profile)


def rm_dir(profile: Profile | None = None) -> Path:
    """Folder of the pipeline's reward model (GPT-style, our loop, normalised), built on first use."""
    profile = resolve_profile(profile)
    config: RewardModelConfig = profile.rm

    def build(folder: Path) -> dict:
        human_rows = load_dataset_rows("preferences_train", profile)
        test_rows = load_dataset_rows("preferences_test", profile)
        broken_train, broken_test = defective_rows(profile)
        train_rows = human_rows + broken_train
        lm, tokenizer = _initial_lm(profile)
        pad = tokenizer.pad_token_id
        train, test = encode_pairs(train_rows, tokenizer), encode_pairs(test_rows, tokenizer)
        annotator = annotator_config(profile)
        # Normalised on the preference data's reviews alone: a score of 0 is an average review.
        reference = [r["prompt"] + r[k] for r in human_rows for k in ("chosen", "rejected")]
        reference = reference[: config.normalisation_texts]

        model = build_gpt_reward_model(lm, pad, seed=config.seed)
        start = time.perf_counter()
        log = train_reward_model(model, train, test, pad, config)
        meta: dict = {
            "train_seconds": time.perf_counter() - start,
            "train_accuracy": evaluate_pairs(model, train[:TRAIN_ACCURACY_PAIRS], pad)["accuracy"],
        }
        if broken_test:
            meta["defective_heldout_accuracy"] = evaluate_pairs(model, encode_pairs(broken_test, tokenizer), pad)[
                "accuracy"
            ]
        meta["norm_mean"], meta["norm_std"] = set_normalisation(model, tokenizer, reference)
        metrics, details = evaluate_reward_model(model, tokenizer, test_rows, annotator, config.calibration_bins)
        meta.update(metrics)
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        logs = {"ours": log}
        atomic_write_json(folder / "calibration.json", details["reliability"])
        write_jsonl(folder / "heldout_scores.jsonl", details["texts"])

        if config.train_trl:  # the same model, data and schedule, trained by TRL
            trl_model = build_gpt_reward_model(lm, pad, seed=config.seed)
            with tempfile.TemporaryDirectory(prefix="rm-trl-") as output_dir:
                trainer = build_trl_reward_trainer(trl_model, tokenizer, train_rows, config, output_dir)
                start = time.perf_counter()
                with quiet_training():
                    trainer.train()
                meta["trl_train_seconds"] = time.perf_counter() - start
            logs["trl"] = trl_step_losses(trainer)
            meta["trl_heldout_accuracy"] = evaluate_pairs(trainer.model, test, pad)["accuracy"]

        if config.train_encoder:  # BERT-style CLS head, from scratch
            encoder = build_encoder_reward_model(config, tokenizer, lm.config.n_positions, seed=config.seed)
            start = time.perf_counter()
            encoder_schedule = dataclasses.replace(
                config,
                steps=config.encoder_steps,
                batch_size=config.encoder_batch_size,
                warmup_steps=min(config.warmup_steps, config.encoder_steps - 1),
            )
            logs["encoder"] = train_reward_model(encoder, train, test, pad, encoder_schedule, lr=config.encoder_lr)
            meta["encoder_train_seconds"] = time.perf_counter() - start
            meta["encoder_heldout_accuracy"] = evaluate_pairs(encoder, test, pad)["accuracy"]
            meta["encoder_train_accuracy"] = evaluate_pairs(encoder, train[:TRAIN_ACCURACY_PAIRS], pad)["accuracy"]
        atomic_write_json(folder / "train_log.json", logs)
        return meta

    return get_or_build("rm", rm_key(profile), build)


def load_reward_model(profile: Profile | None = None) -> tuple[GPT2ForSequenceClassification, PreTrainedTokenizerBase]:
    """(model, tokenizer) of the pipeline's reward model, training it first if needed.

    ``score_texts(model, tokenizer, texts)`` gives its normalised rewards (statistics stored in the config).
    """
    folder = rm_dir(profile)
    return GPT2ForSequenceClassification.from_pretrained(str(folder)).eval(), load_tokenizer(folder)


def rm_metrics(profile: Profile) -> dict:
    """Stage ``rm``: builds (or loads) the reward model; its measurements, as ``rm.*``."""
    return {f"rm.{k}": v for k, v in read_meta(rm_dir(profile)).items()}
