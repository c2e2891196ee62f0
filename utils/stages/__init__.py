"""The pipeline's stages, one module each in the order they run: data and tokenizer, lm, sft, rm, ppo, eval.

Each stage module has a key (what its artifact depends on; the artifact lives in
``results/artifacts/<stage>-<hash of the key>/``), a folder function that builds the artifact on first use,
loaders, and a metrics function the runner (:mod:`utils.pipeline`) calls. A stage imports only the stages
before it and the concept modules (``utils.sft``, ``utils.ppo``, ...), which never import a stage: the
layers are one-way (``tests/test_layering.py``).

Every loader takes an optional profile (default: the one ``utils.profiles.get_profile`` selects), so a
notebook can write ``load_base_lm()`` and get the cached model, trained first if it is missing.
"""

from utils.stages.data import (
    DATA_FILES,
    annotator_config,
    data_dir,
    load_course_tokenizer,
    load_dataset_rows,
    tokenizer_dir,
)
from utils.stages.evaluation import eval_dir, load_eval_samples, load_sweep, sweep_dir
from utils.stages.limits import limits_dir, load_limits_model, load_limits_results
from utils.stages.lm import base_lm_dir, load_base_lm
from utils.stages.ppo import load_ppo_policy, ppo_dir
from utils.stages.rm import load_reward_model, rm_dir
from utils.stages.sft import load_sft_model, sft_dir

__all__ = [
    "DATA_FILES",
    "annotator_config",
    "base_lm_dir",
    "data_dir",
    "eval_dir",
    "limits_dir",
    "load_base_lm",
    "load_course_tokenizer",
    "load_dataset_rows",
    "load_eval_samples",
    "load_limits_model",
    "load_limits_results",
    "load_ppo_policy",
    "load_reward_model",
    "load_sft_model",
    "load_sweep",
    "ppo_dir",
    "rm_dir",
    "sft_dir",
    "sweep_dir",
    "tokenizer_dir",
]
