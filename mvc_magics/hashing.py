"""Content identity: tensor hashes and version ids (BLAKE3).

A tensor's hash covers its dtype, shape and bytes (C order, little-endian), so equal arrays hash
equal on any machine. A version id covers the canonical structure and the sorted list of
(name, dtype, shape, tensor hash); metadata is deliberately left out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import blake3
import numpy as np

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


def tensor_hash(array: np.ndarray) -> str:
    """BLAKE3 hex digest over dtype, shape and bytes of ``array``."""
    array = canonical_array(array)
    header = f"{dtype_name(array.dtype)}|{','.join(map(str, array.shape))}|".encode()
    threads = blake3.blake3.AUTO if array.nbytes >= THREADED_HASH_BYTES else 1
    hasher = blake3.blake3(header, max_threads=threads)
    # A uint8 view hashes the raw bytes without copying, whatever the dtype.
    hasher.update(array.reshape(-1).view(np.uint8) if array.size else b"")
    return hasher.hexdigest()


def hashes_ahead(arrays: Mapping[str, np.ndarray]) -> Iterator[tuple[str, str]]:
    """Yield ``(key, tensor_hash(array))`` in the mapping's order, hashing ahead in worker threads.

    BLAKE3 releases the GIL, so the caller can write or read one tensor while the next ones are
    hashed: a commit overlaps hashing with its HDF5 writes, a checkout with its reads. Small
    inputs are hashed in the calling thread (handing them to a thread costs more than hashing).
    """
    items = list(arrays.items())
    if len(items) <= 1 or sum(int(a.nbytes) for _, a in items) < THREADED_HASH_BYTES:
        yield from ((key, tensor_hash(array)) for key, array in items)
        return
    pool = hash_pool()
    futures = [(key, pool.submit(tensor_hash, array)) for key, array in items]
    try:
        for key, future in futures:
            yield key, future.result()
    finally:
        for _, future in futures:  # the consumer stopped early (a difference found, an error)
            future.cancel()


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def hash_pool() -> ThreadPoolExecutor:
    """The process's hashing threads (created on first use; re-created in a forked child)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        workers = max(2, min(4, os.cpu_count() or 1))
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mvc-hash"))
    return _POOL[1]


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


def state_fingerprint(hashes: Mapping[str, str]) -> str:
    """A single hash over a name -> tensor hash mapping (used for cheap change detection)."""
    return blake3.blake3(canonical_json(sorted(hashes.items())).encode()).hexdigest()
