"""Merging versions: weighted averages ("model soups"), greedy soups and output ensembles.

Every merge is checked completely before a tensor is read (:mod:`mvc_magics.merge_plan`), so a
conflict leaves the store and every live model as they were. Averages stream one tensor at a time
from the store: memory holds the output model plus one tensor of one input, however many inputs.

>>> soup = repo.merge(["ft-1", "ft-2", "ft-3"], name="model")                      # doctest: +SKIP
>>> greedy = repo.merge(refs, method="greedy", eval_fn=val_accuracy, into=model)   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .adapters import adapter_for, adapter_named
from .adapters.base import match_state
from .errors import MergeConflictError, MergeError, UnsupportedModelError
from .merge_plan import MergePlan, check_weights, plan_weight_merge, short
from .merge_report import MergedVersion, MergeReport, MergeStep
from .refs import infer_direction
from .storage.snapshot import TensorReader
from .version import Version

if TYPE_CHECKING:
    from .repo import Repo

METHODS = ("average", "greedy", "ensemble", "vote")
EvalFn = Callable[[Any], float]

__all__ = ["METHODS", "MergePreview", "MergeReport", "MergedVersion", "average_state", "merge_preview",
           "merge_versions"]


@dataclass
class MergePreview:
    """A merge computed but not committed: the live merged model, its score and the report."""

    model: Any
    report: MergeReport
    state: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    @property
    def score(self) -> float | None:
        return self.report.score


# -- averaging -------------------------------------------------------------------------------


def average_state(repo: Repo, plan: MergePlan, members: Sequence[int] | None = None,
                  raw_weights: Sequence[float] | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Weighted mean of the inputs' float tensors, streamed one tensor at a time.

    Returns (state, tensors averaged). A tensor whose bytes are the same in every used input
    (equal hash) is read once and copied (the commit then reuses its stored bytes); so is a random-generator
    state (taken from the first used input). Sums are taken in
    float64 in input order and divided by the sum of the weights, then cast back to the dtype.
    """
    members = list(range(len(plan.versions))) if members is None else list(members)
    raw = list(plan.raw_weights if raw_weights is None else raw_weights)
    used = [(i, raw[i]) for i in members if raw[i] > 0]
    total = math.fsum(w for _, w in used)
    state: dict[str, np.ndarray] = {}
    averaged = 0
    with TensorReader(repo.layout.snapshot_path) as reader:
        for tensor in plan.tensors:
            entries = [(tensor.entries[i], w, plan.versions[i].id) for i, w in used]
            if tensor.take_first or len({entry.hash for entry, _, _ in entries}) == 1:
                entry, _, owner = entries[0]
                state[tensor.name] = reader.read(entry, owner=owner)
                continue
            acc = np.zeros(tensor.shape, np.float64)
            for entry, weight, owner in entries:
                accumulate(acc, reader.read(entry, owner=owner), weight)
            acc /= total
            state[tensor.name] = acc.astype(reader_dtype(tensor.dtype))
            del acc  # before the next tensor's accumulator exists, not after
            averaged += 1
    return state, averaged


# Elements converted to float64 per step: the temporary stays at 2 MiB however large a tensor is.
_CHUNK_ELEMENTS = 1 << 18


def accumulate(acc: np.ndarray, tensor: np.ndarray, weight: float) -> None:
    """``acc += weight * tensor`` in float64, in chunks, without a full-size float64 temporary."""
    flat_acc, flat = acc.reshape(-1), tensor.reshape(-1)
    for start in range(0, flat.size, _CHUNK_ELEMENTS):
        part = flat[start:start + _CHUNK_ELEMENTS].astype(np.float64)
        if weight != 1.0:
            part *= weight
        flat_acc[start:start + _CHUNK_ELEMENTS] += part


def reader_dtype(name: str) -> np.dtype:
    """numpy dtype for a stored dtype name (bfloat16 and float8 through ml_dtypes)."""
    from .storage.snapshot import _dtype_from_name

    return _dtype_from_name(name)


# -- evaluation ------------------------------------------------------------------------------


class Evaluator:
    """Scores merged states with ``eval_fn`` in one live model, rebuilt once and reused.

    Keras versions are rebuilt from the first input's stored structure. When there is none (a
    subclassed model), ``template`` (a live model of the same structure) is used and its
    weights are put back afterwards. Dict models are passed as fresh dicts.
    """

    def __init__(self, repo: Repo, plan: MergePlan, eval_fn: EvalFn | None, template: Any = None) -> None:
        self.repo, self.plan, self.eval_fn, self.template = repo, plan, eval_fn, template
        self.adapter = adapter_named(plan.framework)
        self._model: Any = None
        self._saved: dict[str, np.ndarray] | None = None
        self._history: Any = None

    def model_with(self, state: dict[str, np.ndarray]) -> Any:
        """A live model holding ``state`` (the same object on every call for Keras)."""
        if self.plan.framework == "numpy":
            return self.adapter.build(None, state)
        if self._model is None:
            problem = "has no stored structure to rebuild it from"
            if self.plan.structure is not None:
                try:
                    self._model = self.adapter.build(self.plan.structure, state)
                    return self._model
                except UnsupportedModelError as exc:  # e.g. a subclassed model: code outside Keras
                    problem = f"cannot be rebuilt ({str(exc).split(';')[0]})"
            if self.template is None:
                raise MergeError(f"{short(self.plan.versions[0])} {problem}: pass model= (a live model of the "
                                 "same structure) to hold the merged weights")
            self._saved = self.adapter.get_state(self.template)
            # Its fit history belongs to another run: hidden while borrowed, so the merge's
            # commit does not record it as the merged version's metrics.
            self._history = getattr(self.template, "history", None)
            if self._history is not None:
                self.template.history = None
            self._model = self.template
        self.adapter.set_state(self._model, state)
        return self._model

    def score(self, state: dict[str, np.ndarray]) -> float:
        """``eval_fn`` of a model holding ``state``; NaN when it returns something not finite."""
        if self.eval_fn is None:
            raise MergeError("no evaluation function given")
        return score_of(self.eval_fn, self.model_with(state))

    def close(self) -> None:
        """Put the template's own weights back if it was borrowed."""
        if self._saved is not None:
            self.adapter.set_state(self.template, self._saved)
            self._saved = None
            if self._history is not None:
                self.template.history = self._history


def score_of(eval_fn: EvalFn, model: Any) -> float:
    """``eval_fn(model)`` as a float (higher is better); NaN when it is not finite."""
    value = eval_fn(model)
    try:
        value = float(getattr(value, "item", lambda: value)())
    except (TypeError, ValueError):
        raise MergeError(f"the evaluation function must return a number, not {value!r}") from None
    return value if math.isfinite(value) else math.nan


def _rank_key(score: float) -> float:
    return score if math.isfinite(score) else -math.inf


# -- greedy soup -----------------------------------------------------------------------------


def greedy_soup(repo: Repo, plan: MergePlan, evaluator: Evaluator, metric: str | None,
                report: MergeReport) -> tuple[list[int], float]:
    """Wortsman et al. (2022): rank the ingredients, then add each if the soup's score does not drop.

    Returns (chosen input positions, score of the final soup). The running float64 sum of the
    chosen ingredients is kept, so each candidate is read once and each step's trial soup equals
    exactly what :func:`average_state` computes for the same ingredients.
    """
    keys, own_scores = _rank(repo, plan, evaluator, metric, report)
    order = sorted(range(len(plan.versions)), key=lambda i: -_rank_key(keys[i]))
    report.ranking = [(plan.versions[i].id, own_scores[i]) for i in order]
    averaged = [t for t in plan.tensors if not t.identical and not t.take_first]
    best = order[0]
    with TensorReader(repo.layout.snapshot_path) as reader:

        def read(tensor, position: int) -> np.ndarray:
            return reader.read(tensor.entries[position], owner=plan.versions[position].id)

        sums = {t.name: read(t, best).astype(np.float64) for t in averaged}
        constant = {t.name: read(t, best) for t in plan.tensors if t.identical or t.take_first}
        chosen = [best]
        # The best ingredient alone, scored by eval_fn like every later soup (ranking may have
        # used a stored metric instead).
        best_score = own_scores[best] if metric is None else evaluator.score(_soup(plan, sums, constant, 1))
        report.steps.append(MergeStep(plan.versions[best].id, best_score, True, 1))
        for candidate in order[1:]:
            trial_sums = {t.name: sums[t.name] + read(t, candidate) for t in averaged}
            trial_score = evaluator.score(_soup(plan, trial_sums, constant, len(chosen) + 1))
            accepted = _rank_key(trial_score) >= _rank_key(best_score)
            report.steps.append(MergeStep(plan.versions[candidate].id, trial_score, accepted, len(chosen) + 1))
            if accepted:
                chosen.append(candidate)
                sums, best_score = trial_sums, trial_score
            del trial_sums
    return chosen, best_score


def _soup(plan: MergePlan, sums: dict[str, np.ndarray], constant: dict[str, np.ndarray], count: int) -> dict:
    state = {}
    for tensor in plan.tensors:
        if tensor.name in constant:
            state[tensor.name] = constant[tensor.name]
        else:
            state[tensor.name] = (sums[tensor.name] / count).astype(reader_dtype(tensor.dtype))
    return state


def _rank(repo: Repo, plan: MergePlan, evaluator: Evaluator, metric: str | None,
          report: MergeReport) -> tuple[list[float], list[float]]:
    """(sort keys, higher is better; own scores) of each ingredient: a stored metric or ``eval_fn``."""
    if metric:
        key, _, direction = metric.partition(":")
        direction = direction or infer_direction(key)
        if direction not in ("min", "max"):
            raise MergeError(f"metric direction must be min or max, not {direction!r}")
        missing = [short(v) for v in plan.versions if key not in v.metrics]
        if missing:
            raise MergeConflictError(f"no stored metric {key!r} on {', '.join(missing)}: cannot rank by it")
        report.ranked_by = f"{key}:{direction}"
        sign = -1.0 if direction == "min" else 1.0
        values = [v.metrics[key] for v in plan.versions]
        return [sign * value for value in values], values
    report.ranked_by = report.score_name or "eval_fn"
    scores = [evaluator.score(repo.load_state(v)) for v in plan.versions]
    return scores, scores


# -- entry points ----------------------------------------------------------------------------


def _resolve(repo: Repo, refs: Sequence[str | Version], name: str | None) -> list[Version]:
    if isinstance(refs, str | Version):
        raise MergeConflictError("give a list of at least two refs to merge")
    return [repo.get(r.id) if isinstance(r, Version) else repo.resolve(r, name=name) for r in refs]


def _score_name(eval_fn: EvalFn | None, score_name: str | None) -> str | None:
    if eval_fn is None:
        return None
    if score_name:
        return score_name
    candidate = getattr(eval_fn, "__name__", "")
    return candidate if candidate.isidentifier() and candidate != "<lambda>" else "score"


@contextmanager
def computed_merge(repo: Repo, refs: Sequence[str | Version], weights: Sequence[float] | None = None,
                   method: str = "average", eval_fn: EvalFn | None = None, name: str | None = None,
                   metric: str | None = None, template: Any = None,
                   score_name: str | None = None) -> Iterator[MergePreview]:
    """Check and compute a merge; yield it with a live model holding the result, uncommitted.

    The live model is rebuilt from the first input's stored structure (a Keras model), is a dict
    (dict models), or is ``template`` borrowed while the block runs (a Keras model whose
    structure is not stored): its own weights are put back when the block ends.
    """
    if method not in METHODS:
        raise MergeError(f"unknown merge method {method!r}: use one of {', '.join(METHODS)}")
    versions = _resolve(repo, refs, name)
    report = MergeReport(method=method, inputs=[v.id for v in versions], score_name=_score_name(eval_fn, score_name))
    if method in ("ensemble", "vote"):
        from .ensemble import build_ensemble

        yield build_ensemble(repo, versions, weights, method, eval_fn, report)
        return
    if method == "greedy":
        if weights is not None:
            raise MergeError("a greedy soup is a uniform average of the chosen ingredients: give no weights")
        if eval_fn is None:
            raise MergeError("a greedy soup needs eval_fn (the held-out score of each candidate soup)")
    plan = plan_weight_merge(repo, versions, weights)
    evaluator = Evaluator(repo, plan, eval_fn, template=template)
    try:
        if method == "greedy":
            chosen, score = greedy_soup(repo, plan, evaluator, metric, report)
            raw = [1.0 if i in chosen else 0.0 for i in range(len(versions))]
            report.weights = check_weights(raw, len(versions))[1]
            report.ingredients = [versions[i].id for i in chosen]
            state, averaged = average_state(repo, plan, chosen, raw)
            report.score = score
        else:
            report.weights = plan.weights
            report.ingredients = [v.id for v, w in zip(versions, plan.weights, strict=True) if w > 0]
            state, averaged = average_state(repo, plan)
            if eval_fn is not None:
                report.score = evaluator.score(state)
        report.tensors_averaged, report.tensors_copied = averaged, len(state) - averaged
        # A dict model is its state: no copy. A Keras model holds the state in its variables.
        live = state if plan.framework == "numpy" else evaluator.model_with(state)
        yield MergePreview(live, report, state)
    finally:
        evaluator.close()


def _check_fits(into: Any, state: dict[str, np.ndarray]) -> None:
    """Raise (before anything is committed) when the merged state does not fit ``into``."""
    adapter = adapter_for(into)
    live = {k: (tuple(v.shape), v.dtype.name) for k, v in adapter.get_state(into).items()}
    match_state(live, state)


def merge_versions(repo: Repo, refs: Sequence[str | Version], weights: Sequence[float] | None = None,
                   method: str = "average", eval_fn: EvalFn | None = None, name: str | None = None,
                   message: str | None = None, into: Any = None, metric: str | None = None,
                   model: Any = None, result_name: str | None = None, tags: Sequence[str] = (),
                   score_name: str | None = None, provenance: dict | None = None) -> MergedVersion:
    """Merge versions and commit the result with every input as a parent (see :meth:`Repo.merge`).

    The result is committed through :meth:`Repo.commit` from the live merged model, so a merge gets
    everything a commit does (deduplication, atomic writes, checks) and nothing else writes to the
    store. ``into`` is checked before the commit and assigned after it.
    """
    if into is not None:
        adapter_for(into)  # an unsupported object fails before any work
    template = model if model is not None else into
    with computed_merge(repo, refs, weights, method, eval_fn, name, metric, template, score_name) as preview:
        report = preview.report
        if preview.model is None:
            raise MergeError("the merged model could not be built")  # pragma: no cover - defensive
        if into is not None:
            _check_fits(into, preview.state)
        first = repo.get(report.inputs[0])
        weight_merge = method in ("average", "greedy")
        target = result_name or (name if weight_merge and name else None) or (
            first.name if weight_merge else f"{name or first.name}_{method}")
        metrics = {report.score_name: report.score} if report.score is not None and report.score_name else None
        extra = {"merge": report.to_metadata()}
        if "compile" in first.extra and weight_merge:
            extra["compile"] = first.extra["compile"]  # same structure: the inputs' training setup
        version = repo.commit(preview.model, target, message=message or report.default_message(),
                              metrics=metrics or {}, tags=tags, parents=report.inputs, extra=extra,
                              provenance=provenance)
        state = preview.state
    if into is not None:
        adapter_for(into).set_state(into, state)
    return MergedVersion.from_version(version, report)


def merge_preview(repo: Repo, refs: Sequence[str | Version], weights: Sequence[float] | None = None,
                  method: str = "average", eval_fn: EvalFn | None = None, name: str | None = None,
                  metric: str | None = None, model: Any = None, score_name: str | None = None) -> MergePreview:
    """The merge computed and scored, nothing committed, no live model changed.

    ``.model`` is a new live model holding the result (None when it could only be held in a
    borrowed ``model``, which has its own weights back).
    """
    with computed_merge(repo, refs, weights, method, eval_fn, name, metric, model, score_name) as preview:
        borrowed = model is not None and preview.model is model
    if borrowed:
        preview.model = None
    return preview
