"""What publishing a version to another system writes (pure): MLflow tags, DVC artifact entries, the result.

:mod:`mvc_magics.operations.publish` does the writing through each system's own client; the
decisions that need no I/O live here, so they are tested without MLflow or DVC installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import PublishError
from .version import Version

TARGETS = ("mlflow", "dvc")

# The model version tag that names the mvc version: publishing that id again finds this model version.
MLFLOW_ID_TAG = "mvc_id"

# Where each framework's version goes in MLflow (its native flavor, with python_function) and in a
# DVC artifact (the export format its framework loads natively).
MLFLOW_FLAVORS = {"keras": "keras", "tf_keras": "tensorflow", "torch": "pytorch", "sklearn": "sklearn",
                  "lightgbm": "lightgbm"}
DVC_FORMATS = {"keras": "keras", "tf_keras": "savedmodel", "tensorflow": "savedmodel", "torch": "torchscript",
               "sklearn": "skops", "lightgbm": "lightgbm", "jax": "safetensors"}
# The file (or folder) name of each format inside a DVC artifact's folder.
DVC_FILES = {"keras": "model.keras", "savedmodel": "saved_model", "torchscript": "model.pt",
             "skops": "model.skops", "lightgbm": "model.txt", "safetensors": "model.safetensors"}
# The distributions an MLflow flavor needs at serving time (pinned to the versions installed here).
MLFLOW_REQUIREMENTS = {"keras": ("keras", "tensorflow", "tensorflow-cpu"), "tensorflow": ("tensorflow", "tf_keras"),
                       "pytorch": ("torch",), "sklearn": ("scikit-learn", "skops"), "lightgbm": ("lightgbm",)}

# GTO's artifact names (what `gto register NAME` accepts): letters, digits, '_', '-', '/', starting and
# ending with a letter or digit.
_GTO_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9_/-]*[a-zA-Z0-9])?")


@dataclass
class Publication:
    """Where a version was published and how to load it back there.

    ``created`` False: the target already held this version (nothing new was written).
    """

    target: str
    version_id: str
    short_id: str
    location: str
    load: str
    created: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        verb = "published" if self.created else "already published:"
        return f"{verb} {self.short_id} to {self.target} as {self.location}\n  load it back: {self.load}"

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"<Publication {self.target} {self.short_id} {self.location}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.to_text())


def missing_package(package: str, extra: str) -> PublishError:
    """The one-line error for an optional client that is not installed."""
    return PublishError(f"publishing to {extra} needs the {package} package: pip install 'mvc_magics[{extra}]'")


def check_target(target: str) -> str:
    """``target`` lower-cased when it is one this package publishes to."""
    name = str(target).strip().lower()
    if name not in TARGETS:
        raise PublishError(f"cannot publish to {target!r}; targets: {', '.join(TARGETS)}")
    return name


def mlflow_flavor(version: Version) -> str:
    """The MLflow flavor module (``mlflow.<flavor>``) a version is logged with."""
    flavor = MLFLOW_FLAVORS.get(version.framework)
    if flavor is None:
        raise PublishError(f"{version.short_id} is a {version.framework or 'framework-free'} model; MLflow "
                           f"publishing supports {', '.join(sorted(MLFLOW_FLAVORS))} models")
    return flavor


def mlflow_version_tags(version: Version) -> dict[str, str]:
    """The registered model version's tags: the mvc id (found again on a second publish), history and tags."""
    tags = {MLFLOW_ID_TAG: version.id, "mvc_model": version.name, "mvc_short_id": version.short_id}
    if version.tags:
        tags["mvc_tags"] = ", ".join(version.tags)
    git = version.provenance.get("git")
    if isinstance(git, dict) and isinstance(git.get("commit"), str):
        tags["mvc_git_commit"] = git["commit"] + ("+dirty" if git.get("dirty") else "")
    return tags


def mlflow_run_tags(version: Version) -> dict[str, str]:
    """Run tags: MLflow's own source tags from the recorded git state, and the mvc id."""
    tags = {MLFLOW_ID_TAG: version.id, "mlflow.note.content": version.message or ""}
    git = version.provenance.get("git")
    if isinstance(git, dict) and isinstance(git.get("commit"), str):
        tags["mlflow.source.git.commit"] = git["commit"]
        if git.get("branch"):
            tags["mlflow.source.git.branch"] = str(git["branch"])
        if git.get("remote"):
            tags["mlflow.source.git.repoURL"] = str(git["remote"])
    return {k: v for k, v in tags.items() if v}


def mlflow_params(version: Version) -> dict[str, str]:
    """The version's params as MLflow params (strings, as MLflow stores them), cut to MLflow's value size."""
    return {str(k)[:250]: str(v)[:6000] for k, v in version.params.items()}


def check_registered_name(name: str) -> str:
    """An MLflow registered model name: a non-empty string without quotes (it goes into a search filter)."""
    if not isinstance(name, str) or not name.strip() or "'" in name or '"' in name or "`" in name:
        raise PublishError(f"{name!r} is not a usable MLflow registered model name (non-empty, without quotes)")
    return name.strip()


def check_artifact_name(name: str) -> str:
    """A DVC/GTO artifact name (what ``gto register`` accepts)."""
    if not isinstance(name, str) or not _GTO_NAME.fullmatch(name):
        raise PublishError(f"{name!r} is not a DVC artifact name: letters, digits, '_', '-' and '/', starting and "
                           "ending with a letter or digit (e.g. digits-classifier)")
    return name


def dvc_format(version: Version) -> tuple[str, str]:
    """The export format of a version in a DVC artifact and its file name inside the artifact folder."""
    fmt = DVC_FORMATS.get(version.framework)
    if fmt is None:
        raise PublishError(f"{version.short_id} is a {version.framework or 'framework-free'} model; DVC publishing "
                           f"supports {', '.join(sorted(DVC_FORMATS))} models")
    return fmt, DVC_FILES[fmt]


def dvc_artifact(version: Version, path: str) -> dict[str, Any]:
    """The ``dvc.yaml`` artifact entry: type model, ``desc`` from the message, ``labels`` from the tags,
    ``meta`` with the mvc id, history, metrics and params."""
    meta: dict[str, Any] = {"mvc_id": version.id, "mvc_model": version.name, "framework": version.framework}
    if version.metrics:
        meta["metrics"] = dict(sorted(version.metrics.items()))
    if version.params:
        meta["params"] = {str(k): v if isinstance(v, str | int | float | bool) else str(v)
                          for k, v in sorted(version.params.items())}
    entry: dict[str, Any] = {"path": path, "type": "model"}
    if version.message:
        entry["desc"] = version.message
    if version.tags:
        entry["labels"] = list(version.tags)
    entry["meta"] = meta
    return entry
