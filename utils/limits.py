"""What alignment does not fix, measured: the experiments of notebook 14 on the knowledge world and score puzzles.

Each experiment trains a tiny word-level GPT-2 (:mod:`utils.word_lm`) from scratch and scores it against the
generated truth:

1. **Closed book** (:func:`train_closed_book`): trained on the fact sentences and questions of the films
   released up to the cut-off. Asked about those films it is mostly right; asked about films released after
   the cut-off it still answers, fluently and often confidently, and is wrong: a hallucination. Its confidence
   (the probability of its answer word) against its correctness is its calibration.
2. **RAG** (:func:`train_reader`): a reader trained on fresh random films to answer from a fact card (and to
   say ``unknown`` when the card is about another film), fed the card BM25 retrieves for the question. It
   reads; it does not know. Given a card with a wrong fact, it copies the wrong fact.
3. **Chain-of-thought and PAL** (:func:`train_puzzle_model`): the same model trained on score puzzles to
   answer directly, to write running totals first, or to write a program that Python evaluates.
4. **ReAct** (:func:`train_react`): trained on transcripts that search for a film's card and calculate its
   age; measured against the closed-book model answering the same questions alone.

The stage ``limits`` (``utils/stages/limits.py``) runs them all with one :class:`LimitsConfig` and caches the
models and results; this module holds the ideas and takes only configs.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import GPT2LMHeadModel

from utils import knowledge_world as kw
from utils import reasoning as rs
from utils.config_checks import check_instance, check_int, check_number
from utils.retrieval import CardIndex
from utils.word_lm import (
    Example,
    WordLMConfig,
    WordTokenizer,
    build_word_lm,
    greedy_continue,
    masked_example,
    train_word_lm,
)


@dataclass(frozen=True)
class LimitsConfig:
    """The limits stage: the knowledge world, one model config per experiment, test sizes, the run's seed.
    Validated on construction."""

    world: kw.KnowledgeWorldConfig = field(default_factory=kw.KnowledgeWorldConfig)
    """which films exist, and the knowledge cut-off"""
    closed_book: WordLMConfig = field(default_factory=lambda: WordLMConfig(steps=1000, batch_size=64))
    """the closed-book model (memorises the facts of films up to the cut-off)"""
    reader: WordLMConfig = field(default_factory=lambda: WordLMConfig(lr=1e-2))
    """the RAG reader (learns to read a fact card); at lr 3e-3 and mismatch_rate 0.25 it had not learnt to copy
    after 800 steps (one run: RAG accuracy 0.075, 91% 'unknown'), at lr 1e-2 and 0.1 it had (0.79)"""
    puzzle: WordLMConfig = field(default_factory=lambda: WordLMConfig(steps=1200, lr=1e-2))
    """each of the three score-puzzle models: direct, scratchpad, program. At lr 1e-2 (seed 0, one thread) the
    scratchpad model was right on 0.12 of the 5-step puzzles after 800 steps and on 0.96 after 1,200 (the direct
    model: 0.08 and 0.10)"""
    react: WordLMConfig = field(default_factory=lambda: WordLMConfig(steps=400))
    """the ReAct model"""
    max_puzzle_steps: int = 5
    """puzzles have 1..max_puzzle_steps operations (uniform in training; each length tested alike)"""
    puzzles_per_length: int = 100
    """test puzzles per number of operations"""
    mismatch_rate: float = 0.1
    """share of the reader's training cards that are about another film (answer: unknown)"""
    reference_year: int = 2025
    """the age questions ask 'how many years before <reference_year> was <film> released ?'"""
    seed: int = 0
    """films, initialisations, batches and test puzzles all derive from it"""

    def __post_init__(self) -> None:
        check_instance(self, "world", kw.KnowledgeWorldConfig)
        for name in ("closed_book", "reader", "puzzle", "react"):
            check_instance(self, name, WordLMConfig)
        check_int(self, "max_puzzle_steps", ge=1, le=12)
        check_int(self, "puzzles_per_length", ge=1)
        check_number(self, "mismatch_rate", ge=0, lt=1)
        check_int(self, "reference_year", gt=self.world.last_year)
        check_int(self, "seed", ge=0)


AGE_QUESTION = "how many years before {year} was {title} released ? years"
REACT_TEMPLATE = (
    "thought find its year act search {title} obs {card} thought subtract act calc {a} - {b} obs {n} ans {n}"
)


def vocabulary(config: LimitsConfig) -> WordTokenizer:
    """One word tokenizer for every model of the chapter: the world's words, numbers, puzzle and ReAct words."""
    ages = range(config.reference_year - config.world.last_year, config.reference_year - config.world.first_year + 1)
    words = (
        kw.vocabulary(config.world) | {str(n) for n in [*range(rs.MAX_SCORE + 1), *ages]} | {str(config.reference_year)}
    )
    probe = rs.Puzzle(1, (1, -1))
    words |= set(f"{probe.question()} ans {probe.scratchpad()} prog {probe.program()}".split())
    words |= set(AGE_QUESTION.split()) | set(REACT_TEMPLATE.split()) | {"error"}
    return WordTokenizer(w for w in words if "{" not in w)


def world(config: LimitsConfig) -> tuple[list[kw.Film], list[kw.Film]]:
    """(films up to the cut-off, films after it) of this run."""
    return kw.make_world(config.world, config.seed)


def age_question(film: kw.Film, config: LimitsConfig) -> str:
    return AGE_QUESTION.format(year=config.reference_year, title=film.title)


def age(film: kw.Film, config: LimitsConfig) -> str:
    return str(config.reference_year - film.year)


def _batches(examples: Sequence[Example]):
    def sample(batch_size: int, generator: torch.Generator) -> list[Example]:
        return [examples[i] for i in torch.randint(len(examples), (batch_size,), generator=generator).tolist()]

    return sample


def _rng(generator: torch.Generator) -> random.Random:
    return random.Random(int(torch.randint(2**31, (1,), generator=generator)))


# ------------------------------------------------------------------------------------------------
# 1. Closed book
# ------------------------------------------------------------------------------------------------
def qa_example(q: str, a: str, tok: WordTokenizer, context: str = "") -> Example:
    """``[<context>] <question> <answer>``: the model writes the answer (and the closing ``<s>``)."""
    return masked_example([(f"{context} {q}".strip(), False), (a, True)], tok)


def closed_book_examples(films: Sequence[kw.Film], config: LimitsConfig, tok: WordTokenizer) -> list[Example]:
    """Every fact sentence (all of it is learnt) and every question (its answer is learnt) of ``films``,
    including the age question that ReAct answers with tools."""
    out = []
    for film in films:
        out += [masked_example([(s, True)], tok) for s in kw.fact_sentences(film)]
        out += [qa_example(kw.question(film, a), kw.answer(film, a), tok) for a in kw.ATTRIBUTES]
        out.append(qa_example(age_question(film, config), age(film, config), tok))
    return out


def train_closed_book(config: LimitsConfig, tok: WordTokenizer) -> tuple[GPT2LMHeadModel, list[dict]]:
    before, _ = world(config)
    model = build_word_lm(config.closed_book, tok, seed=config.seed + 11)
    log = train_word_lm(
        model, _batches(closed_book_examples(before, config, tok)), config.closed_book, config.seed + 12
    )
    return model, log


def answer_questions(
    model: GPT2LMHeadModel, tok: WordTokenizer, questions: Sequence[str], contexts: Sequence[str] | None = None
) -> list[tuple[str, float]]:
    """(answer word, confidence) for each question (after its context, if given): the greedy next word after
    the question and the probability the model gave it."""
    contexts = contexts or [""] * len(questions)
    prompts = [[tok.eos_id] + tok.encode(f"{c} {q}".strip()) for c, q in zip(contexts, questions)]
    return [(tok.vocab[ids[0]], probs[0]) for ids, probs in greedy_continue(model, prompts, [], 1)]


def score_answers(answers: Sequence[tuple[str, float]], truths: Sequence[str]) -> dict:
    """Accuracy, hallucination rate (an answer that is not ``unknown`` and is wrong), abstention rate, mean
    confidence, and the per-question records (answer, confidence, correct)."""
    correct = [a == t for (a, _), t in zip(answers, truths)]
    hallucinated = [a != kw.UNKNOWN and not c for (a, _), c in zip(answers, correct)]
    n = len(truths)
    return {
        "accuracy": sum(correct) / n,
        "hallucination_rate": sum(hallucinated) / n,
        "abstention_rate": sum(a == kw.UNKNOWN for a, _ in answers) / n,
        "mean_confidence": float(np.mean([c for _, c in answers])),
        "records": [{"answer": a, "confidence": c, "correct": ok} for (a, c), ok in zip(answers, correct)],
    }


def all_questions(films: Sequence[kw.Film]) -> tuple[list[str], list[str], list[kw.Film]]:
    """Every (question, answer, film) of ``films``, attribute by attribute."""
    rows = [(kw.question(f, a), kw.answer(f, a), f) for f in films for a in kw.ATTRIBUTES]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def calibration_bins(confidence: Sequence[float], correct: Sequence[bool], bins: int = 5) -> list[dict]:
    """Reliability table: per confidence bin (equal width on [0, 1]), how many answers, their mean confidence
    and their accuracy. A calibrated model has accuracy = confidence in every bin."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    return [
        {
            "low": b / bins,
            "high": (b + 1) / bins,
            "count": int((index == b).sum()),
            "confidence": float(confidence[index == b].mean()) if (index == b).any() else None,
            "accuracy": float(correct[index == b].mean()) if (index == b).any() else None,
        }
        for b in range(bins)
    ]


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 5) -> float:
    """sum over bins of (share of answers in the bin) x |accuracy - confidence|."""
    table = calibration_bins(confidence, correct, bins)
    n = sum(row["count"] for row in table)
    return sum(row["count"] / n * abs(row["accuracy"] - row["confidence"]) for row in table if row["count"])


# ------------------------------------------------------------------------------------------------
# 2. Retrieval-augmented generation
# ------------------------------------------------------------------------------------------------
def reader_example(rng: random.Random, config: LimitsConfig, tok: WordTokenizer) -> Example:
    """A fresh random film and attribute; its card, or (with ``mismatch_rate``) another film's card, half the
    time one sharing a title word, with the answer ``unknown``."""
    w = config.world
    film = kw.random_film(rng, w.first_year, w.last_year)
    attribute = rng.choice(kw.ATTRIBUTES)
    shown, truth = film, kw.answer(film, attribute)
    if rng.random() < config.mismatch_rate:
        first, second = film.title.split()
        while True:
            other = kw.random_film(rng, w.first_year, w.last_year)
            if rng.random() < 0.5:
                a, n = other.title.split()
                other = dataclasses.replace(other, title=f"{first} {n}" if rng.random() < 0.5 else f"{a} {second}")
            if other.title != film.title:
                break
        shown, truth = other, kw.UNKNOWN
    return qa_example(kw.question(film, attribute), truth, tok, context=kw.card(shown))


def train_reader(config: LimitsConfig, tok: WordTokenizer) -> tuple[GPT2LMHeadModel, list[dict]]:
    """The reader never sees the world's films: it learns to read cards of random ones."""

    def sample(batch_size: int, generator: torch.Generator) -> list[Example]:
        rng = _rng(generator)
        return [reader_example(rng, config, tok) for _ in range(batch_size)]

    model = build_word_lm(config.reader, tok, seed=config.seed + 21)
    return model, train_word_lm(model, sample, config.reader, config.seed + 22)


def card_index(films: Sequence[kw.Film]) -> CardIndex:
    """BM25 over the fact cards of ``films`` (the updated knowledge base: it includes the new films)."""
    return CardIndex([kw.card(f) for f in films])


def rag_answers(
    reader: GPT2LMHeadModel, tok: WordTokenizer, index: CardIndex, questions: Sequence[str]
) -> tuple[list[tuple[str, float]], list[str]]:
    """The reader's answers given the card BM25 retrieves for each question; and those cards."""
    cards = [index.search(q) for q in questions]
    return answer_questions(reader, tok, questions, cards), cards


def wrong_card_effects(
    reader: GPT2LMHeadModel, tok: WordTokenizer, films: Sequence[kw.Film], world: kw.KnowledgeWorldConfig, seed: int
) -> dict[str, float]:
    """What the reader does with a bad document, per question about ``films``:

    * ``copy_rate``: the card is about the right film but one fact (the one asked) is wrong: the share of
      answers that repeat the wrong fact (the reader cannot know better);
    * ``other_film_abstain_rate``: the card is about another film: the share of ``unknown`` answers.
    """
    rng = random.Random(seed)
    kw_first, kw_last = world.first_year, world.last_year
    questions, corrupted_cards, wrong_values, other_cards = [], [], [], []
    pools = {"director": kw.DIRECTORS, "lead": kw.LEADS, "genre": kw.GENRES}
    for film in films:
        for attribute in kw.ATTRIBUTES:
            truth = kw.answer(film, attribute)
            if attribute == "year":  # another year of the same era, inside the world's years
                years = range(max(film.year - 3, kw_first), min(film.year + 3, kw_last) + 1)
                wrong = str(rng.choice([y for y in years if y != film.year]))
            else:
                wrong = rng.choice([v for v in pools[attribute] if v != truth])
            questions.append(kw.question(film, attribute))
            corrupted_cards.append(kw.card(kw.with_fact(film, attribute, wrong)))
            wrong_values.append(wrong)
            other = rng.choice([f for f in films if f.title != film.title])
            other_cards.append(kw.card(other))
    copied = answer_questions(reader, tok, questions, corrupted_cards)
    other = answer_questions(reader, tok, questions, other_cards)
    return {
        "copy_rate": float(np.mean([a == w for (a, _), w in zip(copied, wrong_values)])),
        "other_film_abstain_rate": float(np.mean([a == kw.UNKNOWN for a, _ in other])),
    }


# ------------------------------------------------------------------------------------------------
# 3. Chain-of-thought and PAL on score puzzles
# ------------------------------------------------------------------------------------------------
PUZZLE_MODES = ("direct", "scratchpad", "program")


def puzzle_example(puzzle: rs.Puzzle, mode: str, tok: WordTokenizer) -> Example:
    """The question, then what the model writes: ``ans R``; ``so t1 .. tk ans R``; or ``prog <expression>``."""
    written = {
        "direct": f"ans {puzzle.result}",
        "scratchpad": f"{puzzle.scratchpad()} ans {puzzle.result}",
        "program": f"prog {puzzle.program()}",
    }[mode]
    return masked_example([(puzzle.question(), False), (written, True)], tok)


def train_puzzle_model(config: LimitsConfig, mode: str, tok: WordTokenizer) -> tuple[GPT2LMHeadModel, list[dict]]:
    """One model per mode, same shape, same steps, same stream of puzzles (1..max_puzzle_steps operations)."""
    if mode not in PUZZLE_MODES:
        raise ValueError(f"mode must be one of {PUZZLE_MODES}, got {mode!r}")

    def sample(batch_size: int, generator: torch.Generator) -> list[Example]:
        rng = _rng(generator)
        return [
            puzzle_example(rs.random_puzzle(rng, rng.randint(1, config.max_puzzle_steps)), mode, tok)
            for _ in range(batch_size)
        ]

    model = build_word_lm(config.puzzle, tok, seed=config.seed + 31)
    return model, train_word_lm(model, sample, config.puzzle, config.seed + 32)


def test_puzzles(config: LimitsConfig) -> list[rs.Puzzle]:
    """``puzzles_per_length`` puzzles of each length 1..max_puzzle_steps, from a seed training never uses."""
    rng = random.Random(config.seed + 33)
    return [
        rs.random_puzzle(rng, k)
        for k in range(1, config.max_puzzle_steps + 1)
        for _ in range(config.puzzles_per_length)
    ]


def solve_puzzles(
    model: GPT2LMHeadModel, tok: WordTokenizer, puzzles: Sequence[rs.Puzzle], mode: str
) -> list[tuple[str, int | None]]:
    """(what the model wrote, the answer it leads to) per puzzle; for ``program`` the answer is
    :func:`utils.reasoning.safe_eval` of the written expression (None when it does not evaluate)."""
    prompts = [[tok.eos_id] + tok.encode(p.question()) for p in puzzles]
    max_new = 4 * max(len(p.steps) for p in puzzles) + 6
    out = []
    for ids, _ in greedy_continue(model, prompts, [tok.eos_id], max_new):
        text = tok.decode(ids)
        words = text.split()
        if mode == "program":
            try:
                value = rs.safe_eval(" ".join(words[1:])) if words[:1] == ["prog"] else None
            except rs.UnsafeExpression:
                value = None
            answer = int(value) if value is not None and float(value).is_integer() else None
        else:
            answer = rs.parse_int(words[words.index("ans") + 1]) if "ans" in words[:-1] else None
        out.append((text, answer))
    return out


def accuracy_by_steps(puzzles: Sequence[rs.Puzzle], answers: Sequence[int | None]) -> dict[int, float]:
    """{number of operations: share of puzzles of that length answered right}."""
    table: dict[int, list[bool]] = {}
    for p, a in zip(puzzles, answers):
        table.setdefault(len(p.steps), []).append(a == p.result)
    return {k: float(np.mean(v)) for k, v in sorted(table.items())}


# ------------------------------------------------------------------------------------------------
# 4. ReAct
# ------------------------------------------------------------------------------------------------
def react_transcript(film: kw.Film, config: LimitsConfig) -> str:
    """The transcript the ReAct model is trained on: search the film's card, calculate its age, answer."""
    return REACT_TEMPLATE.format(
        title=film.title, card=kw.card(film), a=config.reference_year, b=film.year, n=age(film, config)
    )


def react_example(film: kw.Film, config: LimitsConfig, tok: WordTokenizer) -> Example:
    """The question (given), then the transcript of :func:`react_transcript`: the model writes the thoughts,
    actions and answer; the observations (what the tools returned) are in its input but never in the loss."""
    n = age(film, config)
    segments = [
        (age_question(film, config), False),
        (f"thought find its year act search {film.title} obs", True),
        (kw.card(film), False),
        (f"thought subtract act calc {config.reference_year} - {film.year} obs", True),
        (n, False),
        (f"ans {n}", True),
    ]
    return masked_example(segments, tok)


def train_react(config: LimitsConfig, tok: WordTokenizer) -> tuple[GPT2LMHeadModel, list[dict]]:
    """Trained on transcripts about fresh random films (the world's films are never in its training)."""
    w = config.world

    def sample(batch_size: int, generator: torch.Generator) -> list[Example]:
        rng = _rng(generator)
        return [react_example(kw.random_film(rng, w.first_year, w.last_year), config, tok) for _ in range(batch_size)]

    model = build_word_lm(config.react, tok, seed=config.seed + 41)
    return model, train_word_lm(model, sample, config.react, config.seed + 42)


def model_writer(model: GPT2LMHeadModel, tok: WordTokenizer, max_new_tokens: int = 24):
    """The ReAct loop's ``write``: continue the transcript greedily until ``obs`` or the end of the sequence."""
    stop = [tok.ids[rs.OBS], tok.eos_id]

    def write(transcript: str) -> str:
        prompt = [tok.eos_id] + tok.encode(transcript)
        room = min(max_new_tokens, model.config.n_positions - len(prompt))
        if room <= 0:  # the transcript fills the model's context: it can write nothing more
            return ""
        [(ids, _)] = greedy_continue(model, [prompt], stop, room)
        return tok.decode(ids)

    return write


def run_react(
    model: GPT2LMHeadModel, tok: WordTokenizer, index: CardIndex, films: Sequence[kw.Film], config: LimitsConfig
) -> list[rs.ReActResult]:
    """One ReAct episode per film (its age question), with the ``search`` and ``calc`` tools."""
    tools = {"search": index.search, "calc": rs.calculator}
    write = model_writer(model, tok)
    return [rs.react(write, tools, age_question(f, config)) for f in films]
