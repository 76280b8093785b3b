"""What a user would otherwise call: Keras's own save/load, safetensors, and raw file I/O.

Keras's ``save_weights``/``save`` close the HDF5/zip file but never fsync it (keras 3.x
``saving_lib`` has no fsync or flush), so after a crash the file may be empty or torn; mvc_magics
fsyncs every snapshot and its folder. The raw write *does* fsync, so it is the machine's limit
for durably writing the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .models import BenchModel

try:  # optional peer
    import safetensors.numpy as safetensors_numpy
except ImportError:  # pragma: no cover - depends on the environment
    safetensors_numpy = None


def keras_save_weights(bm: BenchModel, folder: Path) -> Path:
    path = folder / "peer.weights.h5"
    bm.model.save_weights(path)
    return path


def keras_load_weights(bm: BenchModel, folder: Path) -> None:
    bm.model.load_weights(folder / "peer.weights.h5")


def keras_save_model(bm: BenchModel, folder: Path) -> Path:
    path = folder / "peer.keras"
    bm.model.save(path)
    return path


def _named_numpy(bm: BenchModel) -> dict[str, np.ndarray]:
    import keras

    return {f"{i}:{v.path}": keras.ops.convert_to_numpy(v) for i, v in enumerate(bm.model.weights)}


def safetensors_save(bm: BenchModel, folder: Path) -> Path | None:
    """``safetensors.numpy.save_file`` of every variable (converted to numpy as a user would)."""
    if safetensors_numpy is None:
        return None
    path = folder / "peer.safetensors"
    safetensors_numpy.save_file(_named_numpy(bm), str(path))
    return path


def safetensors_load(bm: BenchModel, folder: Path) -> None:
    """``safetensors.numpy.load_file`` and assign every variable (what load_weights does)."""
    state = safetensors_numpy.load_file(str(folder / "peer.safetensors"))
    for i, variable in enumerate(bm.model.weights):
        variable.assign(state[f"{i}:{variable.path}"])


def raw_arrays(bm: BenchModel) -> list[np.ndarray]:
    """The model's bytes as numpy arrays (zero-copy where the backend allows): raw I/O's input."""
    from mvc_magics.adapters.keras import KerasAdapter

    return [np.ascontiguousarray(a) for a in KerasAdapter().get_state(bm.model).values()]


def raw_write(arrays: list[np.ndarray], folder: Path, fsync: bool = True) -> Path:
    """Write the bytes to one file, fsync it (the durability mvc_magics pays for), close it."""
    path = folder / "peer.raw"
    with open(path, "wb", buffering=0) as handle:
        for array in arrays:
            handle.write(memoryview(array.reshape(-1).view(np.uint8)))
        if fsync:
            os.fsync(handle.fileno())
    return path


def raw_read(arrays: list[np.ndarray], folder: Path) -> list[np.ndarray]:
    """Read the bytes back into freshly allocated arrays (readinto: no extra copy)."""
    out = [np.empty_like(a) for a in arrays]
    with open(folder / "peer.raw", "rb", buffering=0) as handle:
        for array in out:
            view = memoryview(array.reshape(-1).view(np.uint8))
            got = 0
            while got < len(view):
                got += handle.readinto(view[got:])
    return out
