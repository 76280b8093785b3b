"""Weighted comparison of versions by their metrics: the data behind ``%mvc_compare``.

For versions A and B and metrics i with weights w_i (docs/compare.md has the details):

* raw difference      D(A, B)  = sum_i w_i * |M_i^A - M_i^B|            (metric values as recorded)
* normalized          Dn(A, B) = sum_i w_i * |M_i^A - M_i^B| / r_i      (r_i: range of metric i among
                                                                         the compared versions)
* goodness            g_i(V)   = (M_i^V - lo_i) / r_i  for higher-is-better metrics,
                                 (hi_i - M_i^V) / r_i  for lower-is-better ones (1 when r_i = 0)
* score               S(V)     = sum_i w_i * g_i(V) / sum_i w_i          (in [0, 1]; 1 = best on all)

A metric a version does not have is shown as missing and left out of every sum that involves it
(never taken as 0); a version holding NaN or inf for a weighted metric is never ranked.

>>> cmp = repo.compare(name="model", weights={"val_mse": 1})   # doctest: +SKIP
>>> cmp.best.short_id, cmp.D(cmp.versions[0], cmp.versions[1])  # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import CompareError
from .refs import Direction, infer_direction
from .scoring import Scoring, score_versions
from .tables import Table, format_number
from .version import Version, metric_columns
from .weights import check_some_positive, checked_weight

ARROW = {"min": "↓", "max": "↑"}


def validate_weights(weights: Mapping[str, object] | None, metrics: Sequence[str]) -> dict[str, float]:
    """Weights for ``metrics``: every metric 1 when None; else the named ones, the rest 0.

    Raises :class:`CompareError` for unknown metrics, and for weights that break the one rule of
    :mod:`.weights` (non-numbers, NaN/inf, negatives, all zeros).
    """
    if weights is None:
        return {m: 1.0 for m in metrics}
    if not isinstance(weights, Mapping):
        raise CompareError(f"weights must map metric names to numbers, not {type(weights).__name__}")
    result = {m: 0.0 for m in metrics}
    for key, value in weights.items():
        if key not in result:
            known = ", ".join(metrics) if metrics else "none"
            raise CompareError(f"no compared version has metric {key!r} to weight (metrics: {known})")
        result[key] = checked_weight(value, f"weight of {key!r}", CompareError)
    if metrics:
        check_some_positive(result.values(), CompareError, "one metric")
    return result


def validate_directions(directions: Mapping[str, str] | None, metrics: Sequence[str]) -> dict[str, Direction]:
    """Each metric's direction: inferred from its name (as in ``best:METRIC``) unless overridden."""
    result: dict[str, Direction] = {m: infer_direction(m) for m in metrics}
    for key, value in (directions or {}).items():
        if key not in result:
            raise CompareError(f"no compared version has metric {key!r} to set a direction for")
        if value not in ("min", "max"):
            raise CompareError(f"direction of {key!r} must be 'min' or 'max', not {value!r}")
        result[key] = value  # type: ignore[assignment]
    return result


PAIRWISE_HTML_LIMIT = 30  # beyond this the HTML leaves the n x n matrix out


def weighted_difference(a: Mapping[str, float], b: Mapping[str, float], weights: Mapping[str, float],
                        scale: Mapping[str, float] | None = None) -> float:
    """D(A, B) = sum_i w_i * |a_i - b_i| / scale_i over metrics both have as finite numbers.

    NaN when no weighted metric is shared (so "nothing to compare" never looks like "identical").
    """
    total, terms = 0.0, 0
    for metric, weight in weights.items():
        if weight == 0 or metric not in a or metric not in b:
            continue
        x, y = a[metric], b[metric]
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        divisor = scale.get(metric, 1.0) if scale is not None else 1.0
        terms += 1
        if divisor > 0:
            total += weight * abs(x - y) / divisor
    return total if terms else math.nan


@dataclass
class Comparison(Scoring):
    """The result of ``repo.compare()``: metrics table, directions, weights, D, scores and ranking.

    ``versions`` keep the order they were given in; ``ranking`` is best first. Use ``D(a, b)``
    for the raw weighted difference of two versions, ``D(a, b, normalized=True)`` for the
    range-scaled one, ``score(v)``, ``to_pandas()`` and ``to_dict()``. The scoring fields
    (``weighted``, ``scale``, ``goodness``, ``scores``, ``coverage``, ``ranked``...) come from
    :class:`~mvc_magics.core.scoring.Scoring`.
    """

    versions: list[Version]
    metrics: list[str]
    directions: dict[str, Direction]
    weights: dict[str, float]
    baseline: Version

    # -- lookups ----------------------------------------------------------------------------

    def _index(self, version: Version | str) -> int:
        key = version.id if isinstance(version, Version) else str(version)
        if "_positions" not in self.__dict__:  # built once: lookups stay O(1) over many versions
            self.__dict__["_positions"] = {k: i for i, v in enumerate(self.versions) for k in (v.short_id, v.id)}
        found = self.__dict__["_positions"].get(key)
        if found is not None:
            return found
        for i, v in enumerate(self.versions):
            if len(key) >= 4 and v.id.startswith(key):
                return i
        raise CompareError(f"{key!r} is not one of the compared versions")

    # -- D: computed when asked for, so comparing many versions stays linear ----------------

    @property
    def raw(self) -> np.ndarray:
        """The pairwise raw D matrix (n x n; NaN where two versions share no weighted metric)."""
        return self._matrix(normalized=False)

    @property
    def normalized(self) -> np.ndarray:
        """The pairwise range-normalized D matrix (n x n)."""
        return self._matrix(normalized=True)

    def _matrix(self, normalized: bool) -> np.ndarray:
        key = "_normalized" if normalized else "_raw"
        if key not in self.__dict__:
            self.__dict__[key] = _pairwise(self.versions, self.weighted, self.scale if normalized else None)
        return self.__dict__[key]

    def _against(self, b: int, normalized: bool) -> np.ndarray:
        """D of every version against version ``b`` (one column, without the n x n matrix)."""
        scale = self.scale if normalized else None
        other = self.versions[b].metrics
        return np.array([weighted_difference(v.metrics, other, self.weighted, scale) for v in self.versions])

    @property
    def model(self) -> str:
        names = sorted({v.name for v in self.versions})
        return names[0] if len(names) == 1 else ", ".join(names)

    @property
    def best(self) -> Version | None:
        """The version with the highest weighted score (None when no version can be ranked)."""
        return self.versions[self.ranked[0]] if self.ranked else None

    @property
    def ranking(self) -> list[Version]:
        """Ranked versions, best first (versions that cannot be ranked are left out)."""
        return [self.versions[i] for i in self.ranked]

    def rank(self, version: Version | str) -> int | None:
        """1 for the best version; None when it is not ranked."""
        if "_ranks" not in self.__dict__:
            self.__dict__["_ranks"] = {i: r for r, i in enumerate(self.ranked, start=1)}
        return self.__dict__["_ranks"].get(self._index(version))

    def value(self, version: Version | str, metric: str) -> float | None:
        """The recorded value of ``metric`` for ``version`` (None when missing)."""
        return self.versions[self._index(version)].metrics.get(metric)

    def score(self, version: Version | str) -> float:
        """The weighted score in [0, 1] (NaN when the version is not ranked)."""
        return float(self.scores[self._index(version)])

    def D(self, a: Version | str, b: Version | str, normalized: bool = False) -> float:
        """The weighted difference of two compared versions (raw, or range-normalized)."""
        first, second = self.versions[self._index(a)], self.versions[self._index(b)]
        return weighted_difference(first.metrics, second.metrics, self.weighted, self.scale if normalized else None)

    def vs_baseline(self, normalized: bool = False) -> dict[str, float]:
        """D of each version against the baseline, by version id."""
        column = self._against(self._index(self.baseline), normalized)
        return {v.id: float(column[i]) for i, v in enumerate(self.versions)}

    def reweighted(self, weights: Mapping[str, float] | None = None,
                   directions: Mapping[str, str] | None = None) -> Comparison:
        """The same versions compared under other weights or directions (no store access)."""
        return compare_versions(self.versions, weights=weights, directions=directions, baseline=self.baseline)

    # -- rendering --------------------------------------------------------------------------

    def display_order(self) -> list[int]:
        """Ranked versions best first, then the unranked ones in their given order."""
        return self.ranked + [i for i in range(len(self.versions)) if i not in self.ranked]

    def metric_header(self, metric: str) -> str:
        weight = self.weights.get(metric, 0.0)
        return f"{metric_column(metric)} {ARROW[self.directions[metric]]} w={weight:g}"

    def table(self) -> Table:
        """The comparison as a :class:`Table` (ranked best first, best highlighted)."""
        header = ["rank", "id", "tags", "message", *map(self.metric_header, self.metrics),
                  "score", "D vs base", "Dn vs base"]
        base = self._index(self.baseline)
        raw, normalized = self._against(base, False), self._against(base, True)
        rows = []
        for i in self.display_order():
            v = self.versions[i]
            rank = self.rank(v)
            rows.append([
                rank if rank is not None else "—",
                v.short_id + (" (base)" if i == base else ""),
                ", ".join(v.tags), v.message[:40],
                *[v.metrics.get(m) for m in self.metrics],
                None if math.isnan(self.scores[i]) else float(self.scores[i]),
                _none_if_nan(raw[i]), _none_if_nan(normalized[i]),
            ])
        best = self.best
        title = (f"{len(self.versions)} versions of {self.model}; best: "
                 + (f"{best.short_id} (score {format_number(self.score(best))})" if best else "none")
                 + f"; baseline {self.baseline.short_id}")
        return Table(header, rows, title=title, highlight={0} if best else set(),
                     notes=[f"note: {n}" for n in self.notes])

    def __str__(self) -> str:
        return self.table().to_text()

    def __repr__(self) -> str:
        best = self.best.short_id if self.best else "none"
        return f"<Comparison of {len(self.versions)} versions of {self.model}: best {best}>"

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        if len(self.versions) > PAIRWISE_HTML_LIMIT:
            note = (f"<div><small>pairwise D not shown for {len(self.versions)} versions: use "
                    "D(a, b) or distance_frame()</small></div>")
            return f"<div class='mvc-comparison'>{self.table().to_html()}{note}</div>"
        ids = [self.versions[i].short_id for i in self.display_order()]
        cells = "".join(f"<th>{html.escape(s)}</th>" for s in ids)
        matrix = []
        for i in self.display_order():
            row = "".join(f"<td>{html.escape(_cell(self.raw[i, j]))} / {html.escape(_cell(self.normalized[i, j]))}"
                          "</td>" for j in self.display_order())
            matrix.append(f"<tr><th>{html.escape(self.versions[i].short_id)}</th>{row}</tr>")
        pairs = (f"<details><summary><small>pairwise D (raw / normalized)</small></summary>"
                 f"<table class='mvc-table'><tr><th></th>{cells}</tr>{''.join(matrix)}</table></details>")
        return f"<div class='mvc-comparison'>{self.table().to_html()}{pairs}</div>"

    def to_dict(self) -> dict:
        """Plain data (JSON-serializable; missing values and undefined D are None)."""
        base = self._index(self.baseline)
        raw, normalized = self._against(base, False), self._against(base, True)
        versions = []
        for i, v in enumerate(self.versions):
            versions.append({
                "id": v.id, "short_id": v.short_id, "model": v.name, "message": v.message,
                "tags": list(v.tags), "created": v.created.isoformat(),
                "metrics": {m: v.metrics.get(m) for m in self.metrics},
                "score": _none_if_nan(self.scores[i]), "rank": self.rank(v),
                "unranked_reason": self.unranked.get(i),
                "D_vs_baseline": _none_if_nan(raw[i]),
                "D_normalized_vs_baseline": _none_if_nan(normalized[i]),
            })
        return {
            "model": self.model, "baseline": self.baseline.id,
            "best": self.best.id if self.best else None, "ranking": [v.id for v in self.ranking],
            "metrics": [{"name": m, "direction": self.directions[m], "weight": self.weights[m],
                         "min": self.ranges[m][0] if m in self.ranges else None,
                         "max": self.ranges[m][1] if m in self.ranges else None} for m in self.metrics],
            "versions": versions,
            "D": [[_none_if_nan(x) for x in row] for row in self.raw],
            "D_normalized": [[_none_if_nan(x) for x in row] for row in self.normalized],
            "notes": list(self.notes),
        }

    def to_pandas(self):
        """The table as a ``pandas.DataFrame`` indexed by short id, ranked best first."""
        import pandas as pd

        base = self._index(self.baseline)
        raw, normalized = self._against(base, False), self._against(base, True)
        rows = []
        for i in self.display_order():
            v = self.versions[i]
            rows.append({"id": v.short_id, "rank": self.rank(v), "tags": ", ".join(v.tags), "message": v.message,
                         **{metric_column(m): v.metrics.get(m, math.nan) for m in self.metrics},
                         "score": float(self.scores[i]),
                         "D_vs_baseline": float(raw[i]),
                         "D_normalized_vs_baseline": float(normalized[i])})
        return pd.DataFrame(rows).set_index("id")

    def distance_frame(self, normalized: bool = False):
        """The pairwise D matrix as a ``pandas.DataFrame`` (rows and columns: short ids)."""
        import pandas as pd

        ids = [v.short_id for v in self.versions]
        return pd.DataFrame(self.normalized if normalized else self.raw, index=ids, columns=ids)


# The comparison's own columns (text table and ``to_pandas``); a metric may be named like one of them.
OWN_COLUMNS = frozenset({"id", "rank", "tags", "message", "score", "D vs base", "Dn vs base", "D_vs_baseline",
                         "D_normalized_vs_baseline"})


def metric_column(metric: str) -> str:
    """The column of a user metric: its name, or ``metric NAME`` when the table has a column of that name."""
    return f"metric {metric}" if metric in OWN_COLUMNS else metric


def _pairwise(versions: list[Version], weights: Mapping[str, float],
              scale: Mapping[str, float] | None) -> np.ndarray:
    """Every D(A, B) at once, with :func:`weighted_difference`'s rules, vectorized per metric."""
    n = len(versions)
    total, terms = np.zeros((n, n)), np.zeros((n, n), dtype=int)
    for metric, weight in weights.items():
        if weight == 0:
            continue
        column = np.array([v.metrics.get(metric, math.nan) for v in versions], dtype=float)
        ok = np.isfinite(column)
        both = ok[:, None] & ok[None, :]
        terms += both
        divisor = scale.get(metric, 1.0) if scale is not None else 1.0
        if divisor > 0:
            finite = np.where(ok, column, 0.0)  # inf - inf would warn; those pairs are masked anyway
            delta = np.abs(finite[:, None] - finite[None, :]) * (weight / divisor)
            total += np.where(both, delta, 0.0)
    return np.where(terms > 0, total, math.nan)


def _none_if_nan(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _cell(value: float) -> str:
    return "—" if math.isnan(value) else format_number(float(value))


def compare_versions(
    versions: Iterable[Version],
    weights: Mapping[str, object] | None = None,
    directions: Mapping[str, str] | None = None,
    baseline: Version | None = None,
) -> Comparison:
    """Compare already-loaded versions (the math of :meth:`Repo.compare`, without a store).

    ``baseline`` defaults to the oldest version; it is added to ``versions`` when missing.
    """
    versions = list(versions)
    if baseline is not None and all(v.id != baseline.id for v in versions):
        versions.append(baseline)
    seen: dict[str, int] = {}
    for v in versions:
        if v.id in seen:
            raise CompareError(f"version {v.short_id} is given twice: comparing a version with itself says nothing")
        seen[v.id] = 1
    if len(versions) < 2:
        raise CompareError("need at least two versions to compare" + (
            f" (only {versions[0].short_id})" if versions else ""))
    metrics = metric_columns(versions, limit=10_000)
    weights_ = validate_weights(weights, metrics)
    directions_ = validate_directions({**stated_directions(versions, metrics), **(directions or {})}, metrics)
    if baseline is None:
        baseline = min(versions, key=lambda v: v.created)
    return _compute(versions, metrics, weights_, directions_, baseline)


def stated_directions(versions: Iterable[Version], metrics: Sequence[str]) -> dict[str, str]:
    """Directions the versions state for their metrics (``extra["metric_directions"]``: a merge states
    that its score is higher-is-better); they win over the direction inferred from a metric's name."""
    stated: dict[str, str] = {}
    for version in versions:
        given = version.extra.get("metric_directions")
        if isinstance(given, dict):
            for metric, direction in given.items():
                if metric in metrics and direction in ("min", "max"):
                    stated.setdefault(metric, direction)
    return stated


def _compute(versions: list[Version], metrics: list[str], weights: dict[str, float],
             directions: dict[str, Direction], baseline: Version) -> Comparison:
    scoring = score_versions(versions, metrics, weights, directions)
    return Comparison(**vars(scoring), versions=versions, metrics=metrics, directions=directions, weights=weights,
                      baseline=baseline)
