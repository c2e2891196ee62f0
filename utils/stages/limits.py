"""Stage ``limits``: what alignment does not fix (notebook 14), measured on the knowledge world and score puzzles.

Independent of the review-world stages: it trains its own six tiny word-level models (closed book, RAG reader,
direct / scratchpad / program puzzle solvers, ReAct) with :mod:`utils.limits` and stores them, their training
logs and every measurement (``results.json``) in one artifact.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import GPT2LMHeadModel

from utils import limits as lim
from utils.artifacts import atomic_write_json, get_or_build, read_meta
from utils.profiles import Profile
from utils.stages.profile import resolve_profile
from utils.word_lm import WordTokenizer

MODELS = ("closed_book", "reader", "direct", "scratchpad", "program", "react")
METRICS = (
    "closed_book_accuracy_seen",
    "closed_book_accuracy_unseen",
    "hallucination_rate_unseen",
    "rag_accuracy_unseen",
    "rag_hallucination_rate_unseen",
    "cot_accuracy",
    "direct_accuracy",
    "pal_accuracy",
    "react_success",
    "no_tool_success",
)


def limits_key(profile: Profile) -> dict:
    """What the artifact depends on: the limits config only (no other stage's artifact)."""
    return {"limits": profile.limits}


def _run(config: lim.LimitsConfig, folder: Path) -> dict:
    tok = lim.vocabulary(config)
    before, after = lim.world(config)
    index = lim.card_index(before + after)
    models, logs, seconds = {}, {}, {}

    def timed(name, train):
        wall, cpu = time.perf_counter(), time.process_time()
        models[name], logs[name] = train()
        seconds[name] = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}

    timed("closed_book", lambda: lim.train_closed_book(config, tok))
    timed("reader", lambda: lim.train_reader(config, tok))
    for mode in lim.PUZZLE_MODES:
        timed(mode, lambda mode=mode: lim.train_puzzle_model(config, mode, tok))
    timed("react", lambda: lim.train_react(config, tok))

    results: dict = {"train_seconds": seconds}
    # 1. Closed book: seen films, films after the cut-off, calibration.
    for split, films in (("seen", before), ("unseen", after)):
        questions, truths, _ = lim.all_questions(films)
        results[f"closed_book_{split}"] = lim.score_answers(
            lim.answer_questions(models["closed_book"], tok, questions), truths
        )
    # 2. RAG on films after the cut-off, and bad documents.
    questions, truths, _ = lim.all_questions(after)
    answers, cards = lim.rag_answers(models["reader"], tok, index, questions)
    rag = lim.score_answers(answers, truths)
    rag["retrieval_hit_rate"] = sum(c.split(" : ")[0] in q for c, q in zip(cards, questions)) / len(questions)
    results["rag_unseen"] = rag
    results["wrong_card"] = lim.wrong_card_effects(models["reader"], tok, after, config.world, seed=config.seed + 51)
    # 3. Puzzles.
    puzzles = lim.test_puzzles(config)
    for mode in lim.PUZZLE_MODES:
        solved = lim.solve_puzzles(models[mode], tok, puzzles, mode)
        results[f"puzzle_{mode}"] = {
            "accuracy": sum(a == p.result for p, (_, a) in zip(puzzles, solved)) / len(puzzles),
            "by_steps": lim.accuracy_by_steps(puzzles, [a for _, a in solved]),
            "examples": [{"question": p.question(), "written": w} for p, (w, _) in list(zip(puzzles, solved))[-3:]],
        }
    # 4. ReAct against the closed-book model answering alone.
    episodes = lim.run_react(models["react"], tok, index, after, config)
    truths = [lim.age(f, config) for f in after]
    alone = lim.answer_questions(models["closed_book"], tok, [lim.age_question(f, config) for f in after])
    results["react"] = {
        "success": sum(e.answer == t for e, t in zip(episodes, truths)) / len(after),
        "no_tool_success": sum(a == t for (a, _), t in zip(alone, truths)) / len(after),
        "transcripts": [e.transcript for e in episodes[:3]],
    }

    for name, model in models.items():
        model.save_pretrained(str(folder / name))
    (folder / "vocab.json").write_text(json.dumps(tok.vocab))
    atomic_write_json(folder / "train_log.json", logs)
    atomic_write_json(folder / "results.json", results)
    metrics = {
        "closed_book_accuracy_seen": results["closed_book_seen"]["accuracy"],
        "closed_book_accuracy_unseen": results["closed_book_unseen"]["accuracy"],
        "hallucination_rate_unseen": results["closed_book_unseen"]["hallucination_rate"],
        "rag_accuracy_unseen": rag["accuracy"],
        "rag_hallucination_rate_unseen": rag["hallucination_rate"],
        "cot_accuracy": results["puzzle_scratchpad"]["accuracy"],
        "direct_accuracy": results["puzzle_direct"]["accuracy"],
        "pal_accuracy": results["puzzle_program"]["accuracy"],
        "react_success": results["react"]["success"],
        "no_tool_success": results["react"]["no_tool_success"],
    }
    total = {k: sum(s[k] for s in seconds.values()) for k in ("wall", "cpu")}
    return {**metrics, "train_seconds": total["wall"], "train_cpu_seconds": total["cpu"]}


def limits_dir(profile: Profile | None = None) -> Path:
    """Folder of the limits artifact (six models, ``vocab.json``, ``train_log.json``, ``results.json``)."""
    profile = resolve_profile(profile)
    return get_or_build("limits", limits_key(profile), lambda folder: _run(profile.limits, folder))


def load_limits_results(profile: Profile | None = None) -> dict:
    """Every measurement of the stage (records, calibration data, accuracies by steps, transcripts)."""
    return json.loads((limits_dir(profile) / "results.json").read_text())


def load_limits_model(name: str, profile: Profile | None = None) -> tuple[GPT2LMHeadModel, WordTokenizer]:
    """(model, word tokenizer) of one of :data:`MODELS`, trained first if the artifact is missing."""
    if name not in MODELS:
        raise ValueError(f"model name must be one of {MODELS}, got {name!r}")
    folder = limits_dir(profile)
    tok = WordTokenizer(json.loads((folder / "vocab.json").read_text()))
    return GPT2LMHeadModel.from_pretrained(str(folder / name)).eval(), tok


def limits_metrics(profile: Profile) -> dict:
    """Stage ``limits``: builds (or loads) the artifact; the ten headline measurements, as ``limits.*``."""
    meta = read_meta(limits_dir(profile))
    return {f"limits.{k}": meta[k] for k in METRICS}
