"""Commits made from the notebook carry their provenance: notebook path, cells run, data used."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..core.provenance import CommitContext, build_provenance
from ..core.version import Version
from .session import MVCSession


def notebook_provenance(session: MVCSession, name: str, data_names: Iterable[str] = (), **extra: Any) -> dict:
    """Provenance of committing ``name`` now: the cells since its last commit and ``data_names``."""
    data = {data_name: session.variable(data_name) for data_name in data_names}
    return build_provenance(session.notebook_path(), session.recorder.since(name), data, **extra)


def commit_from_notebook(session: MVCSession, model: Any, name: str, data_names: Iterable[str] = (),
                         source: str | None = None, **commit_args: Any) -> Version:
    """``repo.commit`` with the notebook provenance; later commits of ``name`` list only newer cells."""
    provenance = notebook_provenance(session, name, data_names, source=source)
    version = session.repo.commit(model, name, provenance=provenance, **commit_args)
    session.recorder.committed(name)
    return version


def session_context(session: MVCSession) -> CommitContext:
    """The context the Keras callback reads when it commits inside this notebook."""
    return CommitContext(notebook=session.notebook_path, recorder=session.recorder)
