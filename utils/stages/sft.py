"""Stage ``sft``: the base LM instruction-tuned with TRL (full fine-tuning; LoRA beside it if configured),
evaluated on held-out instructions and for forgetting."""

from __future__ import annotations

from pathlib import Path

from transformers import GPT2LMHeadModel, PreTrainedTokenizerBase

from utils.artifacts import atomic_write_json, get_or_build, read_meta, write_jsonl
from utils.language_model import encode_reviews, nll_per_review
from utils.profiles import Profile
from utils.seed import set_seed
from utils.sft import (
    LORA_ADAPTER_DIR,
    SFTConfig,
    completion_nll,
    evaluate_instructions,
    first_token_nll,
    qlora_unavailable_reason,
    train_sft,
)
from utils.stages.data import load_dataset_rows
from utils.stages.lm import lm_key, load_base_lm
from utils.stages.profile import resolve_profile
from utils.tokenizer import load_tokenizer


def sft_key(profile: Profile) -> dict:
    """What the SFT artifact depends on: everything upstream (data, tokenizer, base LM) and our config."""
    return {**lm_key(profile), "sft": profile.sft}


def sft_dir(profile: Profile | None = None) -> Path:
    """Folder of the instruction-tuned model (full fine-tuning) and its evaluation, built on first use."""
    profile = resolve_profile(profile)
    config: SFTConfig = profile.sft

    def build(folder: Path) -> dict:
        train_rows = load_dataset_rows("instructions_train", profile)
        test_rows = load_dataset_rows("instructions_test", profile)
        reviews = [r["text"] for r in load_dataset_rows("lm_val", profile)]
        base, tokenizer = load_base_lm(profile)
        val = encode_reviews(reviews, tokenizer)
        evaluate = dict(max_new_tokens=config.eval_max_new_tokens, batch_size=config.eval_batch_size)
        meta = {
            "base_review_nll": nll_per_review(base, val, tokenizer.pad_token_id),
            "base_first_token_nll": first_token_nll(base, val),
            "base_completion_nll": completion_nll(base, tokenizer, test_rows),
        }

        set_seed(config.seed)
        model, report = train_sft(base, tokenizer, train_rows, config)
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        metrics, records = evaluate_instructions(model, tokenizer, test_rows, **evaluate)
        write_jsonl(folder / "test_outputs.jsonl", records)
        meta.update(metrics)
        meta.update(
            train_seconds=report["train_seconds"],
            steps=report["steps"],
            completion_nll=completion_nll(model, tokenizer, test_rows),
            review_nll=nll_per_review(model, val, tokenizer.pad_token_id),
        )
        meta["forgetting_nll_delta"] = meta["review_nll"] - meta["base_review_nll"]
        meta["first_token_nll"] = first_token_nll(model, val)
        # The part of the forgetting that is not the (never trained) first token of a review.
        meta["forgetting_nll_delta_after_first_token"] = meta["forgetting_nll_delta"] - (
            meta["first_token_nll"] - meta["base_first_token_nll"]
        )
        logs = {"full": report["log"]}

        if config.train_lora:
            lora_base, _ = load_base_lm(profile)
            lora_model, lora_report = train_sft(lora_base, tokenizer, train_rows, config, lora=True)
            lora_model.save_pretrained(str(folder / LORA_ADAPTER_DIR))  # the adapter only (a few hundred kB)
            merged = lora_model.merge_and_unload()  # W + (alpha/r) B A: a plain GPT-2 again, as fast as the base
            lora_metrics, lora_records = evaluate_instructions(merged, tokenizer, test_rows, **evaluate)
            write_jsonl(folder / "test_outputs_lora.jsonl", lora_records)
            meta.update({f"lora_{k}": v for k, v in lora_metrics.items()})
            meta.update(
                lora_train_seconds=lora_report["train_seconds"],
                lora_trainable_share=lora_report["trainable_share"],
                lora_trainable_params=lora_report["trainable_params"],
                lora_completion_nll=completion_nll(merged, tokenizer, test_rows),
                lora_forgetting_nll_delta=nll_per_review(merged, val, tokenizer.pad_token_id) - meta["base_review_nll"],
            )
            logs["lora"] = lora_report["log"]
        meta["qlora_available"] = qlora_unavailable_reason() is None
        atomic_write_json(folder / "train_log.json", logs)
        return meta

    return get_or_build("sft", sft_key(profile), build)


def load_sft_model(profile: Profile | None = None) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of the instruction-tuned LM (full fine-tuning), training it first if needed."""
    folder = sft_dir(profile)
    return GPT2LMHeadModel.from_pretrained(str(folder)).eval(), load_tokenizer(folder)


def sft_metrics(profile: Profile) -> dict:
    """Stage ``sft``: builds (or loads) the SFT artifact; its measurements, as ``sft.*``."""
    return {f"sft.{k}": v for k, v in read_meta(sft_dir(profile)).items()}
