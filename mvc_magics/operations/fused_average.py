"""A large tensor's weighted mean over loose inputs in one pass: hashed and summed at once.

Reading the inputs one after the other (hash one input's tensor from its file's map, then add it
to a float64 sum the size of the tensor, then the next input) went over memory three times per
input (the hash, the conversion, the sum read and written back) and kept the two cores busy in
turn, never at once: a 5 x 100 MB merge used ~460 ms of CPU in 550 ms of wall time. Here one
thread hashes every input's bytes in order (BLAKE3 releases the GIL) while the caller's thread
sums the same elements, all inputs of one block at a time into a float64 block that stays in the
CPU's cache and divides the block straight into the output, which the caller hashes in order as
far as it is complete (the streamed commit stores it under that hash instead of reading it
again). Hashing is about half the work of summing, so the helper also sums a block whenever its
hashing is far enough ahead: with the sums on the caller's thread alone, the helper waited for it
half the time (a 5 x 100 MB merge: ~240 ms of CPU summing against ~115 ms hashing; shared, ~155 ms
each). Neither side runs more than a few
MB ahead of the other, and the mapped pages both are past are given back as they go, so memory
holds a few MB of each input, not a tensor of each. Which thread sums a block changes nothing in
its arithmetic.

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
# Elements either side may run ahead of the other (bounds the mapped pages held), and how often
# the mapped pages both are past are given back: 5 inputs' windows take ~15 MB (halved from 1M and
# 512K while the streamed commit kept its last placed tensor; alternating in one process at load 3,
# peak RSS growth 0.87 against 0.96 of the model, same time and CPU; kept for the margin).
_LEAD = 1 << 19
_RELEASE = 1 << 18
_HASHING, _SUMMING = 0, 1


class _Progress:
    """Who does what next, between the caller's thread and the helper (elements of the tensor).

    The helper hashes every input in order; the sums are handed out a block at a time to either
    thread: the caller sums block after block, and the helper sums one whenever its hashing is
    :data:`_LEAD` ahead of the sums (hashing is about half the work of summing, so on two cores
    the helper would otherwise sit idle half the time). Neither side runs more than
    :data:`_LEAD` ahead of the other, so only that much of each input's map is touched; whichever
    thread brings both past the next :data:`_RELEASE` elements gives those mapped pages back
    (``release(begin, end)``)."""

    def __init__(self, size: int, release: Callable[[int, int], None]) -> None:
        self.size, self.release = size, release
        self.hashed = 0  # every input hashed up to here (helper)
        self.claimed = 0  # sum blocks handed out up to here
        self.summed = 0  # every block below this summed and divided into the output
        self._finished: dict[int, int] = {}  # begin -> end of blocks summed beyond a block still running
        self.released = 0
        self.caller_ended = self.helper_ended = False  # that side returned (done or failed)
        self.changed = threading.Condition()

    def claim(self) -> tuple[int, int] | None:
        """The caller's next block to sum (waiting while the sums are :data:`_LEAD` ahead of the
        hashing); None once every block is handed out, or the helper failed."""
        with self.changed:
            while self.claimed < self.size and self.claimed - self.hashed > _LEAD and not self.helper_ended:
                self.changed.wait()
            if self.helper_ended and self.hashed < self.size:
                return None
            return self._claim_block()

    def _claim_block(self) -> tuple[int, int] | None:
        if self.claimed >= self.size:
            return None
        begin = self.claimed
        self.claimed = min(begin + _BLOCK, self.size)
        return begin, self.claimed

    def next_for_helper(self) -> tuple[int, int, int] | None:
        """(what, begin, end): the helper's next step (:data:`_HASHING` a step of every input, or
        :data:`_SUMMING` a block); None when nothing is left for it or the caller failed."""
        with self.changed:
            while True:
                if self.caller_ended and self.summed < self.size:  # the caller failed: stop here
                    return None
                ahead = self.hashed - self.summed >= _LEAD
                if self.hashed < self.size and not ahead:
                    return _HASHING, self.hashed, min(self.hashed + _HASH_STEP, self.size)
                block = self._claim_block()
                if block is not None:
                    return (_SUMMING, *block)
                if self.hashed == self.size:
                    return None
                self.changed.wait()  # every block handed out, the caller finishing the last ones

    def hashed_to(self, end: int) -> None:
        with self.changed:
            self.hashed = end
            span = self._releasable()
            self.changed.notify_all()
        if span is not None:
            self.release(*span)

    def summed_block(self, begin: int, end: int) -> int:
        """Block [begin, end) is summed and divided; returns how far the output is complete."""
        with self.changed:
            self._finished[begin] = end
            while self.summed in self._finished:
                self.summed = self._finished.pop(self.summed)
            span = self._releasable()
            summed = self.summed
            self.changed.notify_all()
        if span is not None:
            self.release(*span)
        return summed

    def _releasable(self) -> tuple[int, int] | None:
        low = min(self.hashed, self.summed)
        if low - self.released >= _RELEASE or (low == self.size and low > self.released):
            span, self.released = (self.released, low), low
            return span
        return None

    def wait_summed(self) -> bool:
        """Wait for the blocks the helper is summing; False when it ended without them (failed)."""
        with self.changed:
            while self.summed < self.size and not self.helper_ended:
                self.changed.wait()
            return self.summed == self.size

    def end(self, side: int) -> None:
        with self.changed:
            if side == _SUMMING:
                self.caller_ended = True
            else:
                self.helper_ended = True
            self.changed.notify_all()


class _Summer:
    """Sums blocks of the inputs into the output (one per thread: its float64 block and scratch)."""

    def __init__(self, flats: Sequence[np.ndarray], factors: Sequence[np.float64], divisor: np.float64,
                 out: np.ndarray) -> None:
        self.flats, self.factors, self.divisor, self.out = flats, factors, divisor, out
        self.block = np.empty(min(_BLOCK, out.size), np.float64)
        self.scratch = np.empty_like(self.block)

    def __call__(self, begin: int, end: int) -> None:
        acc = self.block[:end - begin]
        for position, (flat, factor) in enumerate(zip(self.flats, self.factors, strict=True)):
            add_scaled(acc, flat[begin:end], factor, position == 0, self.scratch)
        np.divide(acc, self.divisor, out=self.out[begin:end], casting="same_kind")


def _helper(flats: Sequence[np.ndarray], hashers: Sequence, progress: _Progress, summer: _Summer) -> None:
    """Feed every input's bytes to its hasher in order, a step of all inputs at a time, and sum
    the blocks :meth:`_Progress.next_for_helper` hands over while the hashing is ahead."""
    try:
        while (step := progress.next_for_helper()) is not None:
            what, begin, end = step
            if what == _SUMMING:
                summer(begin, end)
                progress.summed_block(begin, end)
                continue
            for hasher, flat in zip(hashers, flats, strict=True):
                hasher.update(flat[begin:end].view(np.uint8))
            progress.hashed_to(end)
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
    factors = [np.float64(weight) for *_, weight in inputs]  # float64 operands: float64 products
    divisor = np.float64(total)
    helper = thread_pool("merge-hash", 1).submit(_helper, flats, hashers, progress,
                                                 _Summer(flats, factors, divisor, flat_out))
    try:
        summer, hashed_out = _Summer(flats, factors, divisor, flat_out), 0
        while (block := progress.claim()) is not None:
            summer(*block)
            summed = progress.summed_block(*block)
            if summed > hashed_out:  # the output hashed in order, as far as it is complete
                out_hasher.update(flat_out[hashed_out:summed].view(np.uint8))
                hashed_out = summed
        if progress.wait_summed() and hashed_out < size:  # the helper's last blocks
            out_hasher.update(flat_out[hashed_out:].view(np.uint8))
    finally:  # the helper finishes (or, on an error here, stops) before the maps are used again
        progress.end(_SUMMING)
        wait([helper])
    helper.result()  # its error, if it had one
    for hasher, (_, entry, owner, _) in zip(hashers, inputs, strict=True):
        reader.check(entry, hasher.hexdigest(), owner)
    return HashedArray(out, out_hasher.hexdigest())
