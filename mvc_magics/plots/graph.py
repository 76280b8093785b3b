"""The version history as a graph: commits, merges (several parents), tags and HEAD.

:func:`layout_graph` places each version in a row (newest first) and a lane (column), like
``git log --graph``; :func:`text_graph` draws it with ``* | / \\`` for terminals, and
:func:`plot_graph` draws it on a matplotlib axes (matplotlib is imported only there)::

    >>> print(text_graph(repo.log("model")))                   # doctest: +SKIP
    *   4c1d9e2a (HEAD) merge of 2 versions
    |\\
    | * 9b0f3a71 (tag: wide) lr 0.1
    * | 1e2d3c4b lr 0.01
    |/
    * 0a1b2c3d (tag: baseline) first
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.tables import format_number
from ..core.version import Version


@dataclass
class GraphRow:
    """One version in the graph: its lane, the lanes around it, and the connectors to draw.

    ``joins`` lead from the lanes before the row to ``lanes`` (lanes that waited for this same
    version converge into its lane); ``edges`` lead from ``lanes`` to ``lanes_after`` (the
    version's lane forks to each of its parents).
    """

    version: Version
    column: int
    lanes: list[str]
    lanes_after: list[str]
    joins: list[tuple[int, int]] = field(default_factory=list)
    edges: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class GraphLayout:
    """Rows newest first; ``positions`` maps a version id to its (column, row)."""

    rows: list[GraphRow]
    positions: dict[str, tuple[int, int]]

    @property
    def width(self) -> int:
        return max([len(r.lanes) for r in self.rows] + [len(r.lanes_after) for r in self.rows] + [1])


def layout_graph(versions: Sequence[Version]) -> GraphLayout:
    """Lanes for ``versions`` (children before parents, as ``repo.log`` returns them).

    Each lane waits for one version id. A version takes the first lane waiting for it (or a new
    lane on the right when none does: a branch tip); its first parent continues in that lane and
    further parents (a merge) get lanes just right of it unless a lane already waits for them.
    """
    lanes: list[str] = []
    rows: list[GraphRow] = []
    positions: dict[str, tuple[int, int]] = {}
    for row_index, version in enumerate(versions):
        if version.id not in lanes:
            lanes = [*lanes, version.id]  # a branch tip (no child shown): a new lane on the right
        column = lanes.index(version.id)
        current = [vid for i, vid in enumerate(lanes) if vid != version.id or i == column]
        joins = [(i, current.index(vid)) for i, vid in enumerate(lanes)]
        after = list(current)
        parents = list(version.parents)
        if parents:
            after[column] = parents[0]
            insert_at = column + 1
            for parent in parents[1:]:
                if parent not in after:
                    after.insert(insert_at, parent)
                    insert_at += 1
        else:
            del after[column]
        deduped: list[str] = []
        for vid in after:
            if vid not in deduped:
                deduped.append(vid)
        edges: list[tuple[int, int]] = []
        for i, vid in enumerate(current):
            if i == column:
                edges.extend((i, deduped.index(p)) for p in dict.fromkeys(parents))
            else:
                edges.append((i, deduped.index(vid)))
        positions[version.id] = (column, row_index)
        rows.append(GraphRow(version, column, current, deduped, joins, edges))
        lanes = deduped
    return GraphLayout(rows, positions)


def version_label(version: Version, metrics: int = 2) -> str:
    """``short_id (HEAD, tag: production*, tag: best) message metric=value`` (``*``: protected)."""
    # protected tags carry a star, as in the log: moving or deleting them needs --force
    refs = (["HEAD"] if version.is_head else []) + [f"tag: {t}{'*' if t in version.protected_tags else ''}"
                                                   for t in version.tags]
    parts = [version.short_id]
    if refs:
        parts.append("(" + ", ".join(refs) + ")")
    if len(version.parents) > 1:
        parts.append(f"[merge of {len(version.parents)}]")
    if version.message:
        parts.append(version.message.splitlines()[0][:60])
    keys = sorted(version.metrics, key=lambda k: (not k.startswith("val_"), k))[:metrics]
    parts.extend(f"{k}={format_number(version.metrics[k])}" for k in keys)
    return " ".join(parts)


def text_graph(versions: Sequence[Version]) -> str:
    """The graph in ``git log --graph`` style, one version per line, newest first."""
    if not versions:
        return "(no versions)"
    layout = layout_graph(versions)
    lines: list[str] = []
    for row in layout.rows:
        lines.extend(_transition_lines(row.joins))
        cells = ["*" if i == row.column else "|" for i in range(len(row.lanes))]
        graph = " ".join(cells).ljust(2 * max(len(row.lanes), len(row.lanes_after)) - 1)
        lines.append((graph + " " + version_label(row.version)).rstrip())
        lines.extend(_transition_lines(row.edges))
    return "\n".join(lines)


def _transition_lines(edges: list[tuple[int, int]]) -> list[str]:
    """The connector lines between two rows: ``|`` straight, ``/`` and ``\\`` one lane over."""
    if all(a == b for a, b in edges):
        return []
    positions = [a for a, _ in edges]
    lines = []
    while True:
        width = 2 * (max(positions + [b for _, b in edges]) + 1)
        chars = [" "] * width
        moved = False
        for index, (_, target) in enumerate(edges):
            here = positions[index]
            if target > here:
                chars[2 * here + 1] = "\\" if chars[2 * here + 1] in " \\" else "X"
                positions[index] = here + 1
                moved = True
            elif target < here:
                chars[2 * here - 1] = "/" if chars[2 * here - 1] in " /" else "X"
                positions[index] = here - 1
                moved = True
            else:
                chars[2 * here] = "|"
        if not moved:
            break
        lines.append("".join(chars).rstrip())
        if all(positions[i] == b for i, (_, b) in enumerate(edges)):
            break
    return lines


_MAX_LABEL = 90


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot_graph(versions: Sequence[Version], ax: Any = None, title: str | None = None) -> Any:
    """Draw the version graph on ``ax`` (a new figure when None) and return the axes.

    Each version is a dot in its lane (merges larger and outlined, HEAD ringed), edges join it to
    its parents, and the label shows id, tags, message and key metrics.
    """
    layout = layout_graph(versions)
    labels = {v.id: _clip(version_label(v), _MAX_LABEL) for v in versions}
    if ax is None:
        import matplotlib.pyplot as plt

        # Wide enough for the lanes and the longest label (9 pt monospace: ~0.075 inch a character).
        longest = max((len(text) for text in labels.values()), default=0)
        width_inches = max(8.0, 1.0 + 0.45 * layout.width + 0.075 * longest)
        _, ax = plt.subplots(figsize=(width_inches, max(2.0, 0.45 * len(versions) + 1)))
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    for row in layout.rows:
        x, y = row.column, -layout.positions[row.version.id][1]
        for parent in row.version.parents:
            if parent not in layout.positions:
                continue
            px, prow = layout.positions[parent]
            # Leave the child's row in the parent's lane, then run down that lane.
            xs, ys = [x, px, px], [y, y - 0.5 if px != x else y, -prow]
            ax.plot(xs, ys, color=colors[max(px, x) % len(colors)], linewidth=1.8, zorder=1)
    width = layout.width
    for row in layout.rows:
        version = row.version
        x, y = row.column, -layout.positions[version.id][1]
        merge = len(version.parents) > 1
        ax.scatter([x], [y], s=160 if merge else 90, color=colors[x % len(colors)],
                   edgecolors="black" if merge else "white", linewidths=1.5, zorder=3)
        if version.is_head:
            ax.scatter([x], [y], s=420, facecolors="none", edgecolors="black", linewidths=1.5, zorder=2)
        ax.text(width - 0.4, y, labels[version.id], va="center", ha="left", fontsize=9,
                family="monospace", fontweight="bold" if version.is_head else "normal")
    ax.set_xlim(-0.6, width + 6)
    ax.set_ylim(-len(layout.rows) + 0.4, 0.6)
    ax.set_axis_off()
    ax.set_title(title or f"version history ({len(versions)} versions)", loc="left", fontsize=10)
    return ax
