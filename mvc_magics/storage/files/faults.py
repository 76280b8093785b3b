"""Environment faults (disk full, permissions, read-only stores) as clear one-line errors."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from ...errors import StoreError

# HDF5 metadata per dataset, the user block and JSON strings, rounded up generously: HDF5 must never
# meet a full disk, because after a failed close its state can crash the process on the next write.
_PER_DATASET = 4096
_MARGIN = 256 * 1024


def ensure_space(folder: Path, payload_bytes: int, datasets: int, store: Path) -> None:
    """Refuse up front (:class:`StoreError`) when ``folder`` cannot take a snapshot of this size."""
    needed = payload_bytes + _PER_DATASET * (datasets + 4) + _MARGIN
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed:
        raise StoreError(f"cannot write to the store {store}: no space left on the device ({free // 1024} KiB "
                         f"free, this version needs about {needed // 1024} KiB); nothing was committed, "
                         "earlier versions are intact")


_SPACE = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM)


_NOTHING = "nothing was committed, earlier versions are intact"


def write_failure(exc: BaseException, store: Path, outcome: str = _NOTHING) -> str:
    """One line saying why a write into ``store`` failed and what that left (``outcome``)."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.EFBIG or "File too large" in text:
        reason = "the file size limit was reached (File too large)"
    elif code in _SPACE or "No space left" in text or "disk is full" in text:
        reason = "no space left on the device"
        try:
            reason += f" ({shutil.disk_usage(store).free // 1024} KiB free)"
        except OSError:
            pass
    elif code in _DENIED or "Permission denied" in text:
        reason = "permission denied"
    elif code == errno.EROFS or "Read-only file system" in text:
        reason = "the store is on a read-only file system"
    elif "read-only" in text or "readonly" in text:
        reason = "the store is read-only"
    else:
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        reason = getattr(exc, "strerror", None) or first
    if isinstance(exc, StoreError) and str(exc).startswith("cannot write to the store"):
        return str(exc).split(";")[0] + f"; {outcome}"
    return f"cannot write to the store {store}: {reason}; {outcome}"
