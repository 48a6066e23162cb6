"""Argument checks shared by the data modules.

Every public function in :mod:`seqlib.data` validates its knobs up front so that a bad value
fails with a message naming the argument, what it got and what was expected, instead of
surfacing later as an obscure shape error inside a model.
"""

from __future__ import annotations

import numbers


def check_int(name: str, value: object, minimum: int, why: str = "") -> int:
    """Return ``value`` as an int if it is an integer ``>= minimum``; ``why`` explains the
    minimum in the error message.

    Booleans are refused even though Python treats them as integers: ``copy_task(True, ...)``
    is far more likely a slip than a batch of one.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{name} must be an int >= {minimum}{reason}, got {value}")
    return int(value)


def check_fraction(name: str, value: object, low: float, high: float) -> float:
    """Return ``value`` as a float if it is a real number with ``low <= value < high``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if not low <= value < high:
        raise ValueError(f"{name} must satisfy {low} <= {name} < {high}, got {value}")
    return float(value)
