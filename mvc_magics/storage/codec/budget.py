"""Memory for a read is bounded by what the reader has checked, not by what a file claims.

A coded tensor's declared size is covered by its version id, so a teammate can store a *genuine*
4 GiB all-zero tensor in a 133 KiB object: decoding it allocates the 4 GiB. So before a tensor is
allocated its declared size is checked against ``MVC_MAX_TENSOR_BYTES`` (default 64 GiB) and
against the memory this process can still get: the kernel's ``MemAvailable``, the address space
left under ``RLIMIT_AS`` (``ulimit -v``) and the cgroup's ``memory.max``. A read that would not
fit is refused in one line (:class:`ResourceLimitError`) instead of a raw ``MemoryError`` (or the
OOM killer) halfway through; a pull refuses that version only.
"""

from __future__ import annotations

import os
import resource

from ...errors import ResourceLimitError

MAX_TENSOR_ENV = "MVC_MAX_TENSOR_BYTES"
DEFAULT_MAX_TENSOR = 64 << 30
# Below this a tensor is not worth the look at /proc: it cannot exhaust memory on its own.
CHECK_AVAILABLE_FROM = 16 << 20
# What decoding a coded tensor holds: the result and one level's planes (a chain with second-order
# deltas also keeps the value below; storage/codec/coding.decode_chain).
CODED_FACTOR = 2


def max_tensor_bytes() -> int:
    """The configured largest tensor a read allocates (``MVC_MAX_TENSOR_BYTES``)."""
    try:
        return max(0, int(os.environ.get(MAX_TENSOR_ENV, DEFAULT_MAX_TENSOR)))
    except ValueError:
        return DEFAULT_MAX_TENSOR


def _proc_kib(path: str, key: str) -> int | None:
    try:
        with open(path, "rb") as handle:
            for line in handle.read(1 << 16).decode("ascii", "replace").splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max", "rb") as handle:
            limit = handle.read(64).strip()
        if limit == b"max":
            return None
        with open("/sys/fs/cgroup/memory.current", "rb") as handle:
            return int(limit) - int(handle.read(64).strip())
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes this process can still allocate, as far as the system says (None: unknown)."""
    found = []
    free = _proc_kib("/proc/meminfo", "MemAvailable")
    if free is not None:
        found.append(free + (_proc_kib("/proc/meminfo", "SwapFree") or 0))
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (OSError, ValueError):
        soft = resource.RLIM_INFINITY
    if soft != resource.RLIM_INFINITY:
        used = _proc_kib("/proc/self/status", "VmSize")
        if used is not None:
            found.append(soft - used)
    room = _cgroup_room()
    if room is not None:
        found.append(room)
    return max(0, min(found)) if found else None


def _size(count: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.1f} {unit}"
    return f"{count} B"


def check_read(nbytes: int, where: str, coded: bool = False) -> None:
    """Refuse (one line) reading a tensor of ``nbytes`` that is larger than ``MVC_MAX_TENSOR_BYTES``
    or would not fit in the memory available; called before anything is allocated."""
    limit = max_tensor_bytes()
    if nbytes > limit:
        raise ResourceLimitError(f"{where}: declares {_size(nbytes)}, more than {MAX_TENSOR_ENV} allows "
                                 f"({_size(limit)}); refused before reading")
    if nbytes < CHECK_AVAILABLE_FROM:
        return
    needed = nbytes * (CODED_FACTOR if coded else 1)
    available = available_memory()
    if available is not None and needed > available:
        raise ResourceLimitError(f"{where}: reading it needs {_size(needed)} of memory and {_size(available)} "
                                 "is available; refused before reading")
