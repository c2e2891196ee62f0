"""Reasoning with tiny models: a multi-step puzzle answered directly, with a scratchpad (chain-of-thought), or
as a program (PAL); and a ReAct loop that lets a model call tools.

**The score puzzle.** A film starts with a score and gains or loses points a few times:
``score 3 plus 7 minus 2 plus 5 ?``; the answer is the final score (13). With ``steps`` operations, answering
*directly* means doing every step inside one forward pass; with a *scratchpad* the model restates each step and
writes the running total after it (``so 3 plus 7 is 10 minus 2 is 8 plus 5 is 13``), so every written token
needs one copy or one addition only; with *PAL* (program-aided
language models) it writes the arithmetic as an expression (``prog 3 + 7 - 2 + 5``) that Python evaluates.

**PAL's evaluator never runs model text as code.** :func:`safe_eval` parses the text with ``ast`` and walks the
tree itself, allowing numbers, ``+ - * /``, unary minus and parentheses, nothing else: no names, calls,
attributes, subscripts, powers or comparisons, so nothing a model writes can reach Python.

**ReAct** (reason + act): the model writes ``thought ... act <tool> <input>``; the loop stops the model at
``obs``, runs the tool, appends its output as the observation, and lets the model continue, until it writes
``ans <answer>``. Tools here: ``search`` (BM25 over fact cards, :mod:`utils.retrieval`) and ``calc``
(:func:`safe_eval`).
"""

from __future__ import annotations

import ast
import operator
import random
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_SCORE = 29  # every running total stays in 0..MAX_SCORE: a small addition table, one word per total

# ------------------------------------------------------------------------------------------------
# The score puzzle: direct, scratchpad (chain-of-thought), program (PAL)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Puzzle:
    """A start score and signed steps; ``totals`` are the running scores after each step."""

    start: int
    steps: tuple[int, ...]

    @property
    def totals(self) -> list[int]:
        out, total = [], self.start
        for s in self.steps:
            total += s
            out.append(total)
        return out

    @property
    def result(self) -> int:
        return self.start + sum(self.steps)

    def question(self) -> str:
        words = [f"{'plus' if s > 0 else 'minus'} {abs(s)}" for s in self.steps]
        return f"score {self.start} {' '.join(words)} ?"

    def scratchpad(self) -> str:
        """Each step restated, then the total after it: ``so 3 plus 7 is 10 minus 2 is 8 plus 5 is 13``."""
        words = [f"{'plus' if s > 0 else 'minus'} {abs(s)} is {t}" for s, t in zip(self.steps, self.totals)]
        return f"so {self.start} " + " ".join(words)

    def program(self) -> str:
        return " ".join([str(self.start)] + [f"{'+' if s > 0 else '-'} {abs(s)}" for s in self.steps])


def random_puzzle(rng: random.Random, steps: int) -> Puzzle:
    """``steps`` operations of 1..9 points each; a loss is drawn only when the score stays >= 0 (and a gain only
    when it stays <= MAX_SCORE)."""
    total = start = rng.randint(1, 9)
    moves = []
    for _ in range(steps):
        size = rng.randint(1, 9)
        sign = rng.choice((1, -1))
        if not 0 <= total + sign * size <= MAX_SCORE:
            sign = -sign
        moves.append(sign * size)
        total += sign * size
    return Puzzle(start, tuple(moves))


def parse_int(text: str) -> int | None:
    """The integer ``text`` spells, or None."""
    try:
        return int(text.strip())
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------
# PAL: evaluate an arithmetic expression without eval()
# ------------------------------------------------------------------------------------------------
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_EXPRESSION_CHARS = 200


class UnsafeExpression(ValueError):
    """The text is not an arithmetic expression of numbers, + - * / and parentheses."""


def safe_eval(text: str) -> float | int:
    """The value of an arithmetic expression: numbers, ``+ - * /``, unary ``-``/``+`` and parentheses only.

    Anything else (names, calls, attributes, ``**``, comparisons, strings, ...) raises :class:`UnsafeExpression`
    before anything is evaluated; so does dividing by zero, and text longer than ``MAX_EXPRESSION_CHARS``.
    """
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION_CHARS:
        raise UnsafeExpression(f"need a string of at most {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise UnsafeExpression(f"not an expression: {text!r}") from err

    def walk(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # not bool, str, complex
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise UnsafeExpression("division by zero")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        raise UnsafeExpression(f"{type(node).__name__} is not allowed in {text!r}")

    return walk(tree)


# ------------------------------------------------------------------------------------------------
# ReAct: Thought / Action / Observation
# ------------------------------------------------------------------------------------------------
ACT, OBS, ANS = "act", "obs", "ans"


def calculator(text: str) -> str:
    """The ``calc`` tool: :func:`safe_eval`, the result as an integer word when it is one; ``error`` otherwise."""
    try:
        value = safe_eval(text)
    except UnsafeExpression:
        return "error"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def parse_action(text: str) -> tuple[str, str] | None:
    """(tool, input) of the last ``act <tool> <input> [obs]`` in ``text``, or None when there is none."""
    words = text.split()
    if ACT not in words:
        return None
    i = len(words) - 1 - words[::-1].index(ACT)
    if words[-1] == OBS:
        words = words[:-1]
    if i + 1 >= len(words):
        return None
    return words[i + 1], " ".join(words[i + 2 :])


@dataclass
class ReActResult:
    """A finished (or abandoned) episode: the whole transcript, the answer (None if none), the tool calls."""

    transcript: str
    answer: str | None
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    """(tool, input, observation) per action"""


def react(
    write: Callable[[str], str], tools: dict[str, Callable[[str], str]], question: str, max_actions: int = 4
) -> ReActResult:
    """Run a ReAct episode.

    ``write(transcript)`` is the model: given the transcript so far it returns the text it writes next, ending
    either with ``obs`` (it wants a tool's observation) or with ``ans <answer>``. After ``obs`` the loop parses
    the last ``act <tool> <input>``, runs the tool (an unknown tool observes ``error``) and appends the result.
    At most ``max_actions`` tool calls; an episode without ``ans`` has answer None.
    """
    transcript = question
    calls = []
    for _ in range(max_actions + 1):
        step = write(transcript).strip()
        transcript = f"{transcript} {step}".strip()
        words = step.split()
        if ANS in words:
            i = words.index(ANS)
            return ReActResult(transcript, " ".join(words[i + 1 :]) or None, calls)
        if not words or words[-1] != OBS or len(calls) == max_actions:
            break
        action = parse_action(step)
        if action is None:
            observation = "error"
            tool, argument = "", ""
        else:
            tool, argument = action
            observation = tools[tool](argument) if tool in tools else "error"
        calls.append((tool, argument, observation))
        transcript = f"{transcript} {observation}"
    return ReActResult(transcript, None, calls)
