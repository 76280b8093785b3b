"""The remote's log: what a remote holds, as numbered write-once segments, so that a pull or a push
costs a handful of requests however long the history is (no listing of the bucket).

::

    <url>/log/HEAD                       {"next": n, "checkpoint": c}: a hint, overwritten
    <url>/log/<n>.json                   segment n (10 digits): what one push added
    <url>/log/checkpoint-<c>.json        the whole state after segments 0 .. c-1

The state of a remote is its segments applied in order: the version objects (id -> size), retired
objects, note file names per version, tags ((model, tag) -> id, protected, signature) and version
signatures (id -> the record of ``signatures/<ab>/<id>.json``). Segment
``n`` is created only if absent (S3 ``If-None-Match: *``, an exclusive hard link on folders), so
whoever creates it read segments ``0 .. n-1`` first: appending is a compare-and-swap on the whole
remote, and a tag moved in segment ``n`` was checked against the state every other writer left.
A writer that loses the race reads the winner's segment, checks its own changes again and retries.

Objects and notes are uploaded *before* the segment naming them, so whatever the log names is
complete on the remote. ``HEAD`` only saves readers from probing: a stale ``HEAD`` costs a few
extra requests, never correctness. Every ``CHECKPOINT_EVERY`` segments a writer also stores the
whole state once, so a clone reads one checkpoint plus at most that many segments. A store keeps
the state it last read in a local cache file, so the next pull only reads what is new.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ...core.hashing import HASH_HEX_LENGTH
from ...core.names import validate_name
from ...errors import MVCError, RemoteError, UnsafeFileError
from ..files.safe_files import SafeFiles
from ..local.signatures import well_formed
from .guard import CAP_REMOTE_FILE

if TYPE_CHECKING:
    from .store import RemoteStore

CHECKPOINT_EVERY = 64
# A writer that loses the race for a segment this many times in a row gives up (a busy remote).
APPEND_ATTEMPTS = 50
_ID = re.compile(rf"^[0-9a-f]{{{HASH_HEX_LENGTH}}}$")


def _valid_id(value: object) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError("not a version id")
    return value


@dataclass
class RemoteState:
    """What a remote holds after its first ``seq`` segments."""

    seq: int = 0
    objects: dict[str, int] = field(default_factory=dict)
    retired: dict[str, int] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    tags: dict[tuple[str, str], tuple[str, bool]] = field(default_factory=dict)
    tag_signatures: dict[tuple[str, str], str] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    # version id -> its signature record (see storage.local.signatures); the first one named stays.
    signatures: dict[str, dict] = field(default_factory=dict)

    def apply(self, segment: dict) -> None:
        """Add one segment; malformed entries (untrusted input) are skipped, never half-applied."""
        if not isinstance(segment, dict):
            return
        for kind, target in (("objects", self.objects), ("retired", self.retired)):
            for vid, size in _items(segment.get(kind)):
                with contextlib.suppress(ValueError, TypeError):
                    target[_valid_id(vid)] = max(0, int(size))
                    self.removed.discard(vid) if kind == "objects" else None
        for vid, names in _items(segment.get("notes")):
            with contextlib.suppress(ValueError, TypeError):
                have = self.notes.setdefault(_valid_id(vid), [])
                have.extend(n for n in names if isinstance(n, str) and re.match(r"^[\w.-]+\.json$", n)
                            and n not in have)
        for entry in segment.get("tags") if isinstance(segment.get("tags"), list) else []:
            with contextlib.suppress(ValueError, TypeError, KeyError, MVCError):
                key = (validate_name(entry["model"], "model name"), validate_name(entry["tag"], "tag"))
                if entry.get("id") is None:
                    self.tags.pop(key, None)
                    self.tag_signatures.pop(key, None)
                    continue
                self.tags[key] = (_valid_id(entry["id"]), bool(entry.get("protected")))
                signature = entry.get("signature")
                if isinstance(signature, str):
                    self.tag_signatures[key] = signature
                else:
                    self.tag_signatures.pop(key, None)
        for vid, payload in _items(segment.get("signatures")):
            with contextlib.suppress(ValueError, TypeError):
                if well_formed(payload, _valid_id(vid)):
                    self.signatures.setdefault(vid, payload)
        for vid in segment.get("removed") if isinstance(segment.get("removed"), list) else []:
            with contextlib.suppress(ValueError, TypeError):
                self.objects.pop(_valid_id(vid), None)
                self.notes.pop(vid, None)
                self.removed.add(vid)
        self.seq += 1

    def to_json(self) -> dict:
        return {"seq": self.seq, "objects": self.objects, "retired": self.retired, "notes": self.notes,
                "tags": [{"model": m, "tag": t, "id": vid, "protected": p,
                          **({"signature": self.tag_signatures[(m, t)]} if (m, t) in self.tag_signatures else {})}
                         for (m, t), (vid, p) in sorted(self.tags.items())],
                "removed": sorted(self.removed), "signatures": self.signatures}

    @classmethod
    def from_json(cls, data: object) -> RemoteState:
        state = cls()
        state.apply(data if isinstance(data, dict) else {})
        state.seq = int(data.get("seq", 0)) if isinstance(data, dict) else 0
        return state


def _items(value: object) -> list:
    return list(value.items()) if isinstance(value, dict) else []


def _segment_name(seq: int) -> str:
    return f"{seq:010d}.json"


class RemoteLog:
    """Read and append the log of one remote, with an optional local cache of its state."""

    def __init__(self, remote: RemoteStore, cache: Path | None = None) -> None:
        self.remote = remote
        self.cache = cache
        self._hint: dict | None = None  # log/HEAD, once read
        self._last = ""  # hash of the newest segment applied: tells a cache from a rewritten remote

    def _key(self, name: str) -> str:
        return self.remote.key("log", name)

    def _read_json(self, name: str, track: bool = False) -> object | None:
        try:
            data = self.remote.read_bytes(self._key(name))
        except FileNotFoundError:
            return None
        if track:
            self._last = hashlib.sha256(data).hexdigest()
        try:
            return json.loads(data)
        except ValueError:
            return {}  # a malformed segment still occupies its number: read as empty

    def exists(self) -> bool:
        return self._read_json("HEAD") is not None or self._read_json(_segment_name(0)) is not None

    def read(self) -> RemoteState:
        """The remote's current state: from the cache (or the newest checkpoint), plus newer segments."""
        state = self._load_cache()
        # With a valid cache the newer segments are read one by one (a fresh clone reads HEAD, to start
        # from the newest checkpoint instead of segment 0).
        hint = self._head() if state.seq == 0 else {}
        checkpoint = hint.get("checkpoint")
        if isinstance(checkpoint, int) and checkpoint > state.seq:
            data = self._read_json(f"checkpoint-{checkpoint:010d}.json")
            if isinstance(data, dict):
                loaded = RemoteState.from_json(data)
                if loaded.seq == checkpoint:
                    state = loaded
                    self._read_json(_segment_name(checkpoint - 1), track=True)  # the cache's anchor
        while True:
            segment = self._read_json(_segment_name(state.seq), track=True)
            if segment is None:
                break
            state.apply(segment)
        self._save_cache(state)
        return state

    def append(self, build: Callable[[RemoteState], dict | None], state: RemoteState | None = None) -> RemoteState:
        """Append the segment ``build(state)`` returns for the current state (None: nothing to write).

        ``build`` is called again with the newer state whenever another writer took the number first,
        so it must check its changes (tag moves) against the state it is given.
        """
        state = state if state is not None else self.read()
        for _ in range(APPEND_ATTEMPTS):
            segment = build(state)
            if segment is None:
                return state
            data = (json.dumps(segment, sort_keys=True) + "\n").encode()
            if self.remote.create_exclusive(self._key(_segment_name(state.seq)), data):
                self._last = hashlib.sha256(data).hexdigest()
                state.apply(segment)
                self._after_append(state)
                return state
            while True:  # someone else appended first: catch up, then build again
                newer = self._read_json(_segment_name(state.seq), track=True)
                if newer is None:
                    break
                state.apply(newer)
        raise RemoteError(f"remote {self.remote.url}: too many concurrent pushes, try again")

    def _head(self) -> dict:
        if self._hint is None:
            head = self._read_json("HEAD")
            self._hint = head if isinstance(head, dict) else {}
        return self._hint

    def _after_append(self, state: RemoteState) -> None:
        hint = self._head()
        checkpoint = hint.get("checkpoint") if isinstance(hint.get("checkpoint"), int) else 0
        if state.seq - checkpoint >= CHECKPOINT_EVERY:
            data = (json.dumps(state.to_json(), sort_keys=True) + "\n").encode()
            if self.remote.create_exclusive(self._key(f"checkpoint-{state.seq:010d}.json"), data):
                checkpoint = state.seq
        if int(hint.get("next", 0) or 0) < state.seq:
            # A hint: a lost race here leaves it a little behind, which only costs readers a probe.
            self._hint = {"next": state.seq, "checkpoint": checkpoint}
            self.remote.write_plain(self._key("HEAD"), json.dumps(self._hint).encode())
        self._save_cache(state)

    # -- the local cache ----------------------------------------------------------------------

    def _load_cache(self) -> RemoteState:
        if self.cache is None:
            return RemoteState()
        try:  # a file of the local store: no symlink, no FIFO, bounded (see safe_files)
            data = json.loads(SafeFiles(self.cache.parent.parent).read(self.cache, CAP_REMOTE_FILE) or b"null")
        except (OSError, ValueError, UnsafeFileError):
            return RemoteState()
        if not isinstance(data, dict) or data.get("url") != self.remote.url:
            return RemoteState()
        state = RemoteState.from_json(data.get("state"))
        if state.seq == 0:
            return state
        try:  # the segment the cache ends with must still be the remote's (a remote can be recreated)
            last = self.remote.read_bytes(self._key(_segment_name(state.seq - 1)))
        except FileNotFoundError:
            return RemoteState()
        if hashlib.sha256(last).hexdigest() != data.get("last"):
            return RemoteState()
        self._last = str(data.get("last"))
        return state

    def _save_cache(self, state: RemoteState) -> None:
        if self.cache is None:
            return
        with contextlib.suppress(OSError, UnsafeFileError):
            SafeFiles(self.cache.parent.parent).write(self.cache, json.dumps(
                {"url": self.remote.url, "last": self._last, "state": state.to_json()}).encode())
