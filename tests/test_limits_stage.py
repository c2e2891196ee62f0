"""The limits stage (notebook 14) on the tiny profile, the training examples its models learn from, and a learning
check: a closed-book model memorises the films it saw and cannot know the ones it did not."""

from __future__ import annotations

import dataclasses
import random

import pytest

from utils import knowledge_world as kw
from utils import limits as lim
from utils.stages.limits import METRICS, MODELS, limits_dir, limits_metrics, load_limits_model, load_limits_results
from utils.word_lm import WordLMConfig

KEYS = {
    "limits.closed_book_accuracy_seen",
    "limits.closed_book_accuracy_unseen",
    "limits.hallucination_rate_unseen",
    "limits.rag_accuracy_unseen",
    "limits.rag_hallucination_rate_unseen",
    "limits.cot_accuracy",
    "limits.direct_accuracy",
    "limits.pal_accuracy",
    "limits.react_success",
    "limits.no_tool_success",
}


def test_tiny_stage_builds_once_and_reports_every_key(tiny_profile):
    metrics = limits_metrics(tiny_profile)
    assert set(metrics) == KEYS and {f"limits.{k}" for k in METRICS} == KEYS
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    folder = limits_dir(tiny_profile)
    assert limits_metrics(tiny_profile) == metrics and limits_dir(tiny_profile) == folder  # cached, not rebuilt

    results = load_limits_results(tiny_profile)
    config = tiny_profile.limits
    for split, n in (("seen", config.world.films_before_cutoff), ("unseen", config.world.films_after_cutoff)):
        scored = results[f"closed_book_{split}"]
        assert len(scored["records"]) == n * len(kw.ATTRIBUTES)
        accuracy = sum(r["correct"] for r in scored["records"]) / len(scored["records"])
        assert scored["accuracy"] == pytest.approx(accuracy)
        # every answer is right, abstains, or is a hallucination
        assert scored["accuracy"] + scored["abstention_rate"] + scored["hallucination_rate"] == pytest.approx(1.0)
    assert metrics["limits.hallucination_rate_unseen"] == results["closed_book_unseen"]["hallucination_rate"]
    assert results["rag_unseen"]["retrieval_hit_rate"] == 1.0  # BM25 finds each new film's own card
    for mode in lim.PUZZLE_MODES:
        assert set(results[f"puzzle_{mode}"]["by_steps"]) == {str(k) for k in range(1, config.max_puzzle_steps + 1)}
    assert len(results["react"]["transcripts"]) == min(3, config.world.films_after_cutoff)

    for name in MODELS:
        model, tok = load_limits_model(name, tiny_profile)
        assert model.config.vocab_size == len(tok) == len(lim.vocabulary(config))
    with pytest.raises(ValueError, match="model name must be one of"):
        load_limits_model("oracle", tiny_profile)


def test_examples_mask_exactly_what_each_model_writes():
    config = lim.LimitsConfig()
    tok = lim.vocabulary(config)
    film = kw.Film("silver harbor", "okafor", "mireau", "thriller", 2011)

    def written(example):
        ids, mask = example
        return tok.decode([i for i, m in zip(ids, mask) if m])

    assert written(lim.qa_example(kw.question(film, "director"), "okafor", tok, kw.card(film))) == "okafor"
    react = lim.react_example(film, config, tok)
    assert tok.decode(react[0]) == f"{lim.age_question(film, config)} {lim.react_transcript(film, config)}"
    assert written(react) == (
        "thought find its year act search silver harbor obs thought subtract act calc 2025 - 2011 obs ans 14"
    )  # the card and the calculator's 14 are observations: never in the loss
    puzzle = lim.rs.Puzzle(3, (7, -2))
    assert written(lim.puzzle_example(puzzle, "direct", tok)) == "ans 8"
    assert written(lim.puzzle_example(puzzle, "scratchpad", tok)) == "so 3 plus 7 is 10 minus 2 is 8 ans 8"
    assert written(lim.puzzle_example(puzzle, "program", tok)) == "prog 3 + 7 - 2"


def test_reader_examples_answer_from_the_card_or_say_unknown():
    config = lim.LimitsConfig(mismatch_rate=0.5)
    tok = lim.vocabulary(config)
    rng = random.Random(0)
    mismatched = shared_word = 0
    for _ in range(400):
        ids, mask = lim.reader_example(rng, config, tok)
        text = tok.decode(ids)
        answer = tok.decode([i for i, m in zip(ids, mask) if m])
        card_text = text.split(" . ")[0] + " ."
        words = text.split(" . ")[1].split()
        question_title = next(f"{a} {n}" for a, n in zip(words, words[1:]) if a in kw.ADJECTIVES and n in kw.NOUNS)
        shown = kw.parse_card(card_text)
        if answer == kw.UNKNOWN:
            mismatched += 1
            assert shown.title != question_title
            shared_word += bool(set(shown.title.split()) & set(question_title.split()))
        else:
            assert shown.title == question_title and answer in card_text.split()
    assert 150 < mismatched < 250 and shared_word > mismatched / 3  # half of them share a title word


def test_closed_book_model_learns_the_films_it_saw_and_not_the_others():
    """A learning check: a broken loss mask, optimiser or decoder leaves seen accuracy near chance."""
    small = WordLMConfig(n_layer=1, n_head=2, n_embd=32, n_positions=32, steps=300, batch_size=32, lr=1e-2)
    config = lim.LimitsConfig(
        world=kw.KnowledgeWorldConfig(films_before_cutoff=6, films_after_cutoff=6), closed_book=small, seed=5
    )
    tok = lim.vocabulary(config)
    model, log = lim.train_closed_book(config, tok)
    assert log[-1]["loss"] < log[0]["loss"]
    before, after = lim.world(config)
    seen = lim.score_answers(
        lim.answer_questions(model, tok, lim.all_questions(before)[0]), lim.all_questions(before)[1]
    )
    unseen = lim.score_answers(
        lim.answer_questions(model, tok, lim.all_questions(after)[0]), lim.all_questions(after)[1]
    )
    assert seen["accuracy"] >= 0.9  # 24 memorised facts
    assert unseen["accuracy"] <= 0.5 and unseen["hallucination_rate"] >= 0.5  # it answers anyway, and is wrong


def test_calibration_table_by_hand():
    table = lim.calibration_bins([0.1, 0.15, 0.9, 0.95, 1.0], [False, True, True, True, False], bins=2)
    assert [row["count"] for row in table] == [2, 3]
    assert table[0]["accuracy"] == 0.5 and table[1]["confidence"] == pytest.approx(0.95)
    expected = 2 / 5 * abs(0.5 - 0.125) + 3 / 5 * abs(2 / 3 - 0.95)
    assert lim.expected_calibration_error([0.1, 0.15, 0.9, 0.95, 1.0], [0, 1, 1, 1, 0], bins=2) == pytest.approx(
        expected
    )


def test_bad_limits_configs_fail_before_any_compute():
    with pytest.raises(ValueError, match=r"^LimitsConfig\.mismatch_rate must be a finite number in \[0, 1\)"):
        lim.LimitsConfig(mismatch_rate=1.0)
    with pytest.raises(ValueError, match=r"^LimitsConfig\.reader must be a WordLMConfig"):
        lim.LimitsConfig(reader=dataclasses.asdict(WordLMConfig()))
    with pytest.raises(ValueError, match="mode must be one of"):
        lim.train_puzzle_model(lim.LimitsConfig(), "guess", lim.vocabulary(lim.LimitsConfig()))
