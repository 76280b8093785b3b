"""Stable import path of the Keras callback: ``from mvc_magics.keras import CommitCallback``.

The code lives in :mod:`mvc_magics.integrations.keras`; the class is built on first use there, so
importing this module imports no Keras.
"""

from typing import Any

from .integrations import keras as _callbacks
from .integrations.keras import CommitPolicy

__all__ = ["CommitCallback", "CommitPolicy"]  # noqa: F822 - CommitCallback is resolved by __getattr__


def __getattr__(name: str) -> Any:
    return getattr(_callbacks, name)
