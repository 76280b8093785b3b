"""Content identity: tensor hashes and version ids (BLAKE3).

A tensor's hash covers its dtype, shape and bytes (C order, little-endian), so equal arrays hash
equal on any machine. A version id covers the canonical structure and the sorted list of
(name, dtype, shape, tensor hash); metadata is deliberately left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import blake3
import numpy as np

HASH_HEX_LENGTH = 64
SHORT_ID_LENGTH = 8
# Multi-threaded hashing only pays off for large buffers; small ones stay on one thread.
_THREADED_HASH_BYTES = 1 << 22


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
    threads = blake3.blake3.AUTO if array.nbytes >= _THREADED_HASH_BYTES else 1
    hasher = blake3.blake3(header, max_threads=threads)
    # A uint8 view hashes the raw bytes without copying, whatever the dtype.
    hasher.update(array.reshape(-1).view(np.uint8) if array.size else b"")
    return hasher.hexdigest()


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
