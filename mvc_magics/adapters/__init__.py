"""Framework adapters: one module per framework behind the :class:`Adapter` interface."""

from __future__ import annotations

from ..errors import UnsupportedModelError
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


__all__ = ["ADAPTERS", "Adapter", "adapter_for", "adapter_named"]
