"""Provenance: how a version was made (the code, the data, the training set-up, the libraries).

Everything here is plain Python (no IPython): the magics feed executed cells into a
:class:`CellRecorder`, and :func:`build_provenance` turns what was captured into the JSON dict that
``Repo.commit(provenance=...)`` stores in the snapshot metadata and ``Version.provenance`` exposes::

    {"notebook": "train.ipynb",
     "cells": [{"number": 12, "source": "model.fit(x, y, epochs=10)"}],
     "data": {"x_train": {"kind": "ndarray", "shape": [60, 4], "dtype": "float32", "hash": "…"}},
     "compile": {"optimizer": "SGD", "learning_rate": 0.01, "loss": "mse", "metrics": ["mse"]},
     "libraries": {"pandas": "2.2.3", "scikit-learn": "1.5.2"}}

``compile`` and ``libraries`` are added to every commit by :func:`complete_provenance`.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import blake3
import numpy as np

from ..errors import UnsupportedDataError
from .hashing import canonical_json, dtype_name, tensor_hash

# How much cell source one version keeps: enough for a training session, bounded so that the
# metadata (also stored in the index, read by every log) stays small.
MAX_CELLS = 50
MAX_CELL_CHARS = 8_000
MAX_CODE_CHARS = 32_000

# Libraries worth recording when the notebook has imported them (never imported here).
_LIBRARIES = {
    "numpy": "numpy", "pandas": "pandas", "scikit-learn": "sklearn", "scipy": "scipy",
    "tensorflow": "tensorflow", "keras": "keras", "torch": "torch", "jax": "jax",
    "h5py": "h5py", "matplotlib": "matplotlib",
}


# -- data fingerprints ---------------------------------------------------------------------------

def fingerprint(obj: Any) -> dict[str, Any]:
    """Identify a data set without storing it: BLAKE3 hash, shape and dtype.

    Supports numpy arrays (and array-likes such as tensors), pandas DataFrames and Series, and
    lists/tuples (numeric ones as arrays; a tuple of arrays such as ``(x, y)`` item by item).
    The same data gives the same hash on any machine.

    >>> fingerprint(np.zeros((2, 3), np.float32))["shape"]
    [2, 3]
    """
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(obj, pandas.DataFrame | pandas.Series):
        return _pandas_fingerprint(pandas, obj)
    if isinstance(obj, np.ndarray):
        return _array_fingerprint(obj, "ndarray")
    if isinstance(obj, list | tuple):
        return _sequence_fingerprint(obj)
    if hasattr(obj, "__array__") or hasattr(obj, "numpy"):
        array = np.asarray(obj.numpy() if hasattr(obj, "numpy") else obj)
        return _array_fingerprint(array, type(obj).__name__)
    raise UnsupportedDataError(
        f"cannot fingerprint a {type(obj).__name__}: supported are numpy arrays, pandas "
        "DataFrames/Series, lists and tuples"
    )


def _array_fingerprint(array: np.ndarray, kind: str) -> dict[str, Any]:
    if array.dtype == object:
        raise UnsupportedDataError(f"cannot fingerprint a {kind} of Python objects; convert it to numbers first")
    return {"kind": kind, "shape": list(array.shape), "dtype": dtype_name(array.dtype), "hash": tensor_hash(array)}


def _sequence_fingerprint(items: list | tuple) -> dict[str, Any]:
    kind = type(items).__name__
    try:
        with warnings.catch_warnings():  # numpy < 1.24 warns on ragged input (and returns objects)
            warnings.simplefilter("ignore", getattr(np, "VisibleDeprecationWarning", DeprecationWarning))
            array = np.asarray(items)
    except ValueError:  # ragged: fingerprint item by item
        array = None
    if array is not None and array.dtype.kind in "biufc":  # numbers: hashed as an array
        result = _array_fingerprint(array, kind)
        result["length"] = len(items)
        return result
    if all(isinstance(item, str | int | float | bool) or item is None for item in items):
        text = canonical_json(list(items))
        return {"kind": kind, "shape": [len(items)], "dtype": "json", "length": len(items),
                "hash": blake3.blake3(text.encode()).hexdigest()}
    parts = [fingerprint(item) for item in items]
    digest = blake3.blake3(canonical_json([p["hash"] for p in parts]).encode()).hexdigest()
    return {"kind": kind, "length": len(items), "shape": [len(items)], "dtype": "mixed",
            "items": parts, "hash": digest}


def _pandas_fingerprint(pandas: Any, obj: Any) -> dict[str, Any]:
    # hash_pandas_object uses a fixed key, so row hashes are the same on every machine; the
    # column names and dtypes are hashed too (renaming a column changes the data set).
    rows = pandas.util.hash_pandas_object(obj, index=True).to_numpy()
    if isinstance(obj, pandas.DataFrame):
        dtypes: Any = {str(column): str(dtype) for column, dtype in obj.dtypes.items()}
        header = canonical_json({"columns": [str(c) for c in obj.columns], "dtypes": dtypes})
    else:
        dtypes = str(obj.dtype)
        header = canonical_json({"name": str(obj.name), "dtype": dtypes})
    hasher = blake3.blake3(header.encode())
    hasher.update(np.ascontiguousarray(rows).view(np.uint8).reshape(-1))
    return {"kind": type(obj).__name__, "shape": list(obj.shape), "dtype": dtypes, "hash": hasher.hexdigest()}


def fingerprint_all(named: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: fingerprint(value)}``, raising :class:`UnsupportedDataError` naming the variable."""
    result = {}
    for name, value in named.items():
        try:
            result[name] = fingerprint(value)
        except UnsupportedDataError as exc:
            raise UnsupportedDataError(f"--data {name}: {exc}") from None
    return result


# -- executed cells ------------------------------------------------------------------------------

@dataclass
class CellRecord:
    """One executed cell: its execution number (None when not stored in history) and source."""

    number: int | None
    source: str
    ok: bool | None = None


class CellRecorder:
    """The cells executed in a session, and for each model the point of its last commit.

    The magics call :meth:`started` before and :meth:`finished` after each cell; a commit asks
    :meth:`since` for the cells run since the model's previous commit (the running cell included)
    and calls :meth:`committed` once it succeeded. Memory is bounded to the newest ``keep`` cells.
    """

    def __init__(self, keep: int = 500) -> None:
        self.keep = keep
        self._cells: list[CellRecord] = []
        self._base = 0  # absolute position of self._cells[0]
        self._cursors: dict[str, int] = {}
        self._running: int | None = None

    def __len__(self) -> int:
        return len(self._cells)

    def started(self, source: str, number: int | None = None) -> None:
        """A cell begins to run."""
        self._running = None
        if not source.strip():
            return
        self._cells.append(CellRecord(number, source))
        self._running = self._base + len(self._cells) - 1
        if len(self._cells) > self.keep:
            drop = len(self._cells) - self.keep
            del self._cells[:drop]
            self._base += drop

    def finished(self, ok: bool) -> None:
        """The running cell ended (``ok`` False when it raised)."""
        if self._running is not None and self._running >= self._base:
            self._cells[self._running - self._base].ok = ok

    def idle(self) -> None:
        """No cell is running any more (after the post-run hooks)."""
        self._running = None

    def since(self, name: str) -> list[CellRecord]:
        """Cells run since ``name``'s previous commit; the running cell is always included."""
        start = max(self._cursors.get(name, 0), self._base)
        cells = self._cells[start - self._base:]
        if self._running is not None and self._base <= self._running < start:
            cells = [self._cells[self._running - self._base], *cells]
        return list(cells)

    def committed(self, name: str) -> None:
        """``name`` was committed now: later commits list only cells run after this point."""
        self._cursors[name] = self._base + len(self._cells)


def cells_for_provenance(cells: Iterable[CellRecord]) -> tuple[list[dict[str, Any]], int]:
    """The newest cells that fit the size budget, oldest first, and how many were left out."""
    cells = list(cells)
    kept: list[dict[str, Any]] = []
    budget = MAX_CODE_CHARS
    for cell in reversed(cells):
        source = cell.source
        if len(source) > MAX_CELL_CHARS:
            source = source[:MAX_CELL_CHARS] + f"\n# … ({len(cell.source) - MAX_CELL_CHARS} more characters)"
        if len(kept) >= MAX_CELLS or len(source) > budget:
            break
        budget -= len(source)
        entry: dict[str, Any] = {"number": cell.number, "source": source}
        if cell.ok is False:
            entry["failed"] = True
        kept.append(entry)
    kept.reverse()
    return kept, len(cells) - len(kept)


# -- the provenance dict -------------------------------------------------------------------------

def build_provenance(
    notebook: str | None = None,
    cells: Iterable[CellRecord] = (),
    data: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The provenance of a commit: where (notebook or script), which code, which data.

    ``data`` maps variable names to the data itself (fingerprinted here). ``extra`` entries (for
    example ``source="CommitCallback"``) are kept as given when JSON-able.
    """
    result: dict[str, Any] = {}
    if notebook:
        result["notebook"] = str(notebook)
    else:
        script = running_script()
        if script:
            result["script"] = script
    kept, omitted = cells_for_provenance(cells)
    if kept:
        result["cells"] = kept
    if omitted:
        result["cells_omitted"] = omitted
    if data:
        result["data"] = fingerprint_all(data)
    for key, value in extra.items():
        if value is not None:
            result[key] = json.loads(json.dumps(value, default=str))
    return result


def running_script() -> str | None:
    """The path of the Python script being run (None in notebooks and interactive shells)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py") or "ipykernel" in str(path):
        return None
    return os.path.abspath(path)


def compile_summary(compile_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The training set-up from a Keras ``get_compile_config()``: optimizer, learning rate, loss, metrics."""
    if not isinstance(compile_config, Mapping):
        return {}
    summary: dict[str, Any] = {}
    optimizer = compile_config.get("optimizer")
    if isinstance(optimizer, Mapping):
        summary["optimizer"] = optimizer.get("class_name") or optimizer.get("config", {}).get("name")
        rate = (optimizer.get("config") or {}).get("learning_rate")
        if isinstance(rate, int | float):
            summary["learning_rate"] = _round_float32(rate)
        elif isinstance(rate, Mapping):  # a schedule
            summary["learning_rate"] = rate.get("class_name", "schedule")
    elif optimizer is not None:
        summary["optimizer"] = str(optimizer)
    for key in ("loss", "metrics", "weighted_metrics", "loss_weights"):
        value = compile_config.get(key)
        if value is not None:
            summary[key] = _simplify(value)
    return summary


def _round_float32(value: float) -> float:
    """Keras stores the learning rate as float32 (0.01 -> 0.009999999776); show what was typed."""
    return float(f"{float(value):.7g}")


def _simplify(value: Any) -> Any:
    """Keras serialized objects (``{"class_name": ..., "config": ...}``) shown by class name."""
    if isinstance(value, Mapping):
        if "class_name" in value:
            return value["class_name"]
        return {str(k): _simplify(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_simplify(v) for v in value]
    return value


def imported_library_versions() -> dict[str, str]:
    """Versions of the data and ML libraries the process has imported (nothing is imported here)."""
    versions = {}
    for label, module_name in _LIBRARIES.items():
        module = sys.modules.get(module_name)
        version = getattr(module, "__version__", None) if module is not None else None
        if isinstance(version, str):
            versions[label] = version
    return versions


def complete_provenance(provenance: Mapping[str, Any] | None, extra_metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Every commit's provenance: what the caller captured plus compile set-up and libraries."""
    result = dict(provenance or {})
    if "compile" not in result:
        summary = compile_summary(extra_metadata.get("compile"))
        if summary:
            result["compile"] = summary
    result.setdefault("libraries", imported_library_versions())
    return result


# -- where the Keras callback finds the notebook context -----------------------------------------

@dataclass
class CommitContext:
    """Notebook path and cell recorder of the session the extension is loaded in."""

    notebook: Callable[[], str | None]
    recorder: CellRecorder


_contexts: list[CommitContext] = []


def register_context(context: CommitContext) -> Callable[[], None]:
    """Make ``context`` visible to commits made outside the magics (the Keras callback).

    Returns the function that removes it again (called when the extension is unloaded).
    """
    _contexts.append(context)

    def remove() -> None:
        if context in _contexts:
            _contexts.remove(context)

    return remove


def current_context() -> CommitContext | None:
    """The most recently registered notebook context, if the extension is loaded."""
    return _contexts[-1] if _contexts else None


def current_workspace() -> str | None:
    """The notebook whose HEADs a commit made outside the magics (a training callback) moves."""
    context = current_context()
    return (context.notebook() or None) if context else None  # the store keys HEADs by this path
