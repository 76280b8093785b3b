"""The S3 clients remotes talk through: one per endpoint, credentials and options in a process.

Making an s3fs file system (a botocore session and client) takes most of a second; every push,
pull, clone and remote check made one. Waits are bounded here too: a server that accepts and never
answers fails after ``MVC_REMOTE_TIMEOUT`` seconds per attempt, one that takes no connection (a
dead host, a firewall dropping packets) after ``CONNECT_TIMEOUT`` seconds per attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from urllib.parse import urlsplit

# Seconds to wait for an S3 server to answer one request (env MVC_REMOTE_TIMEOUT).
DEFAULT_TIMEOUT = 30.0
# Seconds to wait for a connection (at most MVC_REMOTE_TIMEOUT): a reachable server connects in
# well under a second, and two lost SYNs are sent again by 3 s, so a dead host fails in about
# S3FS_ATTEMPTS * BOTOCORE_ATTEMPTS * 5 s instead of 2 minutes.
CONNECT_TIMEOUT = 5.0
# Attempts per request by s3fs, each with BOTOCORE_ATTEMPTS attempts: a server that never answers
# fails after at most S3FS_ATTEMPTS * BOTOCORE_ATTEMPTS * timeout seconds (2 minutes by default;
# one that takes no connection after as many connect timeouts: 20 s).
S3FS_ATTEMPTS = 2
BOTOCORE_ATTEMPTS = 2

# One S3 file system per endpoint, credentials and options in this process: making one (a botocore
# session and client) takes most of a second, which every push, pull and check paid again.
_S3_CLIENTS: dict[str, object] = {}
_S3_CLIENTS_LOCK = threading.Lock()
# Clients kept at most: a key goes stale when a credentials file changes, so old ones are dropped.
MAX_S3_CLIENTS = 8
# What decides which server and identity an S3 client talks to, besides the storage options.
_S3_ENVIRONMENT = re.compile(r"^(AWS_|BOTO_|FSSPEC_S3|MVC_REMOTE_TIMEOUT$)")
# The files botocore reads credentials, profiles and endpoints from (env variable, default path).
_AWS_FILES = (("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"), ("AWS_CONFIG_FILE", "~/.aws/config"))


def s3_filesystem(fsspec, url: str) -> tuple[object, str]:
    """(file system, root path) for an s3:// URL, reusing this process's client for the same endpoint,
    credentials and options.

    fsspec caches instances by their constructor arguments only, but here the endpoint and the
    credentials come from the environment and from botocore's files (a user fixes
    ``~/.aws/credentials`` in a notebook; tests switch identities and servers), so its cache is
    skipped and this one is keyed by every ``AWS_*``/``BOTO_*``/``FSSPEC_S3*`` variable too (a
    digest, never the secrets themselves), the identity, size and modification time of the
    credentials and config files (:func:`aws_files`), and the process id (a client does not
    survive a fork). Listings a reused instance cached are dropped, so a new ``RemoteStore`` sees
    what others pushed since.
    """
    cls = fsspec.get_filesystem_class(urlsplit(url).scheme)
    options = {**cls._get_kwargs_from_urls(url), **storage_options("s3")}
    environment = sorted((k, v) for k, v in os.environ.items() if _S3_ENVIRONMENT.match(k))
    key = hashlib.blake2b(repr((os.getpid(), cls.__name__, sorted(options.items(), key=str), environment,
                                aws_files())).encode(), digest_size=16).hexdigest()
    with _S3_CLIENTS_LOCK:
        fs = _S3_CLIENTS.get(key)
        if fs is None:
            fs = cls(skip_instance_cache=True, **options)
            fs.retries = S3FS_ATTEMPTS  # with botocore's own attempts: a dead server fails in bounded time
            _count_requests(fs)
            while len(_S3_CLIENTS) >= MAX_S3_CLIENTS:  # the oldest made (a store using it keeps its own)
                del _S3_CLIENTS[next(iter(_S3_CLIENTS))]
            _S3_CLIENTS[key] = fs
        else:
            fs.invalidate_cache()
    return fs, cls._strip_protocol(url)


def aws_files() -> tuple[tuple[str, tuple[int, ...] | None], ...]:
    """(path, (device, inode, size, mtime ns) or None when absent) of the credentials and config
    files botocore would read now: an edit or a replacement of either gives another client."""
    found = []
    for variable, default in _AWS_FILES:
        path = os.path.expanduser(os.environ.get(variable) or default)
        try:
            info = os.stat(path)
        except OSError:  # absent or unreadable: botocore reads nothing from it either
            found.append((path, None))
            continue
        found.append((path, (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)))
    return tuple(found)


def forget_s3_clients() -> None:
    """Drop the reused S3 clients (the next ``RemoteStore`` makes a new one)."""
    with _S3_CLIENTS_LOCK:
        _S3_CLIENTS.clear()


def _count_requests(fs) -> None:
    """Count the HTTP requests ``fs`` sends, in ``fs.mvc_requests`` (read through ``_sent``)."""
    fs.mvc_requests = 0

    def count(**_kwargs) -> None:
        fs.mvc_requests += 1

    with contextlib.suppress(Exception):  # counting is a report, never a reason to fail
        fs.connect()
        fs.s3.meta.events.register("before-send.s3", count)


def sent_requests(fs) -> int:
    return int(getattr(fs, "mvc_requests", 0))


def remote_timeouts() -> tuple[float, float]:
    """(connect, read) seconds an S3 request waits: ``MVC_REMOTE_TIMEOUT`` (default 30) for an
    answer, and at most ``CONNECT_TIMEOUT`` of it for a connection."""
    try:
        timeout = float(os.environ.get("MVC_REMOTE_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        timeout = DEFAULT_TIMEOUT
    if not timeout > 0:
        timeout = DEFAULT_TIMEOUT
    return min(timeout, CONNECT_TIMEOUT), timeout


def storage_options(scheme: str) -> dict:
    """Bounded waits for S3: a server that accepts and never answers fails after the timeout, one
    that takes no connection after the connect timeout."""
    if scheme not in ("s3", "s3a"):
        return {}
    connect, read = remote_timeouts()
    return {"config_kwargs": {"connect_timeout": connect, "read_timeout": read,
                              "retries": {"max_attempts": BOTOCORE_ATTEMPTS, "mode": "standard"}}}
