"""Does the instruction-tuned model follow the *request*, or only the format? Diagnosis and a data fix.

The "write" task asks for "a positive/negative review about the <aspect>". A model that has learnt the format
but ignores the request writes the same review whatever is asked. Two ways to see it:

* greedy outputs (``utils.sft.evaluate_instructions``): ``write.sentiment_ok`` and ``write.aspect_ok`` at chance;
* **request sensitivity** (:func:`request_sensitivity`), with teacher forcing and no decoding: how much more
  likely the reference review is under its own request than under a *counterfactual* request (the other
  sentiment, or another aspect). A model that does not read the request scores exactly 0 nats.

Why a small model trained on the pipeline's data learns so little of the request (notebook 06, section 7):

* the sentiment label is the review's *overall* sentiment, but the first sentence often says the opposite
  ("although the plot was dull, ..."), so the request predicts each sentiment word only weakly;
* the requested aspects follow the grammar's weights, so "acting" and "plot" are asked for three times as
  often as "humour": a model that always writes about the acting is right more often than one that guesses;
* the answer to the request is one or two tokens of a 20-40 token completion, so most of the loss can be
  lowered without reading the request at all.

:class:`WriteDataConfig` and :func:`write_rows` build "write" rows that make the request carry the answer:
requests drawn uniformly over the 24 (sentiment, aspect) pairs, reviews whose first clause has the requested
sentiment (and whose overall sentiment does too), and optionally a *twin* for every review, the same review
with the aspect swapped and the request changed to match: a minimal pair that differs only where the request
matters. :func:`replace_task_rows` swaps them into an instruction set.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from utils import review_world as rw
from utils.config_checks import check_bool, check_choice, check_instance, check_int
from utils.instruction_mixtures import fixed_steps
from utils.sft import SFTConfig, completion_nll, train_sft

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

ASPECT_NAMES: tuple[str, ...] = tuple(aspect for aspect, _ in rw.ASPECTS)
_REQUEST = re.compile(r"^Write a (positive|negative) review about the ([a-z]+)\.\nReview:$")


def write_prompt(positive: bool, aspect: str) -> str:
    """The "write" instruction, exactly as ``review_world.instruction_pairs`` phrases it."""
    return f"Write a {'positive' if positive else 'negative'} review about the {aspect}.\nReview:"


def write_request(prompt: str) -> tuple[bool, str]:
    """(positive?, aspect) of a "write" prompt; ValueError for any other prompt."""
    match = _REQUEST.match(prompt)
    if match is None:
        raise ValueError(f"not a 'write' prompt: {prompt!r}")
    return match.group(1) == "positive", match.group(2)


def counterfactual(row: dict, change: str) -> dict:
    """``row`` with its request changed: ``"sentiment"`` flips it, ``"aspect"`` asks for the next aspect of
    ``ASPECT_NAMES`` (cyclically). The completion stays: it no longer answers the prompt."""
    positive, aspect = write_request(row["prompt"])
    if change == "sentiment":
        positive = not positive
    elif change == "aspect":
        aspect = ASPECT_NAMES[(ASPECT_NAMES.index(aspect) + 1) % len(ASPECT_NAMES)]
    else:
        raise ValueError(f"change must be 'sentiment' or 'aspect', got {change!r}")
    return {**row, "prompt": write_prompt(positive, aspect)}


def request_sensitivity(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], batch_size: int = 128
) -> dict[str, float]:
    """How much the request matters to ``model``, in nats per completion token, on "write" ``rows``.

    For each change (sentiment, aspect): the completion NLL under the counterfactual request minus the NLL under
    the true one. 0 means the request is not read at all; a model that follows it finds its reference review
    less likely when asked for something else (> 0).
    """
    write = [r for r in rows if r["task"] == "write"]
    if not write:
        raise ValueError("request_sensitivity needs 'write' rows")
    true = completion_nll(model, tokenizer, write, batch_size)
    return {
        change: completion_nll(model, tokenizer, [counterfactual(r, change) for r in write], batch_size) - true
        for change in ("sentiment", "aspect")
    }


def sensitivity_log(tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], every: int):
    """A ``transformers`` ``TrainerCallback`` that measures :func:`request_sensitivity` on ``rows`` every ``every``
    optimiser steps (and after step 0) and keeps ``{"step", "sentiment", "aspect"}`` records in ``.history``:
    add it to a trainer to watch the model start reading the request."""
    from transformers import TrainerCallback

    class RequestSensitivityLog(TrainerCallback):
        def __init__(self) -> None:
            self.history: list[dict] = []

        def record(self, step: int, model: nn.Module) -> None:
            was_training = model.training
            self.history.append({"step": step, **request_sensitivity(model, tokenizer, rows)})
            model.train(was_training)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.record(0, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0:
                self.record(state.global_step, model)

    return RequestSensitivityLog()


def swap_aspects(text: str, a: str, b: str) -> str:
    """``text`` with every mention of aspect ``a`` and of aspect ``b`` exchanged (still a grammatical review:
    aspects carry no sentiment, and every aspect can stand wherever another can)."""
    if a == b:
        return text
    return re.sub(rf"\b({a}|{b})\b", lambda m: b if m.group(1) == a else a, text)


@dataclass(frozen=True)
class WriteDataConfig:
    """How "write" rows are built. The defaults reproduce the pipeline's rows (``review_world.instruction_pairs``):
    a random review, the request read off it. Validated on construction (ValueError on bad values)."""

    uniform_requests: bool = False
    """draw the request uniformly over the 24 (sentiment, aspect) pairs, instead of reading it off a random
    review (where frequent aspects are asked for up to three times as often as rare ones)"""
    first_clause_agrees: bool = False
    """keep only reviews whose first clause has the requested sentiment (as well as the overall sentiment), so
    that the request predicts the first sentiment word"""
    aspect_twins: bool = False
    """follow each row by its twin: the same review with the requested aspect exchanged for another one"""

    def __post_init__(self) -> None:
        for name in ("uniform_requests", "first_clause_agrees", "aspect_twins"):
            check_bool(self, name)


FOLLOW_REQUEST = WriteDataConfig(uniform_requests=True, first_clause_agrees=True, aspect_twins=True)
"""The fix of notebook 06, section 7: all three changes together."""


def _answer(generator: rw.ReviewGenerator, positive: bool | None, first_clause_agrees: bool, grammar):
    """A parsed review of the generator with overall sentiment ``positive`` (None: any), by rejection sampling."""
    while True:
        parsed = rw.parse(generator.sample(), grammar)
        overall = parsed.sentiment > 0
        if positive is not None and overall != positive:
            continue
        if first_clause_agrees and (parsed.clauses[0].polarity > 0) != overall:
            continue
        return parsed


def write_rows(
    n: int, seed: int, config: WriteDataConfig | None = None, grammar: rw.GrammarConfig | None = None
) -> list[dict]:
    """``n`` "write" rows ``{"prompt", "completion", "task"}`` built as ``config`` says.

    Every completion is a grammatical review whose overall sentiment and first-clause aspect are the requested
    ones (what ``utils.sft.task_checks`` scores).
    """
    config = config or WriteDataConfig()
    rng = random.Random(seed)
    generator = rw.ReviewGenerator(grammar, seed + 1)
    rows: list[dict] = []
    while len(rows) < n:
        positive, aspect = (rng.random() < 0.5, rng.choice(ASPECT_NAMES)) if config.uniform_requests else (None, None)
        parsed = _answer(generator, positive, config.first_clause_agrees, grammar)
        positive, first = parsed.sentiment > 0, parsed.clauses[0].aspect
        aspect = aspect or first
        completion = " " + swap_aspects(parsed.text, first, aspect)
        rows.append({"prompt": write_prompt(positive, aspect), "completion": completion, "task": "write"})
        if config.aspect_twins:  # the same review with the requested aspect and another one exchanged
            other = rng.choice([a for a in ASPECT_NAMES if a != aspect])
            twin = swap_aspects(completion, aspect, other)
            rows.append({"prompt": write_prompt(positive, other), "completion": twin, "task": "write"})
    return rows[:n]


def replace_task_rows(rows: Sequence[dict], task: str, new_rows: Sequence[dict], seed: int) -> list[dict]:
    """``rows`` with every row of ``task`` removed and ``new_rows`` added, shuffled with ``seed``."""
    mixed = [r for r in rows if r["task"] != task] + list(new_rows)
    random.Random(seed).shuffle(mixed)
    return mixed


@dataclass(frozen=True)
class FollowRequestConfig:
    """How SFT is changed so that the model follows the "write" request (notebook 06, section 10). The defaults
    change nothing: :func:`train_sft_following_requests` is then exactly ``utils.sft.train_sft``.
    Validated on construction (ValueError on bad values)."""

    write_data: WriteDataConfig | None = None
    """rebuild the instruction set's "write" rows with this config (same number of rows); None keeps them"""
    first_phase_steps: int = 0
    """optimiser steps on "write" rows alone before the usual SFT run on the mixture (0: no first phase). The
    copying circuit a request needs appears suddenly after enough steps on rows that depend on the request"""
    first_phase_rows: int = 2000
    """"write" rows (built with ``write_data``, or the default config) for the first phase"""
    first_phase_scheduler: str = "constant_with_warmup"
    """learning-rate schedule of the first phase (transformers name); no decay, so that the steps near its end
    still move the weights enough to finish the circuit"""
    seed: int = 0
    """seed of the rebuilt rows (shifted per run seed by the caller, like every config's seed)"""

    def __post_init__(self) -> None:
        from transformers import SchedulerType

        if self.write_data is not None:
            check_instance(self, "write_data", WriteDataConfig)
        check_int(self, "first_phase_steps", ge=0)
        check_int(self, "first_phase_rows", ge=1)
        check_int(self, "seed", ge=0)
        check_choice(self, "first_phase_scheduler", [s.value for s in SchedulerType])


FIRST_PHASE_STEPS = 600  # measured in notebook 06, section 10: enough on both seeds tried

FOLLOW_REQUEST_SFT = FollowRequestConfig(write_data=FOLLOW_REQUEST, first_phase_steps=FIRST_PHASE_STEPS)
"""The fix measured in notebook 06, section 10."""


def train_sft_following_requests(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    sft_config: SFTConfig,
    config: FollowRequestConfig,
) -> tuple[nn.Module, dict]:
    """``utils.sft.train_sft`` with the changes of ``config``: optionally a first phase on "write" rows alone, then
    SFT on ``rows`` (their "write" rows rebuilt if ``config.write_data`` is set). Returns (model, report); the
    report's ``steps`` counts both phases and ``first_phase`` holds the first phase's report (or None)."""
    first_report = None
    if config.first_phase_steps:
        write = write_rows(config.first_phase_rows, config.seed, config.write_data)
        first = dataclasses.replace(
            fixed_steps(sft_config, len(write), config.first_phase_steps), lr_scheduler=config.first_phase_scheduler
        )
        model, first_report = train_sft(model, tokenizer, write, first)
    if config.write_data is not None:
        n_write = sum(r["task"] == "write" for r in rows)
        rows = replace_task_rows(rows, "write", write_rows(n_write, config.seed + 1, config.write_data), config.seed)
    model, report = train_sft(model, tokenizer, rows, sft_config)
    if first_report is not None:
        report["steps"] += first_report["steps"]
        report["train_seconds"] += first_report["train_seconds"]
    return model, {**report, "first_phase": first_report}
