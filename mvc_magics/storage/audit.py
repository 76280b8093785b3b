"""The audit log: an append-only, hash-chained record of every operation.

Each line is JSON with the hash of the previous line in ``prev`` and its own ``hash`` (BLAKE3 over
the previous hash and the canonical entry), so an edited or removed line breaks the chain.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import blake3

from ..hashing import canonical_json

GENESIS = "0" * 64


def entry_hash(prev: str, entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return blake3.blake3((prev + canonical_json(body)).encode()).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """One recorded operation."""

    seq: int
    time: str
    who: str
    op: str
    name: str | None
    ids: list[str]
    detail: dict
    hash: str


class AuditLog:
    """Appends entries (caller holds the store lock) and reads them back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _last(self) -> tuple[int, str]:
        if not self.path.exists():
            return 0, GENESIS
        with open(self.path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 65536))
            tail = handle.read().split(b"\n")
        for raw in reversed(tail):
            try:
                entry = json.loads(raw)
                return int(entry["seq"]), str(entry["hash"])
            except (ValueError, KeyError, TypeError):
                continue
        return 0, GENESIS

    def append(self, who: str, op: str, name: str | None, ids: list[str], detail: dict | None = None) -> None:
        seq, prev = self._last()
        entry = {
            "seq": seq + 1, "time": datetime.now(timezone.utc).isoformat(), "who": who, "op": op,
            "name": name, "ids": list(ids), "detail": detail or {}, "prev": prev,
        }
        entry["hash"] = entry_hash(prev, entry)
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        with open(self.path, "ab") as handle:
            if handle.tell() > 0 and not self._ends_with_newline():
                handle.write(b"\n")  # a torn last line from a killed writer stays separate
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def entries(self) -> Iterator[AuditEntry]:
        """Parsed entries, skipping lines that are not valid JSON (see verify for the chain)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            for raw in handle:
                try:
                    e = json.loads(raw)
                    yield AuditEntry(int(e["seq"]), e["time"], e["who"], e["op"], e.get("name"),
                                     list(e.get("ids", [])), dict(e.get("detail", {})), e["hash"])
                except (ValueError, KeyError, TypeError):
                    continue
