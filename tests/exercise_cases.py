"""The three tests every notebook's exercise checks get (imported by tests/test_exercises_nbNN.py): a right
answer passes, each plausible wrong answer fails with its hint, and an unfilled stub is "not done yet"."""

import pytest

from utils.exercises import check


def exercise_tests(right: dict, wrong: list[tuple]):
    """Test functions for ``right`` (exercise id -> a right answer) and ``wrong`` ((id, answer, a phrase of the
    hint the check must give)). Bind them to module-level ``test_*`` names so that pytest collects them."""

    @pytest.mark.parametrize("exercise_id", sorted(right))
    def test_right_answer_passes(exercise_id, capsys):
        assert check(exercise_id, right[exercise_id])
        assert capsys.readouterr().out.strip() == f"Exercise {exercise_id}: passed"

    @pytest.mark.parametrize(("exercise_id", "answer", "hint"), wrong)
    def test_wrong_answer_fails_with_a_hint(exercise_id, answer, hint, capsys):
        assert not check(exercise_id, answer)
        out = capsys.readouterr().out
        assert out.startswith(f"Exercise {exercise_id}: not yet.") and hint in out

    @pytest.mark.parametrize("exercise_id", sorted(right))
    def test_stub_is_not_done(exercise_id, capsys):
        def stub(*args): ...  # your code here

        assert not check(exercise_id, stub if callable(right[exercise_id]) else None)
        assert "not done yet" in capsys.readouterr().out

    return test_right_answer_passes, test_wrong_answer_fails_with_a_hint, test_stub_is_not_done
