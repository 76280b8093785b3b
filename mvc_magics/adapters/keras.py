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
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..core.progress import user_stacklevel
from ..errors import ExportError, UnsupportedModelError
from .base import match_state
from .keras_structure import foreign_modules, rebuild, serialize
from .tf_variables import PinnedHashes, adopter, attribute_variables, numpy_dtype, read_variable
from .trust import Classes

_KERAS_BASES = {"Layer", "Model", "Sequential", "Functional"}


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _keras():
    _quiet_tensorflow()
    import keras

    return keras


class KerasAdapter(PinnedHashes):
    """Keras 3 models: every variable (trainable and not), the JSON structure, fit history."""

    framework = "keras"

    def __init__(self) -> None:
        # model -> (id of its History, epochs) last used by a commit; weak so models can be freed
        self._captured: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    package = "keras"

    def library(self) -> Any:
        """The Keras package of this adapter's models (imported here, on first use)."""
        return _keras()

    def handles(self, obj: object) -> bool:
        if self.package not in sys.modules:
            return False
        return any(
            cls.__module__.split(".")[0] == self.package and cls.__name__ in _KERAS_BASES
            for cls in type(obj).__mro__
        )

    def variable_name(self, variable: Any) -> str:
        return variable.name

    # -- variables ------------------------------------------------------------------------

    def named_variables(self, model: Any) -> dict[str, Any]:
        """Stable name -> Keras variable for every variable of ``model``, deterministic order."""
        keras = self.library()
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
                    claim(variable, f"{path}/{self.variable_name(variable)}")
                for attr, value in sorted(vars(sub).items()):
                    if isinstance(value, seed_generator):
                        claim(value.state, f"{path}/{attr}/{value.state.name}")

        seed_generator = getattr(getattr(keras, "random", None), "SeedGenerator", ())
        walk(model, "")
        self.claim_own(model, claim)
        ordered: dict[str, Any] = {}
        for key, name in claimed.items():
            unique, n = name, 1
            while unique in ordered:
                n += 1
                unique = f"{name}#{n}"
            ordered[unique] = variables[key]
        return ordered

    def claim_own(self, model: Any, claim: Any) -> None:
        """Name the variables the model holds itself (not through a layer)."""
        for variable in model.weights:  # variables the model holds directly (subclassed models)
            claim(variable, f"{model.name}/{variable.name}")
        for path, variable in attribute_variables(model).items():  # raw tf.Variable attributes: Keras 3
            claim(variable, path)                                   # does not track them, we do

    def get_state(self, model: Any) -> dict[str, np.ndarray]:
        keras = self.library()
        named = self.named_variables(model)
        if not named:
            raise UnsupportedModelError(
                f"The Keras model {getattr(model, 'name', '')!r} is not built yet and has no variables: "
                "call it on data or build() it first, then commit."
            )
        if self.package == "keras":
            _warn_untracked(model, [n for n, v in named.items() if not isinstance(v, keras.Variable)])
        to_numpy = _zero_copy_reader(keras)
        return {name: to_numpy(variable) for name, variable in named.items()}

    # set_state takes the verified hashes of ``state`` and pins what it assigned (see load_version).
    remembers_loaded = True

    def set_state(self, model: Any, state: Mapping[str, np.ndarray], owned: bool = False,
                  hashes: Mapping[str, str] | None = None) -> None:
        """Assign ``state`` (all shapes checked first). ``owned``: the arrays belong to this call
        (a checkout's freshly read tensors), so the variables may adopt their memory instead of
        copying it twice through ``tf.convert_to_tensor``. ``hashes`` (stored name -> verified
        hash): the variables assigned exactly are remembered with them (:meth:`remember_hashes`),
        so the next status or commit need not rehash; found by this call's own walk of the model.
        """
        keras = self.library()
        named = self.named_variables(model)
        live = {name: (tuple(v.shape), numpy_dtype(v).name) for name, v in named.items()}
        pairs = match_state(live, state)  # raises before any assignment
        adopt = adopter() if owned and keras.backend.backend() == "tensorflow" else None
        for live_name, stored_name in pairs.items():
            value = state[stored_name]
            variable = named[live_name]
            if value.dtype != numpy_dtype(variable):  # a tf.Variable does not cast on assign
                value = value.astype(numpy_dtype(variable))
            elif adopt is not None:
                value = adopt(value)
            variable.assign(value)
        if hashes is not None:
            exact = {live: stored for live, stored in pairs.items()
                     if stored in hashes and state[stored].dtype == numpy_dtype(named[live])}
            read = _zero_copy_reader(keras)
            self.remember_hashes(model, {live: read(named[live]) for live in exact},
                                 {live: hashes[stored] for live, stored in exact.items()})

    def _pin_cache(self) -> weakref.WeakKeyDictionary | None:
        # Only TensorFlow variables copy on write (see PinnedHashes.known_hashes).
        if "tensorflow" not in sys.modules or self.library().backend.backend() != "tensorflow":
            return None
        return super()._pin_cache()

    # -- structure ------------------------------------------------------------------------

    def structure(self, model: Any) -> object | None:
        return serialize(self.library(), model)

    def build(self, structure: object, state: Mapping[str, np.ndarray], unsafe: bool = False,
              classes: Classes | None = None) -> Any:
        """A new model from ``structure`` holding ``state``; classes outside Keras need the opt-in
        (``classes=`` or ``unsafe=True``, see :mod:`mvc_magics.adapters.trust`)."""
        keras = self.library()
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
        keras = self.library()
        raw = [n for n, v in self.named_variables(model).items()
               if self.package == "keras" and not isinstance(v, keras.Variable)]
        if raw and fmt != "savedmodel":
            raise ExportError(f"A {fmt} file holds only the variables Keras tracks, and {type(model).__name__}'s raw "
                              f"tf.Variables ({', '.join(raw[:4])}) would be missing; export it as a SavedModel "
                              "(--format savedmodel), which keeps them.")
        if fmt == "keras":
            model.save(path)
        elif fmt == "weights-h5":
            model.save_weights(path)
        elif self.library().backend.backend() != "tensorflow":
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
        return _is_compiled(model)

    # -- metadata -------------------------------------------------------------------------

    def extra_metadata(self, model: Any) -> dict:
        compile_config = None
        try:
            if _is_compiled(model):
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
        keras = self.library()
        versions = {"keras": keras.__version__, "backend": keras.backend.backend()}
        tf = sys.modules.get("tensorflow")
        if tf is not None:
            versions["tensorflow"] = getattr(tf, "__version__", "unknown")
        return versions


# Models already told that Keras does not train their raw tf.Variables (weak: models can be freed).
_WARNED: weakref.WeakSet = weakref.WeakSet()


def _warn_untracked(model: Any, names: list[str]) -> None:
    """Say once per model when a Keras 3 model holds raw ``tf.Variable``s: versioned here by attribute
    name, but invisible to Keras (``trainable_variables``, ``fit``, ``save_weights``)."""
    if not names or model in _WARNED:
        return
    _WARNED.add(model)
    shown = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    warnings.warn(
        f"{type(model).__name__} holds tf.Variable attributes ({shown}) that Keras 3 does not track: "
        "mvc_magics versions them by attribute name, but model.trainable_variables, fit() and "
        "save_weights() do not see them. Create them with self.add_weight(...) for Keras to train them, "
        "or pass [model.w, ...] to GradientTape and the optimizer yourself.", UserWarning, stacklevel=user_stacklevel())


def _is_compiled(model: Any) -> bool:
    """Keras 3 says ``model.compiled``; Keras 2 (tf_keras) ``model._is_compiled``."""
    return bool(getattr(model, "compiled", False) or getattr(model, "_is_compiled", False))


def _zero_copy_reader(keras: Any):
    """A function variable -> numpy array, without copying the bytes where the backend allows it
    (TensorFlow: :func:`.tf_variables.read_variable`; other backends: ``convert_to_numpy``, a copy)."""
    if keras.backend.backend() == "tensorflow":
        return read_variable
    return lambda variable: np.asarray(keras.ops.convert_to_numpy(variable))
