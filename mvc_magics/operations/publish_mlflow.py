"""Publish a version to an MLflow model registry through MLflow's own client (imported only here).

The tracking and registry URI are MLflow's own configuration (``MLFLOW_TRACKING_URI`` or
``mlflow.set_tracking_uri``). One run logs the model with its framework's flavor (which adds
``python_function``), the version's params and metrics; the model version is created with tags
naming the mvc id, so publishing that id again finds it instead of making a second one.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from importlib import metadata
from typing import Any

from ..core.messages import first_sentence
from ..core.publication import (
    MLFLOW_ID_TAG,
    MLFLOW_REQUIREMENTS,
    Publication,
    check_registered_name,
    missing_package,
    mlflow_flavor,
    mlflow_params,
    mlflow_run_tags,
    mlflow_version_tags,
)
from ..core.version import Version
from ..errors import MVCError, PublishError


def publish_to_mlflow(version: Version, live_model: Callable[[], Any], registered_model_name: str,
                      alias: str | None = None) -> Publication:
    """Register ``version`` as a model version of ``registered_model_name`` (and point ``alias`` at it)."""
    name = check_registered_name(registered_model_name)
    flavor_name = mlflow_flavor(version)
    try:
        import mlflow
    except ImportError:
        raise missing_package("mlflow", "mlflow") from None
    client = mlflow.MlflowClient()
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.{MLFLOW_ID_TAG} = '{version.id}'")
        created = not found
        if found:
            model_version = max(found, key=lambda mv: int(mv.version))
            run_id = model_version.run_id
        else:
            model_version, run_id = _log_and_register(mlflow, version, live_model(), flavor_name, name)
        if alias:
            client.set_registered_model_alias(name, alias, model_version.version)
    except MVCError:
        raise
    except Exception as exc:  # MLflow's errors (bad URI, server down, invalid alias) as one line
        raise PublishError(f"MLflow refused publishing {version.short_id}: {first_sentence(exc)}") from exc
    uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{model_version.version}"
    where = f"registered model {name!r} version {model_version.version}" + (f" (alias {alias})" if alias else "")
    return Publication("mlflow", version.id, version.short_id, where, f"mlflow.pyfunc.load_model({uri!r})", created,
                       {"registered_model_name": name, "version": int(model_version.version), "alias": alias,
                        "run_id": run_id, "model_uri": uri, "tracking_uri": mlflow.get_tracking_uri()})


def _log_and_register(mlflow: Any, version: Version, model: Any, flavor_name: str, name: str) -> tuple[Any, str]:
    flavor = importlib.import_module(f"mlflow.{flavor_name}")
    metrics = {k: float(v) for k, v in version.metrics.items() if math.isfinite(v)}
    with mlflow.start_run(run_name=f"mvc {version.name} {version.short_id}", tags=mlflow_run_tags(version)) as run:
        params = mlflow_params(version)
        if params:
            mlflow.log_params(params)
        # Pinned requirements: MLflow would otherwise load the model in a subprocess to infer them.
        info = flavor.log_model(model, name="model", pip_requirements=_requirements(flavor_name),
                                **_flavor_options(flavor))
        if metrics:
            mlflow.log_metrics(metrics, model_id=info.model_id)  # run metrics, linked to the logged model
    model_version = mlflow.register_model(info.model_uri, name, tags=mlflow_version_tags(version))
    return model_version, run.info.run_id


def _flavor_options(flavor: Any) -> dict[str, Any]:
    """PyTorch: the pickled module (MLflow 3's default, torch.export, needs an input example we do not have)."""
    if flavor.__name__ == "mlflow.pytorch" and "serialization_format" in inspect.signature(flavor.log_model).parameters:
        return {"serialization_format": "pickle"}
    return {}


def _requirements(flavor_name: str) -> list[str]:
    """The installed versions of what the flavor needs to load the model (``mlflow`` is added by MLflow)."""
    pinned = []
    for distribution in MLFLOW_REQUIREMENTS.get(flavor_name, ()):
        try:
            pinned.append(f"{distribution}=={metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            continue
    return pinned
