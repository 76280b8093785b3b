"""The ref grammar: one parser used by every magic and API call.

``3f2a9c1d`` (unique id prefix) · ``baseline`` (tag) · ``latest`` · ``HEAD`` (the version the model
variable is at) · ``HEAD~2`` / ``latest~1`` (first-parent ancestors) · ``best:val_loss`` (direction
inferred from the name) · ``best:f1:max`` (explicit direction).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ..errors import UnknownRefError

Direction = Literal["min", "max"]

# Metric name tokens for which lower is better; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset(
    {
        "loss", "error", "err", "errors", "mse", "mae", "rmse", "mape", "msle", "rmsle", "smape",
        "perplexity", "ppl", "crossentropy", "entropy", "nll", "latency", "time", "duration",
        "seconds", "secs", "ms", "size", "bytes", "memory", "cost", "distance", "wer", "cer",
        "fpr", "fnr", "brier", "hinge", "kld", "kl", "divergence", "regret", "risk",
    }
)
_SUFFIXES_LOWER = ("loss", "error", "mse", "mae", "perplexity", "crossentropy", "latency")

_HEX = re.compile(r"^[0-9a-f]{4,64}$")
_ANCESTOR = re.compile(r"^(?P<base>.+?)~(?P<n>\d*)$")
_MAX_ANCESTRY = 1_000_000


def infer_direction(metric: str) -> Direction:
    """``"min"`` when lower is better for ``metric`` (loss, error, mse, ...), else ``"max"``.

    >>> infer_direction("val_loss"), infer_direction("accuracy")
    ('min', 'max')
    """
    lowered = metric.lower()
    tokens = [t for t in re.split(r"[^a-z0-9]+|_", lowered) if t]
    if any(token in LOWER_IS_BETTER for token in tokens):
        return "min"
    if any(lowered.endswith(suffix) for suffix in _SUFFIXES_LOWER):
        return "min"
    return "max"


@dataclass(frozen=True)
class Ref:
    """A parsed ref. ``kind`` is one of ``head``, ``latest``, ``best`` or ``name``.

    ``name`` refs are a tag or an id prefix; ``ancestor`` is the ``~N`` count (0 for none).
    """

    kind: Literal["head", "latest", "best", "name"]
    text: str
    value: str = ""
    metric: str = ""
    direction: Direction | None = None
    ancestor: int = 0

    @property
    def looks_like_id(self) -> bool:
        """True when the ref could be an id prefix (4 to 64 lowercase hex digits)."""
        return self.kind == "name" and bool(_HEX.match(self.value))


def parse_ref(text: object) -> Ref:
    """Parse a ref string; raise :class:`UnknownRefError` with the grammar when it is malformed."""
    if not isinstance(text, str):
        raise UnknownRefError(f"a ref must be a string, not {type(text).__name__}")
    original = text
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise UnknownRefError(f"ref {original!r} contains control characters")
    text = text.strip()
    if not text:
        raise UnknownRefError("empty ref: give an id prefix, a tag, latest, HEAD~N or best:METRIC")
    if text.startswith("best:"):
        return _parse_best(text)
    ancestor = 0
    match = _ANCESTOR.match(text)
    if match:
        count = match.group("n")
        ancestor = int(count) if count else 1
        if ancestor > _MAX_ANCESTRY:
            raise UnknownRefError(f"ref {original!r}: ~{ancestor} is beyond any history")
        text = match.group("base")
    if "~" in text or ":" in text or "/" in text or "\\" in text:
        raise UnknownRefError(
            f"cannot parse ref {original!r}: expected an id prefix, a tag, latest, HEAD, "
            "HEAD~N or best:METRIC[:min|max]"
        )
    if text == "HEAD":
        return Ref("head", original, ancestor=ancestor)
    if text == "latest":
        return Ref("latest", original, ancestor=ancestor)
    return Ref("name", original, value=text, ancestor=ancestor)


def _parse_best(text: str) -> Ref:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise UnknownRefError(f"cannot parse ref {text!r}: expected best:METRIC or best:METRIC:min|max")
    metric = parts[1]
    if len(parts) == 3:
        if parts[2] not in ("min", "max"):
            raise UnknownRefError(f"ref {text!r}: direction must be 'min' or 'max', not {parts[2]!r}")
        direction: Direction = parts[2]  # type: ignore[assignment]
    else:
        direction = infer_direction(metric)
    return Ref("best", text, metric=metric, direction=direction)


def split_remote_and_refs(words: list[str], remotes: Iterable[str]) -> tuple[str | None, list[str] | None]:
    """``[REMOTE] [REF ...]`` from a command line: the first word is the remote when it is one of
    ``remotes`` (or a URL or path), else every word is a ref and the default remote is meant."""
    if not words:
        return None, None
    first = words[0]
    if first in set(remotes) or "://" in first or first.startswith(("/", ".", "~")):
        return first, words[1:] or None
    return None, words
