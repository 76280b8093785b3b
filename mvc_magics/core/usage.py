"""What a store's versions take on disk, per model (``du``): the result object and its table."""

from __future__ import annotations

from dataclasses import dataclass, field

from .tables import Table, format_bytes


@dataclass
class ModelUsage:
    """One model's versions: how many, their logical size and what storing them costs.

    ``logical``: the decoded bytes of every version's tensors, each version counted whole;
    ``unique``: the same over distinct tensors (what is left after deduplication); ``stored``: the
    bytes those tensors take in the snapshot files; ``coding_saved`` / ``delta_saved``: what zstd
    byte-plane coding and deltas against related versions saved on them."""

    name: str
    versions: int = 0
    logical: int = 0
    unique: int = 0
    stored: int = 0
    coding_saved: int = 0
    delta_saved: int = 0

    @property
    def dedup_saved(self) -> int:
        return self.logical - self.unique


@dataclass
class UsageReport:
    """``repo.du()``: one :class:`ModelUsage` per model, the store's total (tensors shared by
    several models counted once) and the bytes of every file in the store folder."""

    models: list[ModelUsage] = field(default_factory=list)
    total: ModelUsage = field(default_factory=lambda: ModelUsage("(all)"))
    files_bytes: int = 0
    loose_files: int = 0  # snapshot files written by commits and not packed yet (tensors as they are)
    loose_bytes: int = 0

    def table(self) -> Table:
        rows = [[m.name, str(m.versions), format_bytes(m.logical), format_bytes(m.stored),
                 format_bytes(m.dedup_saved), format_bytes(m.coding_saved), format_bytes(m.delta_saved)]
                for m in [*self.models, self.total]]
        return Table(["model", "versions", "logical", "stored", "dedup saved", "coding saved", "deltas saved"],
                     rows, title="disk usage")

    def __str__(self) -> str:
        loose = (f"\nloose: {self.loose_files} snapshot file(s), {format_bytes(self.loose_bytes)}, not packed yet "
                 "(coded by the automatic pack or gc --repack)") if self.loose_files else ""
        return (f"{self.table().to_text()}\nstore folder: {format_bytes(self.files_bytes)} on disk "
                "(snapshots with their HDF5 metadata, structures, index, audit log)" + loose)

    def _repr_html_(self) -> str:
        return self.table().to_html()
