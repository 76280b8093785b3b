"""What a version is made of, as data: its tensor entries (the manifest) and its snapshot's content.

Pure records with the checks every reader applies to untrusted entries (sizes that match shapes,
dtypes that are tensors); the storage layer reads and writes them, the core computes with them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..errors import IntegrityError, UnsupportedModelError
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
    # Format 3: where the structure's bytes are stored (a uint8 "tensor" in this or an older file,
    # by hash), None when the file holds the structure itself (formats 1 and 2) or has none.
    structure_ref: ManifestEntry | None = None

    def locations(self) -> list[tuple[str, str, int]]:
        """(hash, object, nbytes) of every stored blob this version reads: tensors and structure."""
        rows = [(e.hash, e.object, e.nbytes) for e in self.manifest]
        ref = self.structure_ref
        return [*rows, (ref.hash, ref.object, ref.nbytes)] if ref is not None else rows


_HASH_TEXT = re.compile(f"[0-9a-f]{{{HASH_HEX_LENGTH}}}")


def is_hash(text: str) -> bool:
    return _HASH_TEXT.fullmatch(text) is not None


# The logical dtypes a tensor may have (docs/FORMAT.md, "Dtypes"): numpy's bool, integers, floats and
# complex numbers, plus the ml_dtypes types frameworks use for low precision (bfloat16, float8/6/4,
# int4/int2...). numpy's extended precision (float96/float128) is left out: its size and padding
# bytes differ between machines, so its bytes have no portable meaning.
NUMPY_TENSOR_DTYPES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64", "complex64", "complex128"}
)


def dtype_from_name(name: str) -> np.dtype:
    """The numpy dtype of a stored tensor's dtype name; :class:`IntegrityError` for any other name.

    A name is either one of :data:`NUMPY_TENSOR_DTYPES` or an ``ml_dtypes`` type (imported only
    when such a tensor is read).
    """
    if name in NUMPY_TENSOR_DTYPES:
        return np.dtype(name)
    try:
        import ml_dtypes  # bfloat16, float8, int4: only needed when such tensors exist
    except ImportError as exc:
        raise IntegrityError(f"dtype {name!r} needs the ml_dtypes package (pip install ml_dtypes)") from exc
    found = getattr(ml_dtypes, name, None) if isinstance(name, str) and not name.startswith("_") else None
    try:
        dtype = np.dtype(found) if isinstance(found, type) else None
    except TypeError:  # finfo, iinfo: classes of ml_dtypes that are not dtypes
        dtype = None
    if dtype is None or dtype.name != name or dtype.kind in "OSUMm":
        raise IntegrityError(f"dtype {str(name)[:40]!r} is not a tensor dtype")
    return dtype


def storable_dtype_name(dtype: np.dtype, tensor: str) -> str:
    """The name a tensor of ``dtype`` is stored under, or :class:`UnsupportedModelError` (at commit,
    before anything is written) when the store could not read such a tensor back."""
    name = np.dtype(dtype).name
    try:
        if dtype_from_name(name) == dtype.newbyteorder("=") or dtype_from_name(name) == dtype:
            return name
    except IntegrityError:
        pass
    raise UnsupportedModelError(
        f"Tensor {tensor!r} has dtype {name}, which mvc_magics does not store (it keeps bool, integers, "
        "floats, complex numbers and the ml_dtypes types such as bfloat16, float8 and int4). Convert "
        "the variable to one of those (for example float64 or int32) and commit again."
    )
