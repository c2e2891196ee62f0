"""Shared test set-up: offline, seeded, small thread count, results in a temporary folder."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The unit tests pin run seed 0 (their expected values, e.g. the cache keys, are seed 0's) whatever seed the
# surrounding `make test` runs the pipeline and notebooks with; tests of the seed knob set it themselves.
os.environ.pop("RLHF_SEED", None)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models are all per-operation overhead: one thread is faster and immune to a busy machine.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory) -> Path:
    """A results folder for the whole test session, so tests never touch the real ``results/``.

    Artifacts of the ``tiny`` profile are built once into it and shared by every test that needs them.
    """
    folder = tmp_path_factory.mktemp("results")
    previous = os.environ.get("RLHF_RESULTS_DIR")
    os.environ["RLHF_RESULTS_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("RLHF_RESULTS_DIR", None)
    else:
        os.environ["RLHF_RESULTS_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_profile(tiny_results):
    from utils.profiles import get_profile

    return get_profile("tiny")


@pytest.fixture(scope="session")
def tiny_base_lm(tiny_profile):
    """(model, tokenizer) of the tiny base LM, trained once per session (seconds)."""
    from utils.stages import load_base_lm

    return load_base_lm(tiny_profile)
