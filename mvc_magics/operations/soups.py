"""Weight averaging ("model soups"): a weighted mean streamed one tensor at a time, and greedy soups.

Averages stream from the store: memory holds the output plus one tensor of one input, however many
inputs; :func:`average_stream` yields the output one tensor at a time for a streamed commit, so
not even the output is held. A greedy soup (Wortsman et al., 2022) keeps an ingredient only if the held-out score of the
soup does not drop; :class:`Evaluator` scores candidate soups in one reused live model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..adapters import adapter_to_build
from ..core.hashing import HashedArray, tensor_hash
from ..core.manifest import ManifestEntry, dtype_from_name
from ..core.merge_plan import AlignedTensor, MergePlan, accumulator_dtype, add_scaled, short
from ..core.merge_report import EvalFn, MergeReport, MergeStep, score_of
from ..core.refs import infer_direction
from ..core.threads import thread_pool
from ..errors import MergeConflictError, MergeError, UnsupportedModelError
from ..storage.local.store import Store
from ..storage.snapshots.snapshot import TensorReader
from . import fused_average, versions


def _used(plan: MergePlan, members: Sequence[int] | None, raw_weights: Sequence[float] | None
          ) -> tuple[list[tuple[int, float]], float]:
    """(position, raw weight) of each input with a positive weight, and the sum of those weights."""
    members = list(range(len(plan.versions))) if members is None else list(members)
    raw = list(plan.raw_weights if raw_weights is None else raw_weights)
    used = [(i, raw[i]) for i in members if raw[i] > 0]
    return used, math.fsum(w for _, w in used)


def _copied(tensor: AlignedTensor, used: list[tuple[int, float]]) -> bool:
    """Taken from the first used input, not averaged: a generator state, or the same bytes in all."""
    return tensor.take_first or len({tensor.entries[i].hash for i, _ in used}) == 1


def averaged_count(plan: MergePlan, members: Sequence[int] | None = None,
                   raw_weights: Sequence[float] | None = None) -> int:
    """How many tensors :func:`average_state` / :func:`average_stream` average (the rest are copied)."""
    used, _ = _used(plan, members, raw_weights)
    return sum(not _copied(t, used) for t in plan.tensors)


def _found_ahead(reader: TensorReader, plan: MergePlan, used: list[tuple[int, float]]
                 ) -> dict[str, dict[int, np.ndarray]]:
    """Every averaged tensor's inputs stored as they are (:meth:`TensorReader.mapped_views`),
    found before the first is summed. The lookups (~0.1 ms a tensor for five inputs) are HDF5
    calls: made between two tensors, each waited for HDF5's lock and the GIL while the writer
    placed the tensor before (35-45 ms per 5 x 100 MB merge at load 3-4, against 4 ms alone)."""
    return {tensor.name: reader.mapped_views([tensor.entries[i] for i, _ in used])
            for tensor in plan.tensors if not _copied(tensor, used)}


def _average_one(reader: TensorReader, plan: MergePlan, tensor: AlignedTensor, used: list[tuple[int, float]],
                 total: float, sums: Sums, found: dict[int, np.ndarray]) -> np.ndarray | HashedArray:
    """One tensor's weighted mean: float64 sums in input order, divided by the sum of the weights
    (with its hash when the one-pass path computed it). ``found``: its inputs stored as they are,
    as :func:`_found_ahead` looked them up."""
    dtype = dtype_from_name(tensor.dtype)
    entries = [tensor.entries[i] for i, _ in used]
    owners = [plan.versions[i].id for i, _ in used]
    # Inputs stored as they are, found with HDF5's low-level calls (~10 us a tensor, against ~1 ms
    # for a checked read: a merge of ResNet50's 320 tensors makes 320 reads per input); a view of
    # bytes not aligned for the dtype is left to the checked read, which copies it.
    views = {k: v for k, v in found.items() if v.dtype == dtype}
    if (len(views) == len(entries) and int(np.prod(tensor.shape, dtype=np.int64)) >= fused_average.FUSED_MIN_ELEMENTS
            and _plain_float(dtype) and accumulator_dtype(tensor.dtype) == np.float64):
        # Every input stored as it is: hashed and summed in one pass (fused_average), same bits.
        inputs = [(views[k], entries[k], owners[k], weight) for k, (_, weight) in enumerate(used)]
        return fused_average.fused_mean(reader, inputs, total, dtype, tensor.shape)
    acc = sums.empty(tensor.shape, accumulator_dtype(tensor.dtype))
    # Otherwise (small, coded or unusual inputs) inputs are read one after the other, not ahead in
    # a worker: reading ahead saved no time on this 2-core machine under load and its second input
    # copy (decoded in another thread's malloc arena) added 0.3-0.4x the model to the peak RSS. A
    # tensor stored as it is is hashed where it lies in its file's map and summed from there.
    for position, (entry, owner, (_, weight)) in enumerate(zip(entries, owners, used, strict=True)):
        tensor_read = views.get(position)
        if tensor_read is None:
            tensor_read = reader.read(entry, owner=owner, view=True)
        else:
            reader.check(entry, tensor_hash(tensor_read), owner)
            sums.mapped += tensor_read.nbytes
        accumulate(acc, tensor_read, weight, start=position == 0)
        large = tensor_read.nbytes >= _RELEASE_BYTES
        del tensor_read
        if large or sums.mapped >= _MAPPED_BYTES:  # mapped pages given back: one large input tensor's
            reader.release_pages()  # at most, or a few tens of MB of small ones
            sums.mapped = 0
    return mean_of(acc, total, dtype)


def average_state(store: Store, plan: MergePlan, members: Sequence[int] | None = None,
                  raw_weights: Sequence[float] | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Weighted mean of the inputs' float tensors, streamed one tensor at a time.

    Returns (state, tensors averaged). A tensor whose bytes are the same in every used input
    (equal hash) is read once and copied (the commit then reuses its stored bytes); so is a random-generator
    state (taken from the first used input). Sums are taken in
    float64 in input order and divided by the sum of the weights, then cast back to the dtype.
    """
    used, total = _used(plan, members, raw_weights)
    state: dict[str, np.ndarray] = {}
    sums = Sums()
    with TensorReader(store.layout.snapshot_path) as reader:
        ahead = _found_ahead(reader, plan, used)
        for tensor in plan.tensors:
            if _copied(tensor, used):
                first = used[0][0]
                state[tensor.name] = reader.read(tensor.entries[first], owner=plan.versions[first].id)
            else:
                mean = _average_one(reader, plan, tensor, used, total, sums, ahead.pop(tensor.name))
                state[tensor.name] = mean.array if isinstance(mean, HashedArray) else mean
    return state, averaged_count(plan, members, raw_weights)


def average_stream(store: Store, plan: MergePlan) -> Iterator[tuple[str, np.ndarray | HashedArray | ManifestEntry]]:
    """The weighted mean of :func:`average_state` as ``(name, tensor)`` pairs, one tensor at a time,
    for a streamed commit (:func:`~mvc_magics.operations.commit.commit_stream`): only the tensor in
    flight is held, never the whole result. A copied tensor is yielded as the first used input's
    manifest entry: its bytes are already stored, so they are referenced, not read. Each averaged
    tensor is bit for bit the one :func:`average_state` computes (the same function sums it).
    """
    used, total = _used(plan, None, None)
    sums = Sums()
    # The inputs' maps are unmapped on a worker thread (1-8 ms for five 100 MB files), not between
    # the last tensor and the commit's publish.
    with TensorReader(store.layout.snapshot_path, unmap_later=True) as reader:
        ahead = _found_ahead(reader, plan, used)  # before the writer thread starts placing tensors
        for tensor in plan.tensors:
            if _copied(tensor, used):
                yield tensor.name, tensor.entries[used[0][0]]
            else:
                yield tensor.name, _average_one(reader, plan, tensor, used, total, sums, ahead.pop(tensor.name))


# An input tensor at least this large (bytes) has its mapped pages given back once summed; smaller
# ones once this many bytes of them have been summed.
_RELEASE_BYTES = 1 << 20
_MAPPED_BYTES = 32 << 20
# Elements converted to float64 per step: the temporary stays at 512 KiB (in the CPU's cache)
# however large a tensor is.
_CHUNK_ELEMENTS = 1 << 16
# A tensor at least this large (elements) is summed and divided in two halves at once, one on a
# helper thread: numpy's loops release the GIL, and converting float32 to float64 and adding on
# one core was about 65% of a 5 x 100 MB merge's time. Each element's arithmetic is the same
# whichever thread does it, so the bits are those of a one-thread sum.
_SPLIT_ELEMENTS = 1 << 20


def _in_halves(size: int, work: Callable[[int, int], None]) -> None:
    """``work(begin, end)`` over ``range(size)``: in two halves at once (one on a helper thread)
    when ``size`` is large, else in one call here. The first error is raised after both end."""
    if size < _SPLIT_ELEMENTS:
        work(0, size)
        return
    middle = size // 2
    try:
        other = thread_pool("sum", 1).submit(work, middle, size)
    except RuntimeError:  # the interpreter is shutting down: no new threads
        work(0, size)
        return
    try:
        work(0, middle)
    finally:
        other.result()


def _plain_float(dtype: np.dtype) -> bool:
    """float16/32/64: numpy's own loops convert them to float64 exactly, in their own small buffers."""
    return dtype.kind == "f" and dtype.itemsize <= 8


class Sums:
    """The float64 sum of each averaged tensor, in one buffer reused from tensor to tensor: a fresh
    one per tensor would be new memory the kernel maps and zeroes page by page every time."""

    def __init__(self) -> None:
        self._buffer = np.empty(0, np.float64)
        self.mapped = 0  # bytes of small mapped input tensors summed since pages were last given back

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialized array of ``shape`` (the first :func:`accumulate` sets it, ``start``)."""
        if dtype != np.float64:
            return np.empty(shape, dtype)
        size = int(np.prod(shape, dtype=np.int64))
        if self._buffer.size < size:
            self._buffer = np.empty(0, np.float64)  # the old one goes first: never both at once
            self._buffer = np.empty(size, np.float64)
        return self._buffer[:size].reshape(shape)


def accumulate(acc: np.ndarray, tensor: np.ndarray, weight: float, start: bool = False) -> None:
    """``acc += weight * tensor`` in float64, without a full-size float64 temporary: each element
    converted to float64, multiplied by the weight, then added (the same bits whichever way).
    ``start``: ``acc`` holds nothing yet and becomes ``0.0 + weight * tensor`` (the sum a zeroed
    ``acc`` would give, -0.0 included, without a pass to zero it). A large tensor is summed in two
    halves at once (see :data:`_SPLIT_ELEMENTS`)."""
    flat_acc, flat = acc.reshape(-1), tensor.reshape(-1)
    if acc.dtype == np.float64 and _plain_float(flat.dtype):
        if weight == 1.0:  # one pass: numpy converts in its own small buffers

            def add(begin: int, end: int) -> None:
                np.add(0.0 if start else flat_acc[begin:end], flat[begin:end], out=flat_acc[begin:end])

            _in_halves(flat.size, add)
            return
        factor = np.float64(weight)  # a float64 operand: the product is taken in float64

        def add_weighted(first: int, last: int) -> None:
            scratch = np.empty(min(last - first, _CHUNK_ELEMENTS), np.float64)
            for begin in range(first, last, _CHUNK_ELEMENTS):
                end = min(begin + _CHUNK_ELEMENTS, last)
                add_scaled(flat_acc[begin:end], flat[begin:end], factor, start, scratch)

        _in_halves(flat.size, add_weighted)
        return
    if start:
        flat_acc.fill(0)
    for begin in range(0, flat.size, _CHUNK_ELEMENTS):  # complex, bfloat16...: converted by astype
        part = flat[begin:begin + _CHUNK_ELEMENTS].astype(acc.dtype)
        if weight != 1.0:
            part *= weight
        flat_acc[begin:begin + _CHUNK_ELEMENTS] += part


def mean_of(acc: np.ndarray, total: float, dtype: np.dtype) -> np.ndarray:
    """``acc / total`` cast to ``dtype``, as a new array (``acc`` may be reused): divided in float64
    and rounded once to ``dtype``, in one pass where numpy can (two halves at once when large)."""
    if acc.dtype == np.float64 and _plain_float(dtype):
        out = np.empty(acc.shape, dtype)
        flat_acc, flat_out, divisor = acc.reshape(-1), out.reshape(-1), np.float64(total)

        def divide(begin: int, end: int) -> None:
            np.divide(flat_acc[begin:end], divisor, out=flat_out[begin:end], casting="same_kind")

        _in_halves(flat_acc.size, divide)
        return out
    return (acc / total).astype(dtype)


class Evaluator:
    """Scores merged states with ``eval_fn`` in one live model, rebuilt once and reused.

    Keras versions are rebuilt from the first input's stored structure. When there is none (a
    subclassed model), ``template`` (a live model of the same structure) is used and its
    weights are put back afterwards. Dict models are passed as fresh dicts.
    """

    def __init__(self, plan: MergePlan, eval_fn: EvalFn | None, template: Any = None,
                 trusted: Mapping[str, Any] | None = None) -> None:
        self.plan, self.eval_fn, self.template = plan, eval_fn, template
        self.trusted = dict(trusted or {})  # unsafe= / classes= for rebuilding user classes
        self.adapter = adapter_to_build(plan.framework)
        self._model: Any = None
        self._saved: dict[str, np.ndarray] | None = None
        self._history: Any = None

    def model_with(self, state: dict[str, np.ndarray]) -> Any:
        """A live model holding ``state`` (the same object on every call for Keras)."""
        if self.plan.framework == "numpy":
            return self.adapter.build(None, state)
        if self._model is None:
            problem = "has no stored structure to rebuild it from"
            if self.plan.structure is not None:
                try:
                    self._model = self.adapter.build(self.plan.structure, state, **self.trusted)
                    return self._model
                except UnsupportedModelError as exc:  # e.g. a subclassed model: code outside Keras
                    problem = f"cannot be rebuilt: {str(exc).rstrip('.')}"
            if self.template is None:
                raise MergeError(f"{short(self.plan.versions[0])} {problem}. To merge without a rebuild, pass "
                                 "model= or into= (a live model of the same structure) to hold the merged weights.")
            self._saved = self.adapter.get_state(self.template)
            # Its fit history belongs to another run: hidden while borrowed, so the merge's
            # commit does not record it as the merged version's metrics.
            self._history = getattr(self.template, "history", None)
            if self._history is not None:
                self.template.history = None
            self._model = self.template
        self.adapter.set_state(self._model, state)
        return self._model

    def score(self, state: dict[str, np.ndarray]) -> float:
        """``eval_fn`` of a model holding ``state``; NaN when it returns something not finite."""
        if self.eval_fn is None:
            raise MergeError("no evaluation function given")
        return score_of(self.eval_fn, self.model_with(state))

    def close(self) -> None:
        """Put the template's own weights back if it was borrowed."""
        if self._saved is not None:
            self.adapter.set_state(self.template, self._saved)
            self._saved = None
            if self._history is not None:
                self.template.history = self._history


def _rank_key(score: float) -> float:
    return score if math.isfinite(score) else -math.inf


def greedy_soup(store: Store, plan: MergePlan, evaluator: Evaluator, metric: str | None,
                report: MergeReport) -> tuple[list[int], float]:
    """Wortsman et al. (2022): rank the ingredients, then add each if the soup's score does not drop.

    Returns (chosen input positions, score of the final soup). The running float64 sum of the
    chosen ingredients is kept, so each candidate is read once and each step's trial soup equals
    exactly what :func:`average_state` computes for the same ingredients.
    """
    keys, own_scores = _rank(store, plan, evaluator, metric, report)
    order = sorted(range(len(plan.versions)), key=lambda i: -_rank_key(keys[i]))
    report.ranking = [(plan.versions[i].id, own_scores[i]) for i in order]
    averaged = [t for t in plan.tensors if not t.identical and not t.take_first]
    best = order[0]
    with TensorReader(store.layout.snapshot_path) as reader:

        def read(tensor, position: int) -> np.ndarray:
            return reader.read(tensor.entries[position], owner=plan.versions[position].id)

        sums = {t.name: read(t, best).astype(accumulator_dtype(t.dtype)) for t in averaged}
        constant = {t.name: read(t, best) for t in plan.tensors if t.identical or t.take_first}
        chosen = [best]
        # The best ingredient alone, scored by eval_fn like every later soup (ranking may have
        # used a stored metric instead).
        best_score = own_scores[best] if metric is None else evaluator.score(_soup(plan, sums, constant, 1))
        report.steps.append(MergeStep(plan.versions[best].id, best_score, True, 1))
        for candidate in order[1:]:
            trial_sums = {t.name: sums[t.name] + read(t, candidate) for t in averaged}
            trial_score = evaluator.score(_soup(plan, trial_sums, constant, len(chosen) + 1))
            accepted = _rank_key(trial_score) >= _rank_key(best_score)
            report.steps.append(MergeStep(plan.versions[candidate].id, trial_score, accepted, len(chosen) + 1))
            if accepted:
                chosen.append(candidate)
                sums, best_score = trial_sums, trial_score
            del trial_sums
    return chosen, best_score


def _soup(plan: MergePlan, sums: dict[str, np.ndarray], constant: dict[str, np.ndarray], count: int) -> dict:
    state = {}
    for tensor in plan.tensors:
        if tensor.name in constant:
            state[tensor.name] = constant[tensor.name]
        else:
            state[tensor.name] = (sums[tensor.name] / count).astype(dtype_from_name(tensor.dtype))
    return state


def _rank(store: Store, plan: MergePlan, evaluator: Evaluator, metric: str | None,
          report: MergeReport) -> tuple[list[float], list[float]]:
    """(sort keys, higher is better; own scores) of each ingredient: a stored metric or ``eval_fn``."""
    if metric:
        key, _, direction = metric.partition(":")
        direction = direction or infer_direction(key)
        if direction not in ("min", "max"):
            raise MergeError(f"metric direction must be min or max, not {direction!r}")
        missing = [short(v) for v in plan.versions if key not in v.metrics]
        if missing:
            raise MergeConflictError(f"no stored metric {key!r} on {', '.join(missing)}: cannot rank by it")
        report.ranked_by = f"{key}:{direction}"
        sign = -1.0 if direction == "min" else 1.0
        values = [v.metrics[key] for v in plan.versions]
        return [sign * value for value in values], values
    report.ranked_by = report.score_name or "eval_fn"
    scores = [evaluator.score(versions.load_state(store, v)) for v in plan.versions]
    return scores, scores
