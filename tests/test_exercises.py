"""The self-checking exercise framework (utils.exercises): stubs say "not done yet", wrong answers say why,
right answers pass. (That every check passes the solution notebooks' answers is nbval's job.)"""

import pytest

from utils.exercises import NotYet, check, exercise, is_stub


@exercise("99.1")
def _check_square(square):
    for x in (0.0, 1.5, -2.0):
        if abs(square(x) - x * x) > 1e-9:
            raise NotYet(f"square({x}) gave {square(x)}; it should be x times x")


@exercise("99.2")
def _check_number(value):
    assert abs(value - 0.25) < 1e-3, f"{value} is not the probability asked for"


def test_stub_says_not_done(capsys):
    def square(x): ...  # your code here

    def square_raises(x):
        """Return x squared."""
        raise NotImplementedError

    assert is_stub(square) and is_stub(square_raises) and is_stub(None) and is_stub(...)
    assert not check("99.1", square)
    assert not check("99.1", square_raises)
    assert not check("99.2", None)
    assert capsys.readouterr().out.count("not done yet") == 3


def test_a_function_returning_none_counts_as_not_done(capsys):
    def square(x):
        y = x * x  # noqa: F841 -- forgot to return
        return None

    assert not is_stub(square)
    assert not check("99.1", square)
    assert "not done yet" in capsys.readouterr().out


def test_wrong_answer_says_why_without_raising(capsys):
    assert not check("99.1", lambda x: 2 * x)
    assert not check("99.2", 0.5)
    out = capsys.readouterr().out
    assert "Exercise 99.1: not yet. square(1.5) gave 3.0" in out
    assert "Exercise 99.2: not yet. 0.5 is not the probability" in out


def test_right_answer_passes(capsys):
    def square(x):
        return x * x

    assert check("99.1", square) and check("99.2", 0.25)
    assert capsys.readouterr().out.splitlines() == ["Exercise 99.1: passed", "Exercise 99.2: passed"]


def test_unknown_and_malformed_ids_are_named():
    with pytest.raises(KeyError, match="'98.7'"):
        check("98.7", 1.0)
    with pytest.raises(ValueError, match="'4.2'"):
        exercise("4.2")
    with pytest.raises(ValueError, match="two checks"):
        exercise("99.1")(lambda answer: None)
