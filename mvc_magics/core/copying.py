"""Many arrays copied at once on the hashing threads (numpy releases the GIL while it copies).

A checkout copies a whole model from the mapped snapshot file into the model's own buffers after
every tensor was verified: on two cores, two threads copying halves take about half the time of
one copy loop (and of ``torch``'s ``copy_`` under load, whose OpenMP threads spin for the CPU the
other work needs).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from .hashing import THREADED_HASH_BYTES, shared_by_every_core
from .threads import run_waiting

# Bytes copied per piece taken: taking one costs a few µs, copying 2 MB ~0.3 ms, and the threads end
# at most a piece apart.
PIECE_BYTES = 2 << 20


def _pieces(target: np.ndarray, source: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    flat_target, flat_source = target.reshape(-1).view(np.uint8), source.reshape(-1).view(np.uint8)
    return [(flat_target[i:i + PIECE_BYTES], flat_source[i:i + PIECE_BYTES])
            for i in range(0, flat_source.size, PIECE_BYTES)]


def _copy(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    for target, source in pairs:
        np.copyto(target, source)


def copy_all(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    """``np.copyto(target, source)`` for every pair of C-contiguous arrays of one dtype and shape,
    large ones split in pieces that the caller's thread and one hashing thread per other core take
    in turn (one thread per core: a third only took turns with the other two, a PyTorch 100 MB
    checkout 25.4 against 24.9 ms); returns when every copy is done."""
    if sum(int(source.nbytes) for _target, source in pairs) < THREADED_HASH_BYTES:
        _copy(pairs)
        return
    pieces = iter([piece for target, source in pairs for piece in _pieces(target, source)])
    taking = threading.Lock()

    def work() -> None:
        while True:
            with taking:
                piece = next(pieces, None)
            if piece is None:
                return
            np.copyto(*piece)

    handed = shared_by_every_core(work)
    try:
        run_waiting(handed)  # the caller's share first, then any share no hashing thread started
        for task in handed:
            task.result()
    except BaseException:
        for task in handed:
            task.cancel()
        raise
