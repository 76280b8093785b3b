"""Result objects of the API: versions, commit statistics, logs, verify reports, status."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime

from .git_provenance import log_mark
from .tables import Table, TableView, format_bytes, format_number


@dataclass(frozen=True)
class CommitStats:
    """What a commit wrote: tensors written vs reused and the bytes written.

    ``notes``: what a commit of content already stored did not record, and why (one line each).
    """

    new_version: bool
    tensors_written: int
    tensors_reused: int
    bytes_written: int
    notes: tuple[str, ...] = ()


@dataclass
class Version:
    """One stored version of a model (content id plus metadata).

    ``id`` is the full content hash; ``short_id`` the shortest unique prefix (>= 8 hex digits).
    """

    id: str
    name: str
    parents: tuple[str, ...]
    message: str
    created: datetime
    author: str
    metrics: dict[str, float]
    params: dict[str, object]
    tags: tuple[str, ...] = ()
    short_id: str = ""
    framework: str = ""
    libraries: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, object] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)
    nbytes: int = 0
    n_tensors: int = 0
    is_head: bool = False
    stats: CommitStats | None = None
    protected_tags: tuple[str, ...] = ()  # the tags among ``tags`` that are protected
    heads: tuple[str, ...] = ()  # other notebooks whose HEAD of this model is here ("default": API/CLI)

    def __post_init__(self) -> None:
        if not self.short_id:
            self.short_id = self.id[:8]

    def summary(self) -> str:
        """One line: short id, model, message, tags and metrics."""
        parts = [self.short_id, self.name]
        if self.tags:
            parts.append("(" + tag_list(self) + ")")
        if self.message:
            parts.append(repr(self.message))
        parts.extend(f"{k}={format_number(v)}" for k, v in sorted(self.metrics.items()))
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"<Version {self.summary()}>"

    def _repr_html_(self) -> str:
        rows = [
            ("id", self.id), ("model", self.name), ("message", self.message),
            ("tags", ", ".join(self.tags)), ("parents", ", ".join(p[:8] for p in self.parents)),
            ("created", self.created.strftime("%Y-%m-%d %H:%M:%S UTC")), ("author", self.author),
            ("size", f"{format_bytes(self.nbytes)} in {self.n_tensors} tensors"),
        ]
        rows += [(f"metric {k}", format_number(v)) for k, v in sorted(self.metrics.items())]
        rows += [(f"param {k}", str(v)) for k, v in sorted(self.params.items())]
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
            f"{html.escape(str(v))}</td></tr>" for k, v in rows if v not in ("", None)
        )
        return f"<table class='mvc-version'><caption>Version {html.escape(self.short_id)}</caption>{body}</table>"


def metric_columns(versions: list[Version], limit: int = 4) -> list[str]:
    """The metrics worth a column: the most common ones, validation metrics first."""
    counts: dict[str, int] = {}
    for version in versions:
        for key in version.metrics:
            counts[key] = counts.get(key, 0) + 1
    return sorted(counts, key=lambda k: (-counts[k], not k.startswith("val_"), k))[:limit]


PROTECTED_MARK = "*"
PROTECTED_NOTE = "tag* = protected tag: moving or deleting it needs --force"
DIRTY_NOTE = "git +dirty = made from uncommitted changes (%mvc_show REF --code shows the diff)"


def tag_list(version: Version) -> str:
    """The tags of a version for display; protected ones end in ``*`` (``production*``)."""
    return ", ".join(t + PROTECTED_MARK if t in version.protected_tags else t for t in version.tags)


def head_marks(version: Version) -> str:
    """Whose HEAD is on ``version``: ``HEAD`` (this notebook's), then ``@name`` for other notebooks'."""
    return ", ".join((["HEAD"] if version.is_head else []) + [f"@{h}" for h in version.heads])


class VersionLog(TableView, list):
    """The result of ``repo.log()``: a list of :class:`Version`, newest first, shown as a table."""

    def table(self) -> Table:
        metrics = metric_columns(list(self))
        # The git commit each version was made from, ``+dirty`` when from uncommitted changes (a
        # column only when some version recorded git state).
        git = [log_mark(version.provenance.get("git")) for version in self]
        git_column = ["git"] if any(git) else []
        header = ["HEAD", "id", "model", "framework", "tags", "message", *metrics, *git_column, "created"]
        rows, highlight = [], set()
        for index, version in enumerate(self):
            if version.is_head:
                highlight.add(index)
            rows.append([
                head_marks(version), version.short_id, version.name, version.framework,
                tag_list(version), version.message[:50],
                *[version.metrics.get(m) for m in metrics], *([git[index]] if git_column else []),
                version.created.strftime("%Y-%m-%d %H:%M:%S"),
            ])
        notes = [PROTECTED_NOTE] if any(v.protected_tags for v in self) else []
        if any(mark.endswith("+dirty") for mark in git):
            notes.append(DIRTY_NOTE)
        return Table(header, rows, highlight=highlight, notes=notes)
