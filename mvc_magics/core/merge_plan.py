"""Checking that versions can be merged, before a single tensor byte is read.

Everything here works on the index (manifests: names, dtypes, shapes, hashes) and the stored
structures, so every conflict is found up front: a merge that fails has read no tensors, written
nothing and touched no live model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import MergeConflictError
from .manifest import ManifestEntry
from .merge_methods import BASE_METHODS
from .names import pair_names
from .version import Version
from .weights import check_some_positive, checked_weight

#: Every merge method: weight merges ("average", "greedy"), output ensembles ("ensemble", "vote") and
#: the methods over task vectors (task_arithmetic, ties, dare_linear, dare_ties, slerp, model_stock).
METHODS = ("average", "greedy", "ensemble", "vote", *BASE_METHODS)

# Config objects with a "name" that is not a layer or model name (kept when structures are compared).
_NAMED_CLASSES_SKIPPED = {"DTypePolicy", "FloatDTypePolicy", "QuantizedDTypePolicy"}


@dataclass(frozen=True)
class AlignedTensor:
    """One output tensor: its name (from the first input) and the matching entry of every input."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    entries: tuple[ManifestEntry, ...]
    take_first: bool = False  # a random-generator state: taken from the first input, not averaged
    base: ManifestEntry | None = None  # the base version's matching tensor (merges over task vectors)

    @property
    def is_float(self) -> bool:
        return is_float_dtype(self.dtype)

    @property
    def identical(self) -> bool:
        """True when every input holds the same bytes (equal content hashes): copied, never read."""
        return len({e.hash for e in self.entries}) == 1


@dataclass
class MergePlan:
    """Validated inputs of a weight merge: the versions, their weights and the aligned tensors."""

    versions: list[Version]
    weights: list[float]  # normalized: non-negative, sum 1
    raw_weights: list[float]  # as given (the average divides by their sum)
    tensors: list[AlignedTensor]
    structure: object
    framework: str
    base: Version | None = None  # merges over task vectors: the version the task vectors start from
    method: str = "average"
    parameters: dict[str, float | int] = field(default_factory=dict)  # every declared one, checked

    @property
    def ids(self) -> list[str]:
        return [v.id for v in self.versions]


def is_rng_state(name: str) -> bool:
    """Keras seed-generator states (Dropout...) change with every training step; they are not weights.

    PyTorch BatchNorm's ``num_batches_tracked`` and scikit-learn's ``n_iter_`` are step counters too:
    an average of counters means nothing, so, like a generator state, they are taken from the first
    input (documented in the README).
    """
    return (name.rsplit("/", 1)[-1] in ("seed_generator_state", "n_iter_")
            or name.rsplit(".", 1)[-1] == "num_batches_tracked")


def is_float_dtype(name: str) -> bool:
    """Floating-point and complex dtypes are averaged (float16/32/64, bfloat16, float8/6/4, complex)."""
    return name.startswith(("float", "bfloat", "complex", "bcomplex"))


def accumulator_dtype(name: str) -> np.dtype:
    """Averages are summed in float64 (complex128 for complex tensors), then cast back to ``name``."""
    return np.dtype(np.complex128 if "complex" in name else np.float64)


def add_scaled(acc: np.ndarray, part: np.ndarray, factor: np.float64, start: bool, scratch: np.ndarray) -> None:
    """``acc = (0.0 if start else acc) + factor * part`` in float64: ``part`` multiplied by the float64
    ``factor`` into ``scratch`` (float64, at least ``part``'s size; skipped when ``factor`` is 1), then
    added. Every path that averages sums with this, so each gives the same bits."""
    if factor != 1.0:
        part = np.multiply(part, factor, out=scratch[:part.size])
    np.add(0.0 if start else acc, part, out=acc)


def short(version: Version) -> str:
    return version.short_id or version.id[:8]


def check_weights(weights: Sequence[float] | None, count: int) -> tuple[list[float], list[float]]:
    """(raw, normalized) weights; :class:`MergeConflictError` for a wrong count, negative, NaN or all-zero."""
    if weights is None:
        return [1.0] * count, [1.0 / count] * count
    if isinstance(weights, str | bytes) or not isinstance(weights, Sequence):
        raise MergeConflictError(f"weights must be a list of numbers, not {type(weights).__name__}")
    if len(weights) != count:
        raise MergeConflictError(f"{len(weights)} weights for {count} versions: give one weight per version")
    raw = [checked_weight(value, f"weight {position}", MergeConflictError) for position, value in enumerate(weights, 1)]
    check_some_positive(raw, MergeConflictError, "one version")
    total = math.fsum(raw)
    return raw, [w / total for w in raw]


def check_distinct(versions: Sequence[Version]) -> None:
    """At least two inputs, none given twice (weigh a version more with its weight instead)."""
    if len(versions) < 2:
        raise MergeConflictError(f"a merge needs at least two versions, got {len(versions)}")
    seen: dict[str, int] = {}
    for position, version in enumerate(versions, 1):
        if version.id in seen:
            raise MergeConflictError(
                f"version {short(version)} is given twice (inputs {seen[version.id]} and {position}); "
                "give it a larger weight instead"
            )
        seen[version.id] = position


def anonymized(structure: object) -> object:
    """``structure`` with layer and model names replaced by their order of first appearance.

    Two Keras models built by the same code in one notebook get different layer names (``dense``,
    ``dense_2``...); they still have the same structure, and their weights can be averaged.
    """
    names: dict[str, str] = {}

    def collect(item: object) -> None:
        if isinstance(item, dict):
            config = item.get("config")
            if (isinstance(config, dict) and "class_name" in item
                    and item.get("class_name") not in _NAMED_CLASSES_SKIPPED
                    and isinstance(config.get("name"), str)):
                names.setdefault(config["name"], f"#{len(names)}")
            for key in sorted(item):
                collect(item[key])
        elif isinstance(item, list):
            for value in item:
                collect(value)

    def rename(item: object) -> object:
        if isinstance(item, dict):
            return {key: rename(value) for key, value in item.items()}
        if isinstance(item, list):
            return [rename(value) for value in item]
        if isinstance(item, str):
            return names.get(item, item)
        return item

    collect(structure)
    return rename(structure)


def first_difference(a: object, b: object, path: str = "") -> str | None:
    """A readable path to the first place two JSON values differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{path}.{key}: present in only one"
            found = first_difference(a[key], b[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} vs {len(b)} items"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{index}]")
            if found:
                return found
        return None
    if a != b:
        return f"{path}: {str(a)[:40]} vs {str(b)[:40]}"
    return None


def check_structures(versions: Sequence[Version], structures: Sequence[object]) -> None:
    """Same framework, and structures equal up to layer names; else a conflict saying where."""
    frameworks = {v.framework for v in versions}
    if len(frameworks) > 1:
        listing = ", ".join(f"{short(v)}: {v.framework}" for v in versions)
        raise MergeConflictError(f"different frameworks cannot be merged ({listing})")
    base = None
    for version, structure in zip(versions[1:], structures[1:], strict=True):
        if (structure is None) != (structures[0] is None):
            raise MergeConflictError(
                f"different structures: {short(versions[0])} and {short(version)} (only one has a stored structure)"
            )
        if structure == structures[0]:  # the usual case (one model fine-tuned): no renaming needed
            continue
        base = anonymized(structures[0]) if base is None else base
        other = anonymized(structure)
        if other != base:
            where = first_difference(base, other) or "the configurations differ"
            raise MergeConflictError(
                f"different structures: {short(versions[0])} and {short(version)} differ at {where.lstrip('.')}"
            )


def align(versions: Sequence[Version], manifests: Sequence[Sequence[ManifestEntry]],
          by_position: bool, agree: int | None = None) -> list[AlignedTensor]:
    """Match every tensor of the first input with one of each other input; conflicts name them.

    Tensors are matched by name; when the names differ but the structures are the same (checked
    before), by position, as a checkout does. Non-float tensors must be equal in the first
    ``agree`` versions (default all): a merge's base may hold other counters than its inputs.
    """
    first = list(manifests[0])
    names = [e.name for e in first]
    columns: list[list[ManifestEntry]] = [[e] for e in first]
    for version, manifest in zip(versions[1:], manifests[1:], strict=True):
        by_name = {e.name: e for e in manifest}
        if set(by_name) == set(names):
            for column, name in zip(columns, names, strict=True):
                column.append(by_name[name])
        elif by_position and (paired := pair_names(names, list(by_name))) is not None:
            for column, name in zip(columns, names, strict=True):
                column.append(by_name[paired[name]])
        else:
            missing = [n for n in names if n not in by_name]
            extra = [n for n in by_name if n not in set(names)]
            parts = []
            if missing:
                parts.append(f"missing in {short(version)}: {_listing(missing)}")
            if extra:
                parts.append(f"only in {short(version)}: {_listing(extra)}")
            raise MergeConflictError("missing tensor(s): " + "; ".join(parts))
    problems = []
    for column in columns:
        base = column[0]
        for version, entry in zip(versions[1:], column[1:], strict=True):
            if entry.shape != base.shape or entry.dtype != base.dtype:
                problems.append(f"{base.name}: {base.dtype}{list(base.shape)} in {short(versions[0])} vs "
                                f"{entry.dtype}{list(entry.shape)} in {short(version)}")
    if problems:
        raise MergeConflictError("shape/dtype mismatch: " + _listing(problems))
    aligned = [AlignedTensor(c[0].name, c[0].dtype, c[0].shape, tuple(c),
                             take_first=is_rng_state(c[0].name) and not is_float_dtype(c[0].dtype))
               for c in columns]
    differing = [t.name for t in aligned if not t.is_float and not t.take_first
                 and len({e.hash for e in t.entries[:agree]}) > 1]
    if differing:
        raise MergeConflictError(
            f"non-float tensors differ between the inputs and cannot be averaged: {_listing(differing)}"
        )
    return aligned


def _listing(items: Sequence[str], limit: int = 3) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
