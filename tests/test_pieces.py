"""Tensors hashed (and copied) a piece at a time by several threads (storage/snapshots/pieces.py):
the digests are tensor_hash's, every tensor is finished by exactly one thread, copies hold the
source's bytes, the free tensor with the most bytes left goes first, and an error stops everyone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mvc_magics.core.hashing import tensor_hash
from mvc_magics.storage.snapshots import pieces as pieces_module
from mvc_magics.storage.snapshots.pieces import Pieces


def _tensors() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    piece = pieces_module.PIECE_BYTES
    return [rng.standard_normal(piece // 4 * 3 + 5).astype(np.float32),  # 3 pieces and a bit
            np.zeros((0, 4), np.float32),  # empty: its hash is the header's alone
            rng.integers(0, 9, (7, 3), dtype=np.int64),  # well under one piece
            rng.standard_normal((piece // 8, 2)).astype(np.float64),  # exactly 2 pieces
            np.arange(10, dtype=np.uint8)]


@pytest.mark.parametrize("copy", [False, True])
def test_several_threads_give_each_tensor_its_hash_once(copy):
    tensors = _tensors()
    targets = [np.empty_like(t) if copy else None for t in tensors]
    items = [(i, targets[i] if copy else t, t, targets[i]) for i, t in enumerate(tensors)]
    released: list[int] = []
    shared = Pieces(items, verify=True, release=released.append)
    results: list[list] = [[] for _ in range(3)]

    def run(slot: int) -> None:
        results[slot] = shared.work()

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = [entry for result in results for entry in result]
    assert sorted(index for index, _, _ in done) == list(range(len(tensors)))  # each once
    for index, array, digest in done:
        assert digest == tensor_hash(tensors[index])
        assert np.array_equal(array, tensors[index])
        assert (array is targets[index]) if copy else (array is tensors[index])
    assert sum(released) == sum(t.nbytes for t in tensors)


def test_the_free_tensor_with_the_most_bytes_left_goes_first(monkeypatch):
    piece = pieces_module.PIECE_BYTES
    fed: list[tuple[int, int]] = []
    original = pieces_module._Chain.feed

    def logged(self, start, end):
        fed.append((self.index, start // piece))
        original(self, start, end)

    monkeypatch.setattr(pieces_module._Chain, "feed", logged)
    big, small = np.ones(4 * piece, np.uint8), np.ones(2 * piece, np.uint8)
    done = Pieces([(0, big, big, None), (1, small, small, None)], verify=False).work()
    # 4 left, 3 left, then ties (2 and 2: the lower index), then the other: the tensors end together.
    assert fed == [(0, 0), (0, 1), (0, 2), (1, 0), (0, 3), (1, 1)]
    assert [(i, digest) for i, _, digest in done] == [(0, None), (1, None)]


def test_an_error_in_one_piece_is_raised_and_stops_the_others(monkeypatch):
    tensors = [np.ones(3 * pieces_module.PIECE_BYTES, np.uint8), np.ones(3 * pieces_module.PIECE_BYTES, np.uint8)]
    shared = Pieces([(i, t, t, None) for i, t in enumerate(tensors)], verify=True)
    original = pieces_module._Chain.feed
    calls = []

    def failing(self, start, end):
        calls.append(self.index)
        if len(calls) == 2:
            raise MemoryError("out of memory")
        original(self, start, end)

    monkeypatch.setattr(pieces_module._Chain, "feed", failing)
    with pytest.raises(MemoryError):
        shared.work()
    assert shared.work() == [] and len(calls) == 2  # another thread takes nothing more
