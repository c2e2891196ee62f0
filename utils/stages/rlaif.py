"""Stage ``rlaif``: AI feedback from a written constitution, measured, then trained on.

1. the constitution's critics learn from data the principles let us make without gold (intact vs broken
   reviews; "Write a positive/negative review" rows): :func:`utils.constitution.train_labeller`;
2. the labeller labels the reward model's preference pairs, ignoring the annotators' choice; its labels are
   measured against gold and against the annotators (agreement, length bias), and on held-out pairs with one
   broken completion (does it pick the intact one?);
3. DPO from the SFT policy on the AI labels of the first ``train_pairs`` pairs (plus broken-vs-intact pairs),
   and, as the baseline, the same DPO run on the annotators' labels of the same pairs; both policies are
   measured by :func:`utils.stages.policy_eval.evaluate_against_sft`, as every policy stage is.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
from transformers import GPT2LMHeadModel

from utils.artifacts import atomic_write_json, get_or_build, read_meta, write_jsonl
from utils.constitution import (
    RLAIFConfig,
    label_report,
    pair_texts,
    picks_intact,
    train_labeller,
)
from utils.dpo import train_dpo
from utils.profiles import Profile
from utils.seed import set_seed
from utils.stages.data import load_dataset_rows
from utils.stages.policy_eval import after_metrics, evaluate_against_sft
from utils.stages.profile import resolve_profile
from utils.stages.rm import defective_rows, load_reward_model, rm_key
from utils.stages.sft import load_sft_model
from utils.tokenizer import load_tokenizer

POLICY_KEYS = (
    "gold_reward_after",
    "kl_to_ref",
    "positive_fraction_after",
    "grammatical_fraction_after",
    "length_tokens_after",
    "train_seconds",
)
"""What the stage reports of each DPO policy (the AI one as ``rlaif.<key>``, the human one as
``rlaif.human.<key>``)."""


LABEL_KEYS = (
    "agreement_gold",
    "agreement_human",
    "picks_longer",
    "gold_picks_longer",
    "longer_when_gold_prefers_shorter",
    "shorter_when_gold_prefers_longer",
)
"""What the stage reports of the AI labels (as ``rlaif.label_<key>``; see :func:`utils.constitution.label_report`)."""


def rlaif_key(profile: Profile) -> dict:
    """What the artifact depends on: the SFT model, data and reward model (the proxy every policy is measured
    with; its key holds the SFT's and the data's), the measurement's sampling, and our config."""
    evaluation = profile.evaluation
    sampling = {
        "temperature": evaluation.temperature or profile.ppo.temperature,
        "max_new_tokens": evaluation.max_new_tokens or profile.ppo.response_length,
        "seed": profile.ppo.seed,
    }
    return {**rm_key(profile), "evaluation_sampling": sampling, "rlaif": profile.rlaif}


def training_rows(profile: Profile) -> list[dict]:
    """The DPO training pairs with the annotators' labels: the first ``train_pairs`` preference pairs and the
    first ``train_defective_pairs`` broken-vs-intact pairs of the reward model's data, shuffled together."""
    config: RLAIFConfig = profile.rlaif
    rows = load_dataset_rows("preferences_train", profile)[: config.train_pairs]
    broken, _ = defective_rows(profile)
    rows = [dict(r) for r in rows + broken[: config.train_defective_pairs]]
    random.Random(config.seed).shuffle(rows)
    return rows


def rlaif_dir(profile: Profile | None = None) -> Path:
    """Folder of the AI-label DPO policy, the labels and their measurements, built on first use."""
    profile = resolve_profile(profile)
    config: RLAIFConfig = profile.rlaif

    def build(folder: Path) -> dict:
        stage_start = time.perf_counter()
        instructions = load_dataset_rows("instructions_train", profile)
        continue_rows = [r for r in instructions if r["task"] == "continue"]
        start = time.perf_counter()
        labeller = train_labeller(config.constitution, continue_rows, instructions, config.critics)
        meta: dict = {"critic_seconds": time.perf_counter() - start}

        rows = load_dataset_rows("preferences_train", profile)[: config.label_pairs]
        start = time.perf_counter()
        verdict = labeller.prefers_a(*pair_texts(rows))
        meta["label_seconds"] = time.perf_counter() - start
        meta["labelled_pairs"] = len(rows)
        human = label_report(np.ones(len(rows), dtype=int), rows)  # the annotators' own verdicts
        report = label_report(verdict, rows)
        meta.update({f"label_{k}": report[k] for k in LABEL_KEYS})
        meta.update(
            human_agreement_gold=human["agreement_gold"],
            human_picks_longer=human["picks_longer"],
            human_longer_when_gold_prefers_shorter=human["longer_when_gold_prefers_shorter"],
        )
        _, broken_test = defective_rows(profile)
        if broken_test:
            meta["label_picks_intact"] = picks_intact(labeller.prefers_a(*pair_texts(broken_test)), broken_test)
            meta["human_picks_intact"] = picks_intact(np.ones(len(broken_test), dtype=int), broken_test)

        human_rows = training_rows(profile)
        ai_rows = labeller.label(human_rows)
        meta["train_pairs"] = len(ai_rows)
        meta["train_label_agreement_human"] = float(
            np.mean([a["chosen"] == h["chosen"] for a, h in zip(ai_rows, human_rows)])
        )
        write_jsonl(folder / "ai_labels.jsonl", ai_rows)

        reference, tokenizer = load_sft_model(profile)
        reward_model, _ = load_reward_model(profile)
        runs = {"ai": ai_rows, "human": human_rows} if config.human_baseline else {"ai": ai_rows}
        for name, train_rows in runs.items():
            set_seed(config.dpo.seed)
            policy, _ = load_sft_model(profile)
            policy, report = train_dpo(policy, reference, tokenizer, train_rows, config.dpo)
            means, samples = evaluate_against_sft(policy, profile, reference=reference, reward_model=reward_model)
            results = {**after_metrics(means), "train_seconds": report["train_seconds"], "dpo_steps": report["steps"]}
            if name == "ai":
                meta.update(results)
                policy.save_pretrained(str(folder))
                tokenizer.save_pretrained(str(folder))
            else:
                meta.update({f"human.{k}": v for k, v in results.items()})
            write_jsonl(folder / f"samples_{name}.jsonl", samples)
            atomic_write_json(folder / f"dpo_log_{name}.json", report["log"])
        meta["stage_seconds"] = time.perf_counter() - stage_start
        return meta

    return get_or_build("rlaif", rlaif_key(profile), build)


def load_rlaif_policy(profile: Profile | None = None) -> tuple[GPT2LMHeadModel, object]:
    """(model, tokenizer) of the policy trained with DPO on the AI labels, training it first if needed."""
    folder = rlaif_dir(profile)
    return GPT2LMHeadModel.from_pretrained(str(folder)).eval(), load_tokenizer(folder)


def rlaif_metrics(profile: Profile) -> dict:
    """Stage ``rlaif``: builds (or loads) the artifact; the label measurements and both policies, as ``rlaif.*``."""
    return {f"rlaif.{k}": v for k, v in read_meta(rlaif_dir(profile)).items()}
