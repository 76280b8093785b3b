"""Choosing the versions to compare or diff from a store: refs, defaults and the same-model rule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .compare import Comparison, compare_versions
from .errors import CompareError
from .version import Version

DEFAULT_LIMIT = 20


def check_same_model(versions: Sequence[Version], allow_mixed: bool) -> None:
    """Refuse versions of different models unless the caller said so (``allow_mixed``)."""
    names = sorted({v.name for v in versions})
    if len(names) > 1 and not allow_mixed:
        raise CompareError(f"the versions belong to different models ({', '.join(names)}); "
                           "pass allow_mixed=True (--mixed) to compare them anyway")


def select_versions(repo, refs: Sequence[str] | str | None, name: str | None,
                    limit: int | None = DEFAULT_LIMIT, allow_mixed: bool = False) -> tuple[list[Version], list[str]]:
    """The versions ``refs`` name (all of ``name``'s, most recent ``limit``, when None) and notes.

    Two refs naming the same version are an error (comparing a version with itself).
    """
    notes: list[str] = []
    if isinstance(refs, str):
        refs = [refs]
    if not refs:
        model = name or _only_model(repo)
        versions = list(repo.log(model, limit=limit or None))[::-1]  # oldest first reads as history
        total = int(repo.index.query("SELECT count(*) FROM versions WHERE name = ?", (model,))[0][0])
        if total > len(versions):
            notes.append(f"the {len(versions)} most recent of {total} versions of {model} (raise limit / -n)")
        if not versions:
            known = repo.models()
            hint = f"models in this store: {', '.join(known[:8])}" if known else "commit it first"
            raise CompareError(f"{model!r} has no versions to compare ({hint})")
        return versions, notes
    versions, given = [], {}
    for ref in refs:
        version = repo.resolve(ref, name=name)
        if version.id in given:
            raise CompareError(f"{given[version.id]!r} and {ref!r} are the same version {version.short_id}: "
                               "comparing a version with itself says nothing")
        given[version.id] = ref
        versions.append(version)
    check_same_model(versions, allow_mixed)
    return versions, notes


def _only_model(repo) -> str:
    models = repo.models()
    if not models:
        raise CompareError("no versions yet: commit a model before comparing")
    if len(models) > 1:
        raise CompareError(f"the store holds several models ({', '.join(models[:8])}); say which one (--model)")
    return models[0]


def compare_in(repo, refs: Sequence[str] | str | None = None, name: str | None = None,
               weights: Mapping[str, object] | None = None, baseline: str | None = None,
               directions: Mapping[str, str] | None = None, limit: int | None = DEFAULT_LIMIT,
               allow_mixed: bool = False) -> Comparison:
    """:meth:`Repo.compare`: resolve the refs and the baseline, then :func:`compare_versions`."""
    versions, notes = select_versions(repo, refs, name, limit, allow_mixed)
    base = None
    if baseline is not None:
        base = repo.resolve(baseline, name=name or (versions[0].name if versions else None))
        check_same_model([*versions, base], allow_mixed)
    if len(versions) == 1 and (base is None or base.id == versions[0].id):
        what = f"only {versions[0].short_id}" + (" (also the baseline)" if base is not None else "")
        raise CompareError(f"need at least two versions to compare ({what})")
    comparison = compare_versions(versions, weights=weights, directions=directions, baseline=base)
    comparison.notes[:0] = notes
    return comparison
