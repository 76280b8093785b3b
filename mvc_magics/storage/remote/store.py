"""A remote store on any fsspec URL: immutable objects, write-once notes, conditionally written tags.

::

    <url>/
      FORMAT                         "mvc-remote 3" (2: the log's first segments are not chained; 1:
                                     no log/, read by listing and upgraded by the first push)
      log/                           what the remote holds and its tags (storage/remote/log.py)
      objects/<ab>/<id>.h5           snapshot files, byte-identical to the local store's: the versions
      objects/<ab>/<id>.retired.h5   retired files: tensors of a version removed somewhere that other
                                     versions still use (never shown as a version)
      notes/<ab>/<id>/<n>.json       write-once notes (metrics attached later)
      tmp/                           uploads in flight (only on backends without atomic PUT)

Object keys are content ids, so an object present under its final key is the complete, immutable
file: on object stores (S3, GCS, Azure) a PUT, including a multipart upload, becomes visible only
when complete, so objects are uploaded directly to their final key; elsewhere (local folders,
mounted file systems, HDFS) they are uploaded to ``tmp/`` and renamed into place.
Credentials are never handled here: fsspec and the cloud SDKs read them from the environment and
their own configuration files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from ...core.hashing import HASH_HEX_LENGTH
from ...core.names import validate_name
from ...errors import InvalidRemoteError, RemoteError, RemotePermissionError, StoreFormatError
from . import guard
from .clients import s3_filesystem, sent_requests, storage_options
from .failures import remote_failure
from .log import RemoteLog, RemoteState

REMOTE_FORMAT = "mvc-remote"
# 3: a hash chain from segment 0; 2: chained from where it starts (read, appended to); 1: no log (listed).
REMOTE_VERSION = 3
READABLE_VERSIONS = ("1", "2", "3")
# Backends where a PUT is atomic: the object appears under its key only once fully uploaded.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})
# Backends that can create a file only if it is absent, atomically (what appending to the log needs).
EXCLUSIVE_CREATE_PROTOCOLS = frozenset({"s3", "s3a", "file", "local", "memory"})
# Part size of multipart uploads to S3 (5 MiB is S3's minimum).
UPLOAD_PART_BYTES = 8 << 20
# An upload temporary older than this belongs to a push that was killed.
STALE_UPLOAD_SECONDS = 3600.0
_ID_FILE = re.compile(rf"^([0-9a-f]{{{HASH_HEX_LENGTH}}})(\.retired)?\.h5$")


def check_url(url: str) -> str:
    """Return ``url`` if it is a usable remote URL without credentials in it."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidRemoteError("a remote URL must be a non-empty string")
    url = url.strip()
    parts = urlsplit(url)
    if parts.username or parts.password or "@" in parts.netloc:
        raise InvalidRemoteError(
            "remote URLs must not contain credentials (user:password@); set them in the environment "
            "or the fsspec/cloud SDK configuration instead"
        )
    if parts.query or parts.fragment:
        raise InvalidRemoteError("remote URLs must not have a query string or fragment (they may carry secrets)")
    if not parts.scheme and not url.startswith("/"):
        url = Path(url).expanduser().resolve().as_uri()  # a relative folder
    return url


class RemoteStore:
    """The objects, notes and tags of one remote URL, through fsspec."""

    def __init__(self, url: str) -> None:
        self.url = check_url(url)
        self.version: int | None = None  # the remote's format version, once read
        scheme = urlsplit(self.url).scheme
        try:
            import fsspec

            if scheme in ("s3", "s3a"):
                self.fs, self.root = s3_filesystem(fsspec, self.url)
            else:  # local folders and the rest: cheap to make, and fresh (nothing cached from before)
                self.fs, self.root = fsspec.url_to_fs(self.url, skip_instance_cache=True,
                                                      **storage_options(scheme))
        except (ImportError, ValueError) as exc:
            raise RemoteError(f"cannot use remote {self.url}: {exc} (pip install \"mvc_magics[remote]\" "
                              "for S3; other stores need their fsspec package, e.g. gcsfs)") from exc
        self.root = self.root.rstrip("/")
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.protocol = protocol
        self.atomic_put = protocol in ATOMIC_PUT_PROTOCOLS
        self.local = protocol in ("file", "local")
        self._sent_before = sent_requests(self.fs)

    @property
    def requests(self) -> int:
        """HTTP requests sent since this object was made (S3 only): pushes and pulls report them.

        The S3 client is shared by every ``RemoteStore`` of the same endpoint and credentials in this
        process, so requests another one sends at the same time are counted too.
        """
        return sent_requests(self.fs) - self._sent_before

    def key(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    _key = key

    def object_key(self, version_id: str, retired: bool = False) -> str:
        return self._key("objects", version_id[:2], f"{version_id}{'.retired' if retired else ''}.h5")

    def call(self, what: str, func: Callable, *args, **kwargs):
        """``func(*args, **kwargs)``, its backend's failures as one-line :class:`RemoteError` (a server
        that cannot be reached: :class:`RemoteUnreachableError`); a missing file stays
        ``FileNotFoundError``."""
        try:
            return func(*args, **kwargs)
        except FileNotFoundError:
            raise
        except PermissionError as exc:
            raise RemotePermissionError(f"permission denied: remote {self.url} does not let these credentials "
                                        f"{what}") from exc
        except Exception as exc:  # OS errors and the SDKs' own (botocore's are not OSErrors): one line
            failure = remote_failure(self.url, what, exc, self.fs)
            if failure is None:
                raise
            raise failure from exc

    _call = call

    def format_version(self) -> int:
        """The remote's format version (read by :meth:`check_format`)."""
        if self.version is None:
            self.check_format()
        return self.version or REMOTE_VERSION

    def upgrade_format(self) -> None:
        """Mark a version 1 remote as the current version (done once its listing was written to the log)."""
        self.write_plain(self._key("FORMAT"), f"{REMOTE_FORMAT} {REMOTE_VERSION}\n".encode())
        self.version = REMOTE_VERSION

    def check_format(self, create: bool = False) -> bool:
        """True when the remote holds an mvc remote; create the marker when ``create``."""
        key = self._key("FORMAT")
        try:
            text = self.read_bytes(key).decode("utf-8", "replace").split()
        except FileNotFoundError:
            if not create:
                return False
            self._call("create the remote", self._makedirs, self.root)
            self._call("create the remote", self._write_exclusive, key, f"{REMOTE_FORMAT} {REMOTE_VERSION}\n".encode())
            self.version = REMOTE_VERSION
            return True
        if len(text) != 2 or text[0] != REMOTE_FORMAT:
            raise StoreFormatError(f"{self.url} is not an mvc remote (bad FORMAT file)")
        if text[1] not in READABLE_VERSIONS:
            raise StoreFormatError(f"remote {self.url} has format version {text[1]}; this mvc_magics "
                                   f"reads version {REMOTE_VERSION} (upgrade mvc_magics)")
        self.version = int(text[1])
        return True

    def _makedirs(self, path: str) -> None:
        if self.local:
            guard.confine(self.root, path.rstrip("/") + "/x")  # the folder must resolve inside the root
            self.fs.makedirs(path, exist_ok=True)

    # -- objects ----------------------------------------------------------------------------

    def state(self, cache: Path | None = None) -> RemoteState:
        """What the remote holds (:class:`RemoteState`): from its log, or by listing a version 1 remote."""
        log = RemoteLog(self, cache)
        if self.format_version() >= 2 or log.exists():
            return log.read()
        return self.listed_state()

    def listed_state(self) -> RemoteState:
        """The state of a remote without a log (format version 1), by listing every file: slow."""
        state = RemoteState(objects=self.list_objects(), retired=self.list_objects(retired=True),
                            tags=self.list_tags())
        state.notes = {vid: sorted(names) for vid, names in self.list_notes().items()}
        return state

    def objects(self, retired: bool = False) -> dict[str, int]:
        """Id -> size of every version object (or, with ``retired``, retired object) the remote holds."""
        state = self.state()
        return dict(state.retired if retired else state.objects)

    def tags(self) -> dict[tuple[str, str], tuple[str, bool]]:
        """(model, tag) -> (version id, protected) of every tag on the remote."""
        return dict(self.state().tags)

    def exists(self, key: str) -> bool:
        if self.protocol in ("s3", "s3a"):  # one HEAD (s3fs's exists also lists the prefix on a miss)
            try:
                self._call(f"look up {key}", self.fs.call_s3, "head_object", **dict(zip(
                    ("Bucket", "Key"), self.fs.split_path(key)[:2], strict=True)))
            except FileNotFoundError:
                return False
            return True
        return bool(self._call(f"look up {key}", self.fs.exists, key))

    def list_objects(self, retired: bool = False) -> dict[str, int]:
        """Id -> size in bytes of every snapshot file (or, with ``retired``, retired file) on the remote."""
        try:
            found = self._call("list objects", self.fs.find, self._key("objects"), detail=True)
        except FileNotFoundError:
            return {}
        result = {}
        for path, info in found.items():
            match = _ID_FILE.match(path.rsplit("/", 1)[-1])
            if match and bool(match.group(2)) == retired:
                result[match.group(1)] = int(info.get("size") or 0)
        return result

    def put_object(self, local: Path, version_id: str, retired: bool = False) -> None:
        """Upload a snapshot (or retired) file so that its final key only ever holds the complete file."""
        final = self.object_key(version_id, retired)
        if self.atomic_put:
            # Parts one at a time per object (push runs objects in parallel): memory stays a part per upload.
            self._call(f"upload {version_id[:12]}", self.fs.put_file, str(local), final,
                       **({"chunksize": UPLOAD_PART_BYTES, "max_concurrency": 1} if self.protocol in ("s3", "s3a")
                          else {}))
            return
        tmp = self._key("tmp", f"{version_id}-{uuid.uuid4().hex}.h5")
        self._call("create folders", self._makedirs, self._key("tmp"))
        self._call("create folders", self._makedirs, final.rsplit("/", 1)[0])
        try:
            self._call(f"upload {version_id[:12]}", self.fs.put_file, str(local), tmp)
            if self.local:
                guard.confine(self.root, final)
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, final)  # atomic on one file system
            else:
                self._call(f"move {version_id[:12]} into place", self.fs.mv, tmp, final)
        finally:
            with contextlib.suppress(Exception):
                if self.fs.exists(tmp):
                    self.fs.rm_file(tmp)

    def clean_stale_uploads(self, older_than: float = STALE_UPLOAD_SECONDS) -> int:
        """Delete temporaries in ``tmp/`` left by uploads killed more than ``older_than`` seconds ago."""
        if self.atomic_put:
            return 0
        try:
            found = self.fs.find(self._key("tmp"), detail=True)
        except (FileNotFoundError, OSError):
            return 0
        removed = 0
        now = time.time()
        for path, info in found.items():
            mtime = info.get("mtime") or info.get("created")
            if isinstance(mtime, int | float) and now - mtime > older_than:
                with contextlib.suppress(OSError):
                    self.fs.rm_file(path)
                    removed += 1
        return removed

    def get_object(self, version_id: str, local: Path, retired: bool = False, size: int | None = None) -> None:
        """Download one object to ``local``: never more than its listed ``size`` or the free space."""
        key, what = self.object_key(version_id, retired), f"remote object {version_id[:12]}"
        limit = guard.object_limit(Path(local).parent, size)
        if self.protocol in ("s3", "s3a"):
            self._call(f"download {version_id[:12]}", guard.s3_download, self.fs, key, Path(local), limit, what)
            return
        opener = (lambda: guard.open_local(self.root, key)) if self.local else (lambda: self.fs.open(key, "rb"))
        with self._call(f"download {version_id[:12]}", opener) as source:
            guard.check_size(getattr(source, "size", None), limit, what)
            self._call(f"download {version_id[:12]}", guard.copy_bounded, source, Path(local), limit, what)

    # -- notes ------------------------------------------------------------------------------

    def note_key(self, version_id: str, filename: str) -> str:
        return self._key("notes", version_id[:2], version_id, filename)

    def list_notes(self) -> dict[str, dict[str, str]]:
        """Version id -> {note file name: key} of every note on the remote."""
        try:
            paths = self._call("list notes", self.fs.find, self._key("notes"))
        except FileNotFoundError:
            return {}
        result: dict[str, dict[str, str]] = {}
        for path in paths:
            parts = path[len(self.root) + 1:].split("/")
            if len(parts) == 4 and parts[3].endswith(".json") and not parts[3].startswith("."):
                result.setdefault(parts[2], {})[parts[3]] = path
        return result

    def put_note(self, version_id: str, filename: str, data: bytes) -> None:
        key = self._key("notes", version_id[:2], version_id, filename)
        self._call("create folders", self._makedirs, key.rsplit("/", 1)[0])
        self._call(f"write a note of {version_id[:12]}", self._write_exclusive, key, data)

    def read_bytes(self, key: str, cap: int = guard.CAP_REMOTE_FILE) -> bytes:
        """A small file (FORMAT, tag, note, log segment), refused past ``cap`` bytes or, in a folder
        remote, when it is not a regular file inside the root (a FIFO, ``/dev/zero``)."""
        if self.local:
            return self._call(f"read {key}", guard.read_local, self.root, key, cap)
        if self.protocol in ("s3", "s3a"):
            return self._call(f"read {key}", guard.s3_get, self.fs, key, cap)
        guard.check_size(self._call(f"read {key}", self.fs.size, key), cap, key)
        return self._call(f"read {key}", self.fs.cat_file, key)

    def list_tags(self) -> dict[tuple[str, str], tuple[str, bool]]:
        """(model, tag) -> (version id, protected) of the tag files of a version 1 remote."""
        try:
            paths = self._call("list tags", self.fs.find, self._key("refs"))
        except FileNotFoundError:
            return {}
        found = {}
        for path in paths:
            parts = path[len(self.root) + 1:].split("/")
            if len(parts) != 4 or parts[0] != "refs" or parts[2] != "tags":
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError, RemoteError, FileNotFoundError):
                model, tag = validate_name(parts[1], "model name"), validate_name(parts[3], "tag")
                data = json.loads(self.read_bytes(path))
                vid = str(data["id"])
                if len(vid) == HASH_HEX_LENGTH:
                    found[(model, tag)] = (vid, bool(data.get("protected")))
        return found

    # -- write primitives -------------------------------------------------------------------

    def _write_local(self, key: str, data: bytes) -> None:
        tmp = f"{guard.confine(self.root, key)}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, key)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent, atomically; False when it exists. Backends that cannot do that
        are refused: two writers could both believe they created it (a lost tag move)."""
        self.require_exclusive_create()
        return self._call(f"write {key.rsplit('/', 1)[-1]}", self._write_exclusive, key, data)

    def require_exclusive_create(self) -> None:
        """Refuse (one line) a backend that cannot create a file only if absent: pushes need it."""
        if self.protocol not in EXCLUSIVE_CREATE_PROTOCOLS:
            raise RemoteError(
                f"remote {self.url}: {self.protocol}:// cannot create a file only if it is absent (atomically), "
                "which writing versions and tags to a shared remote relies on; use S3, a folder, or a store "
                "with conditional writes (docs/remotes.md)")

    def write_plain(self, key: str, data: bytes) -> None:
        """Overwrite ``key`` (only for hints and markers that readers check)."""
        if self.local:
            self._makedirs(key.rsplit("/", 1)[0])
            self._write_local(key, data)
            return
        self._call(f"write {key.rsplit('/', 1)[-1]}", self.fs.pipe_file, key, data)

    def _write_exclusive(self, key: str, data: bytes, raise_on_exists: bool = False) -> bool:
        """Create ``key`` only if absent; False (or an error) when it already exists."""
        if self.local:
            self._makedirs(key.rsplit("/", 1)[0])
            tmp = f"{guard.confine(self.root, key)}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, key)  # fails if the key exists: an exclusive, complete create
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        if self.protocol in ("s3", "s3a"):
            try:
                self.fs.pipe_file(key, data, mode="create")  # If-None-Match: *
            except FileExistsError:
                return False
            except OSError as exc:
                if "PreconditionFailed" in str(exc) or "412" in str(exc):
                    return False
                if self.fs.exists(key):
                    return False
                raise
            return True
        if self.fs.exists(key):
            return False
        self._call(f"write {key}", self.fs.pipe_file, key, data)
        return True
