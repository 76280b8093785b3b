"""Memory a checkout hands to a model comes back for the next checkout only once nothing references
it (storage/snapshots/recycled.py): a view, a DLPack capsule or a framework tensor that adopted it
keeps it out of reach, and at most the limit's worth is kept."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time

import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.storage.snapshots import recycled
from mvc_magics.storage.snapshots.recycled import RecycledMemory

SHAPE = (1024, 1024)  # 4 MiB of float32: large enough to be recycled
STORAGE = 4 * 1024 * 1024 + 64


def test_memory_comes_back_only_when_no_view_of_it_is_left():
    memory = RecycledMemory(limit=64 << 20)
    first = memory.empty(SHAPE, np.float32)
    address = first.ctypes.data
    assert address % 64 == 0 and first.flags.c_contiguous and first.flags.writeable
    first[:] = 1.0
    tail = first[10:].view(np.uint8)  # a view made by someone else
    del first
    gc.collect()
    assert memory.free_bytes == 0
    other = memory.empty(SHAPE, np.float32)
    assert other.ctypes.data != address  # still used by ``tail``: not handed out again
    assert np.all(tail.view(np.float32) == 1.0)
    del tail
    assert memory.free_bytes == STORAGE
    again = memory.empty(SHAPE, np.float32)
    assert again.ctypes.data == address and memory.free_bytes == 0
    del other, again


def test_a_dlpack_capsule_keeps_the_memory_and_the_limit_bounds_what_is_kept():
    memory = RecycledMemory(limit=STORAGE + 1)  # room for one storage only
    first, second = memory.empty(SHAPE, np.float32), memory.empty(SHAPE, np.float32)
    capsule = first.__dlpack__()
    del first
    assert memory.free_bytes == 0
    del capsule
    assert memory.free_bytes == STORAGE
    del second  # beyond the limit: freed as usual
    assert memory.free_bytes == STORAGE
    small = memory.empty((16,), np.float32)  # small arrays come from malloc
    del small
    assert memory.free_bytes == STORAGE
    memory.release()
    assert memory.free_bytes == 0


def _layers(keras):
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(1024), keras.layers.Dense(1024)])
    return model


def test_keras_checkouts_reuse_memory_a_held_tensor_still_references_never(repo: Repo, monkeypatch):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("adoption of checked-out memory is TensorFlow's")
    handed: list[int] = []
    empty = recycled.RECYCLED.empty

    def recorded(shape, dtype):
        array = empty(shape, dtype)
        handed.append(array.ctypes.data)
        return array

    monkeypatch.setattr(recycled.RECYCLED, "empty", recorded)
    keras.utils.set_random_seed(0)
    model = _layers(keras)
    first = repo.commit(model, "net")
    weights_first = [w.copy() for w in model.get_weights()]
    model.set_weights([w + 1.0 for w in weights_first])
    second = repo.commit(model, "net")
    weights_second = model.get_weights()
    recycled.RECYCLED.release()
    repo.checkout(first.id, model)
    # A tensor sharing the variable's buffer, which is memory the checkout handed out.
    held = model.layers[0].kernel.value.read_value()
    assert np.from_dlpack(held).ctypes.data in handed
    held_copy = held.numpy().copy()
    np.testing.assert_array_equal(held_copy, weights_first[0])
    for ref, expected in ((second, weights_second), (first, weights_first), (second, weights_second)):
        repo.checkout(ref.id, model)
        for got, want in zip(model.get_weights(), expected, strict=True):
            np.testing.assert_array_equal(got, want)
    # Memory the model let go came back and was handed out again...
    assert len(set(handed)) < len(handed)
    # ...but never the memory ``held`` still references: its values are the first version's.
    np.testing.assert_array_equal(held.numpy(), held_copy)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_child_forked_while_a_thread_holds_the_lock_still_gets_memory():
    """A DataLoader worker forked while another thread gives memory back must not hang on a copy
    of the lock no thread of its own will release."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with recycled.RECYCLED._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: one allocation through the recycled memory, then out
            code = 1
            try:
                array = recycled.RECYCLED.empty(SHAPE, np.float32)
                array[:] = 2.0
                code = 0 if float(array.sum()) == 2.0 * array.size and recycled.RECYCLED.free_bytes == 0 else 1
            finally:
                os._exit(code)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on the recycled memory's lock")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        holder.join()
