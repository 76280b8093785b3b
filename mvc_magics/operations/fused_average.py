"""A large tensor's weighted mean over loose inputs in one pass: hashed and summed at once.

Reading the inputs one after the other (hash one input's tensor from its file's map, then add it
to a float64 sum the size of the tensor, then the next input) went over memory three times per
input (the hash, the conversion, the sum read and written back) and kept the two cores busy in
turn, never at once: a 5 x 100 MB merge used ~460 ms of CPU in 550 ms of wall time. Here one
thread hashes every input's bytes in order, a few MB ahead (BLAKE3 releases the GIL), while the
caller's thread sums the pieces just hashed, all inputs of one block at a time into a float64
block that stays in the CPU's cache, and divides the block straight into the output. The mapped
pages both threads are done with are given back as they go, so memory holds a few MB of each
input, not a tensor of each.

Nothing changes in what is computed: each element is ``0.0 + w0 * x0``, then ``+ wi * xi`` in input
order (a product taken in float64 where the weight is not 1), divided by the sum of the weights
and rounded once to the dtype, as :func:`.soups.accumulate` and :func:`.soups.mean_of` do. Every
input's hash is checked before the result is returned: a damaged input raises
:class:`~mvc_magics.errors.IntegrityError` naming it, and nothing summed from it leaves here.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import wait

import numpy as np

from ..core.hashing import tensor_hasher
from ..core.manifest import ManifestEntry
from ..core.threads import thread_pool
from ..storage.snapshots.snapshot import TensorReader

# Tensors at least this large (elements) are averaged in one pass; smaller ones input by input
# (a helper thread and its hand-offs cost more than they save there).
FUSED_MIN_ELEMENTS = 1 << 20
_BLOCK = 1 << 16  # elements summed per step: a 512 KiB float64 block, in cache
_HASH_STEP = 1 << 18  # elements of each input hashed per step
_LEAD = 1 << 20  # elements the hashing may run ahead of the sums (bounds the mapped pages held)
_RELEASE = 1 << 20  # mapped pages given back every this many elements summed


class _Progress:
    """How far the hashing thread and the summing thread are (elements), shared between them."""

    def __init__(self) -> None:
        self.hashed = self.summed = 0
        self.stopped = False  # the summing side ended (done or failed): the hashing side stops
        self.finished = False  # the hashing side ended (done or failed)
        self.changed = threading.Condition()

    def advance(self, attribute: str, value: int) -> None:
        with self.changed:
            setattr(self, attribute, value)
            self.changed.notify_all()

    def wait_hashed(self, end: int) -> None:
        if self.hashed >= end:
            return
        with self.changed:
            while self.hashed < end and not self.finished:
                self.changed.wait()

    def wait_summed(self, begin: int) -> bool:
        """Wait until the hashing may start ``begin``; False when the summing side has stopped."""
        with self.changed:
            while begin - self.summed > _LEAD and not self.stopped:
                self.changed.wait()
            return not self.stopped


def _hash_inputs(flats: Sequence[np.ndarray], hashers: Sequence, progress: _Progress) -> None:
    """Feed every input's bytes to its hasher in order, a step of all inputs at a time."""
    try:
        size = flats[0].size
        for begin in range(0, size, _HASH_STEP):
            if not progress.wait_summed(begin):
                return
            end = min(begin + _HASH_STEP, size)
            for hasher, flat in zip(hashers, flats, strict=True):
                hasher.update(flat[begin:end].view(np.uint8))
            progress.advance("hashed", end)
    finally:
        progress.advance("finished", True)


def fused_mean(reader: TensorReader, inputs: Sequence[tuple[np.ndarray, ManifestEntry, str, float]], total: float,
               dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The weighted mean of ``inputs`` ((unverified mapped view, its entry, owner version id,
    weight): :meth:`TensorReader.mapped_views`) as a new array of ``dtype``, every input's hash
    checked (:meth:`TensorReader.check`) before it is returned."""
    flats = [np.ascontiguousarray(view).reshape(-1) for view, *_ in inputs]
    hashers = [tensor_hasher(view.dtype, view.shape) for view, *_ in inputs]
    out = np.empty(shape, dtype)
    flat_out, size = out.reshape(-1), flats[0].size
    progress = _Progress()
    hashing = thread_pool("merge-hash", 1).submit(_hash_inputs, flats, hashers, progress)
    try:
        block = np.empty(min(_BLOCK, size), np.float64)
        scratch = np.empty_like(block)
        factors = [np.float64(weight) for *_, weight in inputs]  # float64 operands: float64 products
        divisor, released = np.float64(total), 0
        for begin in range(0, size, _BLOCK):
            end = min(begin + _BLOCK, size)
            progress.wait_hashed(end)  # summed just after hashing: the bytes are still in cache
            acc = block[:end - begin]
            for position, (flat, factor) in enumerate(zip(flats, factors, strict=True)):
                part = flat[begin:end]
                if factor != 1.0:
                    part = np.multiply(part, factor, out=scratch[:end - begin])
                np.add(0.0 if position == 0 else acc, part, out=acc)
            np.divide(acc, divisor, out=flat_out[begin:end], casting="same_kind")
            progress.advance("summed", end)
            if end - released >= _RELEASE or end == size:
                for flat in flats:  # both threads are past these pages
                    reader.release_pages(flat[released:end])
                released = end
    finally:  # the hashing thread stops too, and has stopped reading the maps when this returns
        progress.advance("stopped", True)
        wait([hashing])
    hashing.result()  # its error, if it had one
    for hasher, (_, entry, owner, _) in zip(hashers, inputs, strict=True):
        reader.check(entry, hasher.hexdigest(), owner)
    return out
