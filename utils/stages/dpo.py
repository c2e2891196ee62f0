"""Stage ``dpo``: the SFT policy trained with TRL's DPOTrainer on the reward model's human-labelled training pairs
(no reward model, no sampling), measured like every policy stage; and a beta sweep beside it (not in the pipeline).

Besides the held-out measurement of :func:`utils.stages.policy_eval.evaluate_against_sft`, the artifact holds
DPO's own view of preference pairs: the implicit reward beta * log pi/pi_ref of both completions of held-out
pairs it never saw (``heldout_pairs.jsonl``), beside the reward model's scores and the gold rewards of the same
completions, so that notebook 12 can compare DPO's "reward model" with the real one without recomputing.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path

from transformers import GPT2LMHeadModel

from utils import review_world as rw
from utils.artifacts import atomic_write_json, get_or_build, read_jsonl, read_meta, write_jsonl
from utils.dpo import DPOSweepConfig, DPOTrainConfig, implicit_rewards, preference_rows, train_dpo
from utils.profiles import Profile
from utils.reward_model import score_texts
from utils.seed import set_seed
from utils.stages.data import load_dataset_rows
from utils.stages.policy_eval import (
    POLICY_METRIC_KEYS,
    after_metrics,
    evaluate_against_sft,
    heldout_evaluation_seed,
)
from utils.stages.ppo import ppo_key
from utils.stages.profile import resolve_profile
from utils.stages.rm import load_reward_model
from utils.stages.sft import load_sft_model
from utils.tokenizer import load_tokenizer

# The dpo.* metrics the pipeline reports (the artifact's manifest holds more).
METRIC_KEYS = (
    *POLICY_METRIC_KEYS,
    "implicit_accuracy_heldout",
    "train_seconds",
    "pairs_per_second",
)


def dpo_key(profile: Profile) -> dict:
    """What the ``dpo`` artifact depends on: the SFT policy and the data (training), the reward model and the
    held-out measurement's sampling (PPO's, see ``ppo_key``: every policy is measured the same way), our config."""
    return {**ppo_key(profile), "dpo": profile.dpo}


def heldout_pair_rows(profile: Profile, n: int) -> list[dict]:
    """The first ``n`` held-out preference pairs (``preferences_test``): pairs no policy or RM trained on."""
    return load_dataset_rows("preferences_test", profile)[:n]


def _pair_views(policy, reference, reward_model, tokenizer, rows: list[dict], beta: float) -> list[dict]:
    """Per pair: DPO's implicit rewards, the RM's normalised scores and the gold rewards of both completions."""
    chosen, rejected = implicit_rewards(policy, reference, tokenizer, rows, beta)
    texts = [r["prompt"] + r[k] for r in rows for k in ("chosen", "rejected")]
    scores = score_texts(reward_model, tokenizer, texts).reshape(-1, 2)
    return [
        {
            "prompt": r["prompt"],
            "chosen": r["chosen"],
            "rejected": r["rejected"],
            "implicit_chosen": float(chosen[i]),
            "implicit_rejected": float(rejected[i]),
            "rm_chosen": float(scores[i, 0]),
            "rm_rejected": float(scores[i, 1]),
            "gold_chosen": rw.gold_reward(r["prompt"] + r["chosen"]),
            "gold_rejected": rw.gold_reward(r["prompt"] + r["rejected"]),
            "words_chosen": rw.word_count(r["chosen"]),
            "words_rejected": rw.word_count(r["rejected"]),
        }
        for i, r in enumerate(rows)
    ]


def pair_accuracies(views: list[dict]) -> dict[str, float]:
    """Share of the pairs where DPO's implicit reward, the RM, and the gold reward agree with the label."""
    n = len(views)
    return {
        "implicit_accuracy": sum(v["implicit_chosen"] > v["implicit_rejected"] for v in views) / n,
        "rm_accuracy": sum(v["rm_chosen"] > v["rm_rejected"] for v in views) / n,
        "gold_accuracy": sum(v["gold_chosen"] > v["gold_rejected"] for v in views) / n,
    }


def dpo_dir(profile: Profile | None = None) -> Path:
    """Folder of the DPO-trained policy, TRL's log, its held-out samples and pair views, built on first use."""
    profile = resolve_profile(profile)
    config: DPOTrainConfig = profile.dpo

    def build(folder: Path) -> dict:
        policy, tokenizer = load_sft_model(profile)
        reference = copy.deepcopy(policy).requires_grad_(False)
        reward_model, _ = load_reward_model(profile)
        train_rows = load_dataset_rows("preferences_train", profile)  # the human-labelled pairs of the RM

        set_seed(config.seed)
        trained, report = train_dpo(policy, reference, tokenizer, train_rows, config)
        after, samples = evaluate_against_sft(trained, profile, reference=reference, reward_model=reward_model)

        used = preference_rows(train_rows, config.pairs, tokenizer, config.max_completion_tokens)
        views = _pair_views(trained, reference, reward_model, tokenizer, heldout_pair_rows(profile, 1_000), config.beta)
        train_views = _pair_views(trained, reference, reward_model, tokenizer, used[:1_000], config.beta)

        trained.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        atomic_write_json(folder / "train_log.json", report["log"])
        write_jsonl(folder / "samples_after.jsonl", samples)
        write_jsonl(folder / "heldout_pairs.jsonl", views)
        meta = after_metrics(after)
        meta.update({f"{k}_heldout": v for k, v in pair_accuracies(views).items()})
        meta.update({f"{k}_train": v for k, v in pair_accuracies(train_views).items()})
        meta.update({k: report[k] for k in ("train_seconds", "pairs_per_second", "steps", "pairs")})
        return meta

    return get_or_build("dpo", dpo_key(profile), build)


def load_dpo_policy(profile: Profile | None = None):
    """(model, tokenizer) of the DPO-trained policy, training it first if needed."""
    folder = dpo_dir(profile)
    return GPT2LMHeadModel.from_pretrained(str(folder)).eval(), load_tokenizer(folder)


def load_dpo_pairs(profile: Profile | None = None) -> list[dict]:
    """The held-out pairs as DPO, the reward model and the gold reward see them (see :func:`_pair_views`)."""
    return read_jsonl(dpo_dir(profile) / "heldout_pairs.jsonl")


def dpo_metrics(profile: Profile) -> dict:
    """Stage ``dpo``: builds (or loads) the DPO policy; its held-out numbers, as ``dpo.*``."""
    meta = read_meta(dpo_dir(profile))
    return {f"dpo.{k}": meta[k] for k in METRIC_KEYS}


# ------------------------------------------------------------------------------------------------
# The beta sweep (notebook 12; built on first use, not part of the pipeline)
# ------------------------------------------------------------------------------------------------
def dpo_sweep_key(profile: Profile) -> dict:
    return {**ppo_key(profile), "dpo": profile.dpo, "dpo_sweep": profile.dpo_sweep}


def dpo_sweep_dir(profile: Profile | None = None) -> Path:
    """Folder of the beta sweep: one short DPO run per beta (the stage's config otherwise), each measured on
    the first held-out prompts; ``sweep.json`` holds one record per beta."""
    profile = resolve_profile(profile)
    sweep: DPOSweepConfig = profile.dpo_sweep

    def build(folder: Path) -> dict:
        _, tokenizer = load_sft_model(profile)
        reference, _ = load_sft_model(profile)
        reference.requires_grad_(False)
        reward_model, _ = load_reward_model(profile)
        train_rows = load_dataset_rows("preferences_train", profile)
        heldout = heldout_pair_rows(profile, sweep.heldout_pairs)
        prompts = sweep.eval_prompts
        short_eval = dataclasses.replace(profile.evaluation, num_prompts=prompts)
        measured = dataclasses.replace(profile, evaluation=short_eval)
        evaluate = functools.partial(evaluate_against_sft, profile=measured, reference=reference)
        records = []
        for beta in sweep.betas:
            config = dataclasses.replace(profile.dpo, beta=beta, pairs=sweep.pairs)
            policy, _ = load_sft_model(profile)
            set_seed(config.seed)
            trained, report = train_dpo(policy, reference, tokenizer, train_rows, config)
            means, _ = evaluate(trained, reward_model=reward_model)
            views = _pair_views(trained, reference, reward_model, tokenizer, heldout, beta)
            records.append(
                {
                    "beta": beta,
                    **after_metrics(means),
                    **{f"{k}_heldout": v for k, v in pair_accuracies(views).items()},
                    "train_seconds": report["train_seconds"],
                    "log": report["log"],
                }
            )
        atomic_write_json(folder / "sweep.json", records)
        return {"betas": list(sweep.betas), "seed": heldout_evaluation_seed(profile)}

    return get_or_build("dpo_sweep", dpo_sweep_key(profile), build)
