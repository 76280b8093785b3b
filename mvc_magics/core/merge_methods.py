"""Merge methods over task vectors: the math, one small function per method, in a registry.

A *task vector* is a fine-tune minus the version it was fine-tuned from (the base). Each method
here combines, for one tensor, the base and the inputs' values (float64 arrays) into the merged
value; it declares its parameters (name, default, allowed range), so the API, the magic's flags,
the merge panel and the stored record all come from one table. Nothing here reads or writes a
file: :mod:`mvc_magics.operations.task_merge` streams stored tensors through these functions.

The semantics follow mergekit's methods of the same names (TIES's trimming and sign election,
DARE's drop-and-rescale, Model Stock's interpolation ratio, SLERP), with the differences said
where a function is defined.

>>> inputs = TensorInputs("w", np.ones(2), [np.array([1.0, 2.0]), np.array([3.0, -2.0])], [1.0, 1.0])
>>> task_arithmetic(inputs, scale=0.5).tolist()
[3.0, 1.0]
"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import MergeError


@dataclass(frozen=True)
class Parameter:
    """One declared parameter of a merge method: its default and the values it accepts."""

    name: str
    default: float | int
    help: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # True: ``low`` itself is refused (density 0 keeps nothing)
    integer: bool = False

    def check(self, value: object, method: str) -> float | int:
        """``value`` as this parameter's type, or :class:`MergeError` saying what is wrong in one line."""
        if not isinstance(value, numbers.Real | str):
            item = getattr(value, "item", None)  # numpy scalars
            value = item() if callable(item) else value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise MergeError(f"{method} {self.name} must be a number, not {value!r}")
        if self.integer:
            if not float(value).is_integer():
                raise MergeError(f"{method} {self.name} must be a whole number, not {value!r}")
            number: float | int = int(value)
        else:
            number = float(value)
        if not math.isfinite(number) or number > self.high or number < self.low or (
                self.low_open and number == self.low):
            if self.low == -math.inf and self.high == math.inf:
                raise MergeError(f"{method} {self.name} must be a finite number, not {value!r}")
            raise MergeError(f"{method} {self.name} must be in {self.range()}, not {value!r}")
        return number

    def range(self) -> str:
        def shown(bound: float) -> str:
            return str(int(bound)) if self.integer else f"{bound:g}"

        low = "-inf" if self.low == -math.inf else shown(self.low)
        high = "inf" if self.high == math.inf else shown(self.high)
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high == math.inf else ']'}"


@dataclass(frozen=True)
class TensorInputs:
    """One tensor of a merge: its name, the base's value, one value per input and each input's weight.

    For a method with a base, ``values`` are the task vectors (input minus base), made by the
    caller as each input is read, so only one float64 copy per input is held; for a method without
    one (``base`` None), the inputs themselves. Float64 arrays of one shape; a method may change
    ``values`` in place (they are its own copies). For a ``one_pass`` method ``values`` is an
    iterator, each input read only when the method takes it: one input's copy is held at a time.
    """

    name: str
    base: np.ndarray | None
    values: Iterable[np.ndarray]
    weights: Sequence[float]


Combine = Callable[..., np.ndarray]


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: its function and what it needs (a base, weights, how many inputs)."""

    name: str
    combine: Combine
    parameters: tuple[Parameter, ...]
    summary: str
    needs_base: bool = True
    weighted: bool = True
    exact_inputs: int | None = None
    one_pass: bool = False  # reads each input once, in order: given an iterator, holds one at a time

    def checked_parameters(self, given: Mapping[str, object]) -> dict[str, float | int]:
        """Every declared parameter (given or default), checked; an undeclared one is refused."""
        declared = {p.name: p for p in self.parameters}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            takes = f"its parameters are {', '.join(declared)}" if declared else "it takes no parameters"
            raise MergeError(f"{self.name} has no parameter {', '.join(map(repr, unknown))}: {takes}")
        return {name: p.check(given[name], self.name) if given.get(name) is not None else p.default
                for name, p in declared.items()}


#: Every merge method over task vectors, by name, in the order they are documented.
BASE_METHODS: dict[str, MergeMethod] = {}

DENSITY_TIES = Parameter("density", 0.2, "fraction of each task vector kept (largest magnitudes)", 0.0, 1.0,
                         low_open=True)
DENSITY_DARE = Parameter("density", 0.5, "probability each task-vector element is kept (then / density)",
                         0.0, 1.0, low_open=True)
SCALE = Parameter("scale", 1.0, "multiplies the merged task vector (lambda)")
SEED = Parameter("seed", 0, "seed of DARE's random drops (same seed, same merge)", 0, 2**32 - 1, integer=True)
T = Parameter("t", 0.5, "interpolation from the first version (0) to the second (1)", 0.0, 1.0)


def merge_method(name: str, summary: str, parameters: Sequence[Parameter] = (), needs_base: bool = True,
                 weighted: bool = True, exact_inputs: int | None = None,
                 one_pass: bool = False) -> Callable[[Combine], Combine]:
    """Register ``function`` as merge method ``name`` with its declared parameters."""

    def register(function: Combine) -> Combine:
        BASE_METHODS[name] = MergeMethod(name, function, tuple(parameters), summary, needs_base, weighted,
                                         exact_inputs, one_pass)
        return function

    return register


# -- the building blocks ---------------------------------------------------------------------------

def trim_to_density(delta: np.ndarray, density: float) -> np.ndarray:
    """TIES's trim, in place: keep the ``ceil(density * size)`` largest magnitudes, zero the rest.

    Among equal magnitudes at the threshold the first in index order are kept (what a stable sort
    by magnitude would keep), so the result is deterministic. mergekit rounds the count down (and
    refuses a count of 0); rounding up keeps at least one element of a small tensor. The threshold
    is found by partition, not by sorting the whole tensor.
    """
    flat = delta.reshape(-1)
    keep = math.ceil(density * flat.size)
    if density >= 1.0 or keep >= flat.size:
        return delta
    magnitudes = np.abs(flat)
    threshold = np.partition(magnitudes, flat.size - keep)[flat.size - keep]  # the keep-th largest
    kept = magnitudes > threshold
    at_threshold = np.flatnonzero(magnitudes == threshold)
    kept[at_threshold[:keep - int(np.count_nonzero(kept))]] = True
    flat[~kept] = 0.0
    return delta


def dare_generator(seed: int, name: str, position: int) -> np.random.Generator:
    """The random generator of DARE's drops for input ``position`` of tensor ``name``.

    Derived from the seed, the tensor's name and the input's position only, so a merge gives the
    same bytes whatever the order tensors are streamed in, and a re-run gives the same version id.
    """
    return np.random.default_rng([seed, position, zlib.crc32(name.encode("utf-8"))])


def drop_and_rescale(delta: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    """DARE (Yu et al. 2024), in place: keep each element with probability ``density``, then divide by
    ``density`` (so the expected task vector is unchanged). Element i is kept when the i-th draw of
    ``rng.random(shape)`` is below ``density``."""
    if density >= 1.0:
        return delta
    delta[rng.random(delta.shape) >= density] = 0.0
    delta /= density
    return delta


def elect_sign(weighted: Sequence[np.ndarray], weights: Sequence[float], normalize: bool) -> np.ndarray:
    """TIES's disjoint merge of weighted task vectors ``w_i * d_i``.

    Each element's sign is the sign of the sum of the weighted values (a zero sum elects +, as
    mergekit does); the values whose sign agrees are summed, and with ``normalize`` divided by the
    sum of their inputs' weights (a weighted mean). Where no value agrees (every kept value zero,
    or none of the elected sign) the result is 0.
    """
    total = np.zeros(np.shape(weighted[0]))
    for value in weighted:  # summed one by one: np.sum of a list would stack a copy of every input
        total += value
    positive = total >= 0  # the elected sign: + where True
    del total
    merged = np.zeros(positive.shape)
    divisor = np.zeros(positive.shape) if normalize else None
    for value, weight in zip(weighted, weights, strict=True):
        agrees = np.where(positive, value > 0, value < 0)
        merged[agrees] += value[agrees]
        if divisor is not None:
            divisor[agrees] += weight
    if divisor is not None:
        divisor[divisor == 0] = 1.0
        merged /= divisor
    return merged


def _weighted(deltas: Iterable[np.ndarray], weights: Sequence[float]) -> list[np.ndarray]:
    """``w_i * d_i``, in place."""
    weighted = []
    for delta, weight in zip(deltas, weights, strict=True):
        delta *= weight
        weighted.append(delta)
    return weighted


def _dare_deltas(inputs: TensorInputs, density: float, seed: int) -> Iterator[np.ndarray]:
    """DARE applied to each task vector as it is taken (lazily: a one-pass method holds one)."""
    return (drop_and_rescale(d, density, dare_generator(seed, inputs.name, position))
            for position, d in enumerate(inputs.values))


def _plus(base: np.ndarray | None, scale: float, merged: np.ndarray) -> np.ndarray:
    """``base + scale * merged``, reusing ``merged``'s memory."""
    assert base is not None
    merged *= scale
    merged += base
    return merged


# -- the methods ------------------------------------------------------------------------------------

@merge_method("task_arithmetic", "base + scale * sum_i w_i (theta_i - base)", [SCALE], one_pass=True)
def task_arithmetic(inputs: TensorInputs, scale: float = 1.0) -> np.ndarray:
    """Task arithmetic (Ilharco et al. 2023): the weighted sum of the task vectors, times ``scale``,
    added to the base. Weights are used as given (default 1 each: the sum, not the mean)."""
    total = np.zeros(np.shape(inputs.base))
    for delta, weight in zip(inputs.values, inputs.weights, strict=True):
        total += weight * delta
    return _plus(inputs.base, scale, total)


@merge_method("ties", "trim each task vector to its top density, elect signs, weighted mean of the agreeing",
              [DENSITY_TIES, SCALE])
def ties(inputs: TensorInputs, density: float = 0.2, scale: float = 1.0) -> np.ndarray:
    """TIES-Merging (Yadav et al. 2023): trim (:func:`trim_to_density`), elect each element's sign,
    take the weighted mean of the kept values that agree (:func:`elect_sign`), ``base + scale * merged``."""
    trimmed = (trim_to_density(d, density) for d in inputs.values)
    return _plus(inputs.base, scale, elect_sign(_weighted(trimmed, inputs.weights), inputs.weights, normalize=True))


@merge_method("dare_linear", "drop task-vector elements at random (keep density, rescale), then sum",
              [DENSITY_DARE, SCALE, SEED], one_pass=True)
def dare_linear(inputs: TensorInputs, density: float = 0.5, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """DARE then task arithmetic: ``base + scale * sum_i w_i dare(d_i)`` (mergekit's ``dare_linear``)."""
    total = np.zeros(np.shape(inputs.base))
    for delta, weight in zip(_dare_deltas(inputs, density, seed), inputs.weights, strict=True):
        total += weight * delta
    return _plus(inputs.base, scale, total)


@merge_method("dare_ties", "drop task-vector elements at random (keep density, rescale), elect signs, sum",
              [DENSITY_DARE, SCALE, SEED])
def dare_ties(inputs: TensorInputs, density: float = 0.5, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """DARE then TIES's sign election; the agreeing values are summed, not averaged (mergekit's
    ``dare_ties``, whose ``normalize`` defaults to off): ``base + scale * sum_i w_i dare(d_i) [agrees]``."""
    weighted = _weighted(_dare_deltas(inputs, density, seed), inputs.weights)
    return _plus(inputs.base, scale, elect_sign(weighted, inputs.weights, normalize=False))


#: |cos| above this: the two tensors are taken as parallel and interpolated linearly (mergekit's value).
PARALLEL = 0.9995


@merge_method("slerp", "spherical interpolation between two versions at t", [T], needs_base=False,
              weighted=False, exact_inputs=2)
def slerp(inputs: TensorInputs, t: float = 0.5) -> np.ndarray:
    """Spherical linear interpolation of the two tensors (as flat vectors) at ``t``: the angle between
    them is divided, the norms interpolated with it; linear (``(1 - t) a + t b``) where they are nearly
    parallel (|cos| > 0.9995) or either is (nearly) zero, where the angle means nothing."""
    a, b = list(inputs.values)
    norm_a, norm_b = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if norm_a <= 1e-8 or norm_b <= 1e-8:
        return (1 - t) * a + t * b
    cos = float(np.sum(a * b)) / (norm_a * norm_b)
    if abs(cos) > PARALLEL:
        return (1 - t) * a + t * b
    theta = math.acos(max(-1.0, min(1.0, cos)))
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)


def mean_cosine(deltas: Sequence[np.ndarray]) -> float:
    """Mean cosine similarity over every pair of task vectors (a zero vector's cosine is 0)."""
    cosines = []
    for i, first in enumerate(deltas):
        for second in deltas[i + 1:]:
            norms = float(np.linalg.norm(first)) * float(np.linalg.norm(second))
            cosines.append(float(np.sum(first * second)) / norms if norms > 0 else 0.0)
    return float(np.mean(cosines))


@merge_method("model_stock", "interpolate from the base towards the inputs' mean by k cos / (1 + (k - 1) cos)",
              weighted=False)
def model_stock(inputs: TensorInputs) -> np.ndarray:
    """Model Stock (Jang et al. 2024): with k inputs and ``cos`` the mean pairwise cosine of their
    task vectors (this tensor, flattened), ``t = k cos / (1 + (k - 1) cos)`` and the result is
    ``t * mean(inputs) + (1 - t) * base`` (computed as ``base + t * mean(task vectors)``). A negative
    mean cosine is taken as 0 (the result is the base; mergekit lets ``t`` go negative,
    extrapolating away from the inputs)."""
    values = list(inputs.values)
    k = len(values)
    cos = min(1.0, max(0.0, mean_cosine(values)))
    ratio = k * cos / (1 + (k - 1) * cos)
    total = np.zeros(np.shape(inputs.base))
    for delta in values:
        total += delta
    total /= k
    return _plus(inputs.base, ratio, total)


def method_named(name: str) -> MergeMethod | None:
    """The registered method ``name`` (None for the averaging and ensemble methods)."""
    return BASE_METHODS.get(name)


__all__ = ["BASE_METHODS", "MergeMethod", "Parameter", "TensorInputs", "dare_generator", "drop_and_rescale",
           "elect_sign", "merge_method", "method_named", "trim_to_density"]
