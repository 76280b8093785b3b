"""Merging versions: weighted averages ("model soups"), greedy soups, output ensembles, and merges
over task vectors (task arithmetic, TIES, DARE, SLERP, Model Stock; :mod:`.task_merge`).

Every merge is checked completely before a tensor is read (:mod:`mvc_magics.core.merge_plan`), so a
conflict leaves the store and every live model as they were. Averaging lives in :mod:`.soups`,
ensembles in :mod:`.ensemble`; the result is committed like any model, with every input as a parent.
A plain average is streamed into the commit tensor by tensor (:func:`streamed`), so neither a model
nor the whole averaged state is held.

>>> soup = repo.merge(["ft-1", "ft-2", "ft-3"], name="model")                      # doctest: +SKIP
>>> greedy = repo.merge(refs, method="greedy", eval_fn=val_accuracy, into=model)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ..adapters import adapter_for, adapter_named
from ..adapters.base import match_state
from ..core.merge_methods import BASE_METHODS
from ..core.merge_plan import METHODS, MergePlan, align, check_distinct, check_structures, check_weights
from ..core.merge_report import EvalFn, MergedVersion, MergePreview, MergeReport
from ..core.version import Version
from ..errors import MergeConflictError, MergeError
from ..storage.local.store import Store
from . import versions
from .commit import commit, commit_stream
from .ensemble import build_ensemble
from .soups import Evaluator, average_state, average_stream, averaged_count, greedy_soup
from .task_merge import base_merge_state, base_merge_stream, merged_count, plan_base_merge

__all__ = ["METHODS", "MergePreview", "MergeReport", "MergedVersion", "computed_merge", "merge_preview",
           "merge_versions"]


def plan_weight_merge(store: Store, inputs: list[Version], weights: Sequence[float] | None) -> MergePlan:
    """Validate a weight merge (average or greedy) of ``versions``; nothing is read but metadata."""
    check_distinct(inputs)
    raw, normalized = check_weights(weights, len(inputs))
    # Only compared here, never rebuilt: the verified structures as cached, not copies of them.
    structures = [store.content(v.id).structure for v in inputs]
    if len({v.framework for v in inputs}) == 1:  # before the structures: the reason, not a symptom
        refusal = getattr(adapter_named(inputs[0].framework), "average_refusal", lambda _s: None)(structures[0])
        if refusal:
            raise MergeConflictError(refusal)
    check_structures(inputs, structures)
    manifests = [store.manifest(v.id) for v in inputs]
    # Keras layer names may differ between equal structures; dict keys are the only identity.
    tensors = align(inputs, manifests, by_position=inputs[0].framework != "numpy")
    return MergePlan(list(inputs), normalized, raw, tensors, versions.structure(store, inputs[0].id),
                     inputs[0].framework)


def _resolve(store: Store, refs: Sequence[str | Version], name: str | None) -> list[Version]:
    if isinstance(refs, str | Version):
        raise MergeConflictError("give a list of at least two refs to merge")
    return [versions.get(store, r.id) if isinstance(r, Version) else versions.resolve(store, r, name=name)
            for r in refs]


def _score_name(eval_fn: EvalFn | None, score_name: str | None) -> str | None:
    if eval_fn is None:
        return None
    if score_name:
        return score_name
    candidate = getattr(eval_fn, "__name__", "")
    return candidate if candidate.isidentifier() and candidate != "<lambda>" else "score"


Prepared = tuple[list[Version], MergeReport, "MergePlan | None"]


def _prepare(store: Store, refs: Sequence[str | Version], weights: Sequence[float] | None, method: str,
             eval_fn: EvalFn | None, name: str | None, score_name: str | None,
             base: str | Version | None = None, params: Mapping[str, Any] | None = None) -> Prepared:
    """(inputs, report, checked plan of a weight merge or None for an ensemble): nothing read but metadata.

    ``base`` and ``params`` (density, scale, t, seed...) are for the methods over task vectors;
    the other methods ignore ``base`` and refuse parameters they do not declare.
    """
    if method not in METHODS:
        raise MergeError(f"unknown merge method {method!r}: use one of {', '.join(METHODS)}")
    params = {k: v for k, v in (params or {}).items() if v is not None}
    if params and method not in BASE_METHODS:
        raise MergeError(f"{method} has no parameter {', '.join(map(repr, sorted(params)))}")
    inputs = _resolve(store, refs if isinstance(refs, str) else list(refs), name)
    report = MergeReport(method=method, inputs=[v.id for v in inputs], score_name=_score_name(eval_fn, score_name))
    if method in BASE_METHODS:
        plan = plan_base_merge(store, inputs, method, base, weights, params, name)
        report.base = plan.base.id if plan.base is not None else None
        report.base_found = base is None and plan.base is not None
        report.parameters = dict(plan.parameters)
        _describe_average(report, plan)
        return inputs, report, plan
    if method in ("ensemble", "vote"):
        return inputs, report, None
    if method == "greedy":
        if weights is not None:
            raise MergeError("a greedy soup is a uniform average of the chosen ingredients: give no weights")
        if eval_fn is None:
            raise MergeError("a greedy soup needs eval_fn (the held-out score of each candidate soup)")
    return inputs, report, plan_weight_merge(store, inputs, weights)


@contextmanager
def computed_merge(store: Store, refs: Sequence[str | Version], weights: Sequence[float] | None = None,
                   method: str = "average", eval_fn: EvalFn | None = None, name: str | None = None,
                   metric: str | None = None, template: Any = None,
                   score_name: str | None = None, unsafe: bool = False,
                   classes: Mapping[str, type] | None = None, prepared: Prepared | None = None,
                   base: str | Version | None = None, params: Mapping[str, Any] | None = None
                   ) -> Iterator[MergePreview]:
    """Check and compute a merge; yield it with a live model holding the result, uncommitted.

    The live model is rebuilt from the first input's stored structure (a Keras model), is a dict
    (dict models), or is ``template`` borrowed while the block runs (a Keras model whose
    structure is not stored): its own weights are put back when the block ends. A structure naming
    user classes is rebuilt only with ``classes`` or ``unsafe`` (see :mod:`mvc_magics.adapters.trust`).
    ``prepared``: what :func:`_prepare` returned for these arguments (not checked again).
    """
    weights = weights if weights is None or isinstance(weights, str) else list(weights)
    inputs, report, plan = prepared or _prepare(store, refs, weights, method, eval_fn, name, score_name, base, params)
    if plan is None:
        yield build_ensemble(store, inputs, weights, method, eval_fn, report, unsafe, classes)
        return
    evaluator = Evaluator(plan, eval_fn, template=template, trusted={"unsafe": unsafe, "classes": classes})
    try:
        if method == "greedy":
            chosen, score = greedy_soup(store, plan, evaluator, metric, report)
            raw = [1.0 if i in chosen else 0.0 for i in range(len(inputs))]
            report.weights = check_weights(raw, len(inputs))[1]
            report.ingredients = [inputs[i].id for i in chosen]
            state, averaged = average_state(store, plan, chosen, raw)
            report.score = score
        elif method in BASE_METHODS:
            state, averaged = base_merge_state(store, plan), merged_count(plan)
            if eval_fn is not None:
                report.score = evaluator.score(state)
        else:
            _describe_average(report, plan)
            state, averaged = average_state(store, plan)
            if eval_fn is not None:
                report.score = evaluator.score(state)
        report.tensors_averaged, report.tensors_copied = averaged, len(state) - averaged
        # A dict model is its state: no copy. A Keras model holds the state in its variables.
        held = state if plan.framework == "numpy" else evaluator.model_with(state)
        yield MergePreview(held, report, state)
    finally:
        evaluator.close()


def _describe_average(report: MergeReport, plan: MergePlan) -> None:
    if plan.method in BASE_METHODS:
        # Task-vector methods use the weights as given (default 1: task arithmetic sums); methods
        # without weights (slerp, model_stock) record none.
        report.weights = list(plan.raw_weights) if BASE_METHODS[plan.method].weighted else []
        report.tensors_averaged = merged_count(plan)
    else:
        report.weights = plan.weights
        # As given, so a redo sums in the same order and gives the same bytes (default: all 1, not stored).
        report.given_weights = None if all(w == 1.0 for w in plan.raw_weights) else list(plan.raw_weights)
        report.tensors_averaged = averaged_count(plan)
    report.ingredients = [v.id for v, w in zip(plan.versions, plan.weights, strict=True) if w > 0]
    report.tensors_copied = len(plan.tensors) - report.tensors_averaged


def streamed(plan: MergePlan | None, method: str, eval_fn: EvalFn | None) -> bool:
    """Whether the average is streamed into the commit tensor by tensor (no model, no whole state):
    a plain average (or task-vector merge) that no eval function scores, of dict models or of any
    framework's versions with a stored structure. The inputs share that structure (checked by the
    plan), and the result keeps it unchanged, so no model code runs: a subclassed Keras model, a
    ``tf.Module`` or a PyTorch class of the notebook is averaged without a rebuild or ``unsafe``.
    Its version id is the one a rebuilt model holding the average would get: an id hashes the
    structure and the manifest, not the model. Only ``--into`` a new variable, ``eval_fn`` and
    ensembles need a live model.
    """
    return (plan is not None and (method == "average" or method in BASE_METHODS) and eval_fn is None
            and (plan.framework == "numpy" or plan.structure is not None))


def _check_fits(into: Any, shapes: Mapping[str, Any]) -> None:
    """Raise (before anything is committed) when tensors of these shapes (``.shape``) do not fit ``into``."""
    adapter = adapter_for(into)
    live = {k: (tuple(v.shape), v.dtype.name) for k, v in adapter.get_state(into).items()}
    match_state(live, shapes)


def merge_versions(store: Store, refs: Sequence[str | Version], weights: Sequence[float] | None = None,
                   method: str = "average", eval_fn: EvalFn | None = None, name: str | None = None,
                   message: str | None = None, into: Any = None, metric: str | None = None,
                   model: Any = None, result_name: str | None = None, tags: Sequence[str] = (),
                   score_name: str | None = None, provenance: dict | None = None, unsafe: bool = False,
                   classes: Mapping[str, type] | None = None, base: str | Version | None = None,
                   **params: Any) -> MergedVersion:
    """Merge versions and commit the result with every input as a parent (see :meth:`Repo.merge`).

    The result goes through the commit's staging and publishing, so a merge gets everything a
    commit does (deduplication, atomic writes, checks) and nothing else writes to the store. A
    plain average (see :func:`streamed`) is streamed into the commit tensor by tensor; otherwise
    the live merged model is committed. ``into`` is checked before the commit and assigned after it.
    ``base`` and ``params`` (``density``, ``scale``, ``t``, ``seed``): methods over task vectors
    (:mod:`.task_merge`); the base is a parent of the result too.
    """
    if into is not None:
        adapter_for(into)  # an unsupported object fails before any work
    weights = weights if weights is None or isinstance(weights, str) else list(weights)
    prepared = _prepare(store, refs, weights, method, eval_fn, name, score_name, base, params)
    inputs, report, plan = prepared
    first = inputs[0]
    weight_merge = method in ("average", "greedy") or method in BASE_METHODS
    parents = list(report.inputs) + ([report.base] if report.base and report.base not in report.inputs else [])
    target = result_name or (name if weight_merge and name else None) or (
        first.name if weight_merge else f"{name or first.name}_{method}")

    def options() -> dict[str, Any]:
        metrics = {report.score_name: report.score} if report.score is not None and report.score_name else None
        extra: dict[str, Any] = {"merge": report.to_metadata()}
        if metrics:
            # Greedy soups maximize the score: its direction is the merge's, never guessed from a name
            # (an eval function called ``neg_mse`` returns higher-is-better numbers).
            extra["metric_directions"] = {report.score_name: "max"}
        for key in ("compile", first.framework):  # same structure: the inputs' training setup, and
            if key in first.extra and weight_merge:  # what the adapter noted (torch: class, devices)
                extra[key] = first.extra[key]
        return {"message": message or report.default_message(), "metrics": metrics or {}, "tags": tags,
                "parents": parents, "extra": extra, "provenance": provenance,
                "move_head": into is not None, "attach": False}

    if streamed(plan, method, eval_fn):
        assert plan is not None
        if into is not None:
            _check_fits(into, {t.name: t for t in plan.tensors})
        _describe_average(report, plan)
        stream = base_merge_stream(store, plan) if method in BASE_METHODS else average_stream(store, plan)
        version = commit_stream(store, first.framework, plan.structure, stream, target, **options(),
                                total_bytes=sum(t.entries[0].nbytes for t in plan.tensors))
        # The live model gets the committed version, read back and verified like a checkout.
        state = versions.load_state(store, version) if into is not None else {}
    else:
        with computed_merge(store, refs, weights, method, eval_fn, name, metric, model if model is not None else into,
                            score_name, unsafe, classes, prepared=prepared) as preview:
            if into is not None:
                _check_fits(into, preview.state)
            version = commit(store, preview.model, target, **options())
            state = preview.state
    if into is not None:
        into_adapter = adapter_for(into)
        into_adapter.set_state(into, state)
        getattr(into_adapter, "mark_committed", lambda _model: None)(into)  # its last fit's metrics are stale
    return MergedVersion.from_version(version, report)


def merge_preview(store: Store, refs: Sequence[str | Version], weights: Sequence[float] | None = None,
                  method: str = "average", eval_fn: EvalFn | None = None, name: str | None = None,
                  metric: str | None = None, model: Any = None, score_name: str | None = None,
                  unsafe: bool = False, classes: Mapping[str, type] | None = None,
                  base: str | Version | None = None, **params: Any) -> MergePreview:
    """The merge computed and scored, nothing committed, no live model changed.

    ``.model`` is a new live model holding the result (None when it could only be held in a
    borrowed ``model``, which has its own weights back).
    """
    with computed_merge(store, refs, weights, method, eval_fn, name, metric, model, score_name,
                        unsafe, classes, base=base, params=params) as preview:
        borrowed = model is not None and preview.model is model
    if borrowed:
        preview.model = None
    return preview
