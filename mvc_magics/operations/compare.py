"""Compare and diff: choose the versions (refs, defaults, the same-model rule), then compute.

The math lives in :mod:`mvc_magics.core.compare` and :mod:`mvc_magics.core.diff`; here the store is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..core.compare import Comparison, compare_versions
from ..core.diff import Diff, TensorChange, match_tensors, tensor_statistics
from ..core.names import validate_name
from ..core.version import Version
from ..errors import CompareError
from ..storage.local.store import Store
from ..storage.snapshots.snapshot import TensorReader
from . import versions as stored

DEFAULT_LIMIT = 20


def check_same_model(versions: Sequence[Version], allow_mixed: bool) -> None:
    """Refuse versions of different models unless the caller said so (``allow_mixed``)."""
    names = sorted({v.name for v in versions})
    if len(names) > 1 and not allow_mixed:
        raise CompareError(f"the versions belong to different models ({', '.join(names)}); "
                           "pass allow_mixed=True (--mixed) to compare them anyway")


def select_versions(store: Store, refs: Sequence[str] | str | None, name: str | None,
                    limit: int | None = DEFAULT_LIMIT, allow_mixed: bool = False) -> tuple[list[Version], list[str]]:
    """The versions ``refs`` name (all of ``name``'s, most recent ``limit``, when None) and notes.

    Two refs naming the same version are an error (comparing a version with itself).
    """
    notes: list[str] = []
    if isinstance(refs, str):
        refs = [refs]
    if not refs:
        model = name or _only_model(store)
        versions = list(stored.log(store, model, limit=limit or None))[::-1]  # oldest first reads as history
        total = int(store.index.query("SELECT count(*) FROM members WHERE name = ?", (model,))[0][0])
        if total > len(versions):
            notes.append(f"the {len(versions)} most recent of {total} versions of {model} (raise limit / -n)")
        if not versions:
            known = stored.models(store)
            hint = f"models in this store: {', '.join(known[:8])}" if known else "commit it first"
            raise CompareError(f"{model!r} has no versions to compare ({hint})")
        return versions, notes
    versions, given = [], {}
    for ref in refs:
        version = stored.resolve(store, ref, name=name)
        if version.id in given:
            raise CompareError(f"{given[version.id]!r} and {ref!r} are the same version {version.short_id}: "
                               "comparing a version with itself says nothing")
        given[version.id] = ref
        versions.append(version)
    check_same_model(versions, allow_mixed)
    return versions, notes


def _only_model(store: Store) -> str:
    models = stored.models(store)
    if not models:
        raise CompareError("no versions yet: commit a model before comparing")
    if len(models) > 1:
        raise CompareError(f"the store holds several models ({', '.join(models[:8])}); say which one (--model)")
    return models[0]


def compare_in(store: Store, refs: Sequence[str] | str | None = None, name: str | None = None,
               weights: Mapping[str, object] | None = None, baseline: str | None = None,
               directions: Mapping[str, str] | None = None, limit: int | None = DEFAULT_LIMIT,
               allow_mixed: bool = False) -> Comparison:
    """:meth:`Repo.compare`: resolve the refs and the baseline, then :func:`compare_versions`."""
    if name is not None:
        validate_name(name, "model name")
    refs = list(refs) if refs is not None and not isinstance(refs, str) else refs
    versions, notes = select_versions(store, refs, name, limit, allow_mixed)
    base = None
    if baseline is not None:
        base = stored.resolve(store, baseline, name=name or (versions[0].name if versions else None))
        check_same_model([*versions, base], allow_mixed)
    if len(versions) == 1 and (base is None or base.id == versions[0].id):
        what = f"only {versions[0].short_id}" + (" (also the baseline)" if base is not None else "")
        raise CompareError(f"need at least two versions to compare ({what})")
    comparison = compare_versions(versions, weights=weights, directions=directions, baseline=base)
    comparison.notes[:0] = notes
    return comparison


def diff_versions(store: Store, ref_a: str, ref_b: str, name: str | None = None, allow_mixed: bool = False) -> Diff:
    """:meth:`Repo.diff`: resolve both refs, compare manifests, read only the changed tensors."""
    if name is not None:
        validate_name(name, "model name")
    a = stored.resolve(store, ref_a, name=name)
    b = stored.resolve(store, ref_b, name=name)
    if a.id == b.id:
        raise CompareError(f"{ref_a!r} and {ref_b!r} are the same version {a.short_id}: nothing to diff")
    check_same_model([a, b], allow_mixed)
    pairs, note = match_tensors(store.manifest(a.id), store.manifest(b.id))
    changes: list[TensorChange] = []
    read = nbytes = 0
    with TensorReader(store.layout.snapshot_path) as reader:
        for tensor_name, x, y in pairs:
            if y is None:
                changes.append(TensorChange(tensor_name, "removed", x, None))
            elif x is None:
                changes.append(TensorChange(tensor_name, "added", None, y))
            elif x.hash == y.hash:
                changes.append(TensorChange(tensor_name, "unchanged", x, y))  # equal hash: no bytes read
            elif x.shape != y.shape:
                changes.append(TensorChange(tensor_name, "reshaped", x, y))
            else:
                stats = tensor_statistics(reader.read(x, owner=a.id), reader.read(y, owner=b.id))
                read, nbytes = read + 2, nbytes + x.nbytes + y.nbytes
                changes.append(TensorChange(tensor_name, "changed", x, y, **stats))
    return Diff(a, b, changes, read, nbytes, [note] if note else [])

