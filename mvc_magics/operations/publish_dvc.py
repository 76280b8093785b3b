"""Publish a version as a DVC model artifact through DVC's own API (imported only here).

Inside a git + DVC repository: the version is exported in its framework's format into the folder
``path`` (with ``mvc_version.json`` naming the id), the folder is tracked with ``dvc add`` and declared
in the root ``dvc.yaml`` as an artifact of type ``model``. Nothing is committed to git: the user
reviews and commits (``path.dvc``, ``.gitignore``, ``dvc.yaml``), then ``gto register NAME`` versions it
and ``dvc.api.artifacts_show(NAME)`` / ``dvc artifacts get`` find it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.messages import first_sentence
from ..core.publication import Publication, check_artifact_name, dvc_artifact, dvc_format, missing_package
from ..core.version import Version
from ..errors import MVCError, PublishError

MARKER = "mvc_version.json"  # inside the artifact folder: which version it holds


def dvc_classes() -> tuple[type, type]:
    """DVC's ``Artifact`` and ``Repo``, imported with the notebook's output streams kept.

    ``import dvc`` sets up DVC's logging with ``colorama.init()``, which replaces ``sys.stdout`` and
    ``sys.stderr`` with wrappers: in a kernel (not a terminal) they strip the colour codes of every later
    output, and once ``sys.stderr`` is a wrapper, ``import gto`` (which DVC's artifacts run; its logging
    setup closes existing handlers) makes absl's handler, left by TensorFlow, close the real stream.
    The streams are put back.
    """
    out, err = sys.stdout, sys.stderr
    try:
        from dvc.annotations import Artifact
        from dvc.repo import Repo as DvcRepo
    except ImportError:
        raise missing_package("dvc", "dvc") from None
    finally:
        sys.stdout, sys.stderr = out, err
    return Artifact, DvcRepo


def publish_to_dvc(version: Version, export: Callable[[Path, str], None], path: Path,
                   artifact: str | None = None) -> Publication:
    """Write ``version`` under ``path``, ``dvc add`` it and declare artifact ``artifact`` (default: the
    model's name) in ``dvc.yaml``; ``export(destination, fmt)`` writes the model file."""
    Artifact, DvcRepo = dvc_classes()
    name = check_artifact_name(artifact or version.name)
    fmt, filename = dvc_format(version)
    path = Path(os.path.abspath(Path(path).expanduser()))
    root = _dvc_root(DvcRepo, path)
    relative = path.relative_to(root).as_posix()
    if relative == "." or relative.startswith(".dvc") or relative.startswith(".git"):
        raise PublishError(f"{path} cannot hold an artifact: choose a folder inside the repository, e.g. models/{name}")
    created = _held_version(path) != version.id or not (path / filename).exists()
    if created:
        _write(version, export, path, fmt, filename)
    try:
        with DvcRepo(str(root)) as repo:
            repo.scm_context.quiet = True  # the files to git add are in the result's load hint
            repo.add([str(path)])
            repo.artifacts.add(name, Artifact(**dvc_artifact(version, relative)), dvcfile=str(root / "dvc.yaml"))
    except MVCError:
        raise
    except Exception as exc:  # DVC's errors (not a git repo, path ignored or tracked by git...) as one line
        raise PublishError(f"DVC refused tracking {relative}: {first_sentence(exc)}") from exc
    ignore = (Path(relative).parent / ".gitignore").as_posix()
    load = (f"git add {relative}.dvc {ignore} dvc.yaml && git commit, then gto register {name}; "
            f"dvc.api.artifacts_show({name!r}) gives its path and rev, the model is {relative}/{filename}")
    return Publication("dvc", version.id, version.short_id, f"artifact {name!r} at {relative}/{filename}", load,
                       created, {"artifact": name, "path": relative, "file": filename, "format": fmt,
                                 "dvcyaml": "dvc.yaml", "root": str(root)})


def _dvc_root(dvc_repo: Any, path: Path) -> Path:
    """The DVC repository ``path`` lies in, which must also be a git work tree."""
    start = path.parent
    while not start.exists() and start != start.parent:
        start = start.parent
    try:
        root = Path(dvc_repo.find_root(str(start)))
    except Exception:
        raise PublishError(f"{path} is not inside a DVC repository (run `git init && dvc init` there first)") from None
    if not (root / ".git").exists():
        raise PublishError(f"the DVC repository at {root} is not a git work tree (dvc init without --no-scm)")
    return root


def _held_version(path: Path) -> str | None:
    """The mvc id an artifact folder holds, None when it is empty or absent; refuses a folder not made here."""
    if not path.exists():
        return None
    if not path.is_dir() or path.is_symlink():
        raise PublishError(f"{path} exists and is not a folder; choose a new path for the artifact")
    try:
        held = json.loads((path / MARKER).read_text())["mvc_id"]
    except (OSError, ValueError, KeyError, TypeError):
        if any(path.iterdir()):
            raise PublishError(f"{path} holds files not written by mvc publish; choose another path") from None
        return None
    return held if isinstance(held, str) else None


def _write(version: Version, export: Callable[[Path, str], None], path: Path, fmt: str, filename: str) -> None:
    """Export into a new folder beside ``path``, then put it in place (the old content is in DVC's cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-publish-{os.getpid()}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        export(tmp / filename, fmt)
        marker = {"mvc_id": version.id, "model": version.name, "framework": version.framework, "format": fmt,
                  "file": filename, "metrics": version.metrics}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                shutil.rmtree(tmp)
