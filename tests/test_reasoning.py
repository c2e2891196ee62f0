"""Score puzzles, PAL's safe evaluator, the ReAct loop (with a scripted model), and the word-level LM helpers."""

from __future__ import annotations

import random

import pytest
import torch

from utils import knowledge_world as kw
from utils import reasoning as rs
from utils.retrieval import CardIndex
from utils.word_lm import WordLMConfig, WordTokenizer, build_word_lm, collate_masked, greedy_continue, masked_example


# ------------------------------------------------------------------------------------------------
# Puzzles
# ------------------------------------------------------------------------------------------------
def test_puzzle_by_hand():
    p = rs.Puzzle(3, (7, -2, 5))
    assert p.question() == "score 3 plus 7 minus 2 plus 5 ?"
    assert p.totals == [10, 8, 13] and p.result == 13
    assert p.scratchpad() == "so 3 plus 7 is 10 minus 2 is 8 plus 5 is 13"
    assert p.program() == "3 + 7 - 2 + 5"


def test_random_puzzles_stay_in_range_and_their_programs_evaluate_to_the_result():
    rng = random.Random(0)
    for _ in range(500):
        p = rs.random_puzzle(rng, rng.randint(1, 12))
        assert all(0 <= t <= rs.MAX_SCORE for t in [p.start, *p.totals])
        assert all(1 <= abs(s) <= 9 for s in p.steps)
        assert rs.safe_eval(p.program()) == p.result


# ------------------------------------------------------------------------------------------------
# PAL's evaluator
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["1 + 2 * 3", "(1 + 2) * 3", "7 / 2", "-4 + 10", "2 * (3 - (4 - 1.5))", "+5", "0"])
def test_safe_eval_computes_arithmetic_as_python_does(text):
    assert rs.safe_eval(text) == pytest.approx(eval(text))  # noqa: S307 (fixed, trusted test strings)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('echo pwned')",
        "open('/etc/passwd')",
        "x + 1",
        "2 ** 10",
        "9 % 4",
        "7 // 2",
        "1 if 1 else 2",
        "[1, 2]",
        "'a' * 3",
        "True + 1",
        "(1).real",
        "lambda: 1",
        "1 < 2",
        "1j * 2",
        "1 + ",
        "1; 2",
        "1 / 0",
        "1" + " + 1" * 150,
    ],
)
def test_safe_eval_refuses_anything_but_numbers_and_four_operations(text):
    with pytest.raises(rs.UnsafeExpression):
        rs.safe_eval(text)
    assert rs.calculator(text) == "error"


def test_safe_eval_never_calls_anything(monkeypatch):
    called = []
    monkeypatch.setattr("builtins.print", lambda *a: called.append(a))
    with pytest.raises(rs.UnsafeExpression):
        rs.safe_eval("print(1)")
    assert called == []
    assert rs.calculator("2025 - 2019") == "6" and rs.calculator("7 / 2") == "3.5"


# ------------------------------------------------------------------------------------------------
# ReAct
# ------------------------------------------------------------------------------------------------
def test_parse_action():
    assert rs.parse_action("thought find it act search silver harbor obs") == ("search", "silver harbor")
    assert rs.parse_action("thought x act calc 1 + 2") == ("calc", "1 + 2")
    assert rs.parse_action("act calc obs") == ("calc", "")
    assert rs.parse_action("thought nothing to do") is None
    assert rs.parse_action("act") is None


def scripted(steps):
    """A 'model' that writes the given steps in order, recording the transcripts it was shown."""
    seen = []

    def write(transcript):
        seen.append(transcript)
        return steps[len(seen) - 1]

    return write, seen


def test_react_runs_a_scripted_transcript_with_real_tools():
    film = kw.Film("silver harbor", "okafor", "mireau", "thriller", 2011)
    others = kw.make_world(kw.KnowledgeWorldConfig(films_before_cutoff=20, films_after_cutoff=1), seed=0)[0]
    others = [f for f in others if f.title != film.title]
    index = CardIndex([kw.card(f) for f in others[:10]] + [kw.card(film)] + [kw.card(f) for f in others[10:]])
    tools = {"search": index.search, "calc": rs.calculator}
    write, seen = scripted(
        [
            "thought find its year act search silver harbor obs",
            "thought subtract act calc 2025 - 2011 obs",
            "ans 14",
        ]
    )
    result = rs.react(write, tools, "how many years before 2025 was silver harbor released ?")
    assert result.answer == "14"
    assert [c[0] for c in result.calls] == ["search", "calc"]
    assert result.calls[0][2] == kw.card(film) and result.calls[1][2] == "14"
    # the model saw each observation before writing its next step
    assert seen[1].endswith(kw.card(film)) and seen[2].endswith("obs 14")
    assert result.transcript == (
        "how many years before 2025 was silver harbor released ? thought find its year act search silver harbor "
        f"obs {kw.card(film)} thought subtract act calc 2025 - 2011 obs 14 ans 14"
    )


def test_react_handles_unknown_tools_missing_answers_and_endless_actions():
    write, _ = scripted(["act fly somewhere obs", "ans 3"])
    result = rs.react(write, {}, "q ?")
    assert result.calls == [("fly", "somewhere", "error")] and result.answer == "3"
    write, _ = scripted(["i give up"])
    assert rs.react(write, {}, "q ?").answer is None  # neither an action nor an answer: the episode ends
    forever = lambda transcript: "act calc 1 + 1 obs"  # noqa: E731
    result = rs.react(forever, {"calc": rs.calculator}, "q ?", max_actions=3)
    assert result.answer is None and len(result.calls) == 3


# ------------------------------------------------------------------------------------------------
# Word-level LM helpers
# ------------------------------------------------------------------------------------------------
def test_masked_example_and_collate_train_only_on_written_tokens():
    tok = WordTokenizer("a b c ans".split())
    ids, mask = masked_example([("a b ans", False), ("c", True)], tok)
    assert tok.decode(ids) == "a b ans c" and ids[0] == ids[-1] == tok.eos_id
    assert mask == [0, 0, 0, 0, 1, 1]  # the answer and the closing <s>
    batch = collate_masked([(ids, mask), (ids[:3], mask[:3])], tok.pad_id)
    assert batch["labels"][0].tolist() == [-100, -100, -100, -100, tok.ids["c"], tok.eos_id]
    assert batch["labels"][1].tolist() == [-100] * 6
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0]


def test_greedy_continue_matches_transformers_generate():
    tok = WordTokenizer([f"w{i}" for i in range(30)])
    model = build_word_lm(WordLMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=32), tok, seed=0).eval()
    prompts = [[1, 5, 6], [1, 7, 8], [1, 9]]
    ours = greedy_continue(model, prompts, stop_ids=[], max_new_tokens=6)
    for prompt, (new, probs) in zip(prompts, ours):
        reference = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=6, min_new_tokens=6)
        assert new == reference[0, len(prompt) :].tolist()
        logits = model(input_ids=reference[:, :-1]).logits[0, len(prompt) - 1 :]
        expected = torch.softmax(logits, -1).max(-1).values
        torch.testing.assert_close(torch.tensor(probs), expected, rtol=1e-5, atol=1e-6)
