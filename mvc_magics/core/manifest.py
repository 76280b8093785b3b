"""What a version is made of, as data: its tensor entries (the manifest) and its snapshot's content.

Pure records with the checks every reader applies to untrusted entries (sizes that match shapes,
dtypes that are tensors); the storage layer reads and writes them, the core computes with them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..errors import IntegrityError
from .hashing import HASH_HEX_LENGTH


@dataclass(frozen=True)
class ManifestEntry:
    """One tensor of a version: its name, dtype, shape, hash and the file holding its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    hash: str
    object: str
    nbytes: int

    def to_json(self) -> dict:
        return {
            "name": self.name, "dtype": self.dtype, "shape": list(self.shape),
            "hash": self.hash, "object": self.object, "nbytes": self.nbytes,
        }

    @classmethod
    def from_json(cls, raw: object) -> ManifestEntry:
        try:
            assert isinstance(raw, dict)
            shape = tuple(int(d) for d in raw["shape"])
            entry = cls(
                name=str(raw["name"]), dtype=str(raw["dtype"]), shape=shape, hash=str(raw["hash"]),
                object=str(raw["object"]), nbytes=int(raw["nbytes"]),
            )
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"malformed manifest entry: {str(raw)[:120]}") from exc
        if any(d < 0 for d in shape) or not is_hash(entry.hash) or not is_hash(entry.object):
            raise IntegrityError(f"malformed manifest entry for tensor {entry.name!r}")
        expected = dtype_from_name(entry.dtype).itemsize * math.prod(shape)  # no int64 overflow
        if expected != entry.nbytes:
            raise IntegrityError(f"tensor {entry.name!r}: declared size does not match its shape")
        return entry


@dataclass(frozen=True)
class SnapshotContent:
    """What a snapshot file holds besides the tensor bytes."""

    version_id: str
    meta: dict
    structure: object
    manifest: tuple[ManifestEntry, ...]


_HASH_TEXT = re.compile(f"[0-9a-f]{{{HASH_HEX_LENGTH}}}")


def is_hash(text: str) -> bool:
    return _HASH_TEXT.fullmatch(text) is not None


def dtype_from_name(name: str) -> np.dtype:
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError):  # numpy raises either for a name it does not know
        try:
            import ml_dtypes  # bfloat16, float8: only needed when such tensors exist
        except ImportError as exc:
            raise IntegrityError(f"unknown dtype {name!r}") from exc
        try:
            dtype = np.dtype(getattr(ml_dtypes, name))
        except (AttributeError, TypeError, ValueError) as exc:
            raise IntegrityError(f"unknown dtype {name!r}") from exc
    if dtype.kind in "OSUVMm":  # objects, strings, records, dates: never a tensor, never read
        raise IntegrityError(f"dtype {name!r} is not a tensor dtype")
    return dtype
