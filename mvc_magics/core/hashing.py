"""Content identity: tensor hashes and version ids (BLAKE3).

A tensor's hash covers its dtype, shape and bytes (C order, little-endian), so equal arrays hash
equal on any machine. A version id covers the canonical structure and the sorted list of
(name, dtype, shape, tensor hash); metadata is deliberately left out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, TypeVar

import blake3
import numpy as np

from .threads import InOrder, Task, thread_pool

T = TypeVar("T")
HASH_HEX_LENGTH = 64
SHORT_ID_LENGTH = 8
# Multi-threaded hashing only pays off for large buffers; small ones stay on one thread.
THREADED_HASH_BYTES = 1 << 22


def canonical_array(array: np.ndarray) -> np.ndarray:
    """Return ``array`` as a C-contiguous little-endian array (a view when it already is one)."""
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    # np.ascontiguousarray would turn a 0-d array into shape (1,): keep the shape exactly.
    return array if array.flags.c_contiguous else array.copy(order="C")


def dtype_name(dtype: np.dtype) -> str:
    """Stable dtype name used in hashes and manifests (``float32``, ``bfloat16``, ``bool``...)."""
    return np.dtype(dtype).name


class HashedArray(NamedTuple):
    """An array and its :func:`tensor_hash`, computed by whoever made it (a merge hashes each output
    block while it is in cache): a streamed commit stores it under ``digest`` without hashing it again."""

    array: np.ndarray
    digest: str

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


def tensor_hasher(dtype: np.dtype, shape: tuple[int, ...], threads: int = 1) -> blake3.blake3:
    """A BLAKE3 hasher fed the header of a tensor of ``dtype`` and ``shape``: fed the tensor's bytes
    (C order, little-endian; in pieces, in order), its digest is :func:`tensor_hash`'s."""
    header = f"{dtype_name(dtype)}|{','.join(map(str, shape))}|".encode()
    return blake3.blake3(header, max_threads=threads)


def tensor_hash(array: np.ndarray, threaded: bool = True) -> str:
    """BLAKE3 hex digest over dtype, shape and bytes of ``array``; ``threaded`` False keeps a large
    array on the calling thread (for callers that already spread many tensors over the cores)."""
    array = canonical_array(array)
    threads = blake3.blake3.AUTO if threaded and array.nbytes >= THREADED_HASH_BYTES else 1
    hasher = tensor_hasher(array.dtype, array.shape, threads)
    # A uint8 view hashes the raw bytes without copying, whatever the dtype.
    hasher.update(array.reshape(-1).view(np.uint8) if array.size else b"")
    return hasher.hexdigest()


class HashesAhead:
    """Tensor hashes started at construction in worker threads, read back in order by iterating.

    BLAKE3 releases the GIL, so the caller keeps working while the tensors are hashed: a commit
    serializes the model structure and writes new tensors meanwhile, a checkout reads the next
    tensor. ``known`` hashes (of buffers known not to have changed) are not recomputed. Small
    inputs are hashed in the calling thread (handing them to a thread costs more than hashing).
    ``before`` (if given) is called before each hash, in the thread that computes it: a commit
    written in the background pauses there while a training loop copies its weights.

    ``writing``: the caller writes each tensor once it is hashed (a commit). The large tensors
    are then hashed in order, one at a time, each with every core (BLAKE3's own threads,
    :class:`~.threads.InOrder`), the small ones by a second thread: the first hash comes at once,
    so the disk starts early. A 100 MB commit, alternating in one process (medians of 11): 87.1 and
    100.1 ms this way, 91.1 and 101.4 ms with every tensor handed to two hashing threads at once,
    92.8 and 105.2 ms in order but each on one core (two single-core hashes at once took 4.8-6.6 ms
    for two 16.8 MB tensors here, one with every core 1.5-2.1 ms).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], known: Mapping[str, str] | None = None,
                 before: Callable[[], None] | None = None, writing: bool = False) -> None:
        known = known or {}
        self._before = before
        todo = [(key, array) for key, array in arrays.items() if key not in known]
        threaded = len(todo) > 1 and sum(int(a.nbytes) for _, a in todo) >= THREADED_HASH_BYTES
        pool = hash_pool() if threaded else None
        large = [array for _, array in todo if writing and pool is not None and array.nbytes >= THREADED_HASH_BYTES]
        self._large = InOrder(pool, self._hash, large) if large else None
        self._items: list[tuple[str, object]] = []
        large_seen = 0
        for key, array in arrays.items():
            if key in known:
                self._items.append((key, known[key]))
            elif pool is None:
                self._items.append((key, array))
            elif self._large is not None and array.nbytes >= THREADED_HASH_BYTES:
                self._items.append((key, large_seen))  # its position among the large ones
                large_seen += 1
            else:
                self._items.append((key, Task(pool, self._hash, array)))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        try:
            for key, item in self._items:
                if isinstance(item, str):
                    yield key, item
                elif isinstance(item, np.ndarray):
                    yield key, self._hash(item)
                elif isinstance(item, int):  # the item-th large array
                    yield key, self._large.result(item)  # type: ignore[union-attr]
                else:  # hashed here when no hashing thread has started it yet (see core.threads.Task)
                    item.run_here_if_waiting()  # type: ignore[attr-defined]
                    yield key, item.result()  # type: ignore[attr-defined]
        finally:
            self.cancel()

    def _hash(self, array: np.ndarray) -> str:
        if self._before is not None:
            self._before()
        return tensor_hash(array)

    def cancel(self) -> None:
        """Drop hashes not started yet (the consumer stopped early: a difference, an error)."""
        if self._large is not None:
            self._large.cancel()
        for _, item in self._items:
            if isinstance(item, Task):
                item.cancel()


def hashes_ahead(arrays: Mapping[str, np.ndarray], known: Mapping[str, str] | None = None
                 ) -> Iterator[tuple[str, str]]:
    """Yield ``(key, tensor_hash(array))`` in the mapping's order (see :class:`HashesAhead`)."""
    return iter(HashesAhead(arrays, known))


def hash_pool() -> ThreadPoolExecutor:
    """The process's hashing threads (created on first use; re-created in a forked child)."""
    return thread_pool("hash", max(2, min(4, os.cpu_count() or 1)))


def shared_by_every_core(work: Callable[[], T]) -> list[Task[T]]:
    """Tasks running ``work``, a loop that takes its pieces from a shared queue until none is left,
    on one hashing thread per other core and, last, the caller's own share (run first by
    :func:`~mvc_magics.core.threads.run_waiting`): one thread per core in all (on 2 cores a third
    thread only took turns with the other two: a PyTorch 100 MB checkout, alternating, 23.2-23.8 ms
    with two hashing threads, 22.8-23.0 with one)."""
    pool = hash_pool()
    beside = max(1, min(4, (os.cpu_count() or 2) - 1))
    return [*(Task(pool, work) for _ in range(beside)), Task(None, work)]


def hash_all(arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    """``{key: tensor_hash(array)}``, hashing the arrays concurrently (see :func:`hashes_ahead`)."""
    return dict(hashes_ahead(arrays))


def canonical_json(value: object) -> str:
    """JSON with sorted keys and no whitespace: the same value gives the same text everywhere."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def version_id(structure: object, entries: Iterable[tuple[str, str, tuple[int, ...], str]]) -> str:
    """Hash over the canonical structure and sorted (name, dtype, shape, tensor hash) entries."""
    listing = sorted([name, dtype, list(shape), digest] for name, dtype, shape, digest in entries)
    payload = canonical_json({"structure": structure, "tensors": listing})
    return blake3.blake3(payload.encode()).hexdigest()
