"""Output ensembles of stored Keras versions: the members' mean output, or their majority vote.

The ensemble is a Keras functional model whose members are the stored versions, rebuilt from
their structures and weights. Tensor hashes are content hashes, so committing it writes no member
tensor again: only the (weight-free) combining layer and the structure are new. It is made only of
Keras layers and :class:`mvc_magics.keras_layers.MajorityVote`, so it rebuilds from its stored
structure without running any code from the store.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from ..adapters import adapter_named, adapter_to_build, require_framework
from ..core.merge_plan import check_distinct, check_weights, short
from ..core.merge_report import EvalFn, MergePreview, MergeReport, score_of
from ..core.version import Version
from ..errors import MergeConflictError, MergeError
from ..storage.local.store import Store
from .versions import load_state, structure


def _member(store: Store, version: Version, position: int, unsafe: bool = False,
            classes: Mapping[str, type] | None = None) -> Any:
    stored = structure(store, version.id)
    if stored is None:
        raise MergeError(f"{short(version)} has no stored structure: an ensemble rebuilds its members from it")
    stored = copy.deepcopy(stored)
    if isinstance(stored, dict) and isinstance(stored.get("config"), dict):
        # Members are layers of one model, so their names must differ.
        stored["config"]["name"] = f"member_{position}"
    return adapter_to_build("keras").build(stored, load_state(store, version), unsafe=unsafe, classes=classes)


def _framework_ensemble(store: Store, versions: list[Version], used: list[int], normalized: list[float],
                        method: str, eval_fn: EvalFn | None, report: MergeReport, unsafe: bool = False,
                        classes: Mapping[str, type] | None = None) -> MergePreview:
    """An ensemble built by the members' own adapter (a PyTorch module, a scikit-learn voter)."""
    adapter = adapter_to_build(versions[0].framework)
    if not hasattr(adapter, "ensemble"):
        raise MergeConflictError(f"{versions[0].framework} models cannot be ensembled (they have no forward "
                                 "function of their own): average them, or ensemble their outputs in your code")
    members = [adapter.build(structure(store, versions[i].id), load_state(store, versions[i]), unsafe=unsafe,
                             classes=classes) for i in used]
    model = adapter.ensemble(members, [normalized[i] for i in used], method)
    report.weights = normalized
    report.ingredients = [versions[i].id for i in used]
    if eval_fn is not None:
        report.score = score_of(eval_fn, model)
    return MergePreview(model, report, adapter.get_state(model))


def _has_inputs(model: Any) -> bool:
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):  # Keras raises for a model that was never called functionally
        return False


def _signature(tensors) -> list[tuple[tuple, str]]:
    return [(tuple(t.shape[1:]), str(t.dtype)) for t in tensors]


def build_ensemble(store: Store, versions: list[Version], weights: Sequence[float] | None, method: str,
                   eval_fn: EvalFn | None, report: MergeReport, unsafe: bool = False,
                   classes: Mapping[str, type] | None = None) -> MergePreview:
    """The ensemble (``method="ensemble"``) or vote (``"vote"``) model of ``versions``, uncommitted.

    Members whose class is user code are rebuilt only with ``classes`` or ``unsafe``."""
    check_distinct(versions)
    _raw, normalized = check_weights(weights, len(versions))
    frameworks = sorted({v.framework for v in versions})
    if len(frameworks) > 1:
        listing = ", ".join(f"{short(v)}: {v.framework}" for v in versions)
        raise MergeConflictError(f"an ensemble's members must be of one framework ({listing})")
    used = [i for i, w in enumerate(normalized) if w > 0]
    if len(used) < 2:
        raise MergeConflictError("an ensemble needs at least two members with a positive weight")
    if frameworks[0] != "keras":
        return _framework_ensemble(store, versions, used, normalized, method, eval_fn, report, unsafe, classes)
    require_framework("keras")
    import keras

    members = {i: _member(store, versions[i], i, unsafe, classes) for i in used}
    first = members[used[0]]
    unwired = [short(versions[i]) for i in used if not _has_inputs(members[i])]
    if unwired:  # a subclassed model declares no inputs for a functional ensemble to feed
        raise MergeConflictError(f"{', '.join(unwired)} declare no inputs (subclassed models), so their outputs "
                                 "cannot be wired into one ensemble model; average their weights instead, or "
                                 "ensemble their outputs in your own code.")
    for i in used[1:]:
        member = members[i]
        if _signature(member.inputs) != _signature(first.inputs):
            raise MergeConflictError(
                f"different inputs: {short(versions[used[0]])} takes {_signature(first.inputs)}, "
                f"{short(versions[i])} takes {_signature(member.inputs)}"
            )
        if len(member.outputs) != 1 or _signature(member.outputs) != _signature(first.outputs):
            raise MergeConflictError(
                f"different outputs: {short(versions[used[0]])} gives {_signature(first.outputs)}, "
                f"{short(versions[i])} gives {_signature(member.outputs)}"
            )
    if len(first.outputs) != 1:
        raise MergeError("ensembles of models with several outputs are not supported")
    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=f"input_{j}") for j, t in enumerate(first.inputs)]
    feed = inputs[0] if len(inputs) == 1 else inputs
    outputs = [members[i](feed) for i in used]
    shares = [normalized[i] for i in used]
    if method == "vote":
        classes = first.outputs[0].shape[-1]
        if classes is None or classes < 2:
            raise MergeError("a vote needs class scores (last output dimension >= 2)")
        from ..keras_layers import MajorityVote

        combined = MajorityVote(member_weights=shares, name="majority_vote")(outputs)
    elif len(set(shares)) == 1:
        combined = keras.layers.Average(name="ensemble_average")(outputs)
    else:
        scaled = [keras.layers.Rescaling(w, name=f"weight_{i}")(o)
                  for i, w, o in zip(used, shares, outputs, strict=True)]
        combined = keras.layers.Add(name="ensemble_weighted_sum")(scaled)
    model = keras.Model(feed, combined, name=method)
    report.weights = normalized
    report.ingredients = [versions[i].id for i in used]
    if eval_fn is not None:
        report.score = score_of(eval_fn, model)
    return MergePreview(model, report, adapter_named("keras").get_state(model))
