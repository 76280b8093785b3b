"""Validation and capture of version metadata: metrics, params, author, library versions."""

from __future__ import annotations

import getpass
import json
import numbers
import platform
import socket
import unicodedata
from collections.abc import Mapping

from .._version import __version__
from ..errors import InvalidMetricError


def validate_key(key: object, kind: str) -> str:
    if not isinstance(key, str) or not key.strip():
        raise InvalidMetricError(f"{kind} names must be non-empty strings, not {key!r}")
    if any(unicodedata.category(ch).startswith("C") for ch in key) or ":" in key or "=" in key:
        raise InvalidMetricError(f"{kind} name {key!r} must not contain ':', '=' or control characters")
    if len(key) > 128:
        raise InvalidMetricError(f"{kind} name {key[:20]!r}... is longer than 128 characters")
    return key


def validate_metrics(metrics: Mapping | None) -> dict[str, float]:
    """Metric values must be real numbers; NaN and inf are kept (shown, never ranked best)."""
    result: dict[str, float] = {}
    if metrics is None:
        return result
    if not isinstance(metrics, Mapping):
        raise InvalidMetricError(f"metrics must be a mapping of name to number, not {type(metrics).__name__}")
    for key, value in metrics.items():
        validate_key(key, "metric")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            try:
                value = float(value.item() if hasattr(value, "item") else value)  # numpy/tensor scalars
            except (TypeError, ValueError, AttributeError):
                raise InvalidMetricError(f"metric {key!r} must be a number, not {value!r}") from None
        result[key] = float(value)
    return result


def parse_metric_value(key: str, text: str) -> float:
    """A metric from the command line: ``--metric acc=0.91`` (``nan`` and ``inf`` accepted)."""
    try:
        return float(text)
    except ValueError:
        raise InvalidMetricError(f"metric {key!r} must be a number, not {text!r}") from None


def validate_params(params: Mapping | None) -> dict[str, object]:
    """Params may be any JSON value (numbers, strings, lists...)."""
    result: dict[str, object] = {}
    if params is None:
        return result
    if not isinstance(params, Mapping):
        raise InvalidMetricError(f"params must be a mapping, not {type(params).__name__}")
    for key, value in params.items():
        validate_key(key, "param")
        if hasattr(value, "item") and callable(value.item):
            value = value.item()
        try:
            json.dumps(value, allow_nan=True)
        except (TypeError, ValueError):
            raise InvalidMetricError(f"param {key!r} must be a JSON value, not {type(value).__name__}") from None
        result[key] = value
    return result


def parse_param_value(text: str) -> object:
    """A param from the command line: JSON when it parses (numbers, lists), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def author() -> str:
    """``user@host`` of whoever commits."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def base_library_versions() -> dict[str, str]:
    import h5py
    import numpy

    return {"mvc_magics": __version__, "python": platform.python_version(),
            "numpy": numpy.__version__, "h5py": h5py.__version__}
