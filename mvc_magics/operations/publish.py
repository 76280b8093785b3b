"""Publish: a chosen version reaches the system a team deploys from (an MLflow registry, a DVC artifact).

``publish(store, ref, "mlflow", registered_model_name=NAME, alias=...)`` and
``publish(store, ref, "dvc", path=PATH, artifact=NAME)``. The version is rebuilt from the store with its
verified weights (as an export is), or taken from the live ``model`` after checking that it holds
exactly the version. Each target's client is imported only inside its module
(:mod:`.publish_mlflow`, :mod:`.publish_dvc`); what is written there is decided in
:mod:`mvc_magics.core.publication`. Publishing the same id again finds what the first publish made.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..adapters import adapter_named
from ..core.publication import Publication, check_target
from ..core.version import Version
from ..errors import ExportError, PublishError
from ..storage.local.store import Store
from .export import export_version
from .publish_dvc import publish_to_dvc
from .publish_mlflow import publish_to_mlflow
from .status import is_modified
from .versions import load_state, resolve, structure

_OPTIONS = {"mlflow": {"registered_model_name", "alias"}, "dvc": {"path", "artifact"}}


def publish(store: Store, ref: str, target: str, name: str | None = None, model: Any = None, unsafe: bool = False,
            classes: Mapping[str, type] | None = None, **options: Any) -> Publication:
    """Publish version ``ref`` of ``name`` to ``target`` (see :meth:`mvc_magics.Repo.publish`)."""
    target = check_target(target)
    unknown = set(options) - _OPTIONS[target]
    if unknown:
        raise PublishError(f"publishing to {target} takes {', '.join(sorted(_OPTIONS[target]))}, "
                           f"not {', '.join(sorted(unknown))}")
    version = resolve(store, ref, name=name)

    def live_model() -> Any:
        return serving_model(store, version, model, unsafe, classes)

    if target == "mlflow":
        if not options.get("registered_model_name"):
            raise PublishError("publishing to mlflow needs registered_model_name (the registry's model name)")
        result = publish_to_mlflow(version, live_model, options["registered_model_name"], options.get("alias"))
    else:
        if not options.get("path"):
            raise PublishError("publishing to dvc needs path (the artifact's folder inside the DVC repository)")

        def export(destination: Path, fmt: str) -> None:
            try:
                export_version(store, version.id, destination, fmt, model=model, unsafe=unsafe, classes=classes)
            except ExportError as exc:
                raise PublishError(str(exc)) from None

        result = publish_to_dvc(version, export, Path(options["path"]), options.get("artifact"))
    store.writes.record("publish", version.name, [version.id],
                        {"target": target, "location": result.location, "created": result.created})
    return result


def serving_model(store: Store, version: Version, model: Any = None, unsafe: bool = False,
                  classes: Mapping[str, type] | None = None) -> Any:
    """The live ``model`` when it holds exactly ``version``, else a model rebuilt from the store
    (like a checkout into a new variable: verified weights, nobody's HEAD moved)."""
    if model is not None:
        if is_modified(store, model, version):
            raise PublishError(f"the live model does not hold version {version.short_id}; check it out first "
                               f"(%mvc_checkout {version.short_id} VAR) or publish without it")
        return model
    adapter = adapter_named(version.framework)
    return adapter.build(structure(store, version.id), load_state(store, version), unsafe=unsafe, classes=classes)
