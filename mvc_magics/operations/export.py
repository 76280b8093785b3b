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
from pathlib import Path

from ..adapters import adapter_named
from ..errors import ExportError
from ..storage.store import Store
from .versions import load_state, resolve, structure

FORMATS = ("keras", "savedmodel", "weights-h5", "safetensors", "torchscript", "skops")
_SUFFIX = {"keras": ".keras", "weights-h5": ".weights.h5", "safetensors": ".safetensors", "torchscript": ".pt",
           "skops": ".skops"}


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


def export_version(store: Store, ref: str, path: str | os.PathLike, fmt: str = "keras",
                   name: str | None = None) -> Path:
    """Write version ``ref`` to ``path`` in format ``fmt``; return the path written."""
    path = check_destination(Path(path), fmt)
    version = resolve(store, ref, name=name)
    adapter = adapter_named(version.framework) if version.framework != "numpy" else None
    formats = ("keras", "savedmodel", "weights-h5") if version.framework == "keras" else \
        getattr(adapter, "export_formats", ())
    if not formats:
        raise ExportError(f"{version.short_id} is a {version.framework or 'framework-free'} model; export needs a "
                          "Keras, PyTorch or scikit-learn model (read its tensors with repo.load_state instead)")
    if fmt not in formats:
        raise ExportError(f"{version.short_id} is a {version.framework} model: its export formats are "
                          f"{', '.join(formats)}")
    # Rebuilt like a checkout into a new variable, but without moving anyone's HEAD.
    model = _keras_model(store, version) if version.framework == "keras" else None
    tmp = path.parent / f".tmp-export-{os.getpid()}-{uuid.uuid4().hex}{_SUFFIX.get(fmt, '')}"
    try:
        if model is None:  # the framework's own format, written by its adapter
            adapter.export(structure(store, version.id), load_state(store, version), str(tmp), fmt)
        elif fmt == "keras":
            model.save(str(tmp))
        elif fmt == "weights-h5":
            model.save_weights(str(tmp))
        else:
            _export_savedmodel(model, tmp)
        os.replace(tmp, path)
    except ExportError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"cannot export {version.short_id} as {fmt}: {first[:200]}") from exc
    finally:
        with contextlib.suppress(OSError):
            if tmp.is_dir():
                shutil.rmtree(tmp)
            elif tmp.exists():
                tmp.unlink()
    store.writes.record("export", version.name, [version.id], {"format": fmt, "path": str(path)})
    return path


def _keras_model(store: Store, version):
    return adapter_named("keras").build(structure(store, version.id), load_state(store, version))


def _export_savedmodel(model, tmp: Path) -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError("a SavedModel export needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
    model.export(str(tmp), format="tf_saved_model", verbose=False)
