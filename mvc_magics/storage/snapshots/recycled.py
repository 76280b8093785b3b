"""Memory for the tensors a checkout hands to a model, taken back once the model lets it go.

A Keras or TensorFlow checkout copies each verified tensor into new memory that the model's
variables then adopt (no second copy). New memory costs a page fault per 4 kB page the first time
it is written: for Keras's Dense 31 MB model ~2,500-5,000 faults, 7-10 ms of a 25 ms checkout on
this VM, where a loop of checkouts that reuses freed memory takes 17 ms. Whether malloc hands back
memory already faulted in depends on what ran before (the benchmark's ``gc.collect()``, a peer's
load), so the same checkout took 17-35 ms.

Here each such tensor's memory is kept when the model lets it go (the next checkout replaced the
variable's buffer, the model was deleted) and handed to the next checkout that needs that many
bytes: its pages are already faulted in. Whether the model still uses the memory is not guessed:
the array handed out is a view of a small exporter object (a ctypes array over the memory), and
every view of the array, every DLPack capsule and every framework tensor that adopted it keeps
that exporter alive. The memory comes back only when the exporter is freed, so memory still
referenced anywhere is never handed out twice.

At most :data:`FREE_LIMIT` bytes of memory let go are kept (the rest is freed as usual); small
tensors come from malloc, which reuses them well.
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref

import numpy as np

from ..codec.coding import ALIGNMENT, aligned_empty, aligned_within, array_nbytes

# Tensors smaller than this come from malloc (its free lists reuse them without faults).
SMALLEST = 256 << 10


def _free_limit() -> int:
    """Bytes of let-go memory kept: 512 MiB, or a sixteenth of the machine's memory if less."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        physical = 8 << 30
    return min(512 << 20, physical // 16)


FREE_LIMIT = _free_limit()


class RecycledMemory:
    """Aligned arrays whose memory is taken back when nothing references it any more."""

    def __init__(self, limit: int = FREE_LIMIT) -> None:
        self._limit = limit
        self._free: dict[int, list[np.ndarray]] = {}  # storage size -> storages let go
        self._free_bytes = 0
        # Re-entrant: a storage comes back from whichever thread frees its last view, which can be
        # this one, inside empty() (a garbage collection triggered by an allocation).
        self._lock = threading.RLock()

    @property
    def free_bytes(self) -> int:
        """Bytes let go by models and kept for the next checkout."""
        return self._free_bytes

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised C-contiguous array on a 64-byte boundary (as
        :func:`~mvc_magics.storage.codec.coding.aligned_empty`), in memory let go earlier when
        some of that size is kept."""
        nbytes = array_nbytes(shape, dtype)
        if nbytes < SMALLEST:
            return aligned_empty(shape, np.dtype(dtype))
        size = nbytes + ALIGNMENT
        storage = self._take(size)
        if storage is None:
            storage = np.empty(size, dtype=np.uint8)
        exporter = (ctypes.c_char * size).from_buffer(storage)
        finalizer = weakref.finalize(exporter, self._give_back, storage)
        finalizer.atexit = False  # at exit the memory goes with the process
        return aligned_within(np.frombuffer(exporter, dtype=np.uint8), shape, dtype)  # based on the exporter

    def release(self) -> None:
        """Free every storage kept."""
        with self._lock:
            self._free.clear()
            self._free_bytes = 0

    def _take(self, size: int) -> np.ndarray | None:
        with self._lock:
            kept = self._free.get(size)
            if not kept:
                return None
            storage = kept.pop()
            self._free_bytes -= storage.nbytes
            return storage

    def _give_back(self, storage: np.ndarray) -> None:
        with self._lock:
            if self._free_bytes + storage.nbytes > self._limit:
                return  # freed as usual once this reference goes
            self._free.setdefault(storage.nbytes, []).append(storage)
            self._free_bytes += storage.nbytes


    def forget(self) -> None:
        """Start afresh (a forked child: its copy of the lock may be held by a parent's thread
        that does not exist here, and the kept memory is the parent's to reuse)."""
        self._lock = threading.RLock()
        self._free = {}
        self._free_bytes = 0


# The process's recycled memory, shared by every checkout.
RECYCLED = RecycledMemory()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=RECYCLED.forget)
