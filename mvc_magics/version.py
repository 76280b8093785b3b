"""Result objects of the API: versions, commit statistics, logs, verify reports, status."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime

from .tables import Table, TableView, format_bytes, format_number


@dataclass(frozen=True)
class CommitStats:
    """What a commit wrote: tensors written vs reused and the bytes written."""

    new_version: bool
    tensors_written: int
    tensors_reused: int
    bytes_written: int


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


def tag_list(version: Version) -> str:
    """The tags of a version for display; protected ones end in ``*`` (``production*``)."""
    return ", ".join(t + PROTECTED_MARK if t in version.protected_tags else t for t in version.tags)


class VersionLog(TableView, list):
    """The result of ``repo.log()``: a list of :class:`Version`, newest first, shown as a table."""

    def table(self) -> Table:
        metrics = metric_columns(list(self))
        header = ["", "id", "model", "tags", "message", *metrics, "created"]
        rows, highlight = [], set()
        for index, version in enumerate(self):
            if version.is_head:
                highlight.add(index)
            rows.append([
                "HEAD" if version.is_head else "", version.short_id, version.name,
                tag_list(version), version.message[:50],
                *[version.metrics.get(m) for m in metrics],
                version.created.strftime("%Y-%m-%d %H:%M:%S"),
            ])
        notes = [PROTECTED_NOTE] if any(v.protected_tags for v in self) else []
        return Table(header, rows, highlight=highlight, notes=notes)


@dataclass(frozen=True)
class Problem:
    """One damaged thing found by verify: the version, the tensor (if any) and what is wrong."""

    version: str
    tensor: str | None
    message: str

    def __str__(self) -> str:
        where = self.version[:12] + (f" tensor {self.tensor!r}" if self.tensor else "")
        return f"{where}: {self.message}"


@dataclass
class VerifyReport:
    """The result of ``repo.verify()``: ``ok`` and every problem found."""

    problems: list[Problem] = field(default_factory=list)
    versions_checked: int = 0
    tensors_checked: int = 0
    bytes_checked: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged_versions(self) -> set[str]:
        return {p.version for p in self.problems}

    def __str__(self) -> str:
        head = (f"verify: {'OK' if self.ok else f'{len(self.problems)} problem(s)'} — "
                f"{self.versions_checked} versions, {self.tensors_checked} tensors, "
                f"{format_bytes(self.bytes_checked)} re-hashed")
        return "\n".join([head, *(f"  {p}" for p in self.problems), *(f"  note: {n}" for n in self.notes)])

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(str(self))}</pre>"


@dataclass(frozen=True)
class StatusEntry:
    """One tracked model variable: the version it is at and whether its weights changed since."""

    name: str
    head: Version | None
    changed: bool | None  # None: the variable is not in the namespace
    present: bool = True


class StatusReport(list):
    """The result of ``repo.status()``: one :class:`StatusEntry` per tracked model."""

    def table(self) -> Table:
        rows = []
        for entry in self:
            state = ("not in namespace" if not entry.present
                     else "modified since HEAD" if entry.changed else "unchanged")
            head = entry.head.short_id if entry.head else "—"
            message = entry.head.message[:40] if entry.head else ""
            rows.append([entry.name, head, message, state])
        return Table(["model", "HEAD", "message", "weights"], rows)

    def __str__(self) -> str:
        return self.table().to_text() if self else "no tracked models (commit one with %mvc_commit MODEL)"

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        return self.table().to_html() if self else f"<p>{html.escape(str(self))}</p>"
