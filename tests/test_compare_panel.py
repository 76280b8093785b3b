"""ComparePanel driven programmatically (slider .value, .click()), and the matplotlib plots (Agg)."""

from __future__ import annotations

import numpy as np
import pytest
from compare_data import HAND_TABLE, commit_table, model

from mvc_magics import Repo
from mvc_magics.errors import CompareError
from mvc_magics.plots import plot_diff, plot_metric_history, plot_metrics, plot_scores

pytest.importorskip("ipywidgets")

from mvc_magics.widgets import ComparePanel, widgets_available


@pytest.fixture
def two_metric(repo):
    return commit_table(repo, {"accurate": {"accuracy": 0.95, "latency": 120.0},
                               "fast": {"accuracy": 0.90, "latency": 15.0},
                               "middle": {"accuracy": 0.92, "latency": 60.0}})


def test_moving_sliders_flips_the_best_version(repo, two_metric):
    panel = repo.compare_panel(name="model", weights={"accuracy": 1.0, "latency": 0.1})
    assert isinstance(panel, ComparePanel)
    assert panel.best.id == two_metric["accurate"].id
    assert two_metric["accurate"].short_id in panel._best.value
    png = bytes(panel._chart.value)
    panel.slider("accuracy").value = 0.1
    panel.slider("latency").value = 1.0
    assert panel.best.id == two_metric["fast"].id
    assert two_metric["fast"].short_id in panel._best.value
    assert panel.comparison.weights == {"accuracy": 0.1, "latency": 1.0}
    assert panel._table.value == panel.comparison._repr_html_()
    assert png.startswith(b"\x89PNG") and bytes(panel._chart.value) != png
    # the panel's answer is the API's answer
    assert panel.best.id == repo.compare(name="model", weights={"accuracy": 0.1, "latency": 1.0}).best.id


def test_direction_toggle_and_selection_update_live(repo, two_metric):
    panel = repo.compare_panel(name="model", weights={"latency": 1.0})
    assert panel.best.id == two_metric["fast"].id
    panel.toggle("latency").value = "max"  # say higher latency is better
    assert panel.comparison.directions["latency"] == "max"
    assert panel.best.id == two_metric["accurate"].id
    panel.select([two_metric["fast"].id, two_metric["middle"].id])
    assert {v.id for v in panel.comparison.versions} == {two_metric["fast"].id, two_metric["middle"].id}
    assert panel.best.id == two_metric["middle"].id


def test_labels_show_id_tags_message_and_key_metric(repo, two_metric):
    repo.tag(two_metric["fast"].id, "prod")
    panel = repo.compare_panel(name="model")
    labels = dict((vid, label) for label, vid in panel._versions.options)
    assert labels[two_metric["fast"].id].startswith(f"{two_metric['fast'].short_id} (prod) 'fast' ")
    assert "accuracy=0.9" in labels[two_metric["fast"].id] or "latency=15" in labels[two_metric["fast"].id]
    assert len(panel.selected) == 3 and set(panel._sliders) == {"accuracy", "latency"}


def test_errors_are_shown_in_the_panel_and_recover(repo, two_metric):
    panel = repo.compare_panel(name="model")
    panel.select([two_metric["fast"].id])
    assert panel.comparison is None and "at least two versions" in panel._status.value
    assert panel.error.startswith("need at least two versions")
    panel.select([two_metric["fast"].id, two_metric["accurate"].id])
    assert panel.comparison is not None and panel._status.value == ""
    panel.slider("accuracy").value = 0
    panel.slider("latency").value = 0
    assert "all weights are zero" in panel._status.value and panel.best is None


def test_check_out_best_loads_it_into_the_model_variable(repo, two_metric):
    live = model(99)
    namespace = {"model": live}
    panel = repo.compare_panel(name="model", weights={"latency": 1.0}, namespace=namespace)
    panel._checkout.click()
    assert namespace["model"] is live  # loaded in place
    for key, array in model(1).items():  # "fast" was committed from model(1)
        np.testing.assert_array_equal(live[key], array)
    assert repo.head("model").id == two_metric["fast"].id
    assert "checked out" in panel._status.value
    empty: dict = {}
    repo.compare_panel(name="model", weights={"accuracy": 1.0}, namespace=empty)._checkout.click()
    np.testing.assert_array_equal(empty["model"]["out/kernel"], model(0)["out/kernel"])


class _NoMerge(Repo):
    @property
    def merge(self):  # as before issue 4: the store has no merge
        raise AttributeError("merge")


class _AveragingRepo(Repo):
    """A store with a merge method (the hand-off contract: merge(ids, name=...) -> Version)."""

    def merge(self, refs, name=None, **kwargs):
        states = [self.load_state(self.resolve(r, name=name)) for r in refs]
        mean = {k: np.mean([s[k] for s in states], axis=0).astype(np.float32) for k in states[0]}
        return self.commit(mean, name, message="uniform soup", parents=[self.resolve(r, name=name).id for r in refs])


def test_merge_selected_hands_off_to_repo_merge(store_path):
    with _NoMerge(store_path) as repo:
        commit_table(repo, HAND_TABLE)
        panel = repo.compare_panel(name="model")
        panel._merge.click()
        assert "merging is not available" in panel._status.value and panel.merged is None
    with _AveragingRepo(store_path) as repo:
        panel = repo.compare_panel(name="model")
        chosen = panel.selected[:2]
        panel.select(chosen)
        panel._merge.click()
        assert panel.merged is not None and set(panel.merged.parents) == set(chosen)
        assert "merged 2 versions" in panel._status.value
        assert panel.merged.id in dict((v, k) for k, v in panel._versions.options)


@pytest.mark.skipif(not hasattr(Repo, "merge"), reason="this tree has no Repo.merge yet (issue 4)")
def test_merge_selected_with_the_real_merge(repo):
    versions = commit_table(repo, HAND_TABLE)
    panel = repo.compare_panel(name="model")
    panel.select([versions["A"].id, versions["B"].id])
    panel._merge.click()
    assert panel.error is None, panel.error
    assert set(panel.merged.parents) == {versions["A"].id, versions["B"].id}
    merged = repo.load_state(panel.merged)
    expected = (model(0)["out/kernel"] + model(1)["out/kernel"]) / 2
    np.testing.assert_allclose(merged["out/kernel"], expected, rtol=1e-6)


def test_widgets_need_a_kernel():
    class Terminal:
        pass

    class Kernel:
        kernel = object()

    assert not widgets_available(Terminal()) and widgets_available(Kernel())


# -- plots ------------------------------------------------------------------------------------


def test_plot_metrics_draws_grouped_bars(repo, two_metric):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    cmp = repo.compare(name="model", weights={"accuracy": 1.0, "latency": 0.1})
    ax = Figure().add_subplot()
    assert plot_metrics(cmp, ax=ax) is ax
    assert len(ax.patches) == 3 * 2  # versions x metrics
    raw = sorted(p.get_height() for p in ax.patches)
    assert raw == sorted([0.95, 0.90, 0.92, 120.0, 15.0, 60.0])
    assert cmp.best.short_id in ax.get_xticklabels()[0].get_text()  # the best first (its id as a hint)
    scaled = plot_metrics(cmp, scaled=True)
    assert max(p.get_height() for p in scaled.patches) == pytest.approx(1.0)
    assert min(p.get_height() for p in scaled.patches) == pytest.approx(0.0)
    with pytest.raises(CompareError):
        plot_metrics(cmp, metrics=["f1"])
    scores = plot_scores(cmp)
    widths = [p.get_width() for p in scores.patches]
    assert widths[0] == pytest.approx(cmp.score(cmp.best)) and widths[0] == max(widths)


def test_plot_metric_history_and_diff(repo, two_metric):
    log = repo.log("model")
    ax = plot_metric_history(log, "latency")
    line = ax.lines[0]
    assert list(line.get_ydata()) == [120.0, 15.0, 60.0]  # oldest to newest
    assert ax.lines[1].get_ydata()[0] == 15.0  # the best (lowest) point is marked
    with pytest.raises(CompareError):
        plot_metric_history(log, "f1")
    weights = model(7)
    a = repo.commit(weights, "net")
    b = repo.commit({**weights, "out/kernel": weights["out/kernel"] * 2}, "net")
    diff = repo.diff(a.id, b.id)
    ax = plot_diff(diff)
    widths = {t.get_text(): p.get_width() for t, p in zip(ax.get_yticklabels(), ax.patches, strict=True)}
    assert widths["dense"] == 0 and widths["out"] == pytest.approx(diff.layers()[1].relative_l2)
