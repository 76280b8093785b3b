"""The history graph: lanes, text drawing with merges, the matplotlib figure, %mvc_log --graph."""

from __future__ import annotations

import numpy as np
import pytest

from mvc_magics.magics import session_of
from mvc_magics.plots.graph import layout_graph, plot_graph, text_graph


def bump(weights, key="step", by=1):
    weights[key] = weights[key] + by


@pytest.fixture
def merged(repo, weights):
    """base -> a, base -> b (a branch from a checkout), merge(a, b) -> after."""
    base = repo.commit(weights, "w", message="base", tags=["baseline"])
    bump(weights)
    a = repo.commit(weights, "w", message="branch a")
    repo.checkout(base.id, weights)
    bump(weights, "dense/bias", 0.5)
    b = repo.commit(weights, "w", message="branch b")
    bump(weights, "out/kernel", 2.0)
    soup = repo.commit(weights, "w", message="soup", parents=[a.id, b.id], tags=["soup"])
    bump(weights)
    after = repo.commit(weights, "w", message="after")
    return {"base": base, "a": a, "b": b, "soup": soup, "after": after}


def test_text_graph_shows_a_merge_with_both_lines_of_history(repo, merged):
    text = text_graph(repo.log("w"))
    lines = text.splitlines()
    short = {k: v.short_id for k, v in merged.items()}
    assert lines[0].startswith(f"* {short['after']} (HEAD) after")
    assert lines[1].startswith(f"*   {short['soup']} (tag: soup) [merge of 2] soup")  # as git pads it
    assert lines[2] == "|\\"
    assert lines[3].startswith(f"| * {short['b']} branch b")
    assert lines[4].startswith(f"* | {short['a']} branch a")
    assert lines[5] == "|/"
    assert lines[6].startswith(f"* {short['base']} (tag: baseline) base")
    assert len(lines) == 7


def test_layout_positions_and_edges(repo, merged):
    layout = layout_graph(repo.log("w"))
    positions = layout.positions
    assert positions[merged["soup"].id][0] == positions[merged["a"].id][0] == 0  # first parent: same lane
    assert positions[merged["b"].id][0] == 1
    soup_row = next(r for r in layout.rows if r.version.id == merged["soup"].id)
    assert sorted(soup_row.edges) == [(0, 0), (0, 1)]
    assert layout.width == 2


def test_branch_tips_and_separate_roots(repo, weights):
    base = repo.commit(weights, "w", message="base")
    bump(weights)
    repo.commit(weights, "w", message="tip one")
    repo.checkout(base.id, weights)
    bump(weights, by=2)
    repo.commit(weights, "w", message="tip two")
    repo.commit({"other": np.ones(3)}, "other", message="root of another model")
    lines = text_graph(repo.log()).splitlines()
    assert lines[0].startswith("* ") and "root of another model" in lines[0]
    assert lines[1].startswith("* ") and "tip two" in lines[1]
    assert lines[2].startswith("| * ") and "tip one" in lines[2]
    assert lines[3] == "|/"
    assert lines[4].startswith("* ") and "base" in lines[4]


def test_plot_graph_draws_every_version_and_returns_the_axes(repo, merged):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    returned = plot_graph(repo.log("w"), ax=ax)
    assert returned is ax
    labels = [t.get_text() for t in ax.texts]
    assert len(labels) == 5
    assert any("[merge of 2]" in label and "soup" in label for label in labels)
    assert any(label.startswith(merged["after"].short_id + " (HEAD)") for label in labels)
    edges = [line for line in ax.lines]
    assert len(edges) == 5  # a->base, b->base, soup->a, soup->b, after->soup


def test_log_graph_is_text_in_a_terminal(ip, weights, capsys):
    ip.user_ns["w"] = weights
    ip.run_line_magic("mvc_commit", "w -m base")
    repo = session_of(ip).repo
    base = repo.head("w")
    bump(weights)
    a = ip.run_line_magic("mvc_commit", "w -m left")
    repo.checkout(base.id, weights)
    bump(weights, by=3)
    b = ip.run_line_magic("mvc_commit", "w -m right")
    bump(weights, "out/kernel", 0.25)
    repo.commit(weights, "w", message="merged", parents=[a.id, b.id])
    capsys.readouterr()
    assert ip.run_line_magic("mvc_log", "w --graph") is None
    out = capsys.readouterr().out
    assert "[merge of 2] merged" in out and "|\\" in out and "|/" in out
    assert "<Figure" not in out


def test_log_graph_draws_a_figure_when_rich(ip, weights, capsys, monkeypatch):
    shown = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append(obj))
    ip.user_ns["w"] = weights
    ip.run_line_magic("mvc_commit", "w -m one")
    bump(weights)
    ip.run_line_magic("mvc_commit", "w -m two")
    ip.run_line_magic("config", 'MVCMagics.output = "html"')
    try:
        ip.run_line_magic("mvc_log", "--graph")
    finally:
        ip.run_line_magic("config", 'MVCMagics.output = "auto"')
    assert len(shown) == 1 and shown[0]._repr_png_().startswith(b"\x89PNG")
    assert any("two" in t.get_text() for t in shown[0].figure.axes[0].texts)
    assert "|" not in capsys.readouterr().out
