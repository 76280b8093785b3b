"""Adapter for Keras 3 models (Sequential, functional and subclassed).

TensorFlow/Keras is imported only when a Keras model is actually handled, so loading the extension
stays fast. Variable names are ``<layer>/<sublayer>/<variable>`` built from layer names (which the
structure config preserves), not Keras's creation-time ``variable.path`` (which changes when a model
is rebuilt from its config).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ExportError, UnsupportedModelError
from .base import match_state
from .keras_structure import foreign_modules, rebuild, serialize
from .trust import Classes

_KERAS_BASES = {"Layer", "Model", "Sequential", "Functional"}
# Models up to this size keep their hashed buffers pinned for cheap change detection.
PIN_LIMIT_BYTES = 512 * 2**20
# model -> {variable name: (pinned read-only buffer, its hash)}; entries go with their model.
_PINNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Eigen's largest alignment (AVX-512): TensorFlow only adopts numpy buffers aligned to it.
TENSOR_ALIGNMENT = 64


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _keras():
    _quiet_tensorflow()
    import keras

    return keras


class KerasAdapter:
    """Keras 3 models: every variable (trainable and not), the JSON structure, fit history."""

    framework = "keras"

    def __init__(self) -> None:
        # model -> (id of its History, epochs) last used by a commit; weak so models can be freed
        self._captured: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def handles(self, obj: object) -> bool:
        if "keras" not in sys.modules:
            return False
        return any(
            cls.__module__.split(".")[0] == "keras" and cls.__name__ in _KERAS_BASES
            for cls in type(obj).__mro__
        )

    # -- variables ------------------------------------------------------------------------

    def named_variables(self, model: Any) -> dict[str, Any]:
        """Stable name -> Keras variable for every variable of ``model``, deterministic order."""
        keras = _keras()
        claimed: dict[int, str] = {}
        variables: dict[int, Any] = {}

        def claim(variable: Any, name: str) -> None:
            if id(variable) not in claimed:
                claimed[id(variable)] = name
                variables[id(variable)] = variable

        def walk(layer: Any, prefix: str) -> None:
            for sub in layer._flatten_layers(include_self=False, recursive=False):
                path = f"{prefix}{sub.name}"
                walk(sub, path + "/")  # innermost layers claim their variables first
                for variable in sub.weights:
                    claim(variable, f"{path}/{variable.name}")
                for attr, value in sorted(vars(sub).items()):
                    if isinstance(value, keras.random.SeedGenerator):
                        claim(value.state, f"{path}/{attr}/{value.state.name}")

        walk(model, "")
        for variable in model.weights:  # variables the model holds directly (subclassed models)
            claim(variable, f"{model.name}/{variable.name}")
        ordered: dict[str, Any] = {}
        for key, name in claimed.items():
            unique, n = name, 1
            while unique in ordered:
                n += 1
                unique = f"{name}#{n}"
            ordered[unique] = variables[key]
        return ordered

    def get_state(self, model: Any) -> dict[str, np.ndarray]:
        keras = _keras()
        named = self.named_variables(model)
        if not named:
            raise UnsupportedModelError(
                f"The Keras model {getattr(model, 'name', '')!r} is not built yet and has no variables: "
                "call it on data or build() it first, then commit."
            )
        to_numpy = _zero_copy_reader(keras)
        return {name: to_numpy(variable) for name, variable in named.items()}

    def set_state(self, model: Any, state: Mapping[str, np.ndarray], owned: bool = False) -> None:
        """Assign ``state`` (all shapes checked first). ``owned``: the arrays belong to this call
        (a checkout's freshly read tensors), so the variables may adopt their memory instead of
        copying it twice through ``tf.convert_to_tensor``.
        """
        keras = _keras()
        named = self.named_variables(model)
        live = {name: (tuple(v.shape), str(v.dtype)) for name, v in named.items()}
        pairs = match_state(live, state)  # raises before any assignment
        adopt = _adopter(keras) if owned else None
        for live_name, stored_name in pairs.items():
            value = state[stored_name]
            variable = named[live_name]
            if adopt is not None and value.dtype == np.dtype(variable.dtype):
                value = adopt(value)
            variable.assign(value)

    # -- cheap change detection -------------------------------------------------------------

    def known_hashes(self, model: Any, state: Mapping[str, np.ndarray]) -> dict[str, str]:
        """Hashes of the tensors in ``state`` that provably did not change since they were hashed.

        TensorFlow copies a variable's buffer before updating it in place whenever another
        tensor still references it (copy-on-write, ``PrepareToUpdateVariable``), and an assign
        installs a new buffer. :meth:`remember_hashes` keeps a reference to each hashed buffer,
        so while a variable still reads back the very buffer we hashed, its bytes are the ones we
        hashed. Anything else (another backend, a copy, a new buffer) is hashed again.
        """
        pins = self._pins_of(model)
        if not pins:
            return {}
        known = {}
        for name, array in state.items():
            pinned = pins.get(name)
            if (pinned is not None and array.nbytes and pinned[0].ctypes.data == array.ctypes.data
                    and pinned[0].shape == array.shape and pinned[0].dtype == array.dtype):
                known[name] = pinned[1]
        return known

    def remember_hashes(self, model: Any, state: Mapping[str, np.ndarray], hashes: Mapping[str, str]) -> None:
        """Pin the buffers of ``state`` with their hashes for :meth:`known_hashes`.

        Pinning makes TensorFlow copy a variable on its next in-place update, and keeps the old
        buffer until the next status or commit: up to one extra copy of the model in memory, so
        only models up to :data:`PIN_LIMIT_BYTES` are pinned.
        """
        try:
            cache = self._pin_cache()
            if cache is None:
                return
            total = sum(int(a.nbytes) for a in state.values())
            if total > PIN_LIMIT_BYTES or any(a.flags.writeable for a in state.values()):
                cache.pop(model, None)  # writable arrays are not TensorFlow snapshots
                return
            cache[model] = {name: (array, hashes[name]) for name, array in state.items() if name in hashes}
        except TypeError:  # a model that cannot be weakly referenced is simply not cached
            return

    def _pin_cache(self) -> weakref.WeakKeyDictionary | None:
        if "tensorflow" not in sys.modules or _keras().backend.backend() != "tensorflow":
            return None
        return _PINNED

    def _pins_of(self, model: Any) -> dict[str, tuple[np.ndarray, str]]:
        cache = self._pin_cache()
        try:
            return cache.get(model, {}) if cache is not None else {}
        except TypeError:
            return {}

    # -- structure ------------------------------------------------------------------------

    def structure(self, model: Any) -> object | None:
        return serialize(_keras(), model)

    def build(self, structure: object, state: Mapping[str, np.ndarray], unsafe: bool = False,
              classes: Classes | None = None) -> Any:
        """A new model from ``structure`` holding ``state``; classes outside Keras need the opt-in
        (``classes=`` or ``unsafe=True``, see :mod:`mvc_magics.adapters.trust`)."""
        keras = _keras()
        from .. import keras_layers  # noqa: F401 - registers the package's own layers

        model = rebuild(keras, structure, unsafe, classes)
        if not self.named_variables(model):
            raise UnsupportedModelError("The rebuilt model has no variables; check the version out into an "
                                        "existing model instead (%mvc_checkout REF model).")
        self.set_state(model, state)
        return model

    export_formats = ("keras", "savedmodel", "weights-h5")

    def export_model(self, model: Any, path: str, fmt: str) -> None:
        """Write ``model`` as a ``.keras`` file, ``.weights.h5`` or a TensorFlow SavedModel folder."""
        if fmt == "keras":
            model.save(path)
        elif fmt == "weights-h5":
            model.save_weights(path)
        elif _keras().backend.backend() != "tensorflow":
            raise ExportError("A SavedModel export needs the TensorFlow backend: set KERAS_BACKEND=tensorflow "
                              "before importing Keras.")
        else:
            # TensorFlow logs "Assets written to: <path>" at INFO (shown wherever logging is at INFO, as
            # in a Jupyter kernel); the path is the export's temporary name: silence it here.
            logger = logging.getLogger("tensorflow")
            level = logger.level
            logger.setLevel(max(level, logging.WARNING))
            try:
                model.export(path, format="tf_saved_model", verbose=False)
            finally:
                logger.setLevel(level)

    def restore_training_setup(self, model: Any, extra: Mapping) -> bool:
        """Compile a rebuilt model as the committed one was (optimizer, loss, metrics), if recorded.

        Only configurations naming Keras's own objects are restored; anything else is left
        uncompiled rather than importing foreign code. Returns whether the model was compiled.
        """
        config = extra.get("compile") if isinstance(extra, Mapping) else None
        if not isinstance(config, dict) or foreign_modules(config) or not hasattr(model, "compile_from_config"):
            return False
        try:
            model.compile_from_config(config)
        except Exception:  # an uncompilable setup leaves a usable, uncompiled model
            return False
        return bool(getattr(model, "compiled", False))

    # -- metadata -------------------------------------------------------------------------

    def extra_metadata(self, model: Any) -> dict:
        compile_config = None
        try:
            if getattr(model, "compiled", False):
                compile_config = json.loads(json.dumps(model.get_compile_config(), default=str))
        except Exception:
            compile_config = None
        return {"compile": compile_config} if compile_config else {}

    def _history_mark(self, model: Any) -> tuple[int, int] | None:
        history = getattr(model, "history", None)
        logs = getattr(history, "history", None)
        if not isinstance(logs, dict):
            return None
        return id(history), max((len(v) for v in logs.values() if isinstance(v, list | tuple)), default=0)

    def mark_committed(self, model: Any) -> None:
        """Remember the fit history a commit used, so a later commit does not reuse its metrics."""
        mark = self._history_mark(model)
        if mark is not None:
            try:
                self._captured[model] = mark
            except TypeError:  # not weak-referenceable: metrics may then be captured again
                pass

    def fit_metrics(self, model: Any) -> dict[str, float]:
        """The last epoch of the most recent fit, unless a commit of this model already used it."""
        mark = self._history_mark(model)
        if mark is None or self._captured.get(model) == mark:
            return {}
        logs = model.history.history
        metrics = {}
        for key, values in logs.items():
            if isinstance(values, list | tuple) and values:
                try:
                    metrics[str(key)] = float(values[-1])
                except (TypeError, ValueError):
                    continue
        return metrics

    def library_versions(self) -> dict[str, str]:
        keras = _keras()
        versions = {"keras": keras.__version__, "backend": keras.backend.backend()}
        tf = sys.modules.get("tensorflow")
        if tf is not None:
            versions["tensorflow"] = getattr(tf, "__version__", "unknown")
        return versions


def _zero_copy_reader(keras: Any):
    """A function variable -> numpy array, without copying the bytes where the backend allows it.

    On TensorFlow, ``read_value()`` returns a tensor that shares the variable's buffer and
    ``np.asarray`` wraps it read-only. TensorFlow copies a variable's buffer before updating it in
    place while another tensor holds it, so the array stays a faithful snapshot of the moment it
    was read (``tests/test_benchmarks_smoke.py`` checks this). Other backends go through
    ``convert_to_numpy`` (a copy).
    """
    if keras.backend.backend() == "tensorflow":

        def read(variable: Any) -> np.ndarray:
            value = variable.value
            # _read_variable_op is read_value without its identity op (a third of the cost, same
            # buffer); read_value is the public fallback.
            reader = getattr(value, "_read_variable_op", None) or getattr(value, "read_value", None)
            return np.asarray(reader() if reader is not None else value)

        return read
    return lambda variable: np.asarray(keras.ops.convert_to_numpy(variable))


def _adopter(keras: Any):
    """A function numpy array -> tensor sharing its memory (DLPack), or None on other backends.

    ``tf.convert_to_tensor`` copies a numpy array (and TensorFlow may copy it again to align it);
    importing it through DLPack hands the buffer over instead. Only for arrays nobody else holds.
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    def adopt(array: np.ndarray) -> Any:
        # TensorFlow kernels abort on buffers not aligned for Eigen (64 bytes): copy those.
        if (not (array.flags.c_contiguous and array.flags.writeable) or array.dtype.kind not in "biuf"
                or array.ctypes.data % TENSOR_ALIGNMENT):
            return array
        try:
            return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
        except (BufferError, TypeError, ValueError, AttributeError, tf.errors.OpError):
            return array

    return adopt
