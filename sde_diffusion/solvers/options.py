"""The one validator of solver options: every constructor checks its options here, at the front door, so that a bad
value fails when the solver is built, with a message that names the option (not later, deep inside ``coefficients``
or ``step``).

* a value of the wrong type (``order=2.0``, ``order=True``, ``eta="1"``) raises
  [`OptionTypeError`][sde_diffusion.solvers.options.OptionTypeError], which is
  both a ``TypeError`` and a ``ValueError`` (so ``except ValueError`` catches every bad option);
* a value of the right type outside its range or set of choices raises ``ValueError``, listing the valid values.

Each function returns the (normalised) value, so a constructor reads ``self.order = check_int("order", order, 1, 3)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterable
from typing import Any

__all__ = [
    "OptionTypeError",
    "check_bool",
    "check_int",
    "check_choice",
    "check_float",
    "check_positive",
    "check_nonnegative",
    "check_int_sequence",
]


class OptionTypeError(TypeError, ValueError):
    """A solver option of the wrong type (a ``TypeError`` that ``except ValueError`` catches as well)."""


def _got(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool`` (``0``/``1`` are refused: a flag is ``True`` or ``False``)."""
    if not isinstance(value, bool):
        raise OptionTypeError(f"{name} must be True or False, got {_got(value)}")
    return value


def check_int(
    name: str, value: Any, low: int | None = None, high: int | None = None, *, choices: Collection[int] | None = None
) -> int:
    """``value`` as a Python ``int`` if it is an integer (Python or numpy; not a ``bool``, not a float such as
    ``2.0``) in ``[low, high]`` (either bound may be ``None``) and, if given, one of ``choices``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionTypeError(f"{name} must be an int, got {_got(value)}")
    value = int(value)
    if choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (
            f"in {low}..{high}"
            if low is not None and high is not None
            else (f">= {low}" if high is None else f"<= {high}")
        )
        raise ValueError(f"{name} must be an int {bounds}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices`` (compared by type and value: ``1`` is not ``True``, ``2.0`` is not
    ``2``); the error lists the valid values (an [`OptionTypeError`][sde_diffusion.solvers.options.OptionTypeError] if
    no choice has the value's type)."""
    choices = tuple(choices)
    if not any(type(value) is type(c) and value == c for c in choices):
        error = ValueError if any(type(value) is type(c) for c in choices) else OptionTypeError
        raise error(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_float(name: str, value: Any, *, low: float | None = None, strict: bool = False) -> float:
    """``value`` as a ``float`` if it is a finite real number (not a ``bool``) with ``value >= low``
    (``value > low`` when ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionTypeError(f"{name} must be a real number, got {_got(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value!r}")
    return value


def check_positive(name: str, value: Any) -> float:
    """A finite real number ``> 0``, as a ``float``."""
    return check_float(name, value, low=0.0, strict=True)


def check_nonnegative(name: str, value: Any) -> float:
    """A finite real number ``>= 0``, as a ``float``."""
    return check_float(name, value, low=0.0)


def check_int_sequence(name: str, value: Any, low: int | None = None, high: int | None = None) -> tuple[int, ...]:
    """A non-empty sequence of ints, each checked as [`check_int`][sde_diffusion.solvers.options.check_int] (named
    ``name[i]``), as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise OptionTypeError(f"{name} must be a sequence of ints, got {_got(value)}")
    out = tuple(check_int(f"{name}[{i}]", v, low, high) for i, v in enumerate(value))
    if not out:
        raise ValueError(f"{name} must not be empty")
    return out
