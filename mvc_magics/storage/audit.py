"""The audit log: an append-only, hash-chained record of every operation.

Each line is JSON with the hash of the previous entry in ``prev`` and its own ``hash`` (BLAKE3 over
the previous hash and the canonical entry), so an edited or removed line breaks the chain.
A line cut short by a writer killed mid-append is skipped by readers, and the next entry chains to
the last complete one, so :meth:`AuditLog.check` can tell a torn line (tolerated, reported as a note)
from an edited one (a problem).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import blake3

from ..core.hashing import canonical_json

GENESIS = "0" * 64
_TAIL_BYTES = 65536


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


@dataclass
class AuditCheck:
    """What :meth:`AuditLog.check` found: ``problems`` (edited/removed entries) and ``notes``."""

    entries: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)  # every version id some entry names


def _parse(raw: bytes) -> dict | None:
    try:
        entry = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
        return None
    try:
        int(entry["seq"])
    except (KeyError, TypeError, ValueError):
        return None
    return entry


class AuditLog:
    """Appends entries (caller holds the store lock) and reads them back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _last(self) -> tuple[int, str]:
        if not self.path.exists():
            return 0, GENESIS
        with open(self.path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            window = _TAIL_BYTES
            while True:  # widen the window until a complete entry is found (huge lines, torn tails)
                handle.seek(max(0, size - window))
                lines = handle.read().split(b"\n")
                for raw in reversed(lines):
                    entry = _parse(raw)
                    if entry is not None:
                        return int(entry["seq"]), str(entry["hash"])
                if window >= size:
                    return 0, GENESIS
                window *= 4

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
                line = b"\n" + line  # a torn last line from a killed writer stays separate
            handle.write(line)  # one write: a kill leaves the whole line or a torn tail
            handle.flush()
            os.fsync(handle.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def entries(self) -> Iterator[AuditEntry]:
        """Parsed entries, oldest first, skipping lines that are not valid JSON (see :meth:`check`)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            for raw in handle:
                e = _parse(raw)
                if e is None:
                    continue
                try:
                    yield AuditEntry(int(e["seq"]), str(e["time"]), str(e["who"]), str(e["op"]), e.get("name"),
                                     [str(i) for i in e.get("ids", [])], dict(e.get("detail", {})), e["hash"])
                except (KeyError, TypeError, ValueError):
                    continue

    def check(self) -> AuditCheck:
        """Walk the chain: every entry must hash correctly and name its predecessor's hash.

        An edited entry fails its own hash; a removed one breaks the next entry's ``prev`` and the
        sequence. An unparsable line that the chain steps over (the next entry names the entry
        before it) is a write torn by a kill: tolerated and noted. Removing entries at the very end
        is not visible in the chain itself; verify cross-checks that every version is recorded.
        """
        result = AuditCheck()
        if not self.path.exists():
            return result
        prev, seq, torn = GENESIS, 0, []
        with open(self.path, "rb") as handle:
            data = handle.read()
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            torn.append(len(lines))  # no final newline: the last append was cut short
        for number, raw in enumerate(lines, start=1):
            entry = _parse(raw)
            if entry is None:
                if raw.strip() and number not in torn:
                    torn.append(number)
                continue
            result.entries += 1
            try:
                result.ids.update(str(i) for i in entry.get("ids", []))
            except TypeError:
                pass
            where = f"audit.log line {number} (entry {entry.get('seq')})"
            if entry_hash(str(entry.get("prev", "")), entry) != entry["hash"]:
                result.problems.append(f"{where} was edited: its hash does not match its content")
            elif entry.get("prev") != prev:
                result.problems.append(f"{where} does not follow the entry before it: an entry was removed or "
                                       "reordered")
            elif int(entry["seq"]) != seq + 1:
                result.problems.append(f"{where}: sequence jumps from {seq} to {entry['seq']}")
            prev, seq = entry["hash"], int(entry["seq"])
        for number in torn:
            result.notes.append(f"audit.log line {number} is a torn write (a process killed mid-append); "
                                "skipped")
        return result
