"""Matplotlib figures over API results: comparisons, metric histories and diffs.

Every function takes an optional ``ax`` (drawing into it, or a new figure when None) and returns
the axes it drew on (``ax.figure`` is the figure). matplotlib is imported only when a plot is made.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ..core.compare import ARROW, Comparison
from ..core.diff import Diff
from ..core.refs import infer_direction
from ..core.version import Version
from ..errors import CompareError

BEST_COLOR = "#2e7d32"
OTHER_COLOR = "#90a4ae"


def _axes(ax, size: tuple[float, float]):
    if ax is not None:
        return ax
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state, nothing shown twice

    return Figure(figsize=size, layout="constrained").add_subplot()


def _label(version: Version, separator: str = "\n") -> str:
    """What a reader knows a version by, its tag or message, with the id as a hint (just the id
    when it has neither)."""
    name = version.tags[0] if version.tags else (version.message.splitlines() or [""])[0].strip()
    if not name:
        return version.short_id
    name = name if len(name) <= 22 else name[:21] + "…"
    return f"{name}{separator}{version.short_id}" if separator == "\n" else f"{name} ({version.short_id})"


def _mark_values(ax, positions, heights, width: float, color) -> None:
    """A zero bar has no height: draw it as a short line on the axis so it reads as the value 0;
    a missing value (NaN) is written "n/a", so neither looks like the other."""
    for x, h in zip(positions, heights, strict=True):
        if not math.isfinite(h):
            ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize="x-small", color="0.4")
        elif h == 0:
            ax.plot([x - width / 2, x + width / 2], [0, 0], color=color, linewidth=3, solid_capstyle="butt")


def plot_metrics(comparison: Comparison, metrics: Sequence[str] | None = None, scaled: bool = False, ax=None):
    """Grouped bars: one group per version (ranked best first), one bar per metric.

    ``scaled=True`` draws each metric's direction-aware goodness in [0, 1] (1 = best among the
    compared versions), so metrics on different scales share one axis. Missing values draw no bar.
    """
    import numpy as np

    metrics = list(metrics or comparison.metrics)
    unknown = [m for m in metrics if m not in comparison.metrics]
    if unknown:
        raise CompareError(f"not a compared metric: {', '.join(unknown)}")
    order = comparison.display_order()
    ax = _axes(ax, (max(4.0, 1.1 * len(order) + 1.5), 3.2))
    width = 0.8 / max(1, len(metrics))
    for k, metric in enumerate(metrics):
        j = comparison.metrics.index(metric)
        heights = [comparison.goodness[i, j] if scaled else comparison.versions[i].metrics.get(metric, math.nan)
                   for i in order]
        positions = np.arange(len(order)) + (k - (len(metrics) - 1) / 2) * width
        label = f"{metric} {ARROW[comparison.directions[metric]]}"
        bars = ax.bar(positions, [h if math.isfinite(h) else 0 for h in heights], width, label=label,
                      alpha=1.0 if comparison.weights.get(metric) else 0.4)
        _mark_values(ax, positions, heights, width, bars.patches[0].get_facecolor() if bars.patches else None)
    ax.set_xticks(range(len(order)), [_label(comparison.versions[i]) for i in order])
    best = comparison.best
    for tick, i in zip(ax.get_xticklabels(), order, strict=True):
        if best is not None and comparison.versions[i].id == best.id:
            tick.set_color(BEST_COLOR)
            tick.set_fontweight("bold")
    ax.set_ylabel("goodness (1 = best compared)" if scaled else "value")
    ax.set_title(f"metrics of {comparison.model}" + (f" — best {_label(best, ' ')}" if best else ""))
    if metrics:
        ax.legend(fontsize="small")
    return ax


def plot_scores(comparison: Comparison, ax=None):
    """Horizontal bars of the weighted score per version, best on top and highlighted."""
    order = comparison.display_order()
    ax = _axes(ax, (5.0, 0.4 * len(order) + 1.2))
    best = comparison.best
    scores = [float(comparison.scores[i]) for i in order]
    colors = [BEST_COLOR if best is not None and comparison.versions[i].id == best.id else OTHER_COLOR
              for i in order]
    positions = list(range(len(order)))[::-1]
    ax.barh(positions, [s if math.isfinite(s) else 0 for s in scores], color=colors)
    for y, score, color in zip(positions, scores, colors, strict=True):
        if score == 0:  # a zero score is a result: a short mark on the axis, not an empty row
            ax.plot([0, 0], [y - 0.4, y + 0.4], color=color, linewidth=3, solid_capstyle="butt")
    ax.set_yticks(positions, [_label(comparison.versions[i], " ") for i in order])
    for y, score in zip(positions, scores, strict=True):
        ax.text(score if math.isfinite(score) else 0, y, " not ranked" if not math.isfinite(score)
                else f" {score:.3f}", va="center", fontsize="small")
    ax.set_xlim(0, 1.15)
    weights = ", ".join(f"{m}={w:g}" for m, w in comparison.weights.items() if w)
    ax.set_xlabel("weighted score" + (f" ({weights})" if weights else ""))
    ax.set_title(f"best: {_label(best, ' ')}" if best else "no version can be ranked")
    return ax


def plot_metric_history(versions: Iterable[Version] | Comparison, metric: str, ax=None):
    """One metric across the history of versions, oldest to newest; the best point is marked.

    ``versions`` is a list of :class:`Version` (``repo.log(name)``) or a :class:`Comparison`.
    """
    direction = infer_direction(metric)
    if isinstance(versions, Comparison):
        direction = versions.directions.get(metric, direction)
        versions = versions.versions
    items = sorted(versions, key=lambda v: v.created)
    points = [(n, v, v.metrics[metric]) for n, v in enumerate(items)
              if metric in v.metrics and math.isfinite(v.metrics[metric])]
    if not points:
        raise CompareError(f"no version has a finite {metric!r} to plot")
    ax = _axes(ax, (max(4.0, 0.6 * len(items) + 2), 3.0))
    ax.plot([p[0] for p in points], [p[2] for p in points], marker="o", color=OTHER_COLOR)
    best = (min if direction == "min" else max)(points, key=lambda p: p[2])
    ax.plot([best[0]], [best[2]], marker="*", markersize=14, color=BEST_COLOR, linestyle="none",
            label=f"best {best[1].short_id}")
    for n, version, value in points:
        if version.tags:
            ax.annotate(", ".join(version.tags), (n, value), textcoords="offset points", xytext=(0, 6),
                        fontsize="x-small", ha="center")
    ax.set_xticks(range(len(items)), [v.short_id for v in items], rotation=45, ha="right", fontsize="small")
    ax.set_ylabel(f"{metric} ({'lower' if direction == 'min' else 'higher'} is better)")
    ax.set_title(f"{metric} across {len(items)} versions")
    ax.legend(fontsize="small")
    return ax


def plot_diff(diff: Diff, ax=None):
    """Per-layer relative L2 change of a diff (unchanged layers at 0; added/removed annotated)."""
    layers = diff.layers()
    ax = _axes(ax, (5.5, 0.35 * len(layers) + 1.2))
    positions = list(range(len(layers)))[::-1]
    values = [s.relative_l2 if s.relative_l2 is not None and math.isfinite(s.relative_l2) else 0.0
              for s in layers]
    colors = [BEST_COLOR if s.status != "unchanged" else OTHER_COLOR for s in layers]
    ax.barh(positions, values, color=colors)
    ax.set_yticks(positions, [s.layer for s in layers], fontsize="small")
    for y, summary, value in zip(positions, layers, values, strict=True):
        if summary.status in ("added", "removed") or summary.reshaped:
            ax.text(value, y, f" {summary.status if not summary.reshaped else 'reshaped'}", va="center",
                    fontsize="x-small")
        elif summary.relative_l2 is not None and not math.isfinite(summary.relative_l2):
            ax.text(value, y, " from zero", va="center", fontsize="x-small")
    ax.set_xlabel("relative L2 change ||B - A|| / ||A|| of changed tensors")
    ax.set_title(f"{diff.a.short_id} -> {diff.b.short_id}: {len(diff.changed_layers)} of {len(layers)} layers changed")
    return ax


class FigureImage:
    """A figure shown as PNG by IPython's display (a bare ``Figure`` shows only as text there).

    ``display(FigureImage(ax.figure))`` renders an image in Jupyter and a one-line description in
    a terminal; ``.figure`` is the figure.
    """

    def __init__(self, figure, description: str = "") -> None:
        self.figure = figure
        self.description = description or (figure.axes[0].get_title() if figure.axes else "")

    def _repr_png_(self) -> bytes:
        import io

        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")  # keep long labels whole
        return buffer.getvalue()

    def __repr__(self) -> str:
        width, height = (int(x) for x in self.figure.get_size_inches() * self.figure.dpi)
        return f"<Figure {width}x{height}: {self.description}>"
