"""The merge panel: one weight slider per version, method, its parameters and the base, evaluation
picker, preview (with the eval function's score), commit.

All the work is done by :meth:`Repo.merge_preview` and :meth:`Repo.merge`; the handlers only read
the controls and show the result (expected errors as one line, in the panel).
"""

from __future__ import annotations

import functools
import html
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
from IPython.display import display

from ..core.merge_methods import BASE_METHODS
from ..core.merge_plan import METHODS
from ..core.tables import format_number
from ..errors import MVCError

_NO_EVAL = "(none)"


def evaluation_functions(namespace: Mapping[str, Any]) -> list[str]:
    """Names of the user's functions in ``namespace`` (candidates for ``eval_fn``)."""
    return sorted(name for name, value in namespace.items()
                  if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, functools.partial)))


class MergePanel(widgets.VBox):
    """Weigh, preview and commit a merge of stored versions.

    ``sliders`` (one per version), ``method``, ``parameters`` (``density``, ``scale``, ``t``,
    ``seed``: enabled when the method declares them, reset to its defaults when it changes),
    ``base`` (a ref; empty: the merge base), ``eval_picker``, ``message``, ``preview_button`` and
    ``commit_button`` are the controls; ``last_preview`` / ``last_version`` / ``error`` hold what
    the last click produced.
    """

    def __init__(self, repo, refs: Sequence[Any], name: str | None = None,
                 namespace: Mapping[str, Any] | None = None, weights: Sequence[float] | None = None,
                 method: str = "average", eval_name: str | None = None, result_name: str | None = None,
                 into: Any = None, base: str | None = None, params: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.repo, self.name, self.result_name, self.into = repo, name, result_name, into
        self.namespace = namespace if namespace is not None else {}
        self.versions = [repo.resolve(r, name=name) if isinstance(r, str) else r for r in refs]
        weights = list(weights) if weights is not None else [1.0] * len(self.versions)
        if len(weights) != len(self.versions):
            weights = [1.0] * len(self.versions)  # the merge itself reports bad weights; start equal
        top = max([10.0, *weights])  # weights are relative: the shares beside them are what counts
        self.sliders = [widgets.FloatSlider(value=w, min=0.0, max=top, step=0.05, description=v.short_id,
                                            continuous_update=False, readout_format=".2f")
                        for v, w in zip(self.versions, weights, strict=True)]
        self.shares = [widgets.Label() for _ in self.versions]
        labels = [widgets.HTML(self._describe(v)) for v in self.versions]
        functions = evaluation_functions(self.namespace)
        self.method = widgets.Dropdown(options=list(METHODS), value=method, description="method")
        self.eval_picker = widgets.Dropdown(options=[_NO_EVAL, *functions],
                                            value=eval_name if eval_name in functions else _NO_EVAL,
                                            description="evaluate")
        self.parameters = {name: (widgets.BoundedIntText(value=0, min=0, max=2**31 - 1, description=name)
                                  if name == "seed" else widgets.FloatText(value=0.0, step=0.05, description=name))
                           for name in ("density", "scale", "t", "seed")}
        self.base = widgets.Text(value=base or "", placeholder="merge base of the versions", description="base")
        self.message = widgets.Text(placeholder="commit message (optional)", description="message")
        self.preview_button = widgets.Button(description="Preview", icon="eye")
        self.commit_button = widgets.Button(description="Merge & commit", button_style="primary", icon="check")
        self.status = widgets.HTML()
        self.out = widgets.Output()
        self.last_preview: Any = None
        self.last_version: Any = None
        self.error: str | None = None
        for slider in self.sliders:
            slider.observe(self._on_weight_change, names="value")
        self.method.observe(self._on_method_change, names="value")
        self.preview_button.on_click(self._on_preview)
        self.commit_button.on_click(self._on_commit)
        rows = [widgets.HBox([s, share, label]) for s, share, label in zip(self.sliders, self.shares, labels,
                                                                           strict=True)]
        self.children = [*rows, widgets.HBox([self.method, self.eval_picker]),
                         widgets.HBox([self.base, *self.parameters.values()]), self.message,
                         widgets.HBox([self.preview_button, self.commit_button]), self.status, self.out]
        self._on_weight_change()
        self._on_method_change()
        for key, value in (params or {}).items():  # the magic's flags win over the method's defaults
            if key in self.parameters:
                self.parameters[key].value = value

    @staticmethod
    def _describe(version) -> str:
        metrics = " ".join(f"{k}={format_number(v)}" for k, v in sorted(version.metrics.items())[:3])
        return html.escape(" ".join(p for p in (version.message, metrics) if p))

    # -- reading the controls --------------------------------------------------------------

    @property
    def weights(self) -> list[float]:
        return [slider.value for slider in self.sliders]

    @property
    def eval_fn(self):
        choice = self.eval_picker.value
        return None if choice == _NO_EVAL else self.namespace.get(choice)

    def _options(self) -> dict:
        spec = BASE_METHODS.get(self.method.value)
        uses_weights = self.method.value != "greedy" and (spec is None or spec.weighted)
        options = {"weights": self.weights if uses_weights else None, "method": self.method.value,
                   "eval_fn": self.eval_fn, "name": self.name}
        if spec is not None:
            options.update({p.name: self.parameters[p.name].value for p in spec.parameters})
            if spec.needs_base and self.base.value.strip():
                options["base"] = self.base.value.strip()
        if self.eval_fn is not None:
            options["score_name"] = self.eval_picker.value  # the name the user picked it by
        return options

    # -- handlers --------------------------------------------------------------------------

    def _on_weight_change(self, change=None) -> None:
        total = sum(self.weights)
        for share, weight in zip(self.shares, self.weights, strict=True):
            share.value = f"{100 * weight / total:.1f}%" if total > 0 else "—"

    def _on_method_change(self, change=None) -> None:
        spec = BASE_METHODS.get(self.method.value)
        for slider in self.sliders:  # a greedy soup chooses its own (uniform) weights; slerp/model_stock use none
            slider.disabled = self.method.value == "greedy" or (spec is not None and not spec.weighted)
        declared = {p.name: p for p in spec.parameters} if spec is not None else {}
        for name, control in self.parameters.items():
            control.disabled = name not in declared
            if name in declared:
                control.value = declared[name].default
        self.base.disabled = spec is None or not spec.needs_base

    def _run(self, action):
        self.error = None
        self.out.clear_output()
        with self.out:
            try:
                return action()
            except MVCError as exc:
                self.error = str(exc).strip().splitlines()[0]
                self.status.value = f"<span style='color:#b00'>{html.escape(self.error)}</span>"
                return None

    def _on_preview(self, button=None) -> None:
        preview = self._run(lambda: self.repo.merge_preview(self.versions, **self._options()))
        if preview is None:
            return
        self.last_preview = preview
        score = preview.report.score
        shown = f"{preview.report.score_name} = {format_number(score)}" if score is not None else "no evaluation"
        self.status.value = html.escape(f"preview ({preview.report.method}, not committed): {shown}")
        with self.out:
            display(preview.report)

    def _on_commit(self, button=None) -> None:
        version = self._run(lambda: self.repo.merge(
            self.versions, message=self.message.value or None, into=self.into,
            result_name=self.result_name, **self._options()))
        if version is None:
            return
        self.last_version = version
        self.status.value = html.escape(f"committed {version.short_id} ({version.name}): {version.message}")
        with self.out:
            display(version)
