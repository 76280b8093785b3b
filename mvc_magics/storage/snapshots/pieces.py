"""Many tensors hashed (and copied) a piece at a time by several threads at once.

A tensor's hash takes its bytes in order, so two threads cannot hash one tensor at once. Handed
out whole, six 16.7 MB tensors (a 100 MB MLP) kept the two cores busy for only ~70% of the
hashing: a thread that finished early found nothing left while another had a whole tensor to go,
and a worker woken late took one more. Here each tensor is a chain of pieces: a thread takes the
next piece of the tensor with the most bytes left that no other thread holds, so the tensors end
together and a core idles at most one piece at the end. The digests are the same: each tensor's
bytes still go to its own hasher in order, whichever thread feeds them.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Sequence

import numpy as np

from ...core.hashing import tensor_hasher

# Bytes hashed (or copied, then hashed while in this core's cache) per piece: small enough that
# the tensors end close together, large enough that taking a piece (~10 µs) costs little.
PIECE_BYTES = 1 << 20


class _Chain:
    """One tensor: its source bytes, where they are copied (or None: hashed where they are)."""

    def __init__(self, index: int, array: np.ndarray, source: np.ndarray, target: np.ndarray | None,
                 verify: bool) -> None:
        self.index, self.array = index, array
        self.source, self.target = source.reshape(-1).view(np.uint8), None
        if target is not None:
            self.target = target.reshape(-1).view(np.uint8)
        self.hasher = tensor_hasher(array.dtype, array.shape) if verify else None
        self.done = 0

    @property
    def left(self) -> int:
        return self.source.size - self.done

    def feed(self, start: int, end: int) -> None:
        piece = self.source[start:end]
        if self.target is not None:
            piece = self.target[start:end]
            np.copyto(piece, self.source[start:end])
        if self.hasher is not None:
            self.hasher.update(piece)

    def result(self) -> tuple[int, np.ndarray, str | None]:
        return self.index, self.array, self.hasher.hexdigest() if self.hasher is not None else None


class Pieces:
    """The tensors of one read, shared out a piece at a time to every thread that calls :meth:`work`.

    ``items``: (index, the tensor as returned, its source bytes, where they are copied or None);
    ``release(nbytes)`` is told the source bytes each piece has read."""

    def __init__(self, items: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]], verify: bool,
                 release: Callable[[int], None] | None = None) -> None:
        chains = [_Chain(index, array, source, target, verify) for index, array, source, target in items]
        self._empty = [chain.result() for chain in chains if not chain.left]  # nothing to feed
        # The free tensors, most bytes left first (a heap: ResNet50 has 320 tensors).
        self._free = [(-chain.left, chain.index, chain) for chain in chains if chain.left]
        heapq.heapify(self._free)
        self._release = release
        self._lock = threading.Lock()
        self._failed = False

    def _take(self) -> tuple[_Chain, int, int] | None:
        """The next piece of the free tensor with the most bytes left (not free until it is fed)."""
        if not self._free or self._failed:
            return None
        chain = heapq.heappop(self._free)[2]
        start = chain.done
        chain.done = min(start + PIECE_BYTES, chain.source.size)
        return chain, start, chain.done

    def work(self) -> list[tuple[int, np.ndarray, str | None]]:
        """Hash (and copy) pieces until none is free; returns (index, tensor, digest or None) of
        the tensors this thread finished."""
        with self._lock:
            finished, self._empty = self._empty, []
            taken = self._take()
        while taken is not None:
            chain, start, end = taken
            try:
                chain.feed(start, end)
            except BaseException:
                self._failed = True  # the others stop at their next piece
                raise
            if self._release is not None:
                self._release(end - start)
            with self._lock:
                if chain.left:
                    heapq.heappush(self._free, (-chain.left, chain.index, chain))
                else:  # this thread fed the last piece
                    finished.append(chain.result())
                taken = self._take()
        return finished
