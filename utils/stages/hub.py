"""The hub profiles' stages: data -> tokenizer -> sft -> rm -> ppo -> eval, on GPT-2 and real text.

``python -m utils.pipeline --profile hub`` (Colab, with internet and a GPU) or ``--profile hub_smoke`` (offline,
a few steps of each stage on a CPU with GPT2Config()-shaped random models). Each stage is a cached artifact
``results/artifacts/hub_<stage>-<hash>/``, keyed by its config, everything upstream of it and the weights'
source ("hub" or "random"), so the course's artifacts are never touched and a random-init run is never
mistaken for a pretrained one. Its metrics go to ``results/hub/<profile>/metrics.json``, beside, not into, the
course's ``metrics.json``.

What runs where, and why:

* ``sft`` and ``rm`` train on the accelerator (``HubModelConfig.device``) under autocast (fp16 on a T4, bf16
  where the GPU has it), with gradient checkpointing, LoRA or QLoRA as configured (utils.hub).
* ``ppo`` and the sampling of ``eval`` run on the CPU, in fp32: they use the course's PPO (utils.ppo) and its
  sampler (utils.rollout), whose tensors and random generators are created on the CPU. Moving them to a GPU is
  a change to those modules, not to this profile.
* The policy, the reward model and PPO's reference share one tokenizer: GPT-2's (or the stand-in) plus a PAD.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerBase

from utils.artifacts import get_or_build, read_jsonl, read_meta, run_dir, write_jsonl
from utils.hub import (
    GPT2_CONTEXT,
    HubTrainConfig,
    add_lora,
    autocast_dtype,
    build_judge,
    build_policy,
    describe_weights,
    encode_with_eos,
    hh_source,
    imdb_source,
    judge_positive,
    lm_batches,
    lm_loss,
    load_hh_pairs,
    load_tokenizer,
    pair_accuracy,
    pair_batches,
    parameter_count,
    pick_device,
    qlora_base,
    resolve_weights,
    review_openings,
    rm_loss,
    sample_continuations,
    sequence_scores,
    split_imdb,
    store_normalisation,
    train_steps,
)
from utils.ppo import PPOTrainer, reward_model_fn
from utils.ppo_logs import write_log
from utils.preference_data import load_imdb
from utils.profiles import HubProfile
from utils.reward_model import build_gpt_reward_model
from utils.seed import set_seed
from utils.sft import qlora_unavailable_reason

SPLITS = ("sft", "rm_train", "rm_test", "prompts_train", "prompts_test")
TRAIN_ACCURACY_PAIRS = 256  # training pairs re-scored for the RM's training accuracy (beside the held-out one)


def metrics_path(profile: HubProfile) -> Path:
    """``results/hub/<profile>/metrics.json`` (under ``results/seed-N/`` for run seed N)."""
    return run_dir() / "hub" / profile.name / "metrics.json"


def _scalars(prefix: str, meta: dict) -> dict:
    return {f"{prefix}.{k}": v for k, v in meta.items() if isinstance(v, (int, float, str, bool))}


# ------------------------------------------------------------------------------------------------
# data: IMDB split into the stages' sets; HH-RLHF loaded and validated
# ------------------------------------------------------------------------------------------------
def data_key(profile: HubProfile) -> dict:
    """The data come from the hub exactly when the weights do (one switch: ``resolve_weights``)."""
    return {"hub_data": profile.data, "weights": resolve_weights(profile.models)}


def hub_data_dir(profile: HubProfile) -> Path:
    config = profile.data

    def build(folder: Path) -> dict:
        online = resolve_weights(profile.models) == "hub"
        reviews = load_imdb(imdb_source(config, folder, online))
        splits = split_imdb(reviews, config)
        for name in SPLITS:
            write_jsonl(folder / f"{name}.jsonl", splits[name])
        meta = {
            "source": "hub" if online else "local slices",
            "imdb_rows": len(reviews),
            "imdb_positive_fraction": sum(r["label"] for r in reviews) / len(reviews),
            **{f"{name}_rows": len(splits[name]) for name in SPLITS},
        }
        if config.hh_rows:
            hh_rows, dropped = load_hh_pairs(hh_source(config, folder, online), config.hh_rows)
            write_jsonl(folder / "hh_pairs.jsonl", hh_rows)
            meta.update(hh_rows=len(hh_rows), hh_rows_dropped=dropped)
        return meta

    return get_or_build("hub_data", data_key(profile), build)


def load_split(profile: HubProfile, name: str) -> list[dict]:
    """Rows of one split: ``sft``, ``prompts_*`` as ``{"text", "label"}``; ``rm_*`` as ``{"chosen", "rejected"}``;
    ``hh_pairs`` as explicit-prompt preference rows."""
    return read_jsonl(hub_data_dir(profile) / f"{name}.jsonl")


def data_metrics(profile: HubProfile) -> dict:
    return _scalars("data", read_meta(hub_data_dir(profile)))


# ------------------------------------------------------------------------------------------------
# tokenizer: GPT-2's, or a stand-in BPE trained on the training texts
# ------------------------------------------------------------------------------------------------
def tokenizer_key(profile: HubProfile) -> dict:
    return {**data_key(profile), "hub_models": profile.models}


def hub_tokenizer_dir(profile: HubProfile) -> Path:
    def build(folder: Path) -> dict:
        weights = resolve_weights(profile.models)
        training = load_split(profile, "sft") + load_split(profile, "prompts_train")
        texts = [r["text"] for r in training] + [t for r in load_split(profile, "rm_train") for t in r.values()]
        tokenizer = load_tokenizer(profile.models, weights, texts)
        tokenizer.save_pretrained(str(folder))
        # How many texts exceed GPT-2's context: the stages cut them (and count it), here we say how many there are.
        reviews = [r["text"] for name in ("sft", "prompts_train", "prompts_test") for r in load_split(profile, name)]
        reviews += [t for name in ("rm_train", "rm_test") for r in load_split(profile, name) for t in r.values()]
        lengths = [len(ids) for ids in tokenizer(reviews, verbose=False)["input_ids"]]
        meta = {
            "weights": weights,
            "vocab_size": len(tokenizer),
            "reviews": len(reviews),
            "review_tokens_max": max(lengths),
            "reviews_over_context": sum(n > GPT2_CONTEXT for n in lengths),
        }
        if profile.data.hh_rows:
            hh = load_split(profile, "hh_pairs")
            hh_texts = [r["prompt"] + r["chosen"] for r in hh]
            hh_lengths = [len(ids) for ids in tokenizer(hh_texts, verbose=False)["input_ids"]]
            meta["hh_chosen_over_context"] = sum(n > GPT2_CONTEXT for n in hh_lengths)
        return meta

    return get_or_build("hub_tokenizer", tokenizer_key(profile), build)


def load_hub_tokenizer(profile: HubProfile) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(hub_tokenizer_dir(profile)))


def tokenizer_metrics(profile: HubProfile) -> dict:
    return _scalars("tokenizer", read_meta(hub_tokenizer_dir(profile)))


# ------------------------------------------------------------------------------------------------
# Training with adapters: one code path for full fine-tuning, LoRA and QLoRA
# ------------------------------------------------------------------------------------------------
def _train(
    profile: HubProfile,
    build: Callable[[], torch.nn.Module],
    config: HubTrainConfig,
    batches,
    loss_fn,
    task_type: str,
    allow_qlora: bool,
) -> tuple[torch.nn.Module, dict]:
    """Build a model with ``build()``, train it on ``batches``, and return it in fp32 on the CPU with any
    adapters merged, plus a report. QLoRA where asked and possible; else LoRA where asked (saying why)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    device = pick_device(profile.models)
    dtype = autocast_dtype(profile.models, device)
    report: dict = {"device": device.type, "precision": str(dtype or torch.float32).replace("torch.", "")}
    use_qlora = config.qlora and allow_qlora and qlora_unavailable_reason() is None
    if config.qlora and not use_qlora:
        report["qlora_skipped"] = "QLoRA is for the SFT stage only" if not allow_qlora else qlora_unavailable_reason()
    use_lora = config.lora or config.qlora
    model = build()
    if use_qlora:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="hub-qlora-") as base_dir:
            model.save_pretrained(base_dir)
            model = qlora_base(Path(base_dir))
    if use_lora:
        model = add_lora(model, config, task_type)
    if not use_qlora:  # a 4-bit model is placed on the GPU when it is loaded
        model = model.to(device)
    if device.type == "cuda" and profile.models.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    report["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    report.update(lora=use_lora, qlora=use_qlora)
    start = time.perf_counter()
    losses = train_steps(model, batches, loss_fn, config, device, dtype)
    report.update(train_seconds=time.perf_counter() - start, steps=len(losses), first_loss=losses[0])
    report.update(last_loss=losses[-1], losses=losses)
    if device.type == "cuda":
        report["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    if use_lora:  # the adapters, onto a fresh full-precision copy of the same base, merged
        adapters = get_peft_model_state_dict(model)
        fresh = add_lora(build(), config, task_type)
        set_peft_model_state_dict(fresh, {k: v.float().cpu() for k, v in adapters.items()})
        model = fresh.merge_and_unload()
    return model.float().cpu().eval(), report


# ------------------------------------------------------------------------------------------------
# sft: GPT-2 fine-tuned as a language model on IMDB reviews (the PPO policy starts here)
# ------------------------------------------------------------------------------------------------
def sft_key(profile: HubProfile) -> dict:
    return {**tokenizer_key(profile), "hub_sft": profile.sft}


def hub_sft_dir(profile: HubProfile) -> Path:
    def build(folder: Path) -> dict:
        tokenizer = load_hub_tokenizer(profile)
        weights = resolve_weights(profile.models)
        texts = [r["text"] for r in load_split(profile, "sft")]
        sequences, cut = encode_with_eos(texts, tokenizer, profile.data.sft_max_tokens, "SFT reviews")
        model, report = _train(
            profile,
            lambda: build_policy(profile.models, tokenizer, weights),
            profile.sft,
            lm_batches(sequences, tokenizer.pad_token_id, profile.sft),
            lm_loss,
            "CAUSAL_LM",
            allow_qlora=True,
        )
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        return {**report, "weights": weights, "parameters": parameter_count(model), "reviews_cut": cut}

    return get_or_build("hub_sft", sft_key(profile), build)


def load_hub_sft(profile: HubProfile) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerBase]:
    folder = hub_sft_dir(profile)
    return GPT2LMHeadModel.from_pretrained(str(folder)).eval(), AutoTokenizer.from_pretrained(str(folder))


def sft_metrics(profile: HubProfile) -> dict:
    return _scalars("sft", read_meta(hub_sft_dir(profile)))


# ------------------------------------------------------------------------------------------------
# rm: GPT-2 + scalar head, Bradley-Terry on (positive review, negative review) pairs
# ------------------------------------------------------------------------------------------------
def rm_key(profile: HubProfile) -> dict:
    return {**sft_key(profile), "hub_rm": profile.rm}


def encoded_pairs(profile: HubProfile, split: str, tokenizer) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(chosen ids, rejected ids) of a split, each review cut to ``rm_max_tokens`` with EOS; and the cut count."""
    rows = load_split(profile, split)
    limit = profile.data.rm_max_tokens
    chosen, cut_chosen = encode_with_eos([r["chosen"] for r in rows], tokenizer, limit, f"RM {split}, chosen")
    rejected, cut_rejected = encode_with_eos([r["rejected"] for r in rows], tokenizer, limit, f"RM {split}, rejected")
    return list(zip(chosen, rejected)), cut_chosen + cut_rejected


def hub_rm_dir(profile: HubProfile) -> Path:
    def build(folder: Path) -> dict:
        lm, tokenizer = load_hub_sft(profile)
        pad = tokenizer.pad_token_id
        train, train_cut = encoded_pairs(profile, "rm_train", tokenizer)
        test, test_cut = encoded_pairs(profile, "rm_test", tokenizer)
        model, report = _train(
            profile,
            lambda: build_gpt_reward_model(lm, pad, seed=profile.rm.seed),
            profile.rm,
            pair_batches(train, pad, profile.rm),
            rm_loss,
            "SEQ_CLS",
            allow_qlora=False,
        )
        report["heldout_accuracy"] = pair_accuracy(model, test, pad)
        report["train_accuracy"] = pair_accuracy(model, train[:TRAIN_ACCURACY_PAIRS], pad)
        reference = [ids for pair in train for ids in pair]  # a score of 0 is an average training review
        report["norm_mean"], report["norm_std"] = store_normalisation(model, sequence_scores(model, reference, pad))
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        return {**report, "reviews_cut": train_cut + test_cut, "heldout_pairs": len(test)}

    return get_or_build("hub_rm", rm_key(profile), build)


def load_hub_reward_model(profile: HubProfile) -> tuple[GPT2ForSequenceClassification, PreTrainedTokenizerBase]:
    folder = hub_rm_dir(profile)
    return GPT2ForSequenceClassification.from_pretrained(str(folder)).eval(), AutoTokenizer.from_pretrained(str(folder))


def rm_metrics(profile: HubProfile) -> dict:
    return _scalars("rm", read_meta(hub_rm_dir(profile)))


# ------------------------------------------------------------------------------------------------
# ppo: our PPO (utils.ppo) from the SFT policy against the reward model, on review openings
# ------------------------------------------------------------------------------------------------
def ppo_key(profile: HubProfile) -> dict:
    return {**rm_key(profile), "hub_ppo": profile.ppo}


def hub_ppo_dir(profile: HubProfile, progress: bool = False) -> Path:
    config = profile.ppo

    def build(folder: Path) -> dict:
        policy, tokenizer = load_hub_sft(profile)
        reward_model, _ = load_hub_reward_model(profile)
        prompts = review_openings(
            [r["text"] for r in load_split(profile, "prompts_train")], tokenizer, profile.data.prompt_tokens
        )
        set_seed(config.seed)
        trainer = PPOTrainer(
            config,
            policy,
            None if config.use_lora else copy.deepcopy(policy),
            reward_model_fn(reward_model.requires_grad_(False)),
            prompts,
            tokenizer.pad_token_id,
            tokenizer.eos_token_id,
            value_model=copy.deepcopy(reward_model) if config.value_model == "model" else None,
        )
        start = time.perf_counter()
        log = trainer.train(progress=progress)
        seconds = time.perf_counter() - start
        trained = trainer.trained_policy()
        trained.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        write_log(log, folder)
        return {
            "device": "cpu",
            "updates": len(log),
            "train_seconds": seconds,
            "episodes_per_second": config.num_updates * config.batch_size / seconds,
            "scores_first_update": log[0]["objective/scores"],
            "scores_last_update": log[-1]["objective/scores"],
            "kl_last_update": log[-1]["objective/kl"],
        }

    return get_or_build("hub_ppo", ppo_key(profile), build)


def load_hub_ppo_policy(profile: HubProfile) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerBase]:
    folder = hub_ppo_dir(profile)
    return GPT2LMHeadModel.from_pretrained(str(folder)).eval(), AutoTokenizer.from_pretrained(str(folder))


def ppo_metrics(profile: HubProfile) -> dict:
    return _scalars("ppo", read_meta(hub_ppo_dir(profile)))


# ------------------------------------------------------------------------------------------------
# eval: the outside judge and the reward model on held-out openings, before and after PPO
# ------------------------------------------------------------------------------------------------
def eval_key(profile: HubProfile) -> dict:
    return {**ppo_key(profile), "hub_eval": profile.evaluation}


@torch.no_grad()
def reward_of_rows(reward_model, rows: list[dict]) -> torch.Tensor:
    """The reward model's normalised score of sampled rows, read as PPO reads it (utils.ppo.reward_model_fn)."""
    score = reward_model_fn(reward_model)
    out = torch.empty(len(rows))
    for length in {len(r["query_response"]) for r in rows}:  # one batch per sampled length
        index = [i for i, r in enumerate(rows) if len(r["query_response"]) == length]
        ids = torch.tensor([rows[i]["query_response"] for i in index])  # (b, P + R)
        mask = torch.tensor([rows[i]["attention_mask"] for i in index])  # (b, P + R)
        out[index] = score(ids, mask, 0)
    return out


def hub_eval_dir(profile: HubProfile) -> Path:
    config = profile.evaluation

    def build(folder: Path) -> dict:
        weights = resolve_weights(profile.models)
        sft_policy, tokenizer = load_hub_sft(profile)
        ppo_policy, _ = load_hub_ppo_policy(profile)
        reward_model, _ = load_hub_reward_model(profile)
        judge, judge_tokenizer = build_judge(profile.models, weights, tokenizer)
        judge = judge.to(pick_device(profile.models))
        texts = [r["text"] for r in load_split(profile, "prompts_test")][: config.num_prompts]
        prompts = review_openings(texts, tokenizer, profile.data.prompt_tokens)
        meta: dict = {"weights": weights, "what_the_numbers_mean": describe_weights(weights), "prompts": len(prompts)}
        samples = []
        for name, policy in (("before", sft_policy), ("after", ppo_policy)):
            rows = sample_continuations(policy, tokenizer, prompts, config)
            positive = judge_positive(judge, judge_tokenizer, [r["prompt"] + r["response"] for r in rows])
            rewards = reward_of_rows(reward_model, rows)
            meta[f"judge_positive_{name}"] = positive.mean().item()
            meta[f"rm_score_{name}"] = rewards.mean().item()
            meta[f"response_tokens_{name}"] = sum(r["response_tokens"] for r in rows) / len(rows)
            samples += [
                {"policy": name, "prompt": r["prompt"], "response": r["response"], "judge_positive": p, "rm_score": s}
                for r, p, s in zip(rows, positive.tolist(), rewards.tolist())
            ]
        # Is the judge any good? Its accuracy on labelled held-out reviews (each cut to its context).
        pairs = load_split(profile, "rm_test")[: config.judge_reviews]
        on_positive = judge_positive(judge, judge_tokenizer, [r["chosen"] for r in pairs])
        on_negative = judge_positive(judge, judge_tokenizer, [r["rejected"] for r in pairs])
        meta["judge_accuracy_on_labelled_reviews"] = (
            torch.cat([on_positive > 0.5, on_negative <= 0.5]).float().mean().item()
        )
        meta["rm_heldout_accuracy"] = read_meta(hub_rm_dir(profile))["heldout_accuracy"]
        write_jsonl(folder / "samples.jsonl", samples)
        return meta

    return get_or_build("hub_eval", eval_key(profile), build)


def eval_metrics(profile: HubProfile) -> dict:
    return _scalars("eval", read_meta(hub_eval_dir(profile)))


# Stage name -> metrics function, in the order the pipeline runs them (``--profile hub --stages ...``).
HUB_STAGES: dict[str, Callable[[HubProfile], dict]] = {
    "data": data_metrics,
    "tokenizer": tokenizer_metrics,
    "sft": sft_metrics,
    "rm": rm_metrics,
    "ppo": ppo_metrics,
    "eval": eval_metrics,
}
