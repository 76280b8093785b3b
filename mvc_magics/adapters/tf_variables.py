"""TensorFlow variables, whatever holds them: found by attribute path, read without copies, and
vouched for unchanged without rehashing. Shared by the Keras 3, Keras 2 (tf_keras) and ``tf.Module``
adapters; TensorFlow is never imported here, only used when the model already brought it in.

Finding variables: :func:`attribute_variables` walks a model's attributes the way ``tf.Module``
does (sorted names, public before private), into nested modules and layers, lists, tuples and dicts
(TensorFlow's and Keras's tracking wrappers included), and names each variable by its path:
``w``, ``encoder/dense/kernel``, ``blocks/0/scale``, ``table/key``. Optimizers, metrics and losses are
not the model's content (their variables change when it is evaluated) and are not entered. Not
found: variables inside sets, or inside plain Python objects that are neither a module nor a layer.
"""

from __future__ import annotations

import logging
import sys
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..core.manifest import dtype_from_name

# Models up to this size keep their hashed buffers pinned for cheap change detection.
PIN_LIMIT_BYTES = 512 * 2**20
# model -> {variable name: (pinned read-only buffer, its hash)}; entries go with their model.
_PINNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Eigen's largest alignment (AVX-512): TensorFlow only adopts numpy buffers aligned to it.
TENSOR_ALIGNMENT = 64
# Training machinery, not model content: never entered while looking for variables.
_NOT_CONTENT = (".optimizers", ".metrics", ".losses", "optimizer_v2", ".trainers")
# tf.Module's own bookkeeping (its _TF_MODULE_IGNORED_PROPERTIES) and Keras's layer bookkeeping.
_IGNORED = frozenset({"_self_unconditional_checkpoint_dependencies", "_self_unconditional_dependency_names",
                      "_obj_reference_counts_dict", "_tracker", "_inbound_nodes", "_outbound_nodes",
                      "_inbound_nodes_value", "_outbound_nodes_value",
                      # tf_keras's step counters: they count fit/evaluate/predict calls, not weights
                      "_train_counter", "_test_counter", "_predict_counter", "_steps_per_execution"})
_MAX_DEPTH = 64


def is_variable(obj: object) -> bool:
    """A ``tf.Variable`` or a Keras 3 variable (never imports either framework)."""
    return isinstance(obj, _Kinds.current().variables)


class _Kinds:
    """The classes a walk tests against, looked up once per walk (the frameworks loaded now)."""

    def __init__(self) -> None:
        tf, keras = sys.modules.get("tensorflow"), sys.modules.get("keras")
        variables, modules = [], []
        if tf is not None:
            variables.append(tf.Variable)
            modules.append(tf.Module)
        keras_variable = getattr(keras, "Variable", None) if keras is not None else None
        keras_layer = getattr(getattr(keras, "layers", None), "Layer", None) if keras is not None else None
        if isinstance(keras_variable, type):
            variables.append(keras_variable)
        if isinstance(keras_layer, type):
            modules.append(keras_layer)
        self.variables, self.modules = tuple(variables), tuple(modules)

    @classmethod
    def current(cls) -> _Kinds:
        return cls()


def _framework_class(obj: object) -> bool:
    """Keras's and tf_keras's own layers (Dense, Sequential...): their attributes are Keras's own
    (their variables are Keras-tracked, named by the Keras adapters); a walk enters only the layers
    they hold (``_layers``), where user layers with raw variables may sit."""
    return type(obj).__module__.startswith(("keras.", "tf_keras."))


def _own_variables(layer: object) -> list[Any]:
    """The variables a Keras 3 or tf_keras layer created itself (not its sublayers')."""
    found = []
    for attr in ("_trainable_variables", "_non_trainable_variables", "_trainable_weights", "_non_trainable_weights"):
        value = vars(layer).get(attr)
        if isinstance(value, list | tuple):
            found.extend(value)
    return found


def _short_name(variable: Any) -> str:
    """``kernel`` from Keras 3's ``kernel`` or Keras 2's ``dense_1/kernel:0``."""
    return str(getattr(variable, "name", "variable")).rsplit("/", 1)[-1].split(":", 1)[0]


def _training_machinery(obj: object) -> bool:
    module = type(obj).__module__
    return any(part in module for part in _NOT_CONTENT)


def _attributes(obj: object) -> list[tuple[str, Any]]:
    try:
        items = [(k, v) for k, v in vars(obj).items() if isinstance(k, str) and k not in _IGNORED]
    except TypeError:
        return []
    return sorted(items, key=lambda kv: (kv[0].startswith("_"), kv[0]))


_SCALARS = (str, bytes, int, float, bool, type(None), np.ndarray, np.generic)


def attribute_variables(root: Any) -> dict[str, Any]:
    """Every variable reachable from ``root``'s attributes, by attribute path, in a stable order.

    A variable reachable along several paths keeps the first (public names first, then sorted).
    """
    kinds = _Kinds.current()
    found: dict[str, Any] = {}
    claimed: set[int] = set()
    entered: set[int] = set()

    def visit(obj: Any, path: str, depth: int) -> None:
        if isinstance(obj, _SCALARS):
            return
        if isinstance(obj, kinds.variables):
            if id(obj) not in claimed:
                claimed.add(id(obj))
                found[path] = obj
            return
        if depth > _MAX_DEPTH or id(obj) in entered:
            return
        if isinstance(obj, Mapping):
            entered.add(id(obj))
            for key in sorted((k for k in obj if isinstance(k, str | int)), key=str):
                visit(obj[key], f"{path}/{key}" if path else str(key), depth + 1)
        elif isinstance(obj, list | tuple):
            entered.add(id(obj))
            for index, item in enumerate(obj):
                visit(item, f"{path}/{index}" if path else str(index), depth + 1)
        elif (depth == 0 or isinstance(obj, kinds.modules)) and not _training_machinery(obj):
            entered.add(id(obj))
            if depth and _framework_class(obj):  # Keras's own layer: its variables, and the layers it holds
                for variable in _own_variables(obj):
                    visit(variable, f"{path}/{_short_name(variable)}", depth + 1)
                visit(getattr(obj, "_layers", None), f"{path}/layers", depth + 1)
                return
            for name, value in _attributes(obj):
                visit(value, f"{path}/{name}" if path else name, depth + 1)

    visit(root, "", 0)
    return found


def numpy_dtype(variable: Any) -> np.dtype:
    """The numpy dtype of a ``tf.Variable`` (``tf.DType``) or a Keras variable (a dtype name)."""
    dtype = variable.dtype
    numpy = getattr(dtype, "as_numpy_dtype", None)
    return np.dtype(numpy) if numpy is not None else dtype_from_name(str(dtype))


def read_variable(variable: Any) -> np.ndarray:
    """The variable's value as a numpy array sharing TensorFlow's buffer (read-only, no copy).

    ``_read_variable_op`` is ``read_value`` without its identity op (a third of the cost, same
    buffer). TensorFlow copies a variable's buffer before updating it in place while another tensor
    holds it, so the array stays a faithful snapshot of the moment it was read.
    """
    value = variable if callable(getattr(variable, "_read_variable_op", None)) else getattr(variable, "value", variable)
    reader = getattr(value, "_read_variable_op", None) or getattr(value, "read_value", None)
    tensor = reader() if callable(reader) else value
    try:
        return np.asarray(tensor)
    except ValueError:  # a 0-d bfloat16/float8 tensor gives a scalar, not an array: a copy then
        return np.asarray(tensor.numpy())


def adopter() -> Callable[[np.ndarray], Any]:
    """A function numpy array -> tensor sharing its memory (DLPack) where TensorFlow can take it.

    ``tf.convert_to_tensor`` copies a numpy array (and TensorFlow may copy it again to align it);
    importing it through DLPack hands the buffer over instead. Only for arrays nobody else holds.
    """
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


class PinnedHashes:
    """Cheap change detection for TensorFlow-held variables (a mixin of the TensorFlow adapters)."""

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
        return _PINNED if "tensorflow" in sys.modules else None

    def _pins_of(self, model: Any) -> dict[str, tuple[np.ndarray, str]]:
        cache = self._pin_cache()
        try:
            return cache.get(model, {}) if cache is not None else {}
        except TypeError:
            return {}


def save_quietly(tf: Any, obj: Any, path: str, signatures: Any = None) -> None:
    """``tf.saved_model.save`` without its INFO line naming the export's temporary folder
    ("Assets written to: .tmp-export-..."), shown wherever logging is at INFO (a Jupyter kernel)."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        tf.saved_model.save(obj, path, signatures=signatures)
    finally:
        logger.setLevel(level)


def module_signatures(module: Any) -> dict[str, Any]:
    """The concrete functions of ``module``'s ``tf.function`` methods that declare an
    ``input_signature``, by signature name (``__call__`` is ``serving_default``)."""
    found = {}
    for attr in sorted(dir(type(module))):
        declared = getattr(type(module), attr, None)
        if not (hasattr(declared, "input_signature") and hasattr(declared, "get_concrete_function")):
            continue
        bound = getattr(module, attr)
        if getattr(bound, "input_signature", None) is not None:
            found["serving_default" if attr == "__call__" else attr] = bound.get_concrete_function()
    if found and "serving_default" not in found and len(found) == 1:
        found = {"serving_default": next(iter(found.values()))}
    return found
