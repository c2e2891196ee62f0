"""Named configurations of the whole course: one dataclass per stage, gathered in a profile.

* ``course`` (the default): the offline path every student runs, on a 2-core CPU.
* ``tiny``: the same pipeline shrunk until it runs in seconds; used by the tests, and says so.

* ``hub`` and ``hub_smoke`` (:class:`HubProfile`, :func:`get_hub_profile`): GPT-2 on IMDB with an outside
  judge (utils.hub), sized for a Colab T4 (``hub``) or for a CPU smoke run of a few steps (``hub_smoke``).
  They have stages of their own (``utils.stages.hub``) and never touch the course's artifacts.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field

from utils.config_checks import check_instance, check_int, check_text
from utils.constitution import CriticConfig, RLAIFConfig
from utils.dpo import DPOSweepConfig, DPOTrainConfig
from utils.evaluation import EvalConfig, SweepConfig
from utils.group_rl import GroupRLConfig
from utils.hub import HubDataConfig, HubEvalConfig, HubModelConfig, HubTrainConfig
from utils.knowledge_world import KnowledgeWorldConfig
from utils.language_model import LMConfig, LMTrainConfig
from utils.limits import LimitsConfig
from utils.method_comparison import MethodsConfig
from utils.ppo import PPOConfig
from utils.review_world import GrammarConfig
from utils.reward_model import RewardModelConfig
from utils.seed import run_seed
from utils.sft import SFTConfig
from utils.tokenizer import TokenizerConfig
from utils.word_lm import WordLMConfig


@dataclass(frozen=True)
class DataConfig:
    """Sizes and seeds of the datasets generated from the review world. Validated on construction."""

    lm_train_size: int = 60_000
    """reviews for language-model training"""
    lm_val_size: int = 2_000
    """held-out reviews: NLL per review vs the source entropy"""
    instruction_train_size: int = 6_000
    """instruction rows for SFT"""
    instruction_test_size: int = 300
    """held-out instruction rows for ROUGE/BLEU"""
    preference_train_size: int = 16_000
    """labelled pairs for reward-model training (the review world can label as many as the RM needs)"""
    preference_test_size: int = 4_000
    """held-out labelled pairs: 4,000, so that the held-out accuracy's sampling error (~0.6 points) is small
    beside the distance to the Bayes-optimal accuracy it is compared with"""
    rl_prompt_train_size: int = 2_048
    """review openings for PPO"""
    rl_prompt_test_size: int = 256
    """held-out openings for evaluation"""
    seed: int = 0
    """every dataset derives its seed from this one"""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_int(self, f.name, ge=0 if f.name == "seed" else 1)


@dataclass(frozen=True)
class Profile:
    """Everything that decides the numbers a run produces. Validated on construction."""

    name: str
    """what the profile is called (``get_profile(name)``, ``$RLHF_PROFILE``)"""
    grammar: GrammarConfig = field(default_factory=GrammarConfig)
    """the review world's grammar (utils.review_world)"""
    data: DataConfig = field(default_factory=DataConfig)
    """sizes and seeds of the generated datasets"""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """the BPE tokenizer (utils.tokenizer)"""
    lm: LMConfig = field(default_factory=LMConfig)
    """shape of the base LM (utils.language_model)"""
    lm_train: LMTrainConfig = field(default_factory=LMTrainConfig)
    """how the base LM is trained"""
    grammar_samples: int = 500
    """free samples drawn to measure the base LM's grammatical fraction"""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """instruction tuning (utils.sft)"""
    rm: RewardModelConfig = field(default_factory=RewardModelConfig)
    """reward model (utils.reward_model)"""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """RLHF with PPO (utils.ppo)"""
    dpo: DPOTrainConfig = field(default_factory=DPOTrainConfig)
    """DPO with TRL from the SFT policy on the reward model's human-labelled pairs (utils.dpo)"""
    dpo_sweep: DPOSweepConfig = field(default_factory=DPOSweepConfig)
    """notebook 12's beta sweep of short DPO runs (utils.dpo; built on first use, not by the pipeline)"""
    rloo: GroupRLConfig = field(default_factory=GroupRLConfig)
    """RLHF with TRL's RLOO against the reward model (utils.group_rl)"""
    grpo: GroupRLConfig = field(default_factory=GroupRLConfig)
    """RLHF with TRL's GRPO against the reward model (utils.group_rl)"""
    grpo_verifiable: GroupRLConfig = field(default_factory=GroupRLConfig)
    """TRL's GRPO against the rule-based verifiable reward (utils.group_rl, utils.verifiable_reward)"""
    methods: MethodsConfig = field(default_factory=MethodsConfig)
    """the comparison of every alignment method, with the best-of-n baseline (utils.method_comparison)"""
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    """held-out evaluation and KL sweep (utils.evaluation)"""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """what alignment does not fix: knowledge world, RAG, chain-of-thought, PAL, ReAct (utils.limits)"""
    rlaif: RLAIFConfig = field(default_factory=RLAIFConfig)
    """AI feedback from a written constitution, and DPO on it (utils.constitution)"""

    def __post_init__(self) -> None:
        check_text(self, "name")
        check_int(self, "grammar_samples", ge=1)
        for name, annotation in typing.get_type_hints(Profile).items():
            if dataclasses.is_dataclass(annotation):  # a stage's config: its own __post_init__ checked its fields
                check_instance(self, name, annotation)


# The tiny profile's RLOO / GRPO runs: two generation batches of 16 completions (4 prompts x 4).
TINY_GROUP_RL = GroupRLConfig(total_completions=32, batch_size=16, num_minibatches=2, response_length=24)

PROFILES: dict[str, Profile] = {
    "course": Profile(
        name="course",
        # GRPO's KL sits in the loss beside advantages scaled to unit spread per group, so PPO's 0.2 is a weaker
        # pull there than in RLOO's reward (seed 0: KL 2.3, grammatical 0.82 at 0.2; KL 0.2, grammatical 0.94 at 1.0)
        grpo=GroupRLConfig(kl_coef=1.0),
        grpo_verifiable=GroupRLConfig(kl_coef=1.0),
    ),
    # Tiny: a few hundred rows and a few dozen steps; the numbers it gives mean nothing.
    "tiny": Profile(
        name="tiny",
        data=DataConfig(
            lm_train_size=2_000,
            lm_val_size=200,
            instruction_train_size=300,
            instruction_test_size=30,
            preference_train_size=300,
            preference_test_size=100,
            rl_prompt_train_size=64,
            rl_prompt_test_size=32,
        ),
        tokenizer=TokenizerConfig(corpus_size=2_000),
        lm=LMConfig(n_layer=2, n_head=2, n_embd=32, n_positions=256),
        lm_train=LMTrainConfig(steps=30, batch_size=8, block_size=32, warmup_steps=5, eval_every=15, eval_batches=2),
        grammar_samples=50,
        sft=SFTConfig(epochs=1.0, batch_size=16, eval_max_new_tokens=48, train_lora=True),
        rm=RewardModelConfig(
            steps=30,
            batch_size=16,
            warmup_steps=5,
            eval_every=15,
            eval_pairs=64,
            normalisation_texts=200,
            train_trl=True,
            encoder_n_embd=32,
            encoder_n_layer=1,
            encoder_n_head=2,
            encoder_steps=30,
            encoder_batch_size=16,
            defective_pairs=50,
            defective_heldout_pairs=20,
        ),
        ppo=PPOConfig(total_episodes=64, batch_size=16, num_minibatches=2, ppo_epochs=2, response_length=24),
        dpo=DPOTrainConfig(pairs=64, batch_size=16),
        dpo_sweep=DPOSweepConfig(betas=(0.1, 1.0), pairs=32, eval_prompts=8, heldout_pairs=16),
        rloo=TINY_GROUP_RL,
        grpo=TINY_GROUP_RL,
        grpo_verifiable=TINY_GROUP_RL,
        methods=MethodsConfig(best_of_n=(1, 2)),
        evaluation=EvalConfig(
            num_prompts=16,
            batch_size=16,
            table_rows=4,
            sweep=SweepConfig(
                betas=(0.0, 1.0), total_episodes=32, batch_size=16, evaluations=1, eval_prompts=16, samples_kept=2
            ),
        ),
        limits=LimitsConfig(
            world=KnowledgeWorldConfig(films_before_cutoff=12, films_after_cutoff=4),
            closed_book=WordLMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=64, steps=10, batch_size=8),
            reader=WordLMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=64, steps=10, batch_size=8),
            puzzle=WordLMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=64, steps=10, batch_size=8),
            react=WordLMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=64, steps=10, batch_size=8),
            max_puzzle_steps=2,
            puzzles_per_length=4,
        ),
        rlaif=RLAIFConfig(
            critics=CriticConfig(grammar_examples=100, sentiment_examples=100),
            label_pairs=200,
            train_pairs=48,
            train_defective_pairs=16,
            dpo=DPOTrainConfig(pairs=None, batch_size=16),
        ),
    ),
}


SEED_STRIDE = 1_000
"""How far apart two run seeds put each config's seed. Wider than any offset a stage adds to its own seed
(the data stage uses seed + 1 ... seed + 8), so no dataset of one run seed is a dataset of another."""


def with_run_seed(profile: Profile, run_seed: int) -> Profile:
    """``profile`` with every stage config's ``seed`` shifted by ``run_seed * SEED_STRIDE``.

    Run seed 0 is the profile itself (so its artifacts keep their cache keys); run seed N changes every
    dataset, initialisation, batch order and sample at once, as another machine would, and gives every
    artifact a key of its own, so several run seeds share ``results/artifacts/`` side by side.
    """
    if not isinstance(run_seed, int) or isinstance(run_seed, bool) or run_seed < 0:
        raise ValueError(f"run seed must be an int >= 0, got {run_seed!r}")
    if run_seed == 0:
        return profile
    changes = {}
    for f in dataclasses.fields(profile):
        config = getattr(profile, f.name)
        if dataclasses.is_dataclass(config) and "seed" in {g.name for g in dataclasses.fields(config)}:
            changes[f.name] = dataclasses.replace(config, seed=config.seed + run_seed * SEED_STRIDE)
    return dataclasses.replace(profile, **changes)


def get_profile(name: str | None = None, seed: int | None = None) -> Profile:
    """The profile called ``name`` (default: ``$RLHF_PROFILE`` or ``course``) for run seed ``seed``
    (default: ``$RLHF_SEED`` or 0; see :func:`with_run_seed`)."""
    name = name or os.environ.get("RLHF_PROFILE", "course")
    if name in HUB_PROFILES:
        raise ValueError(f"{name!r} is a hub profile with stages of its own: use get_hub_profile({name!r})")
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return with_run_seed(PROFILES[name], run_seed() if seed is None else seed)


# ---------------------------------------------------------------------------------------------------------
# The hub profiles: GPT-2 on real text (utils.hub, utils.stages.hub)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubProfile:
    """Everything that decides a hub run: data, models, the two short trainings, PPO, the evaluation."""

    name: str
    """``hub`` or ``hub_smoke``"""
    data: HubDataConfig = field(default_factory=HubDataConfig)
    """IMDB and HH-RLHF: sources and split sizes"""
    models: HubModelConfig = field(default_factory=HubModelConfig)
    """gpt2 from the hub or GPT2Config() random-init, the judge, device and precision"""
    sft: HubTrainConfig = field(default_factory=HubTrainConfig)
    """the short LM fine-tuning of GPT-2 on IMDB reviews (the PPO policy starts from it)"""
    rm: HubTrainConfig = field(default_factory=lambda: HubTrainConfig(steps=250, lr=2e-5))
    """the GPT-2 reward model on (positive, negative) review pairs, initialised from the SFT model"""
    ppo: PPOConfig = field(
        default_factory=lambda: PPOConfig(
            total_episodes=512,
            batch_size=32,
            num_minibatches=4,
            ppo_epochs=2,
            response_length=24,
            temperature=1.0,
            lr=1e-4,
            kl_coef=0.1,
            use_lora=True,
        )
    )
    """our PPO (utils.ppo) with LoRA, so the reference is the policy without its adapter: one copy of GPT-2"""
    evaluation: HubEvalConfig = field(default_factory=HubEvalConfig)
    """sampling before and after PPO, scored by the outside judge and the reward model"""

    def __post_init__(self) -> None:
        check_text(self, "name")
        for name, annotation in typing.get_type_hints(HubProfile).items():
            if dataclasses.is_dataclass(annotation):
                check_instance(self, name, annotation)


HUB_PROFILES: dict[str, HubProfile] = {
    # Sized for a free Colab T4 (untimed: no GPU was available when it was written; see the README).
    "hub": HubProfile(name="hub"),
    # A few steps of every stage on a CPU in fp32, with GPT2Config()-shaped random models: tests the code path.
    "hub_smoke": HubProfile(
        name="hub_smoke",
        data=HubDataConfig(
            sft_reviews=8,
            rm_train_pairs=8,
            rm_test_pairs=8,
            prompts_train=8,
            prompts_test=4,
            sft_max_tokens=32,
            rm_max_tokens=32,
        ),
        models=HubModelConfig(weights="random", standin_vocab_size=2_048, device="cpu"),
        sft=HubTrainConfig(steps=2, batch_size=2, warmup_steps=1, lr=1e-4, lora=True),
        rm=HubTrainConfig(steps=2, batch_size=2, warmup_steps=1, lr=1e-4),
        ppo=PPOConfig(
            total_episodes=8,
            batch_size=4,
            num_minibatches=2,
            ppo_epochs=1,
            response_length=6,
            temperature=1.0,
            lr=1e-4,
            kl_coef=0.1,
            use_lora=True,
        ),
        evaluation=HubEvalConfig(num_prompts=4, max_new_tokens=6, batch_size=4, judge_reviews=4),
    ),
}


def get_hub_profile(name: str = "hub", seed: int | None = None) -> HubProfile:
    """The hub profile ``name`` (``hub`` or ``hub_smoke``) for run seed ``seed`` (default ``$RLHF_SEED``)."""
    if name not in HUB_PROFILES:
        raise ValueError(f"unknown hub profile {name!r}; choose one of {sorted(HUB_PROFILES)}")
    return with_run_seed(HUB_PROFILES[name], run_seed() if seed is None else seed)
