"""The small interface every framework adapter implements."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import numpy as np

from ..core.names import pair_names
from ..errors import ShapeMismatchError, UnsupportedModelError


class Adapter(Protocol):
    """How mvc_magics reads, writes and rebuilds the models of one framework."""

    framework: str

    def handles(self, obj: object) -> bool:
        """True when ``obj`` is a model of this framework (must not import the framework)."""

    def get_state(self, model: Any) -> dict[str, np.ndarray]:
        """Every variable of ``model`` by stable name, in a deterministic order."""

    def set_state(self, model: Any, state: Mapping[str, np.ndarray], owned: bool = False) -> None:
        """Assign ``state`` to ``model``: check everything first, then assign (all or nothing).

        ``owned``: the caller hands the arrays over (it will not use them again), so the model may
        keep their memory instead of copying it.
        """

    def structure(self, model: Any) -> object | None:
        """A JSON-able description to rebuild the model from, or None when not serializable."""

    def build(self, structure: object, state: Mapping[str, np.ndarray], unsafe: bool = False,
              classes: Iterable[type] | Mapping[str, type] | None = None) -> Any:
        """A new model from ``structure`` holding ``state``.

        A structure naming user code (a class defined in the notebook or the user's package) is
        rebuilt only with the caller's opt-in: ``classes`` (the classes, or names -> classes) it
        trusts, ``unsafe`` looks them up by module and name (see :mod:`.trust`); otherwise
        :class:`UnsupportedModelError` says how to opt in.
        """

    def extra_metadata(self, model: Any) -> dict:
        """Metadata outside the identity (compile configuration...)."""

    def fit_metrics(self, model: Any) -> dict[str, float]:
        """Metrics of the last epoch of the model's most recent training run, if any."""

    def library_versions(self) -> dict[str, str]:
        """Versions of the framework libraries, recorded with each commit."""


def match_state(
    live: Mapping[str, tuple[tuple[int, ...], str]], stored: Mapping[str, np.ndarray]
) -> dict[str, str]:
    """Map each live variable name to the stored tensor name it receives, checking every shape.

    Names are matched exactly; when they differ (a notebook re-ran the cell that built the model,
    so Keras numbered the layers anew) the rest are paired by :func:`~mvc_magics.core.names.pair_names`
    (same kind of name, in the order of their numbers: never by the order of a manifest, and never
    a name that exists on both sides), and every shape must still agree. Raises
    :class:`ShapeMismatchError` naming the first problems, before any assignment.
    """
    live_names, stored_names = list(live), list(stored)
    pairs = pair_names(live_names, stored_names)
    if pairs is None:
        missing = [n for n in stored_names if n not in live]
        extra = [n for n in live_names if n not in stored]
        detail = []
        if missing:
            detail.append(f"not in the model: {', '.join(missing[:3])}")
        if extra:
            detail.append(f"not in the version: {', '.join(extra[:3])}")
        if not detail:
            detail.append("the variables differ")
        raise ShapeMismatchError(
            f"the version does not fit this model ({len(stored_names)} stored tensors, "
            f"{len(live_names)} model variables; {'; '.join(detail)})"
        )
    problems = []
    for live_name, stored_name in pairs.items():
        shape, _dtype = live[live_name]
        if tuple(stored[stored_name].shape) != tuple(shape):
            problems.append(f"{live_name}: model {tuple(shape)} vs stored {tuple(stored[stored_name].shape)}")
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ShapeMismatchError(f"shape mismatch, model left unchanged: {'; '.join(problems[:3])}{more}")
    return pairs


# Optional adapter capabilities: an adapter that tracks which variables changed since it last saw
# their hashes (Keras: a cheap per-variable check) vouches for them, so commit and status skip hashing.

def known_hashes(adapter: Any, model: Any, state: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Hashes the adapter can vouch for without rehashing (see ``KerasAdapter.known_hashes``)."""
    known = getattr(adapter, "known_hashes", None)
    return known(model, state) if known is not None else {}


def remember_hashes(adapter: Any, model: Any, state: Mapping[str, np.ndarray], hashes: Mapping[str, str]) -> None:
    """Tell the adapter the hashes of ``state`` as it is now in ``model`` (no-op when unsupported)."""
    remember = getattr(adapter, "remember_hashes", None)
    if remember is not None:
        remember(model, state, hashes)


def load_version(adapter: Any, model: Any, structure: object, state: Mapping[str, np.ndarray],
                 hashes: Mapping[str, str] | None = None, checked: Callable[[], None] | None = None) -> Any:
    """Make ``model`` hold a stored version and return the model holding it.

    Adapters whose models carry more than tensors (a scikit-learn estimator's hyper-parameters) use
    the version's structure too, and adapters of immutable models (a JAX pytree) return a new one
    (``load_version``); the others assign the tensors in place (``set_state``, with arrays the
    caller will not use again) and the model itself is returned. ``hashes``: stored name ->
    verified hash of ``state``, for an adapter that remembers them as it assigns.

    ``checked`` is called once the model accepted ``state`` (every name, shape and dtype checked),
    before the first tensor is written, by an adapter that ``signals_checked``: nothing refuses the
    load after it (a checkout then moves HEAD even if the copy is interrupted). Others never call it.
    """
    load = getattr(adapter, "load_version", None)
    if load is not None:
        result = load(model, structure, state)
        return model if result is None else result
    # Arrays handed over may be adopted by the model; an adapter that copies (``copies_in``) may be
    # given read-only views of a mapped file instead, valid only during this call. An adapter that
    # ``remembers_loaded`` is given the verified hashes of ``state`` (its set_state pins them).
    extra: dict[str, Any] = {}
    if hashes is not None and getattr(adapter, "remembers_loaded", False):
        extra["hashes"] = hashes
    if checked is not None and getattr(adapter, "signals_checked", False):
        extra["checked"] = checked
    adapter.set_state(model, state, owned=not getattr(adapter, "copies_in", False), **extra)
    return model


class OptimizerAdapter:
    """What every optimizer-state adapter shares: an optimizer is never rebuilt on its own, and it
    carries no metadata or fit metrics of its own (see ``keras_optim`` and ``torch_optim``)."""

    def build(self, structure: object, state: Mapping[str, np.ndarray], unsafe: bool = False,
              classes: Iterable[type] = ()) -> Any:
        raise UnsupportedModelError("an optimizer is restored into the optimizer of a live model "
                                    "(%mvc_checkout REF model --optimizer opt), never rebuilt on its own")

    def extra_metadata(self, optimizer: Any) -> dict:
        return {}

    def fit_metrics(self, optimizer: Any) -> dict[str, float]:
        return {}
