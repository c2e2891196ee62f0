"""The artifact cache keys of the ``course`` and ``tiny`` profiles, pinned.

Every stage's artifact lives in ``results/artifacts/<stage>-<hash of its key>/``. A key that changes by
accident (a refactor that renames a key field, a new config field, a default changed in passing)
silently invalidates every student's cache and retrains hours of models. The names below were
recorded from the code before the stage layer was split out of the concept modules (commit b675922),
and the artifacts of a ``make run`` on that commit carry them.

They pin the cache: changing a config default or a key on purpose must update them here, in the same
commit, so that the change is visible in review.
"""
from __future__ import annotations

import dataclasses

import pytest

from utils import artifacts
from utils.profiles import get_profile
from utils.stages import (base_lm_dir, data_dir, eval_dir, ppo_dir, rm_dir, sft_dir, sweep_dir,
                          tokenizer_dir)

FOLDERS = {"data": data_dir, "tokenizer": tokenizer_dir, "lm": base_lm_dir, "sft": sft_dir, "rm": rm_dir,
           "ppo": ppo_dir, "eval": eval_dir, "kl_sweep": sweep_dir}

PINNED = {
    "course": {"data": "data-997981a0137f", "tokenizer": "tokenizer-d41447299ee5", "lm": "lm-eb17ae21b898",
               "sft": "sft-298839a23cce", "rm": "rm-2063aeb5d3e9", "ppo": "ppo-75f20f319448",
               "eval": "eval-5bbe45e592ac", "kl_sweep": "kl_sweep-ccb377f47665"},
    "tiny": {"data": "data-e627ab23a4f1", "tokenizer": "tokenizer-5cbe574f5be8", "lm": "lm-806e67369d60",
             "sft": "sft-25b997ed214c", "rm": "rm-bb4fe9270193", "ppo": "ppo-c33f3f5cf909",
             "eval": "eval-c247b70f57f9", "kl_sweep": "kl_sweep-48581c271bff"},
}
# The reward model's other starting point (the base LM instead of the SFT model) takes the other
# branch of the rm key, and everything downstream of it.
PINNED_RM_FROM_BASE = {"rm": "rm-eb3065a323dd", "ppo": "ppo-fbedce72bc52", "eval": "eval-ffe963435338",
                       "kl_sweep": "kl_sweep-229c565cccf9"}


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
