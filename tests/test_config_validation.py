"""Every config dataclass of ``utils/`` checks every field when it is built, in one idiom (utils.config_checks).

A setting that would silently corrupt a run (``grad_clip=-1`` flips the gradient, ``min_lr_ratio=-5``
drives the learning rate negative, ``temperature=inf`` samples uniformly) must fail at construction with
an error that names ``ClassName.field``, what is allowed, and the value given. Three kinds of test:

* the cases found by the reliability probe (issue 12), and range checks, by hand;
* for every field of every config, values of the wrong type (a float for an int, a bool for an int, NaN or
  infinity for a float, a string for a bool, ...), generated from the field's annotation, so that a field
  added later without a check fails here;
* every config's defaults construct, and every field is documented by a docstring under it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import types
import typing
from pathlib import Path

import numpy as np
import pytest

from utils import config_checks
from utils.attention import AttentionConfig
from utils.bench import BenchConfig
from utils.cartpole import PPOConfig as CartPolePPOConfig
from utils.cartpole import REINFORCEConfig
from utils.constitution import CriticConfig, RLAIFConfig
from utils.decoding import SamplingConfig
from utils.dpo import DPOConfig, DPOSweepConfig, DPOTrainConfig
from utils.evaluation import EvalConfig, HealthThresholds, SweepConfig
from utils.exposure_bias import ExposureBiasConfig
from utils.group_advantages import GroupAdvantageConfig
from utils.group_rl import GroupRLConfig
from utils.hub import HubDataConfig, HubEvalConfig, HubModelConfig, HubTrainConfig
from utils.instruction_following import FollowRequestConfig, WriteDataConfig
from utils.knowledge_world import KnowledgeWorldConfig
from utils.language_model import LMConfig, LMTrainConfig
from utils.limits import LimitsConfig
from utils.listwise import ListwiseConfig
from utils.lstm_lm import LSTMConfig
from utils.method_comparison import MethodsConfig
from utils.mlm import MLMConfig
from utils.ppo import PPOConfig
from utils.profiles import DataConfig, Profile
from utils.prompt_tuning import PromptTuningConfig
from utils.review_world import AnnotatorConfig, GrammarConfig
from utils.reward_model import RewardModelConfig
from utils.sft import SFTConfig
from utils.span_corruption import SpanCorruptionConfig
from utils.thread_bench import ThreadBenchConfig
from utils.tokenizer import TokenizerConfig
from utils.transformer import BlockConfig, EncoderDecoderConfig, EncoderOnlyConfig, GPTConfig
from utils.verifiable_reward import VerifiableRewardConfig
from utils.word_lm import WordLMConfig

UTILS = Path(__file__).resolve().parents[1] / "utils"

CONFIGS = (
    AttentionConfig,
    BenchConfig,
    ThreadBenchConfig,
    CartPolePPOConfig,
    REINFORCEConfig,
    SamplingConfig,
    EvalConfig,
    HealthThresholds,
    SweepConfig,
    LMConfig,
    LMTrainConfig,
    PPOConfig,
    DataConfig,
    Profile,
    AnnotatorConfig,
    GrammarConfig,
    RewardModelConfig,
    SFTConfig,
    TokenizerConfig,
    BlockConfig,
    EncoderDecoderConfig,
    EncoderOnlyConfig,
    GPTConfig,
    DPOConfig,
    DPOTrainConfig,
    DPOSweepConfig,
    GroupAdvantageConfig,
    VerifiableRewardConfig,
    GroupRLConfig,
    MethodsConfig,
    KnowledgeWorldConfig,
    LimitsConfig,
    WordLMConfig,
    CriticConfig,
    RLAIFConfig,
    LSTMConfig,
    HubDataConfig,
    HubModelConfig,
    HubTrainConfig,
    HubEvalConfig,
    MLMConfig,
    SpanCorruptionConfig,
    ExposureBiasConfig,
    ListwiseConfig,
    WriteDataConfig,
    FollowRequestConfig,
    PromptTuningConfig,
)
REQUIRED = {Profile: {"name": "test"}}  # fields without a default


def build(cls, **changes):
    return cls(**{**REQUIRED.get(cls, {}), **changes})


def config_classes_in_source() -> set[tuple[str, str]]:
    """(module file, class) of every dataclass in utils/ that is a config: named *Config, *Thresholds, Profile."""
    found = set()
    for path in UTILS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ClassDef)
                and any("dataclass" in ast.unparse(d) for d in node.decorator_list)
                and (node.name.endswith(("Config", "Thresholds")) or node.name == "Profile")
            ):
                found.add((path.stem, node.name))
    return found


def test_every_config_dataclass_is_covered():
    covered = {(inspect.getmodule(cls).__name__.rsplit(".", 1)[-1], cls.__name__) for cls in CONFIGS}
    assert config_classes_in_source() == covered, "a new config dataclass must be added to CONFIGS"


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_defaults_construct(cls):
    config = build(cls)
    assert dataclasses.is_dataclass(config)


# ------------------------------------------------------------------------------------------------
# By hand: the probe's findings, and ranges
# ------------------------------------------------------------------------------------------------
BAD = [
    # issue 12: each of these used to be accepted
    (RewardModelConfig, "grad_clip", -1),
    (RewardModelConfig, "min_lr_ratio", -5),
    (RewardModelConfig, "lr", math.nan),
    (RewardModelConfig, "lr", math.inf),
    (RewardModelConfig, "weight_decay", -1),
    (RewardModelConfig, "seed", -1),
    (RewardModelConfig, "shuffle", "no"),
    (RewardModelConfig, "steps", 2.5),
    (RewardModelConfig, "betas", (2, 3)),
    (LMTrainConfig, "grad_clip", -1),
    (SamplingConfig, "temperature", math.inf),
    # ranges
    (RewardModelConfig, "min_lr_ratio", 1.5),
    (RewardModelConfig, "betas", (0.9,)),
    (RewardModelConfig, "betas", (0.9, 1.0)),
    (RewardModelConfig, "margin", -0.1),
    (RewardModelConfig, "init", "random"),
    (RewardModelConfig, "encoder_n_embd", 30),
    (LMTrainConfig, "min_lr_ratio", -0.1),
    (LMTrainConfig, "lr", 0.0),
    (LMTrainConfig, "weight_decay", -0.1),
    (LMTrainConfig, "betas", (0.9, -0.1)),
    (LMTrainConfig, "warmup_steps", -1),
    (LMTrainConfig, "seed", -1),
    (LMConfig, "dropout", 1.0),
    (LMConfig, "n_embd", 30),
    (SFTConfig, "grad_clip", 0.0),
    (SFTConfig, "warmup_ratio", 1.0),
    (SFTConfig, "lora_dropout", -0.1),
    (SFTConfig, "lr_scheduler", "cosine_annealing"),
    (SFTConfig, "lora_target_modules", ()),
    (SFTConfig, "betas", (1.0, 0.95)),
    (SFTConfig, "seed", -1),
    (SFTConfig, "epochs", math.inf),
    (SamplingConfig, "temperature", 0.0),
    (SamplingConfig, "top_p", 0.0),
    (SamplingConfig, "top_p", 1.5),
    (SamplingConfig, "top_k", -1),
    (SamplingConfig, "max_new_tokens", 0),
    (PPOConfig, "clip_range", 1.0),
    (PPOConfig, "gamma", 1.5),
    (PPOConfig, "kl_coef", -0.1),
    (PPOConfig, "temperature", math.inf),
    (PPOConfig, "total_episodes", 32),
    (PPOConfig, "batch_size", 63),
    (SweepConfig, "betas", ()),
    (SweepConfig, "betas", (0.1, 0.0)),
    (SweepConfig, "betas", (-0.1, 0.0)),
    (SweepConfig, "temperature", 0.0),
    (EvalConfig, "seed", -1),
    (EvalConfig, "max_new_tokens", 0),
    (HealthThresholds, "tail", 0.0),
    (HealthThresholds, "min_eos_rate", 1.5),
    (HealthThresholds, "max_kl", -1.0),
    (DataConfig, "lm_train_size", 0),
    (DataConfig, "seed", -1),
    (Profile, "name", ""),
    (Profile, "grammar_samples", 0),
    (Profile, "ppo", RewardModelConfig()),
    (GrammarConfig, "sentence_count_probs", (0.5, 0.6)),
    (GrammarConfig, "clause_form_probs", (0.5, 0.5)),
    (GrammarConfig, "closing_prob", 1.5),
    (AnnotatorConfig, "temperature", 0.0),
    (AnnotatorConfig, "seed", -1),
    (TokenizerConfig, "vocab_size", 100),
    (TokenizerConfig, "min_frequency", 0),
    (AttentionConfig, "d_model", 10),
    (AttentionConfig, "dropout", 1.0),
    (AttentionConfig, "rotary_base", 0.0),
    (BlockConfig, "activation", "swish"),
    (BlockConfig, "layer_norm_eps", 0.0),
    (BlockConfig, "d_ff", 0),
    (GPTConfig, "n_embd", 100),
    (EncoderOnlyConfig, "dropout", -0.1),
    (EncoderDecoderConfig, "activation", "tanh"),
    (CartPolePPOConfig, "clip_coef", 1.0),
    (CartPolePPOConfig, "target_kl", 0.0),
    (CartPolePPOConfig, "num_minibatches", 3),
    (REINFORCEConfig, "baseline", "critic"),
    (REINFORCEConfig, "gamma", 1.1),
    (REINFORCEConfig, "value_coef", -1.0),
    (BenchConfig, "vocab_size", 2),
    (BenchConfig, "value_model", "critic"),
    (BenchConfig, "n_embd", 30),
    (DPOTrainConfig, "beta", 0.0),  # the implicit reward and the KL anchor need beta > 0
    (DPOTrainConfig, "max_completion_tokens", 0),
    (DPOSweepConfig, "betas", (0.3, 0.1)),
    (LSTMConfig, "n_layer", 0),
    (LSTMConfig, "dropout", 1.0),
    (GroupRLConfig, "group_size", 1),  # a group baseline needs another completion
    (GroupRLConfig, "batch_size", 60),  # not whole groups per minibatch
    (MethodsConfig, "best_of_n", (4, 2)),
    (KnowledgeWorldConfig, "cutoff_year", 2024),
    (KnowledgeWorldConfig, "films_after_cutoff", 0),
    (KnowledgeWorldConfig, "films_after_cutoff", 400),
    (LimitsConfig, "mismatch_rate", 1.0),
    (LimitsConfig, "reference_year", 2024),
    (LimitsConfig, "max_puzzle_steps", 0),
    (WordLMConfig, "n_embd", 30),
    (WordLMConfig, "lr", 0.0),
    (EncoderOnlyConfig, "type_vocab_size", -1),
    (MLMConfig, "mask_prob", 0.0),
    (MLMConfig, "random_token_share", 0.3),  # with mask_token_share 0.8: more than all of the chosen tokens
    (SpanCorruptionConfig, "noise_density", 1.0),
    (SpanCorruptionConfig, "mean_span_length", 0.5),
]


@pytest.mark.parametrize("cls, field, value", BAD, ids=lambda v: getattr(v, "__name__", repr(v)))
def test_bad_value_raises_naming_the_field(cls, field, value):
    with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{field} must be "):
        build(cls, **{field: value})


def test_message_says_what_is_allowed_and_what_was_given():
    with pytest.raises(ValueError) as caught:
        RewardModelConfig(grad_clip=-1)
    assert str(caught.value) == "RewardModelConfig.grad_clip must be a finite number > 0, got -1"
    with pytest.raises(ValueError) as caught:
        RewardModelConfig(betas=(2, 3))
    assert str(caught.value) == (
        "RewardModelConfig.betas must be a tuple of 2 finite numbers, each in [0, 1), got (2, 3)"
    )
    with pytest.raises(ValueError) as caught:
        SamplingConfig(pad_token_id=True)
    assert str(caught.value) == "SamplingConfig.pad_token_id must be None or an int >= 0, got True"


def test_numpy_scalars_count_as_numbers_and_bools_do_not():
    assert config_checks.is_int(np.int64(3)) and config_checks.is_number(np.float32(0.5))
    assert not config_checks.is_int(True) and not config_checks.is_number(False)
    assert LMTrainConfig(steps=np.int64(5), lr=np.float64(1e-3)).steps == 5


# ------------------------------------------------------------------------------------------------
# Generated: a value of the wrong type for every field of every config
# ------------------------------------------------------------------------------------------------
def wrong_values(annotation) -> list:
    """Values no field annotated ``annotation`` may hold."""
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if optional:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    wrong = [] if optional else [None]
    if annotation is bool:
        return wrong + ["yes", 1]
    if annotation is int:
        return wrong + [2.5, True, "3"]
    if annotation is float:
        return wrong + [math.nan, math.inf, -math.inf, "0.5", False]
    if annotation is str:
        return wrong + [7]
    if typing.get_origin(annotation) is tuple:
        return wrong + ["abc", 5, [0.5]]
    if dataclasses.is_dataclass(annotation):
        return wrong + [{}]
    raise AssertionError(f"no wrong values for annotation {annotation!r}: extend wrong_values")


GENERATED = [
    (cls, f.name, value)
    for cls in CONFIGS
    for f in dataclasses.fields(cls)
    for value in wrong_values(typing.get_type_hints(cls)[f.name])
]


@pytest.mark.parametrize("cls, field, value", GENERATED, ids=lambda v: getattr(v, "__name__", repr(v)))
def test_every_field_rejects_a_value_of_the_wrong_type(cls, field, value):
    with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{field} must be "):
        build(cls, **{field: value})


# ------------------------------------------------------------------------------------------------
# One documentation style: a docstring under each field
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_a_docstring_under_it(cls):
    (node,) = ast.parse(inspect.getsource(cls)).body
    body = node.body
    undocumented = [
        stmt.target.id
        for stmt, following in zip(body, body[1:] + [None])
        if isinstance(stmt, ast.AnnAssign)
        and not (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        )
    ]
    assert not undocumented, f"{cls.__name__}: fields without a docstring under them: {undocumented}"
