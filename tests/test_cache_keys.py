"""The artifact cache keys of the ``course`` and ``tiny`` profiles, pinned.

Every stage's artifact lives in ``results/artifacts/<stage>-<hash of its key>/``. A key that changes by
accident (a refactor that renames a key field, a new config field, a default changed in passing)
silently invalidates every student's cache and retrains hours of models. The names were first recorded
before the stage layer was split out of the concept modules (commit b675922; the split kept them), and
updated on purpose when the reward model got 16,000 preference pairs (the data key changed, so every
stage's key did; the tokenizer, LM and SFT model are the same models under new names), and again when the
reward model learned broken reviews (its config changed: the rm key and every key downstream of it). The
``limits`` stage is not pinned yet: its config is still being tuned.

They pin the cache: changing a config default or a key on purpose must update them here, in the same
commit, so that the change is visible in review.
"""

from __future__ import annotations

import dataclasses

import pytest

from utils import artifacts
from utils.profiles import get_profile
from utils.stages import base_lm_dir, data_dir, eval_dir, ppo_dir, rm_dir, sft_dir, sweep_dir, tokenizer_dir
from utils.stages.dpo import dpo_dir, dpo_sweep_dir
from utils.stages.group_rl import grpo_dir, grpo_verifiable_dir, rloo_dir
from utils.stages.methods import best_of_n_dir
from utils.stages.rlaif import rlaif_dir

FOLDERS = {
    "data": data_dir,
    "tokenizer": tokenizer_dir,
    "lm": base_lm_dir,
    "sft": sft_dir,
    "rm": rm_dir,
    "ppo": ppo_dir,
    "eval": eval_dir,
    "kl_sweep": sweep_dir,
    "dpo": dpo_dir,
    "dpo_sweep": dpo_sweep_dir,
    "rloo": rloo_dir,
    "grpo": grpo_dir,
    "grpo_verifiable": grpo_verifiable_dir,
    "best_of_n": best_of_n_dir,
    "rlaif": rlaif_dir,
}

PINNED = {
    "course": {
        "data": "data-8d42a207c22a",
        "tokenizer": "tokenizer-a339604ca70e",
        "lm": "lm-a0b7aaa7acd0",
        "sft": "sft-9cf228352282",
        "rm": "rm-5d8e688fac40",
        "ppo": "ppo-8b894595a8dc",
        "eval": "eval-271ad920a82f",
        "kl_sweep": "kl_sweep-61b5b4eca210",
        "dpo": "dpo-3479a88f4d2b",
        "dpo_sweep": "dpo_sweep-d42f0056ff20",
        "rloo": "rloo-781ba9734637",
        "grpo": "grpo-77d791064a7e",
        "grpo_verifiable": "grpo_verifiable-aaa950854474",
        "best_of_n": "best_of_n-006890a527d7",
        "rlaif": "rlaif-78fa589e4808",
    },
    "tiny": {
        "data": "data-e627ab23a4f1",
        "tokenizer": "tokenizer-5cbe574f5be8",
        "lm": "lm-806e67369d60",
        "sft": "sft-25b997ed214c",
        "rm": "rm-dc57d81d7d18",
        "ppo": "ppo-f7ff3d420f06",
        "eval": "eval-e670cb42d716",
        "kl_sweep": "kl_sweep-8a45929ed745",
        "dpo": "dpo-808da75cd757",
        "dpo_sweep": "dpo_sweep-305cea480175",
        "rloo": "rloo-806cd78ead5f",
        "grpo": "grpo-871c1afc5a24",
        "grpo_verifiable": "grpo_verifiable-036eaaf98911",
        "best_of_n": "best_of_n-201cbc3f1b48",
        "rlaif": "rlaif-a2c0a8f5d619",
    },
}
# The reward model's other starting point (the base LM instead of the SFT model) takes the other
# branch of the rm key, and everything downstream of it.
PINNED_RM_FROM_BASE = {
    "rm": "rm-fddde84a14ec",
    "ppo": "ppo-123a6b2b9a19",
    "eval": "eval-a8baa9bf0483",
    "kl_sweep": "kl_sweep-0925748d28cb",
}


class _WouldBuild(Exception):
    """Raised instead of building: carries the name of the folder the artifact would have."""


@pytest.fixture
def folder_name(monkeypatch, tmp_path):
    """``folder_name(stage, profile)``: the artifact folder a stage asks for, without building anything.

    The results folder is empty, so every stage reaches the build step, which is replaced by a probe;
    the keys are pure functions of the profile, so no upstream artifact is needed to compute them.
    """
    monkeypatch.setenv("RLHF_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv("RLHF_SEED", raising=False)

    def probe(final, config, build):
        raise _WouldBuild(final.name)

    monkeypatch.setattr(artifacts, "_build_locked", probe)

    def name(stage: str, profile) -> str:
        with pytest.raises(_WouldBuild) as caught:
            FOLDERS[stage](profile)
        return caught.value.args[0]

    return name


@pytest.mark.parametrize("profile_name", sorted(PINNED))
def test_artifact_folders_are_pinned(folder_name, profile_name):
    profile = get_profile(profile_name)
    assert {stage: folder_name(stage, profile) for stage in FOLDERS} == PINNED[profile_name]


def test_reward_model_from_the_base_lm_is_pinned(folder_name):
    course = get_profile("course")
    profile = dataclasses.replace(course, rm=dataclasses.replace(course.rm, init="base"))
    assert {stage: folder_name(stage, profile) for stage in PINNED_RM_FROM_BASE} == PINNED_RM_FROM_BASE
    # ...and the stages upstream of the reward model do not notice.
    assert folder_name("sft", profile) == PINNED["course"]["sft"]
