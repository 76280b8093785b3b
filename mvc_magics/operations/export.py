"""Export a stored version for serving: a ``.keras`` file, a TensorFlow SavedModel, or ``.weights.h5``.

The model is rebuilt from the stored structure with the verified weights (as ``checkout`` with no
target does), then written under a temporary name beside the destination and renamed into place,
so a failed export leaves nothing half-written at ``path``. The exported model is not compiled: the
training configuration is metadata of the version (``version.extra["compile"]``), not serving content.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..adapters import adapter_to_build
from ..core.messages import first_sentence
from ..errors import ExportError, UnsupportedModelError
from ..storage.local.store import Store
from .status import is_modified
from .tfserving import ServingLayout
from .versions import load_state, resolve, structure

FORMATS = ("keras", "savedmodel", "weights-h5", "safetensors", "torchscript", "skops", "lightgbm", "tfserving")
_SUFFIX = {"keras": ".keras", "weights-h5": ".weights.h5", "safetensors": ".safetensors", "torchscript": ".pt",
           "skops": ".skops", "lightgbm": ".txt"}


def check_destination(path: Path, fmt: str) -> Path:
    """The destination path for ``fmt``; refuses wrong suffixes and existing destinations."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    suffix = _SUFFIX.get(fmt)
    if suffix and not path.name.endswith(suffix):
        raise ExportError(f"a {fmt} export must be a file ending in {suffix!r} (got {path.name!r})")
    if path.exists():
        raise ExportError(f"{path} already exists; choose a new path (exports never overwrite)")
    if not path.parent.exists():
        raise ExportError(f"folder {path.parent} does not exist")
    return path


def infer_format(path: Path, framework: str, formats: tuple[str, ...]) -> str:
    """The export format a destination names: its suffix among the framework's formats, or a folder
    (no suffix) for a SavedModel; otherwise an error listing what the framework exports to."""
    for fmt in formats:
        suffix = _SUFFIX.get(fmt)
        if suffix and path.name.endswith(suffix):
            return fmt
    if "savedmodel" in formats and not path.suffix:
        return "savedmodel"
    named = ", ".join(f"{_SUFFIX[f]} ({f})" if f in _SUFFIX else f"a folder ({f})" for f in formats)
    raise ExportError(f"cannot tell the export format from {path.name!r}: a {framework} model exports to {named}; "
                      "name the file so, or give --format")


def export_version(store: Store, ref: str, path: str | os.PathLike, fmt: str | None = None,
                   name: str | None = None, model: Any = None, unsafe: bool = False,
                   classes: Mapping[str, type] | None = None) -> Path:
    """Write version ``ref`` to ``path`` in format ``fmt``; return the path written.

    The model is rebuilt from the stored structure (user classes need ``classes`` or ``unsafe``),
    or, with ``model`` (``--from-live``), the live model is written as it is, after checking that it
    holds exactly the version's tensors.
    """
    if fmt == "tfserving":  # a SavedModel in TF Serving's next numbered folder under path
        return _export_tfserving(store, ref, path, name, model, unsafe, classes)
    version = resolve(store, ref, name=name)
    adapter = adapter_to_build(version.framework) if version.framework != "numpy" else None
    formats = getattr(adapter, "export_formats", ())
    if not formats:
        raise ExportError(f"{version.short_id} is a {version.framework or 'framework-free'} model, which cannot be "
                          "exported as a file (Keras, TensorFlow, PyTorch and scikit-learn models can); read its "
                          "tensors with repo.load_state instead.")
    fmt = fmt or infer_format(Path(path).expanduser(), version.framework, formats)
    path = check_destination(Path(path), fmt)
    if fmt not in formats:
        raise ExportError(f"{version.short_id} is a {version.framework} model: export it as "
                          f"{' or '.join(formats)}.")
    live = model is not None
    if live and is_modified(store, model, version):
        raise ExportError(f"The live model does not hold version {version.short_id}; check it out first "
                          f"(%mvc_checkout {version.short_id} VAR), then export it from the live model.")
    tmp = path.parent / f".tmp-export-{os.getpid()}-{uuid.uuid4().hex}{_SUFFIX.get(fmt, '')}"
    try:
        write_model = getattr(adapter, "export_model", None)
        if write_model is not None:  # Keras and TensorFlow write a live model: the given one or a rebuild
            if model is None:  # rebuilt like a checkout into a new variable, without moving anyone's HEAD
                model = adapter.build(structure(store, version.id), load_state(store, version),
                                      unsafe=unsafe, classes=classes)
            write_model(model, str(tmp), fmt)
        else:  # the framework's own format, written by its adapter from the tensors
            state = adapter.get_state(model) if model is not None else load_state(store, version)
            adapter.export(structure(store, version.id), state, str(tmp), fmt)
        os.replace(tmp, path)
    except (ExportError, UnsupportedModelError) as exc:
        if isinstance(exc, UnsupportedModelError) and model is None:  # a rebuild refused: every way out
            raise ExportError(f"{str(exc).strip().splitlines()[0]} Or export the live model as it is: "
                              "--from-live VAR (model= in the API), after checking this version out into it.") from exc
        raise
    except Exception as exc:
        raise ExportError(f"Cannot export {version.short_id} as {fmt}: {first_sentence(exc)}.") from exc
    finally:
        with contextlib.suppress(OSError):
            if tmp.is_dir():
                shutil.rmtree(tmp)
            elif tmp.exists():
                tmp.unlink()
    store.writes.record("export", version.name, [version.id], {"format": fmt, "path": str(path), "from_live": live})
    return path


def _export_tfserving(store: Store, ref: str, base: str | os.PathLike, name: str | None, model: Any, unsafe: bool,
                      classes: Mapping[str, type] | None) -> Path:
    """``base/<n>``: the folder already holding the version (a no-op), else a SavedModel in the next one."""
    layout = ServingLayout(base)
    version = resolve(store, ref, name=name)
    done = layout.folder_of(version.id)
    if done is not None:
        return done
    folder = export_version(store, version.id, layout.next_folder(), "savedmodel", name, model, unsafe, classes)
    layout.record(folder, version.id)
    return folder
