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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import blake3

from ...core.hashing import canonical_json
from ..files.safe_files import SafeFiles

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
    uid: int | None = None  # the OS user id of the writing process (None in entries written before)


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

    def __init__(self, path: Path, files: SafeFiles | None = None) -> None:
        self.path = path
        self._files = files or SafeFiles(Path(path).parent)
        #: Returns the chain head (seq, hash) recorded outside the log, or None (set by the Store).
        self.anchor: Callable[[], tuple[int, str] | None] | None = None
        #: Called with each entry once it is on disk (the Store records it as the chain head).
        self.on_write: Callable[[dict], None] | None = None

    def _open(self, flags: int = os.O_RDONLY, create: bool = False):
        """The log opened as a regular file without following a symlink (None when absent)."""
        try:
            fd = self._files.open_regular(self.path, flags, create=create)
        except FileNotFoundError:
            return None
        return os.fdopen(fd, "ab" if flags & os.O_APPEND else "rb")

    def _last(self) -> tuple[int, str]:
        handle = self._open()
        if handle is None:
            return 0, GENESIS
        with handle:
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

    def prepare(self, who: str, op: str, name: str | None, ids: list[str], detail: dict | None = None) -> dict:
        """The next entry, chained to the current last one, without writing it (caller holds the lock)."""
        seq, prev = self._last()
        entry = {
            "seq": seq + 1, "time": datetime.now(timezone.utc).isoformat(), "who": who, "uid": os.geteuid(),
            "op": op, "name": name, "ids": list(ids), "detail": detail or {}, "prev": prev,
        }
        entry["hash"] = entry_hash(prev, entry)
        return entry

    def append(self, who: str, op: str, name: str | None, ids: list[str], detail: dict | None = None) -> dict:
        """Append one entry (caller holds the store lock); return it (its ``seq`` and ``hash``)."""
        entry = self.prepare(who, op, name, ids, detail)
        self.write(entry)
        return entry

    def write(self, entry: dict) -> None:
        """Append a :meth:`prepare`-d entry as one line, fsynced."""
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        with self._open(os.O_RDWR | os.O_APPEND, create=True) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > 0 and os.pread(handle.fileno(), 1, size - 1) != b"\n":
                line = b"\n" + line  # a torn last line from a killed writer stays separate
            handle.write(line)  # one write: a kill leaves the whole line or a torn tail
            handle.flush()
            os.fsync(handle.fileno())
        if self.on_write is not None:
            self.on_write(entry)

    def last_hash(self) -> str:
        """The hash of the last complete entry (the genesis hash when the log is empty)."""
        return self._last()[1]

    def contains(self, entry_hash_hex: str) -> bool:
        """True when an entry with this hash is in the log (a recovery must not record twice)."""
        return any(e.hash == entry_hash_hex for e in self.entries())

    def entries(self) -> Iterator[AuditEntry]:
        """Parsed entries, oldest first, skipping lines that are not valid JSON (see :meth:`check`)."""
        handle = self._open(os.O_RDONLY | os.O_NONBLOCK)
        if handle is None:
            return
        with handle:
            for raw in handle:
                e = _parse(raw)
                if e is None:
                    continue
                try:
                    uid = int(e["uid"]) if e.get("uid") is not None else None
                    yield AuditEntry(int(e["seq"]), str(e["time"]), str(e["who"]), str(e["op"]), e.get("name"),
                                     [str(i) for i in e.get("ids", [])], dict(e.get("detail", {})), e["hash"], uid)
                except (KeyError, TypeError, ValueError):
                    continue

    def check(self) -> AuditCheck:
        """Walk the chain: every entry must hash correctly and name its predecessor's hash.

        An edited entry fails its own hash; a removed one breaks the next entry's ``prev`` and the
        sequence. An unparsable line that the chain steps over (the next entry names the entry
        before it) is a write torn by a kill: tolerated and noted. Entries removed at the very end, or
        a re-chained file, are found against the chain head recorded outside the log (:attr:`anchor`).
        """
        result = AuditCheck()
        anchor = self.anchor() if self.anchor is not None else None
        handle = self._open()
        if handle is None:
            if anchor is not None and anchor[0] > 0:
                result.problems.append(f"audit.log is missing, but the index records {anchor[0]} entries")
            return result
        prev, seq, torn = GENESIS, 0, []
        by_seq: dict[int, str] = {}
        with handle:
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
            by_seq[seq] = str(entry["hash"])
        if anchor is not None:
            _check_anchor(result, anchor, by_seq, seq)
        for number in torn:
            result.notes.append(f"audit.log line {number} is a torn write (a process killed mid-append); "
                                "skipped")
        return result


def _check_anchor(result: AuditCheck, anchor: tuple[int, str], by_seq: dict[int, str], last: int) -> None:
    """The log must still hold the entry the index recorded as the chain head, unchanged."""
    head_seq, head_hash = anchor
    if head_seq <= 0:
        return
    if head_seq not in by_seq:
        result.problems.append(f"audit.log ends at entry {last}, but the index recorded entry {head_seq} "
                               f"({head_hash[:12]}) as written: its last entries were removed")
    elif by_seq[head_seq] != head_hash:
        result.problems.append(f"audit.log entry {head_seq} is not the one the index recorded ({head_hash[:12]}): "
                               "the log was rewritten or re-chained")
