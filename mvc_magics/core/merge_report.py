"""What a merge did, as data: the method, weights, ingredients, greedy steps and the score.

The report is stored in the merged version's metadata (``extra["merge"]``) and rendered as a
table (text in a terminal, HTML in Jupyter); a preview is a merge computed but not committed.
Nothing here decides how to merge.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MergeError
from .merge_methods import BASE_METHODS as TASK_VECTOR_METHODS
from .tables import Table, TableView, format_number
from .version import Version


@dataclass(frozen=True)
class MergeStep:
    """One greedy-soup step: the candidate, the score of the soup with it, and whether it stayed."""

    id: str
    score: float
    accepted: bool
    soup_size: int  # ingredients in the soup that was scored


@dataclass
class MergeReport(TableView):
    """The record of one merge (also what is stored under ``extra["merge"]``)."""

    method: str
    inputs: list[str]
    weights: list[float] = field(default_factory=list)  # normalized, one per input
    ingredients: list[str] = field(default_factory=list)  # inputs that contribute to the result
    score: float | None = None
    score_name: str | None = None
    ranked_by: str | None = None
    ranking: list[tuple[str, float]] = field(default_factory=list)  # greedy: own scores, best first
    steps: list[MergeStep] = field(default_factory=list)
    tensors_averaged: int = 0  # merged (averaged, or computed by a method over task vectors)
    tensors_copied: int = 0
    base: str | None = None  # methods over task vectors: the version the task vectors start from
    base_found: bool = False  # True: the base is the inputs' merge base, not given
    parameters: dict[str, float | int] = field(default_factory=dict)  # every declared parameter, as used
    given_weights: list[float] | None = None  # average: the weights as given (None: equal, not given)

    def to_metadata(self) -> dict:
        """JSON-able record stored with the merged version (everything :func:`redo_line` needs)."""
        data: dict = {"method": self.method, "inputs": list(self.inputs), "weights": list(self.weights),
                      "ingredients": list(self.ingredients)}
        if self.given_weights is not None:
            data["given_weights"] = list(self.given_weights)
        if self.base is not None:
            data["base"] = self.base
            data["base_found"] = "merge base" if self.base_found else "given"
        if self.parameters or self.method in TASK_VECTOR_METHODS:
            data["parameters"] = dict(self.parameters)
        if self.score is not None:
            data["score"] = _json_number(self.score)
            data["score_name"] = self.score_name
        if self.method in ("average", "greedy") or self.method in TASK_VECTOR_METHODS:
            data["tensors_averaged"] = self.tensors_averaged
            data["tensors_copied"] = self.tensors_copied
        if self.ranking:
            data["ranked_by"] = self.ranked_by
            data["ranking"] = [[vid, _json_number(score)] for vid, score in self.ranking]
        if self.steps:
            data["steps"] = [{"id": s.id, "score": _json_number(s.score), "accepted": s.accepted,
                              "soup_size": s.soup_size} for s in self.steps]
        return data

    def default_message(self) -> str:
        """A commit message saying what the merge was."""
        count = len(self.inputs)
        if self.method in TASK_VECTOR_METHODS:
            settings = ", ".join(f"{k}={format_number(v)}" for k, v in self.parameters.items())
            on = f" on base {self.base[:8]}" if self.base else ""
            return f"{self.method} merge of {count} versions{on}" + (f" ({settings})" if settings else "")
        if self.method == "greedy":
            return f"greedy soup: {len(self.ingredients)} of {count} ingredients"
        if self.method in ("ensemble", "vote"):
            kind = "output ensemble" if self.method == "ensemble" else "majority-vote ensemble"
            return f"{kind} of {count} versions"
        if len(set(self.weights)) <= 1:
            return f"uniform soup of {count} versions"
        return f"weighted average of {count} versions ({', '.join(f'{w:.3g}' for w in self.weights)})"

    def table(self, short: dict[str, str] | None = None) -> Table:
        """Inputs with their weight, own score (greedy), step score and whether they were used."""
        short = short or {}
        step_of = {s.id: s for s in self.steps}
        own = dict(self.ranking)
        order = [vid for vid, _ in self.ranking] or list(self.inputs)
        header = ["input", "weight", "used"]
        if own:
            header.append(f"own {self.ranked_by or 'score'}")
        if self.steps:
            header.append("soup score")
        rows = []
        for vid in order:
            position = self.inputs.index(vid)
            row = [short.get(vid, vid[:8]), self.weights[position] if self.weights else None,
                   "yes" if vid in self.ingredients else "no"]
            if own:
                row.append(own.get(vid))
            if self.steps:
                step = step_of.get(vid)
                row.append(step.score if step else None)
            rows.append(row)
        title = f"{self.method} merge of {len(self.inputs)} versions"
        if self.base:
            title += f" on base {short.get(self.base, self.base[:8])}" + (" (merge base)" if self.base_found else "")
        if self.score is not None:
            title += f": {self.score_name or 'score'} = {format_number(self.score)}"
        return Table(header, rows, title=title,
                     highlight={i for i, vid in enumerate(order) if vid in self.ingredients})



@dataclass(repr=False)
class MergedVersion(Version):
    """The :class:`Version` a merge committed, with the :class:`MergeReport` of how it was made."""

    report: MergeReport | None = None

    @classmethod
    def from_version(cls, version: Version, report: MergeReport) -> MergedVersion:
        fields = {f.name: getattr(version, f.name) for f in dataclasses.fields(Version)}
        return cls(**fields, report=report)

    def __repr__(self) -> str:
        return f"<Version {self.summary()} ({self.report.method if self.report else 'merge'})>"

    def _repr_html_(self) -> str:
        body = super()._repr_html_()
        if self.report is None:
            return body
        return body + self.report.table().to_html()

    def __str__(self) -> str:
        text = repr(self)
        return text if self.report is None else text + "\n" + self.report.table().to_text()


def redo_line(merge: Mapping[str, Any]) -> str | None:
    """The ``%mvc_merge`` line that makes this merge again (``merge``: a version's ``extra["merge"]``).

    Full ids, the method, the base, the weights as used and every parameter: running it gives the
    same version id (the merge is deterministic; DARE's drops are seeded). None for a record that is
    not a merge's.
    """
    try:
        return _redo(merge)
    except (TypeError, ValueError, AttributeError):  # a damaged record: nothing to redo, never an error
        return None


def _redo(merge: Mapping[str, Any]) -> str | None:
    method, inputs = merge.get("method"), merge.get("inputs")
    if not isinstance(method, str) or not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        return None
    parts = ["%mvc_merge", *inputs]
    if method != "average":
        parts += ["--method", method]
    if merge.get("base"):
        parts += ["--base", str(merge["base"])]
    weights = _redo_weights(method, merge)
    if weights:
        parts += ["--weights", ",".join(repr(float(w)) for w in weights)]
    for key, value in (merge.get("parameters") or {}).items():
        parts += [f"--{key}", repr(value)]
    if merge.get("score_name") and method == "greedy":
        parts += ["--eval", str(merge["score_name"])]
    return " ".join(parts)


def _redo_weights(method: str, merge: Mapping[str, Any]) -> list | None:
    """The weights a redo passes: none where they are the default (equal, or 1 for task vectors)."""
    if method == "average":
        return merge.get("given_weights")
    weights = merge.get("weights") or []
    if method == "greedy" or not weights:
        return None
    if method in TASK_VECTOR_METHODS:
        return None if all(w == 1.0 for w in weights) else list(weights)
    return None if len(set(weights)) <= 1 else list(weights)


def _json_number(value: float) -> float | None:
    """NaN/inf are not JSON: stored as null."""
    return value if value is not None and math.isfinite(value) else None


__all__ = ["MergeReport", "MergeStep", "MergedVersion", "redo_line"]


EvalFn = Callable[[Any], float]


@dataclass
class MergePreview:
    """A merge computed but not committed: the live merged model, its score and the report."""

    model: Any
    report: MergeReport
    state: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    @property
    def score(self) -> float | None:
        return self.report.score


def score_of(eval_fn: EvalFn, model: Any) -> float:
    """``eval_fn(model)`` as a float (higher is better); NaN when it is not finite."""
    value = eval_fn(model)
    try:
        value = float(getattr(value, "item", lambda: value)())
    except (TypeError, ValueError):
        raise MergeError(f"the evaluation function must return a number, not {value!r}") from None
    return value if math.isfinite(value) else math.nan
