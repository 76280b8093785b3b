"""The remote's log: what a remote holds, as numbered write-once segments forming a hash chain, so that
a pull or a push costs a handful of requests however long the history is (no listing of the bucket),
and a rewritten history is noticed.

::

    <url>/log/HEAD                          {"next": n, "checkpoint": c}: a hint, overwritten
    <url>/log/<n>.json                      segment n (10 digits): what one push added, and "prev":
                                            the SHA-256 of segment n - 1's bytes (null for segment 0,
                                            which also holds "remote": the remote's random identity)
    <url>/log/checkpoint-<c>.json           the whole state after segments 0 .. c-1 (remotes without
                                            allowed signers; used only if segment c - 1 hashes to its "last")
    <url>/log/checkpoint-<c>-<r>.json       the same, signed by an allowed signer (remotes with them)

The state of a remote is its segments applied in order (storage/remote/state.py). Segment ``n`` is
created only if absent (S3 ``If-None-Match: *``, an exclusive hard link on folders), so whoever
creates it read segments ``0 .. n-1`` first: appending is a compare-and-swap on the whole remote.
A writer that loses the race reads the winner's segment, checks its own changes again and retries.

Every segment read is checked against the one before it (``prev``). A store keeps the state it read
in a local cache, with the hash of the newest segment: the next read refuses a remote whose segment
is no longer that one (not a fast-forward: :class:`RemoteHistoryError` naming the first segment that
differs). A reader without a cache starts from a checkpoint only when it can check it: on a remote with
allowed signers, a checkpoint signed by one of them (TUF's snapshot role), on other remotes one whose
``last`` is the hash of the segment it follows; otherwise from segment 0. ``HEAD`` only saves probes.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import RemoteError, RemoteHistoryError, RemoteUnreachableError, UnsafeFileError
from ..files.safe_files import SafeFiles
from ..local.signatures import Signer
from .guard import CAP_REMOTE_FILE
from .state import RemoteState, canonical, digest, is_hash
from .trust import AllowedSigners, checkpoint_message, parse_allowed_signers, read_allowed_signers_bytes, sign

if TYPE_CHECKING:
    from .store import RemoteStore

__all__ = ["CHECKPOINT_EVERY", "RemoteLog", "RemoteState"]

CHECKPOINT_EVERY = 64
# A writer that loses the race for a segment this many times in a row gives up (a busy remote).
APPEND_ATTEMPTS = 50
# Segments compared backwards, when a remote no longer extends the cache, to name the first that differs.
FORK_SCAN = 1024
# Checkpoints tried, newest first, by a reader without a cache on a remote with allowed signers.
CHECKPOINT_TRIES = 16
_CHECKPOINT = re.compile(r"checkpoint-(\d{10})(-[0-9a-f]{16})?\.json$")


def segment_name(seq: int) -> str:
    return f"{seq:010d}.json"


class RemoteLog:
    """Read and append the log of one remote, with an optional local cache of its state.

    ``signer`` (the pusher's key) signs checkpoints when it is one of the remote's allowed signers.
    """

    def __init__(self, remote: RemoteStore, cache: Path | None = None, signer: Signer | None = None) -> None:
        self.remote = remote
        self.cache = cache
        self.signer = signer
        self.signers: AllowedSigners | None = None
        self._signers_digest = ""
        self._hint: dict | None = None  # log/HEAD, once read
        self._hashes: dict[int, str] = {}  # segment -> hash, of segments read (and cached)
        self._cached_signers = ""

    def _key(self, name: str) -> str:
        return self.remote.key("log", name)

    def raw(self, name: str) -> bytes | None:
        try:
            return self.remote.read_bytes(self._key(name))
        except FileNotFoundError:
            return None

    def segment(self, seq: int) -> tuple[object, str] | None:
        """Segment ``seq`` parsed (``{}`` when malformed) and the SHA-256 of its bytes; None when absent."""
        data = self.raw(segment_name(seq))
        if data is None:
            return None
        try:
            return json.loads(data), digest(data)
        except ValueError:
            return {}, digest(data)

    def exists(self) -> bool:
        return self.raw("HEAD") is not None or self.raw(segment_name(0)) is not None

    def load_signers(self) -> AllowedSigners | None:
        data = read_allowed_signers_bytes(self.remote)
        self._signers_digest = digest(data) if data is not None else ""
        self.signers = None if data is None else parse_allowed_signers(data)
        return self.signers

    # -- reading ------------------------------------------------------------------------------

    def read(self) -> RemoteState:
        """The remote's current state: from the cache (or a checkable checkpoint), plus newer segments,
        each checked against the one before it."""
        self.load_signers()
        state = self._from_cache()
        if state is None:
            state = self._anchor()
        return self.forward(state)

    def forward(self, state: RemoteState) -> RemoteState:
        """Apply every segment after ``state``, each checked against the one before it; cache the result."""
        while (found := self.segment(state.seq)) is not None:
            self.link(state, found[0])
            state.apply(found[0], found[1], self.signers)
            self._hashes[state.seq - 1] = found[1]
        self._save_cache(state)
        return state

    def link(self, state: RemoteState, segment: object) -> None:
        """Refuse a segment that does not name the segment before it (its hash) as ``prev``."""
        seq, url = state.seq, self.remote.url
        if isinstance(segment, dict) and "prev" in segment:
            expected = state.last if seq else None
            if segment["prev"] != expected:
                named = segment["prev"][:12] if isinstance(segment["prev"], str) else "nothing"
                raise RemoteHistoryError(
                    f"remote {url}: log segment {seq} does not follow segment {seq - 1} (it names {named}, segment "
                    f"{seq - 1} hashes to {(expected or 'none')[:12]}): the log was rewritten; refused, nothing "
                    "changed here (mvc remote verify lists what differs)")
            state.chained = True
        elif state.chained or self.remote.format_version() >= 3:
            raise RemoteHistoryError(
                f"remote {url}: log segment {seq} does not name the segment before it (written by hand, or by an "
                "mvc_magics older than the hash chain); refused, nothing changed here (upgrade every writer)")

    def check_cache(self) -> RemoteState | None:
        """The cached state if the remote still extends it (None: no cache); :class:`RemoteHistoryError`
        naming the first segment that differs otherwise."""
        data = self._load_cache()
        if data is None:
            return None
        state = RemoteState.from_json(data.get("state"))
        if state.seq == 0:
            return None
        hashes = {}
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            hashes = {int(k): str(v) for k, v in (data.get("hashes") or {}).items()}
        hashes[state.seq - 1] = state.last
        found = self.segment(state.seq - 1)
        if found is None or found[1] != state.last:
            first = self._first_difference(state.seq - 1, hashes)
            raise RemoteHistoryError(
                f"remote {self.remote.url}: its log does not extend what this store read: segment {first} differs "
                "(rewritten, or the remote was recreated); refused, nothing changed here. If the remote was "
                "recreated on purpose, remove the remote and add it again")
        self._hashes = hashes
        self._cached_signers = data.get("signers", "")
        return state

    def _from_cache(self) -> RemoteState | None:
        state = self.check_cache()
        if state is not None and self._cached_signers != self._signers_digest:
            return None  # the allowed signers changed: what counts is decided again, from an anchor
        return state

    def _first_difference(self, newest: int, hashes: dict[int, str]) -> int:
        first = newest
        for seq in range(newest, max(-1, newest - FORK_SCAN), -1):
            known = hashes.get(seq)
            if known is None:
                break
            found = self.segment(seq)
            if found is not None and found[1] == known:
                break
            first = seq
        return first

    def _anchor(self) -> RemoteState:
        """Where a reader without a cache starts: a checkpoint it can check, or segment 0."""
        if self.signers is None:
            checkpoint = self.head().get("checkpoint")
            if isinstance(checkpoint, int) and checkpoint > 0:
                state = self.checkpoint(f"checkpoint-{checkpoint:010d}.json", checkpoint)
                if state is not None:
                    return state
            return RemoteState()
        signed_names = [(name, seq) for name, seq in self.checkpoints() if name.count("-") == 2]
        for name, seq in signed_names[:CHECKPOINT_TRIES]:
            state = self.checkpoint(name, seq)
            if state is not None:
                return state
        return RemoteState()

    def checkpoints(self) -> list[tuple[str, int]]:
        """(file name, position) of the checkpoints in ``log/``, newest first (one listing)."""
        try:
            paths = self.remote.call("list checkpoints", self.remote.fs.glob, self._key("checkpoint-*.json"))
        except RemoteUnreachableError:
            raise
        except (FileNotFoundError, RemoteError):
            return []
        found = []
        for path in paths:
            match = _CHECKPOINT.match(str(path).rsplit("/", 1)[-1])
            if match:
                found.append((match.group(0), int(match.group(1))))
        return sorted(found, key=lambda item: (-item[1], item[0]))

    def checkpoint(self, name: str, seq: int, check_anchor: bool = True) -> RemoteState | None:
        """The state checkpoint ``name`` holds, if a reader may start from it (None otherwise).

        With allowed signers it must be signed by one of them, for this position and state; its ``last``
        must be the hash of segment ``seq - 1`` (with a valid signature, a mismatch means the log was
        rewritten after it was signed: :class:`RemoteHistoryError`).
        """
        state, who = self.read_checkpoint(name, seq)
        if state is None or (self.signers is not None and who is None):
            return None
        if check_anchor:
            anchor = self.segment(seq - 1)
            if anchor is None or anchor[1] != state.last:
                if who is None:
                    return None
                raise RemoteHistoryError(
                    f"remote {self.remote.url}: {who} signed checkpoint {seq}, but log segment {seq - 1} is no longer "
                    "the one it follows: the log was rewritten after it was signed; refused, nothing changed here")
        self._hashes[seq - 1] = state.last
        return state

    def read_checkpoint(self, name: str, seq: int) -> tuple[RemoteState | None, str | None]:
        """(its state, the allowed signer who signed it or None); (None, None) when malformed."""
        with contextlib.suppress(RemoteError):
            data = self.raw(name)
            body = json.loads(data) if data is not None else None
            if isinstance(body, dict) and body.get("seq") == seq and is_hash(body.get("last")):
                state = RemoteState.from_json(body.get("state"))
                if state.seq == seq and state.last == body["last"]:
                    who = None
                    if self.signers is not None:
                        who = self.signers.signer_of(
                            checkpoint_message(state.identity, seq, state.last, state.state_digest()),
                            body.get("signature"))
                    return state, who
        return None, None

    def head(self) -> dict:
        if self._hint is None:
            try:
                head = json.loads(self.raw("HEAD") or b"null")
            except ValueError:
                head = None
            self._hint = head if isinstance(head, dict) else {}
        return self._hint

    # -- appending ----------------------------------------------------------------------------

    def append(self, build: Callable[[RemoteState], dict | None], state: RemoteState | None = None) -> RemoteState:
        """Append the segment ``build(state)`` returns for the current state (None: nothing to write).

        ``build`` is called again with the newer state whenever another writer took the number first,
        so it must check its changes (tag moves) against the state it is given.
        """
        state = state if state is not None else self.read()
        for _ in range(APPEND_ATTEMPTS):
            if state.seq == 0:
                state.identity = state.identity or secrets.token_hex(32)  # tag signatures of segment 0 name it
            segment = build(state)
            if segment is None:
                return state
            segment = {**segment, "prev": state.last if state.seq else None,
                       **({"remote": state.identity} if state.seq == 0 else {})}
            data = (json.dumps(segment, sort_keys=True) + "\n").encode()
            if self.remote.create_exclusive(self._key(segment_name(state.seq)), data):
                self.link(state, segment)
                state.apply(segment, digest(data), self.signers)
                self._hashes[state.seq - 1] = digest(data)
                self._after_append(state)
                return state
            while (found := self.segment(state.seq)) is not None:  # someone else appended first: catch up
                self.link(state, found[0])
                state.apply(found[0], found[1], self.signers)
                self._hashes[state.seq - 1] = found[1]
        raise RemoteError(f"remote {self.remote.url}: too many concurrent pushes, try again")

    def _after_append(self, state: RemoteState) -> None:
        hint = self.head()
        # Values past the log's end are forged (a member's): they must not stop checkpoints or the hint.
        checkpoint = hint.get("checkpoint") if isinstance(hint.get("checkpoint"), int) else 0
        checkpoint = checkpoint if checkpoint <= state.seq else 0
        hint = hint if isinstance(hint.get("next"), int) and hint["next"] <= state.seq else {}
        if state.seq - checkpoint >= CHECKPOINT_EVERY:
            if self.signers is None:
                body = {"seq": state.seq, "last": state.last, "state": state.to_json()}
                if self.remote.create_exclusive(self._key(f"checkpoint-{state.seq:010d}.json"), canonical(body)):
                    checkpoint = state.seq
            elif self.signers.allows(self.signer):
                self.write_signed_checkpoint(state, self.signer)
                checkpoint = state.seq
        if int(hint.get("next", 0) or 0) < state.seq:
            # A hint: a lost race here leaves it a little behind, which only costs readers a probe.
            self._hint = {"next": state.seq, "checkpoint": checkpoint}
            self.remote.write_plain(self._key("HEAD"), json.dumps(self._hint).encode())
        self._save_cache(state)

    def write_signed_checkpoint(self, state: RemoteState, signer: Signer) -> str:
        """Store ``state`` (read and checked by this reader) as a checkpoint signed by ``signer``.

        The name has a random part: a member who creates the expected name first cannot block it.
        """
        body = {"seq": state.seq, "last": state.last, "state": state.to_json(),
                "signature": sign(signer, checkpoint_message(state.identity, state.seq, state.last,
                                                             state.state_digest()))}
        name = f"checkpoint-{state.seq:010d}-{secrets.token_hex(8)}.json"
        self.remote.create_exclusive(self._key(name), canonical(body))
        return name

    # -- the local cache ----------------------------------------------------------------------

    def _load_cache(self) -> dict | None:
        if self.cache is None:
            return None
        try:  # a file of the local store: no symlink, no FIFO, bounded (see safe_files)
            data = json.loads(SafeFiles(self.cache.parent.parent).read(self.cache, CAP_REMOTE_FILE) or b"null")
        except (OSError, ValueError, UnsafeFileError):
            return None
        # A cache of the format before the hash chain ("hashes" missing) is not used: read as a new reader.
        return data if isinstance(data, dict) and data.get("url") == self.remote.url and "hashes" in data else None

    def _save_cache(self, state: RemoteState) -> None:
        if self.cache is None:
            return
        hashes = {str(seq): h for seq, h in sorted(self._hashes.items())[-FORK_SCAN:]}
        with contextlib.suppress(OSError, UnsafeFileError):
            SafeFiles(self.cache.parent.parent).write(self.cache, json.dumps(
                {"url": self.remote.url, "signers": self._signers_digest, "state": state.to_json(),
                 "hashes": hashes}).encode())
