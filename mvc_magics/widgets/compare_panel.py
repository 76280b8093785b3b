"""``ComparePanel``: pick versions, weigh metrics, see the ranking live, act on the best one.

Every control change calls :meth:`Repo.compare` again and redraws the table and the chart from
the returned :class:`~mvc_magics.compare.Comparison`; the buttons call ``Repo.checkout`` and
``Repo.merge``. The panel holds no comparison logic of its own.

>>> panel = repo.compare_panel(name="model", namespace=globals())   # doctest: +SKIP
>>> panel.set_weight("val_mse", 2.0); panel.comparison.best          # doctest: +SKIP
"""

from __future__ import annotations

import html
import io
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ipywidgets as widgets

from ..core.compare import ARROW, Comparison
from ..core.refs import infer_direction
from ..core.version import Version, metric_columns
from ..errors import MVCError
from ..plots.charts import plot_metrics, plot_scores

_DIRECTIONS = [(f"lower {ARROW['min']}", "min"), (f"higher {ARROW['max']}", "max")]


def version_label(version: Version, key_metric: str | None) -> str:
    """``3f2a9c1d (baseline) '10 epochs' val_mse=0.31`` for the version list."""
    parts = [version.short_id]
    if version.tags:
        parts.append("(" + ", ".join(version.tags) + ")")
    if version.message:
        parts.append(repr(version.message[:30]))
    if key_metric and key_metric in version.metrics:
        parts.append(f"{key_metric}={version.metrics[key_metric]:.4g}")
    return " ".join(parts)


class ComparePanel(widgets.VBox):
    """Versions multi-select, one weight slider and direction toggle per metric, table, chart,
    "Check out best" and "Merge selected".

    Args:
        repo: the :class:`~mvc_magics.Repo`.
        refs: versions selected at first (default: all listed ones).
        name: the model; ``namespace[name]`` receives "Check out best" (a new model is built when
            the variable does not exist; with no namespace it is kept in ``checked_out``).
        weights, directions, baseline: as in :meth:`Repo.compare`.
        limit: how many of the model's most recent versions to list.
        chart: draw the score and metric chart (a PNG image widget).
    """

    def __init__(self, repo: Any, refs: Iterable[str] | None = None, name: str | None = None,
                 weights: Mapping[str, float] | None = None, baseline: str | None = None,
                 directions: Mapping[str, str] | None = None, namespace: dict | None = None,
                 limit: int | None = 20, chart: bool = True) -> None:
        super().__init__()
        initial = repo.compare(refs, name=name, weights=weights, baseline=baseline, directions=directions,
                               limit=limit)  # bad input raises here, before any widget exists
        self.repo = repo
        self.name = name or initial.versions[0].name
        self.namespace = namespace
        self.comparison: Comparison | None = initial
        self.error: str | None = None
        self.checked_out: Any = None
        self.merged: Version | None = None
        self._limit = limit
        self._quiet = False
        self._baseline = initial.baseline.id if baseline is not None else None
        self._chart_enabled = chart
        self._candidates: dict[str, Version] = {}
        self._load_candidates(initial.versions)
        metrics = metric_columns(list(self._candidates.values()), limit=10_000)
        self._sliders = {m: widgets.FloatSlider(
            value=initial.weights.get(m, 1.0 if weights is None else 0.0), min=0.0,
            max=max(5.0, initial.weights.get(m, 0.0)), step=0.1,
            description=m, continuous_update=False, style={"description_width": "initial"},
            layout=widgets.Layout(width="340px")) for m in metrics}
        self._toggles = {m: widgets.ToggleButtons(
            options=_DIRECTIONS, value=initial.directions.get(m, infer_direction(m)), tooltips=["lower is better",
                                                                                       "higher is better"],
            style={"button_width": "80px"}) for m in metrics}
        self._versions = widgets.SelectMultiple(
            options=self._options(), value=tuple(v.id for v in initial.versions if v.id in self._candidates),
            rows=min(10, max(3, len(self._candidates))), description="versions",
            layout=widgets.Layout(width="95%"))
        self._best = widgets.HTML()
        self._table = widgets.HTML()
        self._chart = widgets.Image(format="png", layout=widgets.Layout(max_width="95%"))
        self._status = widgets.HTML()
        self._checkout = widgets.Button(description="Check out best", button_style="success", icon="check")
        self._merge = widgets.Button(description="Merge selected", icon="code-fork")
        self._versions.observe(self._guarded(self._on_change, clears=True), names="value")
        for control in [*self._sliders.values(), *self._toggles.values()]:
            control.observe(self._guarded(self._on_change, clears=True), names="value")
        self._checkout.on_click(self._guarded(self._on_checkout))
        self._merge.on_click(self._guarded(self._on_merge))
        for widget, css in ((self, "mvc-compare-panel"), (self._best, "mvc-best"), (self._table, "mvc-compare-table"),
                            (self._versions, "mvc-versions"), (self._status, "mvc-status")):
            widget.add_class(css)
        for slider in self._sliders.values():
            slider.add_class("mvc-weight")
        rows = [widgets.HBox([self._sliders[m], self._toggles[m]]) for m in metrics]
        self.children = [self._versions, widgets.HTML("<b>weights</b> (0: shown, not counted)"), *rows,
                         self._best, widgets.HBox([self._checkout, self._merge]), self._status,
                         self._table, *([self._chart] if chart else [])]
        self._show(initial)

    # -- what the panel shows (read by tests and callers) ------------------------------------

    @property
    def selected(self) -> list[str]:
        """Ids of the selected versions."""
        return list(self._versions.value)

    @property
    def best(self) -> Version | None:
        return self.comparison.best if self.comparison else None

    @property
    def weights(self) -> dict[str, float]:
        """Slider weights of the metrics the selected versions have."""
        present = {m for vid in self.selected for m in self._candidates[vid].metrics}
        return {m: float(s.value) for m, s in self._sliders.items() if m in present}

    @property
    def directions(self) -> dict[str, str]:
        present = {m for vid in self.selected for m in self._candidates[vid].metrics}
        return {m: t.value for m, t in self._toggles.items() if m in present}

    def slider(self, metric: str) -> widgets.FloatSlider:
        return self._sliders[metric]

    def toggle(self, metric: str) -> widgets.ToggleButtons:
        return self._toggles[metric]

    def set_weight(self, metric: str, value: float) -> None:
        self._sliders[metric].value = value

    def select(self, ids: Iterable[str]) -> None:
        self._versions.value = tuple(ids)

    # -- handlers: call the API, show the result ---------------------------------------------

    def refresh(self) -> None:
        """Compare the selected versions under the current weights and redraw."""
        self._show(self.repo.compare(self.selected, name=self.name, weights=self.weights,
                                     baseline=self._baseline, directions=self.directions, limit=None))

    def _on_change(self, _change: object = None) -> None:
        if not self._quiet:
            self.refresh()

    def _on_checkout(self, _button: object = None) -> None:
        best = self.best
        if best is None:
            self._say("no best version to check out", error=True)
            return
        live = self.namespace.get(self.name) if self.namespace is not None else None
        if live is not None:
            self.repo.checkout(best.id, live, name=self.name)
            where = f"into {self.name}"
        else:
            model = self.repo.checkout(best.id, None, name=self.name)
            if self.namespace is not None:
                self.namespace[self.name] = model
                where = f"into new variable {self.name}"
            else:
                self.checked_out, where = model, "into panel.checked_out"
        self._say(f"checked out {best.summary()} {where}")

    def _on_merge(self, _button: object = None) -> None:
        if not hasattr(self.repo, "merge"):
            self._say("merging is not available in this version of mvc_magics", error=True)
            return
        chosen = self.selected
        self.merged = self.repo.merge(chosen, name=self.name)
        self._load_candidates([])
        self._quiet = True  # new options reset the selection; put it back before comparing again
        try:
            self._versions.options = self._options()
            self._versions.value = tuple(chosen)
        finally:
            self._quiet = False
        self.refresh()
        self._say(f"merged {len(chosen)} versions into {self.merged.summary()}")

    # -- plumbing ---------------------------------------------------------------------------

    def _load_candidates(self, extra: Iterable[Version]) -> None:
        listed = list(self.repo.log(self.name, limit=self._limit))
        for version in [*listed, *extra]:
            self._candidates.setdefault(version.id, version)
        for version in listed:  # fresh tags/metrics/HEAD for versions already known
            self._candidates[version.id] = version

    def _options(self) -> list[tuple[str, str]]:
        versions = sorted(self._candidates.values(), key=lambda v: v.created, reverse=True)
        keys = metric_columns(versions, limit=1)
        return [(version_label(v, keys[0] if keys else None), v.id) for v in versions]

    def _show(self, comparison: Comparison) -> None:
        self.comparison, self.error = comparison, None
        best = comparison.best
        self._best.value = (f"<b>best:</b> <span class='mvc-best-id'>{html.escape(best.short_id)}</span> "
                            f"{html.escape(best.message)} (score {comparison.score(best):.3f})" if best
                            else "<b>best:</b> none (no version can be ranked)")
        self._table.value = comparison._repr_html_()
        self._status.value = ""
        if self._chart_enabled:
            self._chart.value = _render_chart(comparison)

    def _say(self, text: str, error: bool = False) -> None:
        color = "#b71c1c" if error else "#1b5e20"
        self._status.value = f"<span style='color:{color}'>{html.escape(text)}</span>"

    def _guarded(self, handler: Callable[..., None], clears: bool = False) -> Callable[..., None]:
        """Run a handler; expected errors become a one-line message, others show a traceback."""

        def run(*args: object) -> None:
            try:
                handler(*args)
            except MVCError as exc:
                self.error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if clears:  # the shown comparison no longer matches the controls
                    self.comparison = None
                    self._best.value = "<b>best:</b> —"
                    self._table.value = ""
                self._say(self.error, error=True)
            except Exception:  # a bug: show it in the panel instead of losing it in the browser console
                self.error = traceback.format_exc()
                self._status.value = f"<pre style='color:#b71c1c'>{html.escape(self.error)}</pre>"

        return run


def _render_chart(comparison: Comparison) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.5, 0.35 * len(comparison.versions) + 2.4), layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=[1, 1.4])
    plot_scores(comparison, ax=left)
    plot_metrics(comparison, scaled=True, ax=right)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()
