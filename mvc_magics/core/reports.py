"""Reports of store operations: verify, status, gc, push and pull. Data with text/HTML views."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from .tables import Table, format_bytes
from .version import Version


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
    """The result of ``repo.status()``: one :class:`StatusEntry` per tracked model, and the store's
    loose snapshot files (written by commits, not packed yet) and background work still running."""

    loose_files: int = 0
    loose_bytes: int = 0
    pending: tuple[str, ...] = ()  # background jobs running or queued when asked ("commit net", "pack")

    def storage_line(self) -> str:
        """One line on loose files and background work ('' when there is nothing to say)."""
        parts = []
        if self.loose_files:
            parts.append(f"loose: {self.loose_files} snapshot file(s), {format_bytes(self.loose_bytes)} "
                         "not packed yet (coded by the automatic pack or gc --repack)")
        if self.pending:
            parts.append(f"background: waited for {', '.join(self.pending)} (still being written when asked)")
        return "; ".join(parts)

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
        text = self.table().to_text() if self else "no tracked models (commit one with %mvc_commit MODEL)"
        line = self.storage_line()
        return f"{text}\n{line}" if line else text

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        line = self.storage_line()
        extra = f"<p>{html.escape(line)}</p>" if line else ""
        return (self.table().to_html() if self else f"<p>{html.escape(str(self))}</p>") + extra


class GcReport(int):
    """Bytes freed by :func:`collect_garbage` (an ``int``), with what was deleted and rewritten."""

    files_deleted: int
    files_rewritten: int
    tensors_dropped: int
    tensors_kept: int

    def __new__(cls, bytes_freed: int = 0, files_deleted: int = 0, files_rewritten: int = 0,
                tensors_dropped: int = 0, tensors_kept: int = 0) -> GcReport:
        report = super().__new__(cls, bytes_freed)
        report.files_deleted, report.files_rewritten = files_deleted, files_rewritten
        report.tensors_dropped, report.tensors_kept = tensors_dropped, tensors_kept
        return report

    @property
    def bytes_freed(self) -> int:
        return int(self)

    def __str__(self) -> str:
        return (f"gc: freed {format_bytes(self.bytes_freed)} ({self.files_deleted} file(s) deleted, "
                f"{self.files_rewritten} rewritten; {self.tensors_dropped} tensor(s) dropped, "
                f"{self.tensors_kept} still used by other versions kept)")

    __repr__ = __str__

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))


@dataclass
class TransferReport:
    """What a push or pull did."""

    direction: str
    remote: str
    versions: list[str] = field(default_factory=list)
    objects_sent: int = 0
    objects_skipped: int = 0
    bytes: int = 0
    tags: list[str] = field(default_factory=list)
    requests: int = 0  # HTTP requests sent to the remote (S3), for the scale benchmarks and tests
    rejected: dict[str, str] = field(default_factory=dict)  # object id -> why a pull refused it
    kept_deleted: list[str] = field(default_factory=list)  # tags deleted here that a pull did not bring back

    def __str__(self) -> str:
        verb = "pushed to" if self.direction == "push" else "pulled from"
        tags = f", tags {', '.join(self.tags)}" if self.tags else ""
        if self.kept_deleted:
            tags += f" (not restored, deleted here: {', '.join(self.kept_deleted)}; pull --force restores)"
        refused = "".join(f"\n  refused {why}" for why in self.rejected.values())
        if refused:  # one line each, after the summary line
            refused = f"; {len(self.rejected)} refused:{refused}"
        return (f"{verb} {self.remote}: {len(self.versions)} new version(s), {self.objects_sent} object(s) "
                f"({format_bytes(self.bytes)}) transferred, {self.objects_skipped} already there{tags}{refused}")

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))


@dataclass
class RepackReport:
    """What ``gc --repack`` did: versions re-coded, and the snapshot bytes before and after."""

    versions_recoded: int = 0
    versions_skipped: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    damaged: dict[str, str] = field(default_factory=dict)  # object id -> why it was left out
    stopped: bool = False  # an automatic pack that gave the store back to the user before the end

    @property
    def bytes_freed(self) -> int:
        return self.bytes_before - self.bytes_after

    def __str__(self) -> str:
        damaged = f"; {len(self.damaged)} damaged file(s) left as they were (run verify)" if self.damaged else ""
        return (f"repack: {self.versions_recoded} version(s) re-coded ({self.versions_skipped} left as they were), "
                f"{format_bytes(self.bytes_before)} -> {format_bytes(self.bytes_after)} "
                f"(freed {format_bytes(self.bytes_freed)}){damaged}")

    __repr__ = __str__
