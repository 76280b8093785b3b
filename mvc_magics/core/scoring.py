"""Scoring versions by their metrics: each metric's goodness, the weighted score, the ranking.

* goodness   g_i(V) = (M_i^V - lo_i) / r_i for higher-is-better metrics, (hi_i - M_i^V) / r_i for
             lower-is-better ones (1 when r_i = 0), over the finite values of the compared versions
* score      S(V)   = sum_i w_i * g_i(V) / sum_i w_i over the weighted metrics V has (in [0, 1])
* coverage          the share of the total weight V's metrics carry; versions with more rank first

A metric a version lacks is left out of its score (with a note); NaN or inf in a weighted metric
leaves the version unranked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .refs import Direction
from .tables import format_number
from .version import Version


@dataclass
class Scoring:
    """What :func:`score_versions` found (the fields :class:`~mvc_magics.core.compare.Comparison` holds)."""

    weighted: dict[str, float]  # the metrics that count, with their weights
    scale: dict[str, float]  # each weighted metric's range among the versions
    goodness: np.ndarray
    scores: np.ndarray
    coverage: np.ndarray
    ranked: list[int]
    unranked: dict[int, str]
    ranges: dict[str, tuple[float, float]]
    notes: list[str]


def score_versions(versions: list[Version], metrics: list[str], weights: dict[str, float],
                   directions: dict[str, Direction]) -> Scoring:
    """Goodness per metric, the weighted score and coverage of each version, and the ranking."""
    n, notes = len(versions), []
    values = np.array([[v.metrics.get(m, math.nan) for m in metrics] for v in versions], dtype=float).reshape(n, -1)
    finite = np.isfinite(values)
    ranges: dict[str, tuple[float, float]] = {}
    goodness = np.full(values.shape, math.nan)
    for j, metric in enumerate(metrics):
        column = values[finite[:, j], j]
        if column.size == 0:
            if weights[metric]:
                notes.append(f"{metric} has no finite value among the compared versions: left out")
            continue
        lo, hi = float(column.min()), float(column.max())
        ranges[metric] = (lo, hi)
        span = hi - lo
        for i in np.flatnonzero(finite[:, j]):
            x = float(values[i, j])
            if span <= 0:
                goodness[i, j] = 1.0  # every compared version is equally good on this metric
            else:
                goodness[i, j] = (x - lo) / span if directions[metric] == "max" else (hi - x) / span
    usable = [j for j, m in enumerate(metrics) if weights[m] > 0 and m in ranges]
    total_weight = sum(weights[metrics[j]] for j in usable)
    scores, coverage = np.full(n, math.nan), np.zeros(n)
    unranked: dict[int, str] = {}
    for i, v in enumerate(versions):
        bad = [metrics[j] for j in usable if metrics[j] in v.metrics and not finite[i, j]]
        have = [j for j in usable if finite[i, j]]
        missing = [metrics[j] for j in usable if metrics[j] not in v.metrics]
        if bad:
            unranked[i] = f"{', '.join(bad)} is {format_number(v.metrics[bad[0]])}"
            notes.append(f"{v.short_id} is not ranked: {unranked[i]}")
            continue
        if not have:
            unranked[i] = "has none of the weighted metrics"
            notes.append(f"{v.short_id} is not ranked: it has none of the weighted metrics")
            continue
        if missing:
            notes.append(f"{v.short_id} has no {', '.join(missing)}: left out of its D and score "
                         "(ranked after versions that have every weighted metric)")
        weight = sum(weights[metrics[j]] for j in have)
        scores[i] = sum(weights[metrics[j]] * goodness[i, j] for j in have) / weight
        coverage[i] = weight / total_weight
    order = sorted((i for i in range(n) if i not in unranked),
                   key=lambda i: (-round(coverage[i], 12), -scores[i], -versions[i].created.timestamp()))
    if len(order) > 1 and coverage[order[0]] == coverage[order[1]] and scores[order[0]] == scores[order[1]]:
        notes.append(f"{versions[order[0]].short_id} and {versions[order[1]].short_id} tie on score: "
                     "the newer ranks first")
    if metrics and not usable:
        notes.append("no weighted metric has a value: nothing to rank")
    elif not metrics:
        notes.append("none of the versions has metrics: nothing to rank (commit with --metric K=V)")
    weighted = {metrics[j]: weights[metrics[j]] for j in usable}
    scale = {m: ranges[m][1] - ranges[m][0] for m in weighted}
    zero = [m for m in metrics if weights[m] == 0]
    if zero:
        notes.append(f"weight 0 (shown, not counted): {', '.join(zero)}")
    return Scoring(weighted, scale, goodness, scores, coverage, order, unranked, ranges, notes)

