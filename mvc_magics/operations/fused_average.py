"""A large tensor's weighted mean over loose inputs in one pass: hashed and summed at once.

Reading the inputs one after the other (hash one input's tensor from its file's map, then add it
to a float64 sum the size of the tensor, then the next input) went over memory three times per
input (the hash, the conversion, the sum read and written back) and kept the two cores busy in
turn, never at once: a 5 x 100 MB merge used ~460 ms of CPU in 550 ms of wall time. Here one
thread hashes every input's bytes in order (BLAKE3 releases the GIL) while the caller's thread
sums the same elements, all inputs of one block at a time into a float64 block that stays in the
CPU's cache, divides the block straight into the output and hashes it there (the streamed commit
stores it under that hash instead of reading it again). Neither runs more than a few MB ahead of
the other, and the mapped pages both are past are given back as they go, so memory holds a few
MB of each input, not a tensor of each.

Nothing changes in what is computed: each element is ``0.0 + w0 * x0``, then ``+ wi * xi`` in input
order (a product taken in float64 where the weight is not 1:
:func:`~mvc_magics.core.merge_plan.add_scaled`, as :func:`.soups.accumulate` sums), divided by
the sum of the weights and rounded once to the dtype, as :func:`.soups.mean_of` does. Every
input's hash is checked before the result is returned: a damaged input raises
:class:`~mvc_magics.errors.IntegrityError` naming it, and nothing summed from it leaves here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import wait

import numpy as np

from ..core.hashing import HashedArray, tensor_hasher
from ..core.manifest import ManifestEntry
from ..core.merge_plan import add_scaled
from ..core.threads import thread_pool
from ..storage.snapshots.snapshot import TensorReader

# Tensors at least this large (elements) are averaged in one pass; smaller ones input by input
# (a helper thread and its hand-offs cost more than they save there).
FUSED_MIN_ELEMENTS = 1 << 20
_BLOCK = 1 << 16  # elements summed per step: a 512 KiB float64 block, in cache
_HASH_STEP = 1 << 18  # elements of each input hashed per step
_LEAD = 1 << 20  # elements either thread may run ahead of the other (bounds the mapped pages held)
_RELEASE = 1 << 19  # mapped pages both threads are past are given back every this many elements
_HASHING, _SUMMING = 0, 1


class _Progress:
    """How far the hashing and the summing thread are (elements). Neither waits for the other
    unless it is :data:`_LEAD` ahead (on a busy machine a thread put to sleep at every block waits
    for the scheduler each time); whichever brings both past the next :data:`_RELEASE` elements
    gives those mapped pages back (``release(begin, end)``)."""

    def __init__(self, size: int, release: Callable[[int, int], None]) -> None:
        self.size, self.release = size, release
        self.position = [0, 0]  # elements done by the hashing, the summing thread
        self.ended = [False, False]  # that thread returned (done or failed): nobody waits for it
        self.released = 0
        self.changed = threading.Condition()

    def may_start(self, side: int, begin: int) -> bool:
        """Wait while ``side`` is more than :data:`_LEAD` ahead of the other; False once the summing
        thread has ended (the hashing thread then has nothing left to do, unless it was done)."""
        other = 1 - side
        if begin - self.position[other] > _LEAD and not self.ended[other]:
            with self.changed:
                while begin - self.position[other] > _LEAD and not self.ended[other]:
                    self.changed.wait()
        return side == _SUMMING or not self.ended[_SUMMING] or self.position[_SUMMING] == self.size

    def advance(self, side: int, end: int) -> None:
        with self.changed:
            self.position[side] = end
            low, span = min(self.position), None
            if low - self.released >= _RELEASE or (low == self.size and low > self.released):
                span, self.released = (self.released, low), low
            self.changed.notify_all()
        if span is not None:
            self.release(*span)

    def end(self, side: int) -> None:
        with self.changed:
            self.ended[side] = True
            self.changed.notify_all()


def _hash_inputs(flats: Sequence[np.ndarray], hashers: Sequence, progress: _Progress) -> None:
    """Feed every input's bytes to its hasher in order, a step of all inputs at a time."""
    try:
        for begin in range(0, progress.size, _HASH_STEP):
            if not progress.may_start(_HASHING, begin):
                return
            end = min(begin + _HASH_STEP, progress.size)
            for hasher, flat in zip(hashers, flats, strict=True):
                hasher.update(flat[begin:end].view(np.uint8))
            progress.advance(_HASHING, end)
    finally:
        progress.end(_HASHING)


def fused_mean(reader: TensorReader, inputs: Sequence[tuple[np.ndarray, ManifestEntry, str, float]], total: float,
               dtype: np.dtype, shape: tuple[int, ...]) -> HashedArray:
    """The weighted mean of ``inputs`` ((unverified mapped view, its entry, owner version id,
    weight): :meth:`TensorReader.mapped_views`) as a new array of ``dtype`` with its hash (each
    block hashed as it is divided, in cache), every input's hash checked
    (:meth:`TensorReader.check`) before it is returned."""
    flats = [np.ascontiguousarray(view).reshape(-1) for view, *_ in inputs]
    hashers = [tensor_hasher(view.dtype, view.shape) for view, *_ in inputs]
    out = np.empty(shape, dtype)
    out_hasher = tensor_hasher(out.dtype, out.shape)
    flat_out, size = out.reshape(-1), flats[0].size

    def release(begin: int, end: int) -> None:
        for flat in flats:
            reader.release_pages(flat[begin:end])

    progress = _Progress(size, release)
    hashing = thread_pool("merge-hash", 1).submit(_hash_inputs, flats, hashers, progress)
    try:
        block = np.empty(min(_BLOCK, size), np.float64)
        scratch = np.empty_like(block)
        factors = [np.float64(weight) for *_, weight in inputs]  # float64 operands: float64 products
        divisor = np.float64(total)
        for begin in range(0, size, _BLOCK):
            progress.may_start(_SUMMING, begin)
            end = min(begin + _BLOCK, size)
            acc = block[:end - begin]
            for position, (flat, factor) in enumerate(zip(flats, factors, strict=True)):
                add_scaled(acc, flat[begin:end], factor, position == 0, scratch)
            np.divide(acc, divisor, out=flat_out[begin:end], casting="same_kind")
            out_hasher.update(flat_out[begin:end].view(np.uint8))
            progress.advance(_SUMMING, end)
    finally:  # the hashing thread finishes (or, on an error here, stops) before the maps are used again
        progress.end(_SUMMING)
        wait([hashing])
    hashing.result()  # its error, if it had one
    for hasher, (_, entry, owner, _) in zip(hashers, inputs, strict=True):
        reader.check(entry, hasher.hexdigest(), owner)
    return HashedArray(out, out_hasher.hexdigest())
