"""Keras layers mvc_magics defines for merged models (imported only when Keras is in use).

They are registered as Keras serializable objects, so a version that uses them rebuilds from its
stored structure with safe deserialization: the Keras adapter trusts exactly these classes of
this module and still refuses any other code a structure names.

The module's import path is part of the file format (a stored ensemble structure names
``mvc_magics.keras_layers``), so it stays at the package root, beside the adapters that use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mvc_magics")
class MajorityVote(keras.layers.Layer):
    """Per-sample majority vote over several members' class scores.

    Takes a list of ``(batch, classes)`` tensors (one per member) and returns each class's share
    of the votes: member ``i`` gives ``member_weights[i]`` (normalized to sum 1) to its argmax
    class. The argmax of the output is the majority class; ties go to the lowest class index
    (as ``numpy.argmax``). The output is not differentiable; the layer has no variables.
    """

    def __init__(self, member_weights: Sequence[float] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.member_weights = [float(w) for w in member_weights] if member_weights is not None else None

    def _weights_for(self, count: int) -> list[float]:
        weights = self.member_weights or [1.0] * count
        if len(weights) != count:
            raise ValueError(f"MajorityVote has {len(weights)} member weights for {count} inputs")
        total = sum(weights)
        return [w / total for w in weights]

    def call(self, inputs):
        members = list(inputs)
        classes = members[0].shape[-1]
        weights = self._weights_for(len(members))
        votes = [ops.one_hot(ops.argmax(member, axis=-1), classes) * weight
                 for member, weight in zip(members, weights, strict=True)]
        total = votes[0]
        for vote in votes[1:]:
            total = total + vote
        return total

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self) -> dict:
        return {**super().get_config(), "member_weights": self.member_weights}
