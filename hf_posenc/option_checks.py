"""Validation of encoding options: one helper per kind of value, used by every encoding's constructor.

An option is checked for its type first (`TypeError`), then for its range (`ValueError`); every message names the
encoding, the option, the value and what is valid. Python's own coercions are deliberately not used: `bool` is an
`int` subclass and `float("inf")` is a float, so `max_distance=True` or `base=inf` would pass an `isinstance` check
and only fail (or give NaN) deep inside a forward pass. Only the standard library is imported here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any


def _refuse(error: type[Exception], encoding: str, option: str, value: Any, valid: str) -> Exception:
    got = f"{value!r}" + (f" of type {type(value).__name__}" if error is TypeError else "")
    return error(f"Encoding {encoding!r}: {option} must be {valid}, got {got}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(bound) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _range_text(low, high, low_open: bool = False, high_open: bool = False) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {_number(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {_number(high)}")
    return " and ".join(parts)


def _int_text(low, high) -> str:
    return " ".join(filter(None, ("an int", _range_text(low, high))))


def check_int(encoding: str, option: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """An int (a bool is not one) in `[low, high]`; returned as a plain `int`."""
    valid = _int_text(low, high)
    if not _is_int(value):
        raise _refuse(TypeError, encoding, option, value, valid)
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise _refuse(ValueError, encoding, option, value, valid)
    return value


def check_optional_int(
    encoding: str, option: str, value: Any, *, low: int | None = None, high: int | None = None
) -> int | None:
    """None, or an int as `check_int`."""
    if value is None:
        return None
    valid = _int_text(low, high) + " or None"
    if not _is_int(value):
        raise _refuse(TypeError, encoding, option, value, valid)
    if (low is not None and value < low) or (high is not None and value > high):
        raise _refuse(ValueError, encoding, option, value, valid)
    return int(value)


def check_finite_float(
    encoding: str,
    option: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number (an int or a float; not a bool, not a string) in the given range; returned as a `float`.

    `low_open` / `high_open` exclude the bound itself. NaN and the infinities are refused: NaN compares false against
    any bound, and either turns the encoding's tables into NaN.
    """
    bounds = _range_text(low, high, low_open, high_open)
    valid = f"{bounds} (a finite number)" if bounds else "a finite number"
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise _refuse(TypeError, encoding, option, value, valid)
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise _refuse(ValueError, encoding, option, value, valid) from None
    if not math.isfinite(number):
        raise _refuse(ValueError, encoding, option, value, valid)
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        raise _refuse(ValueError, encoding, option, value, valid)
    return number


def check_bool(encoding: str, option: str, value: Any) -> bool:
    """Exactly True or False: a string such as "no" is truthy and would silently mean True."""
    if not isinstance(value, bool):
        raise _refuse(TypeError, encoding, option, value, "True or False")
    return value


def check_choice(encoding: str, option: str, value: Any, choices: Iterable[Any], *, optional: bool = False) -> Any:
    """One of `choices` (or None when `optional`), compared by type and equality, so `True` is not taken for `1`.

    A value of a type that none of the choices has is a `TypeError`, another value a `ValueError`.
    """
    choices = tuple(choices)
    valid = f"None or one of {choices}" if optional else f"one of {choices}"
    if optional and value is None:
        return None
    if any(type(value) is type(choice) and value == choice for choice in choices):
        return value
    known_types = tuple({type(choice) for choice in choices})
    raise _refuse(ValueError if type(value) in known_types else TypeError, encoding, option, value, valid)
