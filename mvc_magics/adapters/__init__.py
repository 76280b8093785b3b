"""Framework adapters: one module per framework behind the :class:`Adapter` interface."""

from __future__ import annotations

import importlib.util
import sys

from ..errors import EXTRA_OF_PACKAGE, MissingFrameworkError, UnsupportedModelError
from .base import Adapter
from .jax import JaxAdapter
from .keras import KerasAdapter
from .keras_optim import KerasOptimizerAdapter
from .lightgbm import LightGBMAdapter
from .numpy_dict import NumpyDictAdapter
from .sklearn import SklearnAdapter
from .tensorflow import TensorFlowAdapter
from .tf_keras import TfKerasAdapter
from .torch import TorchAdapter
from .torch_optim import TorchOptimizerAdapter

# Order matters only where one object could match two adapters (none today); the framework
# itself is imported by an adapter only once it is handling such a model.
# A flat dict of numpy arrays stays a numpy model; nested or JAX-array pytrees are JAX models.
# Keras models are tf.Modules too (tf_keras) or hold them: the Keras adapters come before tf.Module's.
ADAPTERS: list[Adapter] = [KerasAdapter(), KerasOptimizerAdapter(), TfKerasAdapter(), TensorFlowAdapter(),
                           TorchAdapter(), TorchOptimizerAdapter(), SklearnAdapter(), LightGBMAdapter(),
                           NumpyDictAdapter(), JaxAdapter()]


def adapter_for(obj: object) -> Adapter:
    """The adapter that handles ``obj``; :class:`UnsupportedModelError` when none does."""
    for adapter in ADAPTERS:
        if adapter.handles(obj):
            return adapter
    raise UnsupportedModelError(
        f"cannot version a {type(obj).__name__}: supported are Keras 3 and 2 models, TensorFlow tf.Modules, "
        "PyTorch modules, scikit-learn estimators, LightGBM boosters, JAX pytrees/Flax NNX modules and "
        "dict[str, numpy.ndarray]"
    )


def adapter_named(framework: str) -> Adapter:
    """The adapter for a stored version's framework name."""
    for adapter in ADAPTERS:
        if adapter.framework == framework:
            return adapter
    raise UnsupportedModelError(f"no adapter for framework {framework!r} in this mvc_magics")


# The packages a rebuild of a stored framework's models imports (their extras: EXTRA_OF_PACKAGE). No
# framework is a dependency of the core, so a version may come from a machine that had one this
# machine lacks (a pull, a shared store).
FRAMEWORK_PACKAGES: dict[str, tuple[str, ...]] = {
    "keras": ("keras", "tensorflow"), "keras-optimizer": ("keras", "tensorflow"),
    "tf_keras": ("tf_keras", "tensorflow"), "tensorflow": ("tensorflow",), "torch": ("torch",),
    "torch-optimizer": ("torch",), "sklearn": ("sklearn", "skops"), "lightgbm": ("lightgbm",), "jax": ("jax",),
}


def _installed(package: str) -> bool:
    if package in sys.modules:
        return True
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken install counts as missing
        return False


def require_framework(framework: str | None) -> None:
    """Raise :class:`MissingFrameworkError`, one line naming the extra to install, when a version of
    ``framework`` cannot be rebuilt here because its framework is not installed.

    Looks for the packages without importing them (``importlib.util.find_spec``).
    """
    missing = [p for p in FRAMEWORK_PACKAGES.get(framework or "", ()) if not _installed(p)]
    if missing:
        raise MissingFrameworkError(f"this is a {framework} model and {missing[0]} is not installed here: "
                                    f'pip install "mvc_magics[{EXTRA_OF_PACKAGE[missing[0]]}]"')


def adapter_to_build(framework: str) -> Adapter:
    """The adapter for rebuilding a stored version of ``framework`` (checkout into a new variable,
    export, ensemble), after :func:`require_framework`."""
    require_framework(framework)
    return adapter_named(framework)


__all__ = ["ADAPTERS", "FRAMEWORK_PACKAGES", "Adapter", "adapter_for", "adapter_named", "adapter_to_build",
           "require_framework"]
