"""Many arrays copied at once on the hashing threads (numpy releases the GIL while it copies).

A checkout copies a whole model from the mapped snapshot file into the model's own buffers after
every tensor was verified: on two cores, two threads copying halves take about half the time of
one copy loop (and of ``torch``'s ``copy_`` under load, whose OpenMP threads spin for the CPU the
other work needs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .hashing import THREADED_HASH_BYTES, hash_pool
from .threads import Task, run_waiting

# Bytes one task copies: a task costs ~20 µs, copying 8 MB ~1 ms.
PIECE_BYTES = 8 << 20


def _pieces(target: np.ndarray, source: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    flat_target, flat_source = target.reshape(-1).view(np.uint8), source.reshape(-1).view(np.uint8)
    return [(flat_target[i:i + PIECE_BYTES], flat_source[i:i + PIECE_BYTES])
            for i in range(0, flat_source.size, PIECE_BYTES)]


def _copy(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    for target, source in pairs:
        np.copyto(target, source)


def copy_all(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    """``np.copyto(target, source)`` for every pair of C-contiguous arrays of one dtype and shape,
    large ones split in pieces spread over the hashing threads; returns when every copy is done."""
    if sum(int(source.nbytes) for _target, source in pairs) < THREADED_HASH_BYTES:
        _copy(pairs)
        return
    tasks: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
    size = 0
    for target, source in pairs:
        for piece in _pieces(target, source):
            tasks[-1].append(piece)
            size += piece[1].nbytes
            if size >= PIECE_BYTES:
                tasks.append([])
                size = 0
    pool = hash_pool()
    handed = [Task(pool, _copy, task) for task in tasks if task]
    try:
        run_waiting(handed)  # this thread copies what no hashing thread has started
        for task in handed:
            task.result()
    except BaseException:
        for task in handed:
            task.cancel()
        raise
