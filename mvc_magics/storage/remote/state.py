"""The state of a remote: its log's segments applied in order, and the rules deciding which tag entries
count (docs/remotes.md, "The log is a hash chain").

Everything here comes from the remote, written by any member: a malformed entry is skipped, never
half-applied, and a tag entry that moves, unprotects or deletes a protected tag counts only when an
allowed signer signed exactly that position (:func:`..trust.tag_message`): the remote's identity, the
tag, the id, the flag and the hash of the tag's previous entry. Whether a tag is protected is read
from the state (the entry in force, or a ``production*`` name), never from the new entry's own flag.
Entries that do not count are kept in ``refused``, one line each, for pull and ``verify`` to report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass, field

from ...core.hashing import HASH_HEX_LENGTH
from ...core.names import validate_name
from ...errors import MVCError
from ..local.signatures import well_formed
from .trust import AllowedSigners, is_protected, legacy_tag_message, tag_message

# Signature records kept per version (distinct ones; a member cannot make a version's list endless).
MAX_SIGNATURE_RECORDS = 16
# Refused entries remembered (each is also reported when read).
MAX_REFUSED = 1000
_ID = re.compile(rf"^[0-9a-f]{{{HASH_HEX_LENGTH}}}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")


def valid_id(value: object) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError("not a version id")
    return value


def is_hash(value: object) -> bool:
    return isinstance(value, str) and bool(_HASH.match(value))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def entry_hash(model: str, tag: str, vid: str | None, protected: bool, prev: str | None) -> str:
    """The hash a later entry of the same tag names as its ``prev``."""
    return digest(canonical({"model": model, "tag": tag, "id": vid, "protected": protected, "prev": prev}))


@dataclass
class RemoteState:
    """What a remote holds after its first ``seq`` segments.

    ``last`` is the hash of segment ``seq - 1`` (the next segment must name it), ``chained`` says the
    hash chain has started (every later segment must name its predecessor), ``identity`` is the
    remote's (the ``remote`` field of segment 0, or that segment's hash on remotes older than the
    chain), ``heads`` the hash of each tag's newest entry in force, deletions included.
    """

    seq: int = 0
    objects: dict[str, int] = field(default_factory=dict)
    retired: dict[str, int] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    tags: dict[tuple[str, str], tuple[str, bool]] = field(default_factory=dict)
    heads: dict[tuple[str, str], str] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    # version id -> every distinct signature record pushed for it (a version is signed if any validates)
    signatures: dict[str, list[dict]] = field(default_factory=dict)
    last: str = ""
    chained: bool = False
    identity: str = ""
    refused: list[str] = field(default_factory=list)
    # Refused while reading this time (not persisted): what a pull reports.
    fresh: list[str] = field(default_factory=list)

    def apply(self, segment: object, raw_digest: str = "", signers: AllowedSigners | None = None) -> None:
        """Add one segment (its hash ``raw_digest``); tag entries are checked against ``signers``."""
        segment = segment if isinstance(segment, dict) else {}
        if self.seq == 0:
            nonce = segment.get("remote")
            self.identity = nonce if is_hash(nonce) else raw_digest
        legacy = "prev" not in segment
        for kind, target in (("objects", self.objects), ("retired", self.retired)):
            for vid, size in _items(segment.get(kind)):
                with contextlib.suppress(ValueError, TypeError):
                    target[valid_id(vid)] = max(0, int(size))
                    self.removed.discard(vid) if kind == "objects" else None
        for vid, names in _items(segment.get("notes")):
            with contextlib.suppress(ValueError, TypeError):
                have = self.notes.setdefault(valid_id(vid), [])
                have.extend(n for n in names if isinstance(n, str) and re.match(r"^[\w.-]+\.json$", n)
                            and n not in have)
        for entry in segment.get("tags") if isinstance(segment.get("tags"), list) else []:
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError, MVCError):
                self._apply_tag(entry, signers, legacy)
        for vid, records in _items(segment.get("signatures")):
            with contextlib.suppress(ValueError, TypeError):
                self.add_signatures(valid_id(vid), records)
        for vid in segment.get("removed") if isinstance(segment.get("removed"), list) else []:
            with contextlib.suppress(ValueError, TypeError):
                if signers is not None and self._refuse_removal(valid_id(vid)):
                    continue
                self.objects.pop(valid_id(vid), None)
                self.notes.pop(vid, None)
                self.removed.add(vid)
        self.seq += 1
        self.last = raw_digest

    def add_signatures(self, vid: str, records: object) -> None:
        have = self.signatures.setdefault(vid, [])
        for record in records if isinstance(records, list) else [records]:
            if well_formed(record, vid) and record not in have and len(have) < MAX_SIGNATURE_RECORDS:
                have.append(dict(record))
        if not have:
            del self.signatures[vid]

    def _refuse_removal(self, vid: str) -> bool:
        """A version a protected tag names is not removed (the tag must be moved first, which needs an
        allowed signer; operations.remote_removal never writes such a removal)."""
        for (model, tag), (tagged, protected) in sorted(self.tags.items()):
            if tagged == vid and is_protected(tag, protected):
                self._refused(f"segment {self.seq}: removes version {vid[:12]}, which protected tag {tag} ({model}) "
                              "names; refused")
                return True
        return False

    def _refused(self, line: str) -> None:
        self.fresh.append(line)
        if len(self.refused) < MAX_REFUSED:
            self.refused.append(line)

    def _apply_tag(self, entry: dict, signers: AllowedSigners | None, legacy: bool) -> None:
        model, tag = validate_name(entry["model"], "model name"), validate_name(entry["tag"], "tag")
        key = (model, tag)
        vid = None if entry.get("id") is None else valid_id(entry["id"])
        protected = vid is not None and bool(entry.get("protected"))
        prev = entry.get("prev") if is_hash(entry.get("prev")) else None
        current = self.tags.get(key)
        guarded = is_protected(tag, protected) or (current is not None and is_protected(tag, current[1]))
        if signers is not None and guarded:
            problem = self._unsigned(signers, entry, key, vid, protected, prev, legacy, current)
            if problem:
                self._refused(f"segment {self.seq}: {problem}")
                return
        if vid is None:
            self.tags.pop(key, None)
        else:
            self.tags[key] = (vid, protected)
        self.heads[key] = entry_hash(model, tag, vid, protected, prev)

    def _unsigned(self, signers: AllowedSigners, entry: dict, key: tuple[str, str], vid: str | None,
                  protected: bool, prev: str | None, legacy: bool, current) -> str | None:
        """Why this entry of a protected tag does not count (None: an allowed signer signed it)."""
        model, tag = key
        signature = entry.get("signature")
        if legacy:
            if vid is not None and signers.signer_of(legacy_tag_message(model, tag, vid), signature):
                return None
        elif signers.signer_of(tag_message(self.identity, model, tag, vid, protected, prev), signature):
            head = self.heads.get(key)
            if prev == head:
                return None
            return (f"replayed signature: the entry of protected tag {tag} ({model}) -> {_short(vid)} was signed "
                    f"to follow entry {_short(prev)}, but the tag's entry in force is {_short(head)}; refused")
        if vid is None:
            action = f"deletes protected tag {tag} ({model})"
        elif current is not None and is_protected(tag, current[1]) and not is_protected(tag, protected):
            action = f"unprotects protected tag {tag} ({model})"
        else:
            action = f"moves protected tag {tag} ({model}) to {vid[:12]}"
        return f"{action} without an allowed signer's signature; refused"

    def to_json(self) -> dict:
        return {"seq": self.seq, "last": self.last, "chained": self.chained, "identity": self.identity,
                "objects": self.objects, "retired": self.retired, "notes": self.notes,
                "tags": tag_entries(self.tags),
                "heads": [{"model": m, "tag": t, "hash": h} for (m, t), h in sorted(self.heads.items())],
                "removed": sorted(self.removed), "signatures": self.signatures, "refused": self.refused}

    def state_digest(self) -> str:
        """What a checkpoint's signature covers: the state (what was refused is not part of it)."""
        data = self.to_json()
        del data["refused"]
        return digest(canonical(data))

    @classmethod
    def from_json(cls, data: object) -> RemoteState:
        """A state saved by :meth:`to_json` (a cache or a checkpoint: checked by the caller)."""
        state = cls()
        if not isinstance(data, dict):
            return state
        with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError, MVCError):
            state.apply({k: data.get(k) for k in ("objects", "retired", "notes", "signatures", "removed")})
            for entry in data.get("tags") or []:
                key = (validate_name(entry["model"], "model name"), validate_name(entry["tag"], "tag"))
                state.tags[key] = (valid_id(entry["id"]), bool(entry.get("protected")))
            for entry in data.get("heads") or []:
                if is_hash(entry["hash"]):
                    state.heads[(validate_name(entry["model"], "model name"),
                                 validate_name(entry["tag"], "tag"))] = entry["hash"]
            state.refused = [str(line)[:400] for line in data.get("refused") or []][:MAX_REFUSED]
            state.identity = str(data.get("identity") or "")
            state.chained = bool(data.get("chained"))
            state.last = str(data.get("last") or "")
            state.seq = int(data.get("seq", 0))
            return state
        return cls()


def tag_entries(tags: dict[tuple[str, str], tuple[str, bool]]) -> list[dict]:
    return [{"model": m, "tag": t, "id": vid, "protected": p} for (m, t), (vid, p) in sorted(tags.items())]


def _short(value: str | None) -> str:
    return value[:12] if value else "none"


def _items(value: object) -> list:
    return list(value.items()) if isinstance(value, dict) else []
