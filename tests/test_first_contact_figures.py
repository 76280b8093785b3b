"""Figures a newcomer reads (issue 25, item 10): versions labelled by tag or message with the id
as a hint, a zero bar visible as a value (not as missing data), notebook 03's accuracy axis from 0,
protected tags marked in version graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mvc_magics.plots import plot_graph, plot_metrics, plot_scores

ROOT = Path(__file__).resolve().parents[1]


def _comparison(repo):
    w = {"w": np.zeros(3, np.float32)}
    a = repo.commit(w, "m", message="dense 30 epochs", metrics={"acc": 0.9, "size_kb": 0.0}, tags=["baseline"])
    w = {"w": np.ones(3, np.float32)}
    b = repo.commit(w, "m", message="pruned to half", metrics={"acc": 0.85, "size_kb": 12.0})
    w = {"w": np.full(3, 2, np.float32)}
    c = repo.commit(w, "m", metrics={"acc": 0.8})  # no size_kb: missing, not zero
    return repo.compare([a.id, b.id, c.id], name="m"), (a, b, c)


def test_compare_charts_label_versions_by_tag_or_message_with_the_id(repo):
    comparison, (a, b, c) = _comparison(repo)
    ax = plot_metrics(comparison)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert any("baseline" in t and a.short_id in t for t in labels)
    assert any("pruned to half" in t and b.short_id in t for t in labels)
    assert any(t.strip() == c.short_id for t in labels)
    scores = [t.get_text() for t in plot_scores(comparison).get_yticklabels()]
    assert any("baseline" in t and a.short_id in t for t in scores)


def test_a_zero_bar_is_drawn_and_a_missing_one_is_marked(repo):
    comparison, _ = _comparison(repo)
    ax = plot_metrics(comparison, metrics=["size_kb"])
    zero_marks = [line for line in ax.get_lines() if set(np.asarray(line.get_ydata(), float)) == {0.0}]
    assert zero_marks, "a zero value must be visible"
    assert any(text.get_text().strip() == "n/a" for text in ax.texts)


def test_version_graphs_mark_protected_tags(repo):
    v = repo.commit({"w": np.zeros(2, np.float32)}, "m")
    repo.tag(v.id, "production", protect=True)
    repo.tag(v.id, "staging")
    ax = plot_graph(repo.log("m"))
    text = " ".join(t.get_text() for t in ax.texts)
    assert "production*" in text and "staging*" not in text


def test_notebook_03_accuracy_axis_starts_at_zero():
    nb = json.loads((ROOT / "notebooks" / "03-model-soups.ipynb").read_text())
    plot_cell = next("".join(c["source"]) for c in nb["cells"] if "ax.bar(" in "".join(c["source"]))
    assert "ylim=(0" in plot_cell.replace(" ", "") or "set_ylim(0" in plot_cell.replace(" ", "")
