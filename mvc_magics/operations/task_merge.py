"""Merges over task vectors (task arithmetic, TIES, DARE, SLERP, Model Stock), streamed from the store.

The base a task vector starts from is, by default, the inputs' merge base: their nearest common
ancestor in the version graph (:mod:`mvc_magics.core.merge_base`), as git finds one. Everything is
checked on the index before a tensor is read (:func:`plan_base_merge`); then each tensor is read
from the base and every input, merged by the method's function (:mod:`mvc_magics.core.merge_methods`),
cast back to its dtype and handed on (:func:`base_merge_stream`): peak memory is one tensor per
input plus the base's, never a model per input.

>>> v = repo.merge(["ft-1", "ft-2", "ft-3"], method="ties", density=0.2)   # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from ..adapters import adapter_named
from ..core.manifest import ManifestEntry, dtype_from_name
from ..core.merge_base import merge_base
from ..core.merge_methods import BASE_METHODS, MergeMethod, TensorInputs
from ..core.merge_plan import (
    AlignedTensor,
    MergePlan,
    align,
    check_distinct,
    check_structures,
    check_weights,
    short,
)
from ..core.version import Version
from ..errors import MergeConflictError, MergeError
from ..storage.local.store import Store
from ..storage.snapshots.snapshot import TensorReader
from . import versions


def parents_reader(store: Store) -> Callable[[str], list[str]]:
    """``parents_of(id)``: a version's parents that are in this store (read from the index, cached)."""
    cache: dict[str, list[str]] = {}

    def parents_of(vid: str) -> list[str]:
        if vid not in cache:
            rows = store.index.query("SELECT meta FROM versions WHERE id = ?", (vid,))
            meta = json.loads(rows[0][0]) if rows else {}
            listed = meta.get("parents") if isinstance(meta, dict) else None
            cache[vid] = [p for p in listed if isinstance(p, str) and store.has_version(p)] \
                if isinstance(listed, list) else []
        return cache[vid]

    return parents_of


def find_merge_base(store: Store, inputs: Sequence[Version]) -> Version:
    """The inputs' nearest common ancestor; :class:`MergeConflictError` (asking for a base) when none."""
    found = merge_base([v.id for v in inputs], parents_reader(store))
    if found is None:
        listing = ", ".join(short(v) for v in inputs)
        raise MergeConflictError(f"{listing} have no common ancestor in the history: give the base "
                                 "(--base REF / base=REF), the version they were fine-tuned from")
    return versions.get(store, found)


def base_method(method: str) -> MergeMethod:
    spec = BASE_METHODS.get(method)
    if spec is None:
        raise MergeError(f"{method!r} is not a merge method over task vectors")
    return spec


def check_method_inputs(spec: MergeMethod, count: int, weights: object) -> None:
    """What a method accepts, before anything is resolved: how many inputs, whether weights."""
    if spec.exact_inputs is not None and count != spec.exact_inputs:
        raise MergeConflictError(f"{spec.name} merges exactly {spec.exact_inputs} versions, got {count}")
    if not spec.weighted and weights is not None:
        raise MergeError(f"{spec.name} takes no weights")


def plan_base_merge(store: Store, inputs: list[Version], method: str, base: str | Version | None,
                    weights: Sequence[float] | None, params: Mapping[str, object], name: str | None) -> MergePlan:
    """Validate a merge over task vectors: inputs, parameters, the base (given or the merge base),
    structures and tensors of all of them. Nothing is read but metadata."""
    spec = base_method(method)
    check_method_inputs(spec, len(inputs), weights)
    check_distinct(inputs)
    parameters = spec.checked_parameters(params)
    raw, _ = check_weights(weights, len(inputs))
    base_version = None
    if spec.needs_base:
        if base is None:
            base_version = find_merge_base(store, inputs)
        elif isinstance(base, Version):
            base_version = versions.get(store, base.id)
        else:
            base_version = versions.resolve(store, base, name=name)
    compared = [*inputs, base_version] if base_version is not None else list(inputs)
    structures = [store.content(v.id).structure for v in compared]
    if len({v.framework for v in compared}) == 1:
        refusal = getattr(adapter_named(inputs[0].framework), "average_refusal", lambda _s: None)(structures[0])
        if refusal:
            raise MergeConflictError(refusal)
    check_structures(compared, structures)
    manifests = [store.manifest(v.id) for v in compared]
    aligned = align(compared, manifests, by_position=inputs[0].framework != "numpy", agree=len(inputs))
    complex_ = [t.name for t in aligned if "complex" in t.dtype]
    if complex_:
        raise MergeConflictError(f"{method} merges real tensors; complex: {', '.join(complex_[:3])}")
    count = len(inputs)
    tensors = [AlignedTensor(t.name, t.dtype, t.shape, t.entries[:count], t.take_first,
                             t.entries[count] if base_version is not None else None) for t in aligned]
    return MergePlan(list(inputs), raw, raw, tensors, versions.structure(store, inputs[0].id), inputs[0].framework,
                     base=base_version, method=method, parameters=parameters)


def copied(tensor: AlignedTensor) -> bool:
    """Taken from the first input, not merged: a non-float tensor, a generator state, or the same
    bytes in every input and the base (every task vector zero: every method gives the base back)."""
    hashes = {e.hash for e in tensor.entries} | ({tensor.base.hash} if tensor.base is not None else set())
    return not tensor.is_float or tensor.take_first or len(hashes) == 1


def merged_count(plan: MergePlan) -> int:
    """How many tensors the method computes (the rest are copied from the first input)."""
    return sum(not copied(t) for t in plan.tensors)


def _merge_one(reader: TensorReader, plan: MergePlan, spec: MergeMethod, tensor: AlignedTensor) -> np.ndarray:
    """One tensor merged: base and inputs read one after the other, each input turned at once into
    its float64 task vector (one copy per input, or one at a time for a one-pass method), combined,
    cast back to the tensor's dtype."""
    base = None
    if tensor.base is not None:
        assert plan.base is not None
        base = reader.read(tensor.base, owner=plan.base.id).astype(np.float64)

    def task_vectors() -> Iterator[np.ndarray]:
        for entry, version in zip(tensor.entries, plan.versions, strict=True):
            value = reader.read(entry, owner=version.id).astype(np.float64)
            if base is not None:
                value -= base
            yield value

    # A one-pass method (task arithmetic, DARE linear) takes each input as it is read: one at a time.
    values = task_vectors() if spec.one_pass else list(task_vectors())
    merged = spec.combine(TensorInputs(tensor.name, base, values, plan.raw_weights), **plan.parameters)
    return np.asarray(merged).astype(dtype_from_name(tensor.dtype))


def base_merge_stream(store: Store, plan: MergePlan) -> Iterator[tuple[str, np.ndarray | ManifestEntry]]:
    """The merged version as ``(name, tensor)`` pairs, one tensor at a time, for a streamed commit;
    a copied tensor is the first input's manifest entry (referenced, not read)."""
    spec = base_method(plan.method)
    with TensorReader(store.layout.snapshot_path) as reader:
        for tensor in plan.tensors:
            if copied(tensor):
                yield tensor.name, tensor.entries[0]
            else:
                yield tensor.name, _merge_one(reader, plan, spec, tensor)


def base_merge_state(store: Store, plan: MergePlan) -> dict[str, np.ndarray]:
    """The merged state held in memory (to evaluate it, or to commit a model rebuilt around it):
    the same tensors :func:`base_merge_stream` yields, copies read."""
    spec = base_method(plan.method)
    state: dict[str, np.ndarray] = {}
    with TensorReader(store.layout.snapshot_path) as reader:
        for tensor in plan.tensors:
            if copied(tensor):
                state[tensor.name] = reader.read(tensor.entries[0], owner=plan.versions[0].id)
            else:
                state[tensor.name] = _merge_one(reader, plan, spec, tensor)
    return state
