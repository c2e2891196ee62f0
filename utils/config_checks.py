"""Validation of config dataclasses: every field checked when the config is built, one error format.

A bad setting should fail where it is written, not hours later: ``grad_clip=-1`` makes
``clip_grad_norm_`` flip the gradient (training then climbs the loss), ``lr=nan`` trains nothing, and
``steps=2.5`` fails with a ``TypeError`` deep inside a loop. Each config's ``__post_init__`` calls these
helpers on its fields, and every error reads

    RewardModelConfig.grad_clip must be a finite number > 0, got -1

naming the class, the field, what is allowed and the value given. ``bool`` is not accepted as a number
(``True`` is an ``int`` to Python, never a batch size to us); integers are accepted where a float is
expected, and numpy scalars where they stand for a number.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any


def fail(obj: Any, name: str, allowed: str) -> None:
    """Raise the standard error: ``<Class>.<name> must be <allowed>, got <value>``."""
    raise ValueError(f"{type(obj).__name__}.{name} must be {allowed}, got {getattr(obj, name)!r}")


def check(obj: Any, name: str, ok: bool, allowed: str) -> None:
    """A rule no helper below expresses (e.g. one field against another): fail unless ``ok``."""
    if not ok:
        fail(obj, name, allowed)


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number (int or float, not bool, not NaN or infinite)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    """' > 0', ' in [0, 1)', ... : the allowed range in words (empty when unbounded)."""
    low = f"({gt:g}" if gt is not None else f"[{ge:g}" if ge is not None else None
    high = f"{lt:g})" if lt is not None else f"{le:g}]" if le is not None else None
    if low and high:
        return f" in {low}, {high}"
    if low:
        return f" > {gt:g}" if gt is not None else f" >= {ge:g}"
    if high:
        return f" < {lt:g}" if lt is not None else f" <= {le:g}"
    return ""


def _in_bounds(value: float, gt: float | None, ge: float | None, lt: float | None, le: float | None) -> bool:
    return (
        (gt is None or value > gt)
        and (ge is None or value >= ge)
        and (lt is None or value < lt)
        and (le is None or value <= le)
    )


def check_int(
    obj: Any,
    name: str,
    *,
    gt: int | None = None,
    ge: int | None = None,
    lt: int | None = None,
    le: int | None = None,
    none_ok: bool = False,
) -> None:
    """``getattr(obj, name)`` is an int (not a bool) within the bounds, or None where ``none_ok``."""
    value = getattr(obj, name)
    if none_ok and value is None:
        return
    if not (is_int(value) and _in_bounds(value, gt, ge, lt, le)):
        fail(obj, name, ("None or " if none_ok else "") + "an int" + _bounds(gt, ge, lt, le))


def check_number(
    obj: Any,
    name: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    none_ok: bool = False,
) -> None:
    """``getattr(obj, name)`` is a finite number within the bounds, or None where ``none_ok``."""
    value = getattr(obj, name)
    if none_ok and value is None:
        return
    if not (is_number(value) and _in_bounds(value, gt, ge, lt, le)):
        fail(obj, name, ("None or " if none_ok else "") + "a finite number" + _bounds(gt, ge, lt, le))


def check_numbers(
    obj: Any,
    name: str,
    *,
    length: int | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> None:
    """``getattr(obj, name)`` is a non-empty tuple (of ``length`` items, if given) of finite numbers, each
    within the bounds: AdamW's ``betas``, a list of probabilities, the betas of a sweep."""
    value = getattr(obj, name)
    ok = (
        isinstance(value, tuple)
        and len(value) > 0
        and (length is None or len(value) == length)
        and all(is_number(v) and _in_bounds(v, gt, ge, lt, le) for v in value)
    )
    if not ok:
        count = f"{length} finite numbers" if length is not None else "finite numbers"
        each = _bounds(gt, ge, lt, le)
        size = "non-empty " if length is None else ""
        fail(obj, name, f"a {size}tuple of {count}" + (f", each{each}" if each else ""))


def check_bool(obj: Any, name: str) -> None:
    """``getattr(obj, name)`` is True or False (not 'no', not 0)."""
    if not isinstance(getattr(obj, name), bool):
        fail(obj, name, "a bool")


def check_choice(obj: Any, name: str, choices: Collection[Any]) -> None:
    """``getattr(obj, name)`` is one of ``choices``."""
    value = getattr(obj, name)
    if isinstance(value, bool) or value not in choices:
        fail(obj, name, f"one of {tuple(choices)}")


def check_text(obj: Any, name: str) -> None:
    """``getattr(obj, name)`` is a non-empty string."""
    value = getattr(obj, name)
    if not (isinstance(value, str) and value.strip()):
        fail(obj, name, "a non-empty string")


def check_names(obj: Any, name: str) -> None:
    """``getattr(obj, name)`` is a non-empty tuple of non-empty strings (e.g. module names for LoRA)."""
    value = getattr(obj, name)
    if not (isinstance(value, tuple) and value and all(isinstance(v, str) and v for v in value)):
        fail(obj, name, "a non-empty tuple of names")


def check_instance(obj: Any, name: str, cls: type) -> None:
    """``getattr(obj, name)`` is a ``cls`` (a config nested in another, e.g. ``Profile.ppo``)."""
    if not isinstance(getattr(obj, name), cls):
        fail(obj, name, f"a {cls.__name__}")
