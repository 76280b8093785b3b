"""Attributes and strings of snapshot files, read as if someone else wrote the file.

Variable-length values (h5py's object dtype: variable-length strings and arrays) live in HDF5's
global heap, and libhdf5 1.14 loops forever decoding a damaged heap (``H5HG__cache_heap_deserialize``;
tests/test_fuzz.py found it with a few changed bytes in an 11 kB file). So mvc_magics writes
fixed-length strings, whose bytes sit inside the attribute or dataset itself, and reads a
variable-length value only from a file whose whole-file checksum holds (files written by earlier
versions have them). The checksum is checked once per file and process; a file that fails it is
damaged (:class:`IntegrityError`) before libhdf5 parses its heap.
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from ...errors import IntegrityError
from .checksum import check_file_checksum
from .h5_open import display_name, file_path

_intact: dict[tuple[int, int, int, int, int], bool] = {}  # file identity -> its checksum holds
_REMEMBERED = 4096


def _ensure_intact(f: h5py.File) -> None:
    filename = file_path(f)  # the file libhdf5 has open, whatever name it was opened by
    st = os.stat(filename)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _intact:
        if len(_intact) >= _REMEMBERED:
            _intact.clear()
        # None: a file from before checksums existed; nothing to check it against.
        _intact[key] = check_file_checksum(filename) is not False
    if not _intact[key]:
        raise IntegrityError(f"snapshot {display_name(f)} is damaged (its checksum does not match)")


def _guard(dtype: np.dtype, f: h5py.File) -> None:
    if dtype.kind == "O":  # stored in the global heap
        _ensure_intact(f)


def read_attr(obj: h5py.HLObject, name: str, default: Any = None) -> Any:
    """The attribute ``name`` of ``obj`` (``default`` when absent), heap-guarded as described above."""
    attrs = obj.attrs
    if name not in attrs:
        return default
    _guard(attrs.get_id(name).dtype, obj.file)
    return attrs[name]


def read_text_attr(obj: h5py.HLObject, name: str, default: str | None = None) -> str | None:
    """:func:`read_attr` as ``str`` (fixed-length strings come back as bytes)."""
    value = read_attr(obj, name)
    if value is None:
        return default
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_string_dataset(dataset: h5py.Dataset) -> str:
    """The text of a scalar string dataset (``/meta``, ``/structure``, ``/manifest``), heap-guarded."""
    _guard(dataset.dtype, dataset.file)
    value = dataset[()]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def write_text_attr(obj: h5py.HLObject, name: str, value: str) -> None:
    """Set ``name`` to ``value`` as a fixed-length UTF-8 string (never in the global heap)."""
    raw = value.encode("utf-8")
    obj.attrs.create(name, raw, dtype=h5py.string_dtype("utf-8", max(len(raw), 1)))


def write_string_dataset(group: h5py.Group, name: str, text: str) -> None:
    """Create the scalar dataset ``name`` holding ``text`` as a fixed-length UTF-8 string."""
    raw = text.encode("utf-8")
    dataset = group.create_dataset(name, shape=(), dtype=h5py.string_dtype("utf-8", max(len(raw), 1)))
    dataset[()] = raw
