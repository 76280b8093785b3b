"""Parameter diffs between two versions: which tensors changed, and by how much.

Tensors are matched by name and compared by hash first: an equal hash means unchanged and those
bytes are never read. Only changed tensors are read, one pair at a time, and measured by

* relative L2 change  ||B - A|| / ||A||     (0 when equal; inf when A is all zeros and B is not)
* max |delta|         max_j |B_j - A_j|
* cosine similarity   A . B / (||A|| ||B||)   (NaN when either is all zeros)

Tensors only in A are *removed*, only in B *added*, and same-named tensors of different shapes
*reshaped*. A layer is the tensor name up to its last ``/`` (``dense_1/kernel`` -> ``dense_1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .manifest import ManifestEntry
from .names import pair_names
from .tables import Table, format_bytes
from .version import Version

STATUSES = ("changed", "reshaped", "added", "removed", "unchanged")


def layer_of(tensor_name: str) -> str:
    """The layer a tensor belongs to: its name up to the last ``/`` (the name itself at top level)."""
    return tensor_name.rsplit("/", 1)[0] if "/" in tensor_name else tensor_name


@dataclass(frozen=True)
class TensorChange:
    """One tensor in a diff; the statistics are set only for ``changed`` tensors."""

    name: str
    status: str
    a: ManifestEntry | None
    b: ManifestEntry | None
    relative_l2: float | None = None
    max_abs: float | None = None
    cosine: float | None = None
    delta_norm: float | None = None
    norm_a: float | None = None

    @property
    def layer(self) -> str:
        return layer_of(self.name)

    @property
    def size(self) -> int:
        """Number of elements (of B, or of A when removed)."""
        entry = self.b or self.a
        return int(np.prod(entry.shape, dtype=np.int64)) if entry else 0

    def shape_text(self) -> str:
        if self.status == "reshaped":
            return f"{self.a.shape} -> {self.b.shape}"
        entry = self.b or self.a
        dtypes = f" {self.a.dtype}->{self.b.dtype}" if self.a and self.b and self.a.dtype != self.b.dtype else ""
        return f"{entry.shape}{dtypes}"


@dataclass(frozen=True)
class LayerSummary:
    """The tensors of one layer: how many changed, and the layer's combined relative L2 change."""

    layer: str
    tensors: int
    changed: int
    unchanged: int
    added: int
    removed: int
    reshaped: int
    params: int
    params_changed: int
    relative_l2: float | None
    max_abs: float | None

    @property
    def status(self) -> str:
        if self.changed + self.added + self.removed + self.reshaped == 0:
            return "unchanged"
        if self.added == self.tensors:
            return "added"
        if self.removed == self.tensors:
            return "removed"
        return "changed"


@dataclass
class Diff:
    """The result of ``repo.diff(a, b)``: per-tensor changes, per-layer summary, bytes read."""

    a: Version
    b: Version
    tensors: list[TensorChange]
    tensors_read: int = 0
    bytes_read: int = 0
    notes: list[str] = field(default_factory=list)

    def names(self, status: str) -> list[str]:
        """Names of the tensors with ``status`` (changed, reshaped, added, removed, unchanged)."""
        return [t.name for t in self.tensors if t.status == status]

    @property
    def changed(self) -> list[str]:
        return self.names("changed")

    @property
    def unchanged(self) -> list[str]:
        return self.names("unchanged")

    @property
    def added(self) -> list[str]:
        return self.names("added")

    @property
    def removed(self) -> list[str]:
        return self.names("removed")

    @property
    def reshaped(self) -> list[str]:
        return self.names("reshaped")

    @property
    def identical(self) -> bool:
        return all(t.status == "unchanged" for t in self.tensors)

    def tensor(self, name: str) -> TensorChange:
        for change in self.tensors:
            if change.name == name:
                return change
        raise KeyError(name)

    def layers(self) -> list[LayerSummary]:
        """One summary per layer, in tensor order. The relative L2 covers the changed tensors."""
        groups: dict[str, list[TensorChange]] = {}
        for change in self.tensors:
            groups.setdefault(change.layer, []).append(change)
        result = []
        for layer, changes in groups.items():
            count = {s: sum(1 for c in changes if c.status == s) for s in STATUSES}
            moved = [c for c in changes if c.status == "changed"]
            delta = math.sqrt(sum(c.delta_norm ** 2 for c in moved)) if moved else None
            base = math.sqrt(sum(c.norm_a ** 2 for c in moved)) if moved else None
            rel = None if delta is None else (delta / base if base else (0.0 if delta == 0 else math.inf))
            result.append(LayerSummary(
                layer, len(changes), count["changed"], count["unchanged"], count["added"], count["removed"],
                count["reshaped"], sum(c.size for c in changes),
                sum(c.size for c in changes if c.status != "unchanged"), rel,
                max((c.max_abs for c in moved), default=None),
            ))
        return result

    @property
    def changed_layers(self) -> list[str]:
        """Layers with any changed, added, removed or reshaped tensor."""
        return [s.layer for s in self.layers() if s.status != "unchanged"]

    # -- rendering --------------------------------------------------------------------------

    def headline(self) -> str:
        counts = ", ".join(f"{len(self.names(s))} {s}" for s in STATUSES if self.names(s))
        models = self.a.name if self.a.name == self.b.name else f"{self.a.name} -> {self.b.name}"
        return (f"diff {self.a.short_id} -> {self.b.short_id} ({models}): {counts or 'no tensors'}; "
                f"read {self.tensors_read} tensors ({format_bytes(self.bytes_read)})")

    def layer_table(self, include_unchanged: bool = False) -> Table:
        """One row per changed layer (every layer with ``include_unchanged``); the rest are counted,
        so a one-layer fine-tune of a 100-layer model reads as one row."""
        layers = self.layers()
        shown = [s for s in layers if include_unchanged or s.status != "unchanged"]
        rows = [[s.layer, s.status, f"{s.tensors - s.unchanged}/{s.tensors}", f"{s.params_changed}/{s.params}",
                 s.relative_l2, s.max_abs] for s in shown]
        highlight = {i for i, s in enumerate(shown) if s.status != "unchanged"}
        hidden = len(layers) - len(shown)
        notes = [f"{hidden} unchanged layer{'s' if hidden != 1 else ''} not shown"] if hidden else []
        return Table(["layer", "status", "tensors changed", "params changed", "rel L2", "max |Δ|"], rows,
                     title=self.headline(), highlight=highlight,
                     notes=notes + [f"note: {n}" for n in self.notes])

    def tensor_table(self, include_unchanged: bool = False) -> Table:
        rows = [[t.name, t.status, t.shape_text(), t.relative_l2, t.max_abs, t.cosine]
                for t in self.tensors if include_unchanged or t.status != "unchanged"]
        return Table(["tensor", "status", "shape", "rel L2", "max |Δ|", "cosine"], rows)

    def __str__(self) -> str:
        text = self.layer_table().to_text()
        if not self.identical:
            text += "\n\n" + self.tensor_table().to_text()
        return text

    def __repr__(self) -> str:
        return f"<Diff {self.a.short_id} -> {self.b.short_id}: {len(self.changed_layers)} layer(s) changed>"

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        tensors = ""
        if not self.identical:
            tensors = (f"<details><summary><small>changed tensors</small></summary>"
                       f"{self.tensor_table().to_html()}</details>")
        return f"<div class='mvc-diff'>{self.layer_table().to_html()}{tensors}</div>"

    def to_dict(self) -> dict:
        """Plain data: the two ids, every tensor's status and statistics, the layer summary."""
        return {
            "a": self.a.id, "b": self.b.id, "tensors_read": self.tensors_read, "bytes_read": self.bytes_read,
            "tensors": [{"name": t.name, "layer": t.layer, "status": t.status,
                         "shape_a": list(t.a.shape) if t.a else None, "shape_b": list(t.b.shape) if t.b else None,
                         "relative_l2": t.relative_l2, "max_abs": t.max_abs, "cosine": t.cosine}
                        for t in self.tensors],
            "layers": [s.__dict__ | {"status": s.status} for s in self.layers()],
            "notes": list(self.notes),
        }


def tensor_statistics(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Relative L2 change, max |delta| and cosine similarity of ``x`` -> ``y`` (in float64)."""
    wide = np.complex128 if "complex" in np.asarray(x).dtype.name else np.float64
    a = np.asarray(x).astype(wide).ravel()
    b = np.asarray(y).astype(wide).ravel()
    delta = b - a
    delta_norm, norm_a, norm_b = (float(np.linalg.norm(v)) for v in (delta, a, b))
    relative = delta_norm / norm_a if norm_a > 0 else (0.0 if delta_norm == 0 else math.inf)
    cosine = float(np.vdot(a, b).real / (norm_a * norm_b)) if norm_a > 0 and norm_b > 0 else math.nan
    max_abs = float(np.max(np.abs(delta))) if delta.size else 0.0
    return {"relative_l2": relative, "max_abs": max_abs, "cosine": cosine,
            "delta_norm": delta_norm, "norm_a": norm_a}


def match_tensors(first: list[ManifestEntry], second: list[ManifestEntry]) -> tuple[list, str | None]:
    """Pairs (name, entry A or None, entry B or None): by name, or by :func:`pair_names` when only names differ."""
    names_a, names_b = [e.name for e in first], [e.name for e in second]
    paired = pair_names(names_a, names_b) if set(names_a) != set(names_b) else None
    if paired is not None:
        by_b = {e.name: e for e in second}
        matched = [(by_b[paired[x.name]], x) for x in first]
        if all((x.shape, x.dtype) == (y.shape, y.dtype) for y, x in matched):
            return [(y.name, x, y) for y, x in matched], (
                "tensor names differ (layers renumbered?): matched by position (layer numbers), shown with B's names")
    by_name = {e.name: e for e in second}
    pairs = [(e.name, e, by_name.get(e.name)) for e in first]
    known = set(names_a)
    pairs += [(e.name, None, e) for e in second if e.name not in known]
    return pairs, None
