"""Self-checking exercises: a student fills in a stub, calls ``check("04.2", answer)``, and is told whether the
answer holds, without seeing the solution.

Each notebook's checks live in their own module (``utils.exercises.nb04`` for notebook 04, ...), registered
with :func:`exercise`. A check receives the student's answer (a function, a number, a tensor, ...), tests it
against tolerances or properties, and raises :class:`NotYet` with a hint when it does not hold. A check may
also raise ``AssertionError``; its message is shown the same way.

In a notebook::

    from utils.exercises import check

    def masked_mean(values, mask):
        ...  # your code here

    check("04.2", masked_mean)

An unfilled stub (a function whose body is ``...`` or ``pass``, that raises ``NotImplementedError``, or that
returns ``None``; or a ``None`` / ``...`` answer) prints "not done yet" and never fails: nbval runs the
student notebooks with their stubs unfilled. A wrong answer prints what is wrong, also without raising, so
that one exercise does not stop the rest of the notebook. :func:`check` returns True only when it passed,
which is what the solution notebooks assert.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from collections.abc import Callable

NOTEBOOK_MODULES = {  # exercise id prefix -> module holding that notebook's checks (imported on first use)
    f"{n:02d}": f"utils.exercises.nb{n:02d}" for n in range(20)
}

_CHECKS: dict[str, Callable[[object], None]] = {}


class NotYet(Exception):  # noqa: N818 -- reads as what the student is told: "not yet: ..."
    """The answer does not hold yet; the message says why (without giving the solution away)."""


class _NotDone(Exception):  # noqa: N818
    pass


def exercise(exercise_id: str) -> Callable[[Callable[[object], None]], Callable[[object], None]]:
    """Register the decorated function as the check of ``exercise_id`` ("NN.K": notebook NN, exercise K)."""
    if not re.fullmatch(r"\d{2}\.\d+[a-z]?", exercise_id):
        raise ValueError(f"exercise id must look like '04.2' (notebook.exercise), got {exercise_id!r}")

    def register(fn: Callable[[object], None]) -> Callable[[object], None]:
        if exercise_id in _CHECKS:
            raise ValueError(
                f"exercise {exercise_id} has two checks: {_CHECKS[exercise_id].__name__} and {fn.__name__}"
            )
        _CHECKS[exercise_id] = fn
        return fn

    return register


def _check_for(exercise_id: str) -> Callable[[object], None]:
    if exercise_id not in _CHECKS:
        module = NOTEBOOK_MODULES.get(exercise_id.split(".")[0])
        if module is not None:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as error:
                if error.name != module:
                    raise
    if exercise_id not in _CHECKS:
        raise KeyError(f"no check is registered for exercise {exercise_id!r}; known: {sorted(_CHECKS) or 'none'}")
    return _CHECKS[exercise_id]


def is_stub(answer: object) -> bool:
    """True for an answer the student has not written yet: None, ``...``, or a function whose body is only a
    docstring, ``...`` or ``pass``."""
    if answer is None or answer is Ellipsis:
        return True
    if inspect.isfunction(answer) and answer.__name__ != "<lambda>":
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(answer)))
        except (OSError, TypeError, SyntaxError):
            return False
        function = tree.body[0]
        return isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) and all(
            _is_stub_statement(statement) for statement in function.body
        )
    return False


def _is_stub_statement(statement: ast.stmt) -> bool:
    """A docstring, ``...``, ``pass`` or ``raise NotImplementedError``: what an unfilled stub consists of."""
    if isinstance(statement, ast.Pass):
        return True
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return statement.value.value is Ellipsis or isinstance(statement.value.value, str)
    if isinstance(statement, ast.Raise) and statement.exc is not None:
        exc = statement.exc.func if isinstance(statement.exc, ast.Call) else statement.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False


def stub_guard(fn: Callable) -> Callable:
    """Wrap a student's function so that calling an unfilled stub stops the check with "not done yet"."""

    def guarded(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except NotImplementedError:
            raise _NotDone from None
        if result is None:
            raise _NotDone
        return result

    return guarded


class Verdict:
    """What :func:`check` returns: true when the answer passed (``assert check(...)`` in the solutions). It
    displays nothing in a notebook, so a starter cell shows only the printed verdict, not a stray False."""

    def __init__(self, passed: bool) -> None:
        self.passed = passed

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"Verdict(passed={self.passed})"

    def _ipython_display_(self) -> None:  # IPython calls this instead of printing the repr
        pass


def check(exercise_id: str, answer: object) -> Verdict:
    """Check the student's ``answer`` to exercise ``exercise_id``; print the verdict; true if it passed."""
    return Verdict(_run_check(exercise_id, answer))


def _run_check(exercise_id: str, answer: object) -> bool:
    run_check = _check_for(exercise_id)
    if is_stub(answer):
        print(f"Exercise {exercise_id}: not done yet")
        return False
    try:
        run_check(stub_guard(answer) if inspect.isfunction(answer) else answer)
    except _NotDone:
        print(f"Exercise {exercise_id}: not done yet")
        return False
    except (NotYet, AssertionError) as why:
        print(f"Exercise {exercise_id}: not yet. {str(why).splitlines()[0] if str(why) else 'the check failed'}")
        return False
    print(f"Exercise {exercise_id}: passed")
    return True
