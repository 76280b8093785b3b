"""The ``lock.owner`` record: who holds (or last held) a store's lock, and whether that process is
gone; how long a store waits for its lock.

See :meth:`StoreLayout.locked <mvc_magics.storage.local.layout.StoreLayout.locked>`: the record is
written by each holder and removed on release, so finding it means the holder died.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

# Opening a store waits this long for the lock of a holder that has exited. Until a program it was
# starting (git, for a commit's provenance) runs, the forked child holds a copy of the lock's file
# descriptor, so the kernel keeps the dead holder's lock for a moment after its death (measured:
# up to ~20 ms on 2 loaded cores). Only a process gone from this host is waited for; a live holder never.
STALE_LOCK_WAIT = 5.0
LOCK_TIMEOUT_SECONDS = 120.0
LOCK_TIMEOUT_ENV = "MVC_LOCK_TIMEOUT"


def lock_timeout_from_env() -> float:
    """Seconds to wait for the store lock: ``$MVC_LOCK_TIMEOUT`` or 120."""
    try:
        return float(os.environ.get(LOCK_TIMEOUT_ENV, LOCK_TIMEOUT_SECONDS))
    except ValueError:
        return LOCK_TIMEOUT_SECONDS


def holder_gone(text: str | None) -> bool:
    """True when a ``lock.owner`` record names a process of this host that has exited (or is a zombie)."""
    if not text or not looks_like_owner(text):
        return False
    pid_text, host = text.split()[0].split("@", 1)
    pid = int(pid_text)
    if host != socket.gethostname() or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # another user's live process, or not a pid at all
        return False
    try:  # still there: only a zombie (exited, not reaped yet) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def looks_like_owner(text: str) -> bool:
    """True for a "pid@host time" record as :meth:`StoreLayout._take_over` writes it."""
    parts = text.split()
    return (len(text) < 300 and len(parts) == 2 and parts[0].split("@", 1)[0].isdigit()
            and parts[1].isdigit() and "@" in parts[0])
