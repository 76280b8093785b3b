"""A large tensor over loose inputs is averaged in one pass (operations/fused_average.py): every
input hashed on a helper thread while the caller sums the pieces just hashed. The stored result
is bit for bit the plain float64 formula, a damaged input is refused with nothing written, and
neither thread outlives an error of the other."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from test_merge_stream import _mapped_rss, numpy_average

from mvc_magics.core.hashing import tensor_hash
from mvc_magics.core.manifest import ManifestEntry
from mvc_magics.core.threads import thread_pool
from mvc_magics.errors import IntegrityError
from mvc_magics.operations import fused_average
from mvc_magics.storage.codec.tensor_decode import FileMaps


@pytest.fixture
def small_steps(monkeypatch):
    """Sizes that make a test's few-thousand-element tensors take the one-pass path, over many
    blocks, hash steps and releases that divide neither the tensor nor each other; counts the
    tensors averaged on that path."""
    monkeypatch.setattr(fused_average, "FUSED_MIN_ELEMENTS", 1000)
    monkeypatch.setattr(fused_average, "_BLOCK", 257)
    monkeypatch.setattr(fused_average, "_HASH_STEP", 700)
    monkeypatch.setattr(fused_average, "_LEAD", 1500)
    monkeypatch.setattr(fused_average, "_RELEASE", 1100)
    real, fused = fused_average.fused_mean, []

    def counting(reader, inputs, total, dtype, shape):
        fused.append(inputs[0][1].name)
        return real(reader, inputs, total, dtype, shape)

    monkeypatch.setattr(fused_average, "fused_mean", counting)
    return fused


def _inputs(repo, rng, dtype, count=4):
    """``count`` loose versions of a dict model: a large float tensor with -0.0 in every input at its
    start (the plain formula gives +0.0 there) and -0.0 in one input elsewhere, a small one, a counter."""
    ids = []
    for i in range(count):
        w = (rng.standard_normal((61, 73)) * 10).astype(dtype)
        w.reshape(-1)[:7] = -0.0
        if i == 1:
            w.reshape(-1)[100:110] = -0.0
        ids.append(repo.commit({"w": w, "b": rng.standard_normal(9).astype(dtype),
                                "step": np.array(3, np.int64)}, "m").id)
    return ids


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("weights", [None, [1.0, 0.3, 2.5, 1.0]])
def test_the_one_pass_average_is_bit_for_bit_the_plain_float64_formula(repo, small_steps, dtype, weights):
    ids = _inputs(repo, np.random.default_rng(11), dtype)
    merged = repo.merge(ids, weights=weights, name="m")
    assert small_steps == ["w"]  # the large tensor took the one-pass path, the small one did not
    got = repo.load_state(merged.id)
    expected = numpy_average(repo, ids, weights or [1.0] * len(ids))
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and got[name].tobytes() == array.tobytes(), name
    assert np.signbit(got["w"].reshape(-1)[:7]).sum() == 0  # 0.0 + -0.0 + ... is +0.0


def test_the_one_pass_and_the_input_by_input_average_commit_the_same_version(repo, small_steps, monkeypatch):
    ids = _inputs(repo, np.random.default_rng(12), np.float32, count=5)
    weights = [1.0, 1.0, 1.0, 1.0, 1.001]
    fused = repo.merge(ids, weights=weights, name="fused")
    monkeypatch.setattr(fused_average, "FUSED_MIN_ELEMENTS", 1 << 40)
    plain = repo.merge(ids, weights=weights, name="plain")
    assert small_steps == ["w"] and fused.id == plain.id


@pytest.mark.parametrize("damaged, where", [(2, 5), (0, 61 * 73 * 4 - 3), (3, 3000)])
def test_a_damaged_input_is_refused_with_the_store_and_the_live_model_unchanged(repo, small_steps, damaged, where):
    """A flipped byte (at the start, in the middle, in the last block) of one input's large tensor:
    the merge names that version and tensor, writes nothing and leaves ``into`` as it was."""
    ids = _inputs(repo, np.random.default_rng(13), np.float32)
    entry = next(e for e in repo.manifest(ids[damaged]) if e.name == "w")
    path = repo.layout.snapshot_path(entry.object)
    with h5py.File(path, "r") as f:
        offset = f["tensors"][entry.hash].id.get_offset() + where
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    live = {"w": np.full((61, 73), 7.0, np.float32), "b": np.full(9, 7.0, np.float32), "step": np.array(7)}
    count, head = len(repo.log("m")), repo.head("m")
    with pytest.raises(IntegrityError, match=rf"{ids[damaged][:12]} tensor 'w'"):
        repo.merge(ids, name="m", into=live)
    assert small_steps == ["w"]
    assert len(repo.log("m")) == count and repo.head("m") == head
    assert (live["w"] == 7.0).all() and (live["b"] == 7.0).all() and int(live["step"]) == 7
    assert not [p for p in repo.layout.tmp.iterdir() if p.suffix == ".h5"]


class _Reader:
    """In-memory inputs (what the one-pass average needs of a TensorReader), with failures on demand."""

    def __init__(self, fail_release_at: int | None = None) -> None:
        self.checked: list[str] = []
        self.released = 0
        self.fail_release_at = fail_release_at

    def release_pages(self, span=None) -> None:
        self.released += 1
        if self.released == self.fail_release_at:
            raise KeyboardInterrupt  # Ctrl-C in the summing thread

    def check(self, entry, digest, owner="") -> None:
        if digest != entry.hash:
            raise IntegrityError(f"version {owner} tensor {entry.name!r}: content does not match its hash")
        self.checked.append(owner)


def _memory_inputs(count=3, size=5000):
    rng = np.random.default_rng(14)
    arrays = [rng.standard_normal(size).astype(np.float32) for _ in range(count)]
    return [(a, ManifestEntry("w", "float32", a.shape, tensor_hash(a), "0" * 64, a.nbytes), f"v{i}", 1.0)
            for i, a in enumerate(arrays)]


def _hashing_thread_is_free() -> bool:
    return thread_pool("merge-hash", 1).submit(lambda: True).result(timeout=10)


@pytest.mark.parametrize("where", ["sum", "release"])
def test_an_interrupted_average_stops_both_threads(small_steps, monkeypatch, where):
    """Ctrl-C in the summing thread (while it hashes an output block) or while pages are given
    back: the error is raised once the hashing thread has stopped, and the next average runs."""
    inputs = _memory_inputs()
    real_hasher, made = fused_average.tensor_hasher, []

    class Interrupted:
        def __init__(self, hasher) -> None:
            self.hasher, self.updates = hasher, 0

        def update(self, data) -> None:
            self.updates += 1
            if self.updates == 3:
                raise KeyboardInterrupt
            self.hasher.update(data)

        def hexdigest(self) -> str:
            # On a loaded machine the hashing thread may sum most blocks, and the output is then
            # hashed in fewer than 3 updates: Ctrl-C comes at its digest, still on the summing thread.
            raise KeyboardInterrupt

    def hasher(dtype, shape):
        made.append(real_hasher(dtype, shape))
        return Interrupted(made[-1]) if len(made) == len(inputs) + 1 else made[-1]  # the output's

    if where == "sum":
        monkeypatch.setattr(fused_average, "tensor_hasher", hasher)
    with pytest.raises(KeyboardInterrupt):
        fused_average.fused_mean(_Reader(fail_release_at=2 if where == "release" else None), inputs, 3.0,
                                 np.dtype(np.float32), (5000,))
    assert _hashing_thread_is_free()
    monkeypatch.setattr(fused_average, "tensor_hasher", real_hasher)
    reader = _Reader()  # and the next average runs normally
    out = fused_average.fused_mean(reader, inputs, 3.0, np.dtype(np.float32), (5000,))
    assert reader.checked == ["v0", "v1", "v2"]
    plain = (np.float64(0.0) + sum(a.astype(np.float64) for a, *_ in inputs)) / 3.0
    assert out.array.tobytes() == plain.astype(np.float32).tobytes()
    assert out.digest == tensor_hash(out.array)  # the output's hash, taken block by block


def test_a_failing_hash_is_raised_and_nothing_is_returned(small_steps, monkeypatch):
    class Broken:
        def update(self, data) -> None:
            raise OSError("disk gone")

        def hexdigest(self) -> str:
            return ""

    monkeypatch.setattr(fused_average, "tensor_hasher", lambda dtype, shape: Broken())
    with pytest.raises(OSError, match="disk gone"):
        fused_average.fused_mean(_Reader(), _memory_inputs(), 3.0, np.dtype(np.float32), (5000,))
    assert _hashing_thread_is_free()


def test_a_wrong_hash_names_the_input_after_both_threads_end(small_steps):
    inputs = _memory_inputs()
    array, _entry, owner, weight = inputs[1]
    inputs[1] = (array, ManifestEntry("w", "float32", array.shape, "f" * 64, "0" * 64, array.nbytes), owner, weight)
    with pytest.raises(IntegrityError, match="version v1 tensor 'w'"):
        fused_average.fused_mean(_Reader(), inputs, 3.0, np.dtype(np.float32), (5000,))
    assert _hashing_thread_is_free()


def test_a_span_of_a_mapped_view_gives_back_its_own_pages_only(tmp_path):
    path = tmp_path / "f.h5"
    size = 8 << 20
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8))
    maps = FileMaps()
    with h5py.File(path, "r") as f:
        view = maps.view(f["a"], size)
        assert int(view.sum()) > 0 and _mapped_rss(view) >= size
        maps.release(view[: size // 2 + 100])  # the half, and not the page it ends inside
        assert size // 2 - (64 << 10) < _mapped_rss(view) < size // 2 + (64 << 10)
        maps.release(np.ones(10))  # not a view of a map: nothing happens
        assert int(view[size // 2:].sum()) > 0
        del view
        maps.close()


def test_a_streamed_commit_computes_the_next_large_tensor_while_the_last_is_written(repo, monkeypatch):
    """A small tensor after a large one does not wait for the large one to be written: the stream
    goes on to compute the next large tensor meanwhile (a merge's two cores overlap there)."""
    import threading

    from mvc_magics.operations.commit import commit_stream
    from mvc_magics.storage.snapshots import staging

    rng = np.random.default_rng(15)
    big = 2 * staging.STREAM_AHEAD_BYTES // 4  # float32 elements: twice what the writer may lag by
    asked_for_next = threading.Event()
    waited: list[bool] = []
    real = staging.StagedCommit._stream_one

    def slow_writer(self, key, item):
        if key == "big0":  # written only once the stream has asked for the next large tensor
            waited.append(asked_for_next.wait(timeout=10))
        return real(self, key, item)

    def tensors():
        yield "big0", rng.standard_normal(big).astype(np.float32)
        yield "small", rng.standard_normal(10).astype(np.float32)
        asked_for_next.set()
        yield "big1", rng.standard_normal(big).astype(np.float32)

    monkeypatch.setattr(staging.StagedCommit, "_stream_one", slow_writer)
    version = commit_stream(repo.store, "numpy", None, tensors(), "s")
    assert waited == [True]
    assert sorted(repo.load_state(version.id)) == ["big0", "big1", "small"]


def test_a_streamed_commit_stores_a_hashed_array_under_its_hash_unless_it_had_to_be_copied(repo):
    """A HashedArray's hash is used as it is only for the very array it was taken from: one that
    must be made C-contiguous first (a transposed view) is hashed again from the copy."""
    from mvc_magics.core.hashing import HashedArray
    from mvc_magics.operations.commit import commit_stream

    rng = np.random.default_rng(16)
    a = rng.standard_normal((40, 30)).astype(np.float32)
    b = rng.standard_normal((30, 40)).astype(np.float32)
    version = commit_stream(repo.store, "numpy", None,
                            iter([("a", HashedArray(a, tensor_hash(a))), ("b", HashedArray(b.T, "0" * 64))]), "h")
    hashes = {e.name: e.hash for e in repo.manifest(version.id)}
    assert hashes == {"a": tensor_hash(a), "b": tensor_hash(np.ascontiguousarray(b.T))}
    state = repo.load_state(version.id)  # read back and verified
    assert state["a"].tobytes() == a.tobytes() and state["b"].tobytes() == np.ascontiguousarray(b.T).tobytes()
    assert version.id == repo.commit({"a": a, "b": np.ascontiguousarray(b.T)}, "h").id


def test_small_loose_inputs_are_found_without_a_checked_read_and_their_pages_given_back(repo, monkeypatch):
    """Tensors below the one-pass size, stored as they are, are hashed where they lie in the map
    (no h5py read per tensor and input); their mapped pages are given back every _MAPPED_BYTES."""
    from mvc_magics.operations import soups
    from mvc_magics.storage.snapshots.snapshot import TensorReader

    rng = np.random.default_rng(17)
    ids = [repo.commit({f"t{k}": rng.standard_normal(3000).astype(np.float32) for k in range(12)}, "s").id
           for _ in range(3)]
    monkeypatch.setattr(soups, "_MAPPED_BYTES", 40_000)  # ~3 tensors of 12 KB
    reads, releases = [], []
    real_read, real_release = TensorReader.read, TensorReader.release_pages

    def read(self, entry, *args, **kwargs):
        reads.append(entry.name)
        return real_read(self, entry, *args, **kwargs)

    def release(self, span=None):
        releases.append(span is None)
        return real_release(self, span)

    monkeypatch.setattr(TensorReader, "read", read)
    monkeypatch.setattr(TensorReader, "release_pages", release)
    merged = repo.merge(ids, weights=[1.0, 0.5, 2.0], name="s")
    assert reads == [] and releases.count(True) == 3 * 12 // 4  # every 4th 12 KB input tensor passes 40 KB
    monkeypatch.setattr(TensorReader, "read", real_read)
    expected = numpy_average(repo, ids, [1.0, 0.5, 2.0])
    got = repo.load_state(merged.id)
    assert all(got[name].tobytes() == array.tobytes() for name, array in expected.items())


def _summing_threads(monkeypatch, fail_in_helper=False):
    """add_scaled wrapped: records which thread summed each block; the caller's sums slowed, so the
    helper's hashing gets ahead and it takes blocks too (or fails there, ``fail_in_helper``)."""
    import threading
    import time

    real, names, caller = fused_average.add_scaled, [], threading.current_thread().name

    def add_scaled(acc, part, factor, start, scratch):
        name = threading.current_thread().name
        if start:
            names.append("caller" if name == caller else name)
        if name == caller:
            time.sleep(0.002)
        elif fail_in_helper and start:
            raise MemoryError("helper out of memory")
        real(acc, part, factor, start, scratch)

    monkeypatch.setattr(fused_average, "add_scaled", add_scaled)
    return names


def test_the_helper_sums_blocks_while_its_hashing_is_ahead_with_the_same_bits(small_steps, monkeypatch):
    """Hashing is about half the work of summing: the helper thread sums blocks whenever its hashing
    is _LEAD ahead, so both cores sum; the output and its hash are those of a one-thread sum."""
    names = _summing_threads(monkeypatch)
    inputs = _memory_inputs(size=20000)
    reader = _Reader()
    out = fused_average.fused_mean(reader, inputs, 3.0, np.dtype(np.float32), (20000,))
    assert "caller" in names and any(name.startswith("mvc-merge-hash") for name in names)
    assert len(names) == -(-20000 // fused_average._BLOCK)  # every block summed once
    plain = (np.float64(0.0) + sum(a.astype(np.float64) for a, *_ in inputs)) / 3.0
    assert out.array.tobytes() == plain.astype(np.float32).tobytes()
    assert out.digest == tensor_hash(out.array) and reader.checked == ["v0", "v1", "v2"]


def test_a_failing_sum_on_the_helper_is_raised_once_both_threads_stopped(small_steps, monkeypatch):
    _summing_threads(monkeypatch, fail_in_helper=True)
    reader = _Reader()
    with pytest.raises(MemoryError, match="helper out of memory"):
        fused_average.fused_mean(reader, _memory_inputs(size=20000), 3.0, np.dtype(np.float32), (20000,))
    assert reader.checked == [] and _hashing_thread_is_free()


def test_every_input_is_looked_up_before_the_writer_places_the_first_tensor(repo, small_steps, monkeypatch):
    """HDF5's lookups of the loose inputs (mapped_views) all happen before the streamed commit
    stages its first tensor: made between two tensors, each waited for the writer's HDF5 calls."""
    from mvc_magics.storage.snapshots import staging
    from mvc_magics.storage.snapshots.snapshot import TensorReader

    ids = _inputs(repo, np.random.default_rng(18), np.float32)
    events = []
    real_views, real_stage = TensorReader.mapped_views, staging.StagedCommit._stream_one

    def views(self, entries):
        events.append("lookup")
        return real_views(self, entries)

    def stage(self, key, item):
        events.append("stage")
        return real_stage(self, key, item)

    monkeypatch.setattr(TensorReader, "mapped_views", views)
    monkeypatch.setattr(staging.StagedCommit, "_stream_one", stage)
    merged = repo.merge(ids, name="m")
    assert events.count("lookup") == 2 and "lookup" not in events[events.index("stage"):]  # w and b
    expected = numpy_average(repo, ids, [1.0] * len(ids))
    got = repo.load_state(merged.id)
    assert all(got[name].tobytes() == array.tobytes() for name, array in expected.items())
