"""One rule for weights, wherever a user gives them: merge weights (one per version) and compare
weights (one per metric). A weight is a real number (a numpy scalar too, never a bool), finite and
>= 0, and at least one weight is positive; each caller raises its own error type with the same words.

>>> checked_weight(2, "weight of 'acc'", ValueError)
2.0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable


def checked_weight(value: object, label: str, error: type[Exception]) -> float:
    """``value`` as a float, or ``error`` saying what is wrong with ``label`` (``weight 2``)."""
    if not isinstance(value, numbers.Real | str):
        item = getattr(value, "item", None)  # numpy scalars and 0-d arrays
        value = item() if callable(item) else value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{label} is not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise error(f"{label} is {number}: weights must be finite")
    if number < 0:
        raise error(f"{label} is negative ({number:g}): weights must be >= 0")
    return number


def check_some_positive(weights: Iterable[float], error: type[Exception], what: str) -> None:
    """``error`` when no weight is positive; ``what`` says what must have one (``one version``)."""
    if not any(w > 0 for w in weights):
        raise error(f"all weights are zero: at least {what} must have a positive weight")
