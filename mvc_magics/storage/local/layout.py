"""The store folder: its layout, format marker, lock, and the small mutable ref files.

::

    .mvc/
      FORMAT                    "mvc-store <version>": unknown versions are refused
      objects/<ab>/<id>.h5      immutable snapshot files
      refs/<model>/HEAD         the version the model variable is at
      refs/<model>/tags/<tag>   JSON {"id": ..., "protected": bool}
      notes/<id>/<n>.json       write-once notes: metrics attached to a version later, histories it joined
      signatures/<ab>/<id>.json write-once signatures of version ids (optional; <id>.<key>.json: another key's)
      removed/<ab>/<id>         tombstones: versions removed with Repo.remove (their file may stay
                                as a retired file holding tensors other versions still use)
      remotes.json              configured remotes (name -> URL; never credentials)
      index.sqlite              the index (a cache, rebuilt by reindex)
      audit.log                 hash-chained operation log
      lock, lock.owner          the store lock and who holds it (pid@host); lock.owner is removed
                                on release, so finding it on acquiring means the holder died
      journal.json              the ref change or gc in flight (see :mod:`.journal`)
      tmp/                      temporaries of writes in flight

Every fixed-name file is opened through :class:`.safe_files.SafeFiles` (no symlinks, regular files
only, bounded reads).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from ...core.names import head_key, head_owner, is_valid_name, validate_name
from ...errors import LockTimeoutError, RemoteError, StoreError, StoreFormatError, UnsafeFileError
from ..files.atomic import clean_temporaries
from ..files.safe_files import (
    CAP_FORMAT,
    CAP_NOTE,
    CAP_OWNER,
    CAP_REF,
    CAP_REMOTES,
    CAP_TOMBSTONE,
    ExclusiveFileLock,
    SafeFiles,
)
from .lock_owner import STALE_LOCK_WAIT, holder_gone, lock_timeout_from_env, looks_like_owner

_log = logging.getLogger(__name__)

STORE_FORMAT = "mvc-store"
STORE_VERSION = 1


DEFAULT_DIRNAME = ".mvc"


def default_store_path(notebook_path: str | os.PathLike | None = None) -> Path:
    """Where the store lives: ``$MVC_DIR``, else ``.mvc`` beside the notebook, else in the cwd."""
    env = os.environ.get("MVC_DIR")
    if env:
        return Path(env).expanduser()
    notebook = notebook_path or os.environ.get("JPY_SESSION_NAME")
    if notebook:
        folder = Path(notebook).expanduser().parent
        if folder.is_dir():
            return folder / DEFAULT_DIRNAME
    return Path.cwd() / DEFAULT_DIRNAME


class StoreLayout:
    """Paths inside a store folder, plus its lock and ref/note files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.refs = self.root / "refs"
        self.notes = self.root / "notes"
        self.removed = self.root / "removed"
        self.remotes_path = self.root / "remotes.json"
        self.tmp = self.root / "tmp"
        self.index_path = self.root / "index.sqlite"
        self.audit_path = self.root / "audit.log"
        self.format_path = self.root / "FORMAT"
        self.signatures = self.root / "signatures"
        self.owner_path = self.root / "lock.owner"
        self.lock_path = self.root / "lock"
        self.journal_path = self.root / "journal.json"
        self.files = SafeFiles(self.root)
        self.lock_timeout = lock_timeout_from_env()
        # Called (holding the lock) with the dead holder's "pid@host" when the previous holder died.
        self.on_stale_lock: Callable[[str], None] | None = None
        self._flock = ExclusiveFileLock(self.files, self.lock_path)
        self._thread_lock = threading.RLock()  # threads of one process take turns; the flock is per process
        self._depth, self._pid = 0, os.getpid()  # the process they belong to (a forked child starts afresh)
        self.readonly = False  # set by open(): this process may not write the store (see writable())
        self.readonly_reason = ""

    # -- creation and format ----------------------------------------------------------------

    def open(self, create: bool = True) -> None:
        """Check the format marker, creating the store first when ``create`` and it is absent."""
        if not self.files.exists(self.format_path):
            if not create:
                raise StoreError(f"no mvc store at {self.root}")
            try:
                for folder in (self.root, self.objects, self.refs, self.notes, self.tmp):
                    folder.mkdir(parents=True, exist_ok=True)
                self.files.write(self.format_path, f"{STORE_FORMAT} {STORE_VERSION}\n".encode(), exclusive=True)
            except OSError as exc:
                raise StoreError(f"cannot create a store at {self.root}: {exc.strerror or exc}") from exc
        try:
            text = (self.files.read_text(self.format_path, CAP_FORMAT) or "").split()
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreFormatError(f"cannot read {self.format_path}: {exc}") from exc
        if len(text) != 2 or text[0] != STORE_FORMAT:
            raise StoreFormatError(f"{self.root} is not an mvc store (bad FORMAT file)")
        if text[1] != str(STORE_VERSION):
            raise StoreFormatError(
                f"store {self.root} has format version {text[1]}; this mvc_magics reads version "
                f"{STORE_VERSION} (upgrade mvc_magics)"
            )
        self.readonly = not self.writable()
        if self.readonly:
            return
        clean_temporaries(self.tmp)  # of dead processes only (a killed pull, a holder killed mid-write)
        try:
            for folder in (self.objects, self.refs, self.notes, self.tmp):
                folder.mkdir(exist_ok=True)
                if folder.is_symlink():  # files written there (HDF5 temporaries) would land elsewhere
                    raise UnsafeFileError(f"refusing {folder}: it is a symbolic link (store folders must be "
                                          "real folders inside the store)")
        except OSError as exc:
            raise StoreError(f"cannot open the store {self.root}: {exc.strerror or exc}") from exc

    def writable(self) -> bool:
        """True when this process may write every file a write touches (checked per file: in a
        shared folder the folder can be group-writable while the index or audit log is not)."""
        self.readonly_reason = ""
        for path in (self.root, self.index_path, Path(f"{self.index_path}-wal"), Path(f"{self.index_path}-shm"),
                     self.audit_path, self.lock_path, self.objects, self.refs, self.notes, self.tmp):
            if os.path.lexists(path) and not os.access(path, os.W_OK, follow_symlinks=False):
                self.readonly_reason = f"no write permission on {path}, or a read-only mount"
                return False
        return True

    # -- lock -------------------------------------------------------------------------------

    def lock_holder(self) -> str | None:
        """Who holds (or last held, if it died) the lock: the ``lock.owner`` text, or None."""
        with contextlib.suppress(OSError, UnicodeDecodeError, UnsafeFileError):
            text = self.files.read_text(self.owner_path, CAP_OWNER)
            return None if text is None else (text.strip() or "unknown")
        return None

    @contextlib.contextmanager
    def locked(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the store lock (an OS file lock: released by the kernel if the holder dies).

        ``lock.owner`` names the holder while it holds the lock and is removed on release, so
        finding it on acquiring means the previous holder was killed: :attr:`on_stale_lock` then
        repairs what it left half-done before anything else happens. A live holder is never broken:
        waiting longer than :attr:`lock_timeout` raises :class:`LockTimeoutError` naming it.
        """
        if self.readonly:
            raise StoreError(f"the store {self.root} is read-only for this process ({self.readonly_reason}); "
                             "nothing was changed")
        wait = self.lock_timeout if timeout is None else timeout
        started = time.monotonic()
        if self._pid != os.getpid():  # a forked child: what its parent's threads held is not its own
            self._thread_lock, self._depth, self._pid = threading.RLock(), 0, os.getpid()
        pid = self._pid
        if not self._thread_lock.acquire(timeout=max(wait, 0.0) if wait >= 0 else -1):
            raise LockTimeoutError(f"the store {self.root} is locked by another thread of this process for "
                                   f"more than {wait:g}s")
        outermost = self._depth == 0
        try:
            if outermost:
                self._flock.acquire(max(0.0, wait - (time.monotonic() - started)))
        except TimeoutError as exc:
            self._thread_lock.release()
            holder = self.lock_holder()
            # The lock is the kernel's: whoever holds it is alive, though not always the process
            # lock.owner names (a child it started, if that process died).
            alive = ("a process it started still holds the lock" if holder_gone(holder)
                     else "it is still alive")
            raise LockTimeoutError(
                f"the store {self.root} is locked by another process ({holder or 'unknown holder'}) "
                f"for more than {wait:g}s; {alive}, "
                "so its lock is not broken"
            ) from exc
        except OSError as exc:
            self._thread_lock.release()
            raise StoreError(f"cannot lock the store {self.root}: {exc.strerror or exc}") from exc
        except BaseException:
            self._thread_lock.release()
            raise
        self._depth += 1
        repaired = not outermost
        try:
            if outermost:
                self._take_over()
                repaired = True
            yield
        finally:
            if os.getpid() == pid:  # else a forked child leaves its parent's block: nothing here is its own
                self._depth -= 1
                if outermost and repaired:  # a failed repair leaves the marker: the next holder retries it
                    with contextlib.suppress(OSError, UnsafeFileError):
                        self.files.unlink(self.owner_path)
                if outermost:
                    self._flock.release()
                self._thread_lock.release()

    def recover_if_stale(self) -> None:
        """Run the stale-lock recovery now if the last holder died (a live holder is left alone).

        A holder killed while starting a program (``git``, for a commit's provenance) leaves its
        lock held for a moment by the forked child (see :mod:`.lock_owner`): when ``lock.owner``
        names a process gone from this host, the lock is waited for up to ``STALE_LOCK_WAIT`` s.
        """
        if self.readonly or not (self.files.exists(self.owner_path) or self.files.exists(self.journal_path)):
            return
        wait = STALE_LOCK_WAIT if holder_gone(self.lock_holder()) else 0.0
        with contextlib.suppress(LockTimeoutError):
            with self.locked(timeout=wait):
                pass

    def _take_over(self) -> None:
        stale = None
        if self.files.exists(self.owner_path):
            # Only our own format is repeated into the audit log: a planted file's content never is.
            text = self.lock_holder() or ""
            stale = text if looks_like_owner(text) else "unknown (lock.owner unreadable or not a holder record)"
        elif self.files.exists(self.journal_path):  # a holder died (its lock.owner lost with a power cut)
            stale = "unknown (a journal was left and lock.owner is missing)"
        # Renamed over whatever is there: a planted symlink or FIFO is replaced, never followed.
        with contextlib.suppress(OSError):  # a full disk must not stop the operation that frees space
            self.files.write(self.owner_path, f"{os.getpid()}@{socket.gethostname()} {time.time():.0f}\n".encode(),
                             durable=False)  # the lock itself is what excludes; this only names the holder
        clean_temporaries(self.tmp)
        if stale is not None and self.on_stale_lock is not None:
            self.on_stale_lock(stale)

    # -- objects ----------------------------------------------------------------------------

    def snapshot_path(self, version_id: str) -> Path:
        return self.objects / version_id[:2] / f"{version_id}.h5"

    def snapshot_files(self, include_removed: bool = False) -> Iterator[tuple[str, Path]]:
        """(id, path) of every snapshot file present (files of removed versions only if asked)."""
        for sub in self.files.list(self.objects):
            if len(sub) != 2:
                continue
            for name in self.files.list(self.objects / sub):
                if name.endswith(".h5") and not name.startswith("."):
                    vid = name[:-3]
                    if include_removed or not self.is_removed(vid):
                        yield vid, self.objects / sub / name

    # -- removed versions (tombstones) ------------------------------------------------------

    def tombstone_path(self, version_id: str) -> Path:
        return self.removed / version_id[:2] / version_id

    def is_removed(self, version_id: str) -> bool:
        return self.files.exists(self.tombstone_path(version_id))

    def read_tombstone(self, version_id: str) -> dict | None:
        data = self.files.read(self.tombstone_path(version_id), CAP_TOMBSTONE)
        return None if data is None else json.loads(data)

    def write_tombstone(self, version_id: str, record: dict) -> None:
        self.files.write(self.tombstone_path(version_id), json.dumps(record, sort_keys=True).encode())

    def delete_tombstone(self, version_id: str) -> None:
        self.files.unlink(self.tombstone_path(version_id))

    def removed_ids(self) -> list[str]:
        return sorted(vid for sub in self.files.list(self.removed) for vid in self.files.list(self.removed / sub)
                      if not vid.startswith("."))

    def delete_head(self, name: str) -> None:
        self.files.unlink(self.head_path(name))

    # -- refs -------------------------------------------------------------------------------

    def head_path(self, name: str) -> Path:
        """``refs/<model>/HEAD`` (shared), or ``refs/<model>/heads/<notebook>`` for a key ``model:notebook``."""
        model, workspace = head_owner(name)
        folder = self.refs / validate_name(model, "model name")
        return folder / "heads" / validate_name(workspace, "notebook") if workspace else folder / "HEAD"

    def tag_path(self, name: str, tag: str) -> Path:
        return self.refs / validate_name(name, "model name") / "tags" / validate_name(tag, "tag")

    def read_head(self, name: str) -> str | None:
        """The version id in ``refs/<name>/HEAD``, if that file exists."""
        try:
            return (self.files.read_text(self.head_path(name), CAP_REF) or "").strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def write_head(self, name: str, version_id: str) -> None:
        self.files.write(self.head_path(name), (version_id + "\n").encode())

    def read_tag(self, name: str, tag: str) -> tuple[str, bool] | None:
        """(id, protected) in the tag file, None when absent or malformed."""
        try:
            data = json.loads(self.files.read(self.tag_path(name, tag), CAP_REF) or b"null")
            return (str(data["id"]), bool(data.get("protected"))) if data is not None else None
        except (ValueError, KeyError, TypeError):
            return None

    def write_tag(self, name: str, tag: str, version_id: str, protected: bool = False) -> None:
        payload = json.dumps({"id": version_id, "protected": bool(protected)}) + "\n"
        self.files.write(self.tag_path(name, tag), payload.encode())

    def delete_tag(self, name: str, tag: str) -> None:
        self.files.unlink(self.tag_path(name, tag))

    def read_refs(self) -> tuple[dict[str, str], list[tuple[str, str, str, bool]]]:
        """(heads: model -> id, tags: [(model, tag, id, protected)]) from the ref files."""
        heads: dict[str, str] = {}
        tags: list[tuple[str, str, str, bool]] = []
        for model in self.files.list(self.refs):
            if not is_valid_name(model):
                continue  # names come from an untrusted folder: skip what a user could not create
            with _skipping(self.refs / model / "HEAD"):
                head = self.files.read_text(self.refs / model / "HEAD", CAP_REF)
                if head is not None:
                    heads[model] = head.strip()
            for workspace in self.files.list(self.refs / model / "heads"):  # one HEAD per notebook
                with _skipping(self.refs / model / "heads" / workspace):
                    head = self.files.read_text(self.refs / model / "heads" / workspace, CAP_REF)
                    if head is not None and is_valid_name(workspace):
                        heads[head_key(model, workspace)] = head.strip()
            for tag in self.files.list(self.refs / model / "tags"):
                if not is_valid_name(tag):
                    continue
                with _skipping(self.refs / model / "tags" / tag):
                    data = json.loads(self.files.read(self.refs / model / "tags" / tag, CAP_REF) or b"null")
                    if data is not None:
                        tags.append((model, tag, str(data["id"]), bool(data.get("protected"))))
        return heads, tags

    # -- remotes ----------------------------------------------------------------------------

    def read_remotes(self) -> dict[str, str]:
        """Configured remotes from ``remotes.json``, name -> URL."""
        try:
            raw = self.files.read(self.remotes_path, CAP_REMOTES)
            if raw is None:
                return {}
            data = json.loads(raw.decode("utf-8"))
            return {str(k): str(v["url"]) for k, v in data.get("remotes", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, UnsafeFileError) as exc:
            raise RemoteError(f"cannot read {self.remotes_path}: {exc}") from exc

    def write_remotes(self, remotes: dict[str, str]) -> None:
        payload = {"remotes": {name: {"url": url} for name, url in sorted(remotes.items())}}
        self.files.write(self.remotes_path, (json.dumps(payload, indent=2) + "\n").encode())

    # -- notes ------------------------------------------------------------------------------

    def write_note(self, version_id: str, note: dict) -> None:
        folder = self.notes / version_id[:2] / version_id
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        self.files.write(folder / name, json.dumps(note, sort_keys=True).encode())

    def read_notes(self, version_id: str | None = None) -> Iterator[tuple[str, dict]]:
        """(version id, note) of every note (of ``version_id`` only, when given), oldest first per version."""
        for sub in self.files.list(self.notes) if version_id is None else [version_id[:2]]:
            for vid in self.files.list(self.notes / sub) if version_id is None else [version_id]:
                for name in self.files.list(self.notes / sub / vid):
                    if not name.endswith(".json") or name.startswith("."):
                        continue
                    note = None
                    with _skipping(self.notes / sub / vid / name):
                        note = json.loads(self.files.read(self.notes / sub / vid / name, CAP_NOTE) or b"null")
                    if isinstance(note, dict):
                        yield vid, note


@contextlib.contextmanager
def _skipping(path: Path) -> Iterator[None]:
    """Scans (reindex, recovery) skip a malformed or hostile ref/note file instead of failing on it."""
    try:
        yield
    except UnsafeFileError as exc:
        _log.warning("%s", exc)
    except (OSError, ValueError, KeyError, TypeError):
        pass
