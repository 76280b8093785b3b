"""The store folder: its layout, format marker, lock, and the small mutable ref files.

::

    .mvc/
      FORMAT                    "mvc-store <version>": unknown versions are refused
      objects/<ab>/<id>.h5      immutable snapshot files
      refs/<model>/HEAD         the version the model variable is at
      refs/<model>/tags/<tag>   JSON {"id": ..., "protected": bool}
      notes/<id>/<n>.json       write-once notes: metrics attached to an existing version later
      signatures/<ab>/<id>.json write-once signatures of version ids (optional)
      removed/<ab>/<id>         tombstones: versions removed with Repo.remove (their file may stay
                                as a retired file holding tensors other versions still use)
      remotes.json              configured remotes (name -> URL; never credentials)
      index.sqlite              the index (a cache, rebuilt by reindex)
      audit.log                 hash-chained operation log
      lock, lock.owner          the store lock and who holds it (pid@host); lock.owner is removed
                                on release, so finding it on acquiring means the holder died
      tmp/                      temporaries of writes in flight
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import filelock

from ..core.names import is_valid_name, validate_name
from ..errors import LockTimeoutError, RemoteError, StoreError, StoreFormatError
from .atomic import atomic_write_bytes, clean_temporaries

STORE_FORMAT = "mvc-store"
STORE_VERSION = 1
LOCK_TIMEOUT_SECONDS = 120.0
LOCK_TIMEOUT_ENV = "MVC_LOCK_TIMEOUT"


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


def lock_timeout_from_env() -> float:
    """Seconds to wait for the store lock: ``$MVC_LOCK_TIMEOUT`` or 120."""
    try:
        return float(os.environ.get(LOCK_TIMEOUT_ENV, LOCK_TIMEOUT_SECONDS))
    except ValueError:
        return LOCK_TIMEOUT_SECONDS


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
        self.lock_timeout = lock_timeout_from_env()
        # Called (holding the lock) with the dead holder's "pid@host" when the previous holder died.
        self.on_stale_lock: Callable[[str], None] | None = None
        self._lock = filelock.FileLock(str(self.root / "lock"), timeout=self.lock_timeout)
        self._depth = 0
        self.readonly = False  # set by open(): the folder cannot be written

    # -- creation and format ----------------------------------------------------------------

    def open(self, create: bool = True) -> None:
        """Check the format marker, creating the store first when ``create`` and it is absent."""
        if not self.format_path.exists():
            if not create:
                raise StoreError(f"no mvc store at {self.root}")
            try:
                for folder in (self.root, self.objects, self.refs, self.notes, self.tmp):
                    folder.mkdir(parents=True, exist_ok=True)
                if not self.format_path.exists():
                    atomic_write_bytes(self.format_path, f"{STORE_FORMAT} {STORE_VERSION}\n".encode(), self.tmp)
            except OSError as exc:
                raise StoreError(f"cannot create a store at {self.root}: {exc.strerror or exc}") from exc
        try:
            text = self.format_path.read_text(encoding="utf-8").split()
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreFormatError(f"cannot read {self.format_path}: {exc}") from exc
        if len(text) != 2 or text[0] != STORE_FORMAT:
            raise StoreFormatError(f"{self.root} is not an mvc store (bad FORMAT file)")
        if text[1] != str(STORE_VERSION):
            raise StoreFormatError(
                f"store {self.root} has format version {text[1]}; this mvc_magics reads version "
                f"{STORE_VERSION} (upgrade mvc_magics)"
            )
        self.readonly = not os.access(self.root, os.W_OK)
        if self.readonly:
            return
        try:
            for folder in (self.objects, self.refs, self.notes, self.tmp):
                folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot open the store {self.root}: {exc.strerror or exc}") from exc

    # -- lock -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the store lock (an OS file lock: released by the kernel if the holder dies).

        ``lock.owner`` names the holder while it holds the lock and is removed on release, so
        finding it on acquiring means the previous holder was killed: :attr:`on_stale_lock` then
        repairs what it left half-done before anything else happens. A live holder is never broken:
        waiting longer than :attr:`lock_timeout` raises :class:`LockTimeoutError` naming it.
        """
        if self.readonly:
            raise StoreError(f"the store {self.root} is read-only (no write permission or a read-only "
                             "mount); nothing was changed")
        try:
            self._lock.acquire(timeout=self.lock_timeout if timeout is None else timeout)
        except filelock.Timeout as exc:
            holder = ""
            with contextlib.suppress(OSError, UnicodeDecodeError):
                holder = self.owner_path.read_text().strip()
            raise LockTimeoutError(
                f"the store {self.root} is locked by another process ({holder or 'unknown holder'}) "
                f"for more than {self.lock_timeout if timeout is None else timeout:g}s; it is still alive, "
                "so its lock is not broken"
            ) from exc
        except OSError as exc:
            raise StoreError(f"cannot lock the store {self.root}: {exc.strerror or exc}") from exc
        outermost = self._depth == 0
        self._depth += 1
        repaired = not outermost
        try:
            if outermost:
                self._take_over()
                repaired = True
            yield
        finally:
            self._depth -= 1
            if outermost and repaired:  # a failed repair leaves the marker: the next holder retries it
                with contextlib.suppress(OSError):
                    self.owner_path.unlink()
            self._lock.release()

    def recover_if_stale(self) -> None:
        """Run the stale-lock recovery now if the last holder died (a live holder is left alone)."""
        if self.readonly or not self.owner_path.exists():
            return
        with contextlib.suppress(LockTimeoutError):
            with self.locked(timeout=0):
                pass

    def _take_over(self) -> None:
        stale = None
        with contextlib.suppress(OSError, UnicodeDecodeError):
            stale = self.owner_path.read_text().strip() or "unknown"
        with contextlib.suppress(OSError):
            self.owner_path.write_text(f"{os.getpid()}@{socket.gethostname()} {time.time():.0f}\n")
        clean_temporaries(self.tmp)
        if stale is not None and self.on_stale_lock is not None:
            self.on_stale_lock(stale)

    # -- objects ----------------------------------------------------------------------------

    def snapshot_path(self, version_id: str) -> Path:
        return self.objects / version_id[:2] / f"{version_id}.h5"

    def snapshot_files(self, include_removed: bool = False) -> Iterator[tuple[str, Path]]:
        """(id, path) of every snapshot file present (files of removed versions only if asked)."""
        if not self.objects.is_dir():
            return
        for sub in sorted(self.objects.iterdir()):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for entry in sorted(sub.iterdir()):
                if entry.suffix == ".h5" and not entry.name.startswith("."):
                    if include_removed or not self.is_removed(entry.stem):
                        yield entry.stem, entry

    # -- removed versions (tombstones) ------------------------------------------------------

    def tombstone_path(self, version_id: str) -> Path:
        return self.removed / version_id[:2] / version_id

    def is_removed(self, version_id: str) -> bool:
        return self.tombstone_path(version_id).exists()

    def write_tombstone(self, version_id: str, record: dict) -> None:
        atomic_write_bytes(self.tombstone_path(version_id), json.dumps(record, sort_keys=True).encode(), self.tmp)

    def delete_tombstone(self, version_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.tombstone_path(version_id).unlink()

    def removed_ids(self) -> list[str]:
        if not self.removed.is_dir():
            return []
        return sorted(e.name for sub in self.removed.iterdir() if sub.is_dir() for e in sub.iterdir()
                      if not e.name.startswith("."))

    def delete_head(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.head_path(name).unlink()

    # -- refs -------------------------------------------------------------------------------

    def head_path(self, name: str) -> Path:
        return self.refs / validate_name(name, "model name") / "HEAD"

    def tag_path(self, name: str, tag: str) -> Path:
        return self.refs / validate_name(name, "model name") / "tags" / validate_name(tag, "tag")

    def read_head(self, name: str) -> str | None:
        """The version id in ``refs/<name>/HEAD``, if that file exists."""
        try:
            return self.head_path(name).read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def write_head(self, name: str, version_id: str) -> None:
        atomic_write_bytes(self.head_path(name), (version_id + "\n").encode(), self.tmp)

    def write_tag(self, name: str, tag: str, version_id: str, protected: bool = False) -> None:
        payload = json.dumps({"id": version_id, "protected": bool(protected)}) + "\n"
        atomic_write_bytes(self.tag_path(name, tag), payload.encode(), self.tmp)

    def delete_tag(self, name: str, tag: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.tag_path(name, tag).unlink()

    def read_refs(self) -> tuple[dict[str, str], list[tuple[str, str, str, bool]]]:
        """(heads: model -> id, tags: [(model, tag, id, protected)]) from the ref files."""
        heads: dict[str, str] = {}
        tags: list[tuple[str, str, str, bool]] = []
        if not self.refs.is_dir():
            return heads, tags
        for model_dir in sorted(self.refs.iterdir()):
            if not is_valid_name(model_dir.name) or model_dir.is_symlink():
                continue  # names come from an untrusted folder: skip what a user could not create
            head = model_dir / "HEAD"
            with contextlib.suppress(OSError, UnicodeDecodeError):
                heads[model_dir.name] = head.read_text().strip()
            tag_dir = model_dir / "tags"
            if tag_dir.is_dir():
                for tag_file in sorted(tag_dir.iterdir()):
                    if not is_valid_name(tag_file.name) or tag_file.is_symlink():
                        continue
                    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                        data = json.loads(tag_file.read_text())
                        tags.append((model_dir.name, tag_file.name, str(data["id"]), bool(data.get("protected"))))
        return heads, tags

    # -- remotes ----------------------------------------------------------------------------

    def read_remotes(self) -> dict[str, str]:
        """Configured remotes from ``remotes.json``, name -> URL."""
        if not self.remotes_path.exists():
            return {}
        try:
            data = json.loads(self.remotes_path.read_text(encoding="utf-8"))
            return {str(k): str(v["url"]) for k, v in data.get("remotes", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RemoteError(f"cannot read {self.remotes_path}: {exc}") from exc

    def write_remotes(self, remotes: dict[str, str]) -> None:
        payload = {"remotes": {name: {"url": url} for name, url in sorted(remotes.items())}}
        atomic_write_bytes(self.remotes_path, (json.dumps(payload, indent=2) + "\n").encode(), self.tmp)

    # -- notes ------------------------------------------------------------------------------

    def write_note(self, version_id: str, note: dict) -> None:
        folder = self.notes / version_id[:2] / version_id
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        atomic_write_bytes(folder / name, json.dumps(note, sort_keys=True).encode(), self.tmp)

    def read_notes(self) -> Iterator[tuple[str, dict]]:
        """(version id, note) of every note, oldest first per version."""
        if not self.notes.is_dir():
            return
        for sub in sorted(self.notes.iterdir()):
            if not sub.is_dir():
                continue
            for version_dir in sorted(sub.iterdir()):
                for note_file in sorted(version_dir.glob("*.json")):
                    with contextlib.suppress(OSError, ValueError):
                        note = json.loads(note_file.read_text())
                        if isinstance(note, dict):
                            yield version_dir.name, note
