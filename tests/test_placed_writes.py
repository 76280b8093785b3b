"""A loose commit's large tensors written at their HDF5 offsets (storage.files.placed), O_DIRECT or
through the page cache, and the file's block-list checksum hashed by the writers as they write,
not in a second pass."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.core import threads
from mvc_magics.storage.files import placed
from mvc_magics.storage.files.checksum import (
    BLOCK,
    BLOCKS_MAGIC,
    CHECKSUM_LINE,
    block_count,
    body_blocks_digest,
    check_file_checksum,
    is_loose,
)
from mvc_magics.storage.snapshots import snapshot_writer


def _commit_exact(tmp_path, state: dict[str, np.ndarray]) -> None:
    """Commit ``state``: the file's stamped checksum holds and every tensor reads back bit-exact."""
    with Repo(tmp_path / ".mvc") as repo:
        version = repo.commit(state, "m")
        assert check_file_checksum(repo.store.layout.snapshot_path(version.id)) is True
        loaded = repo.load_state(version.id)
        assert all(np.array_equal(loaded[k], v) for k, v in state.items())


def _state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        # sizes that are not multiples of the 4 KiB block: unaligned heads and tails around the direct middle
        "big": rng.standard_normal((700, 513)).astype(np.float32),
        "half": rng.standard_normal((1023, 517)).astype(np.float16),
        "bytes": rng.integers(0, 255, 3_000_001, dtype=np.uint8),
        "small": rng.standard_normal(10),  # below PLACED_MIN_BYTES: HDF5 writes it
        "scalar": np.array(7, np.int64),
    }


def _stamped_is_a_fresh_read(path) -> None:
    """The file's checksum line is a b3list one and equals what reading the whole file back gives."""
    with open(path, "rb") as handle:
        line = handle.read(CHECKSUM_LINE)
        assert line.startswith(BLOCKS_MAGIC) and line.endswith(b"\n")
        assert line[20:84].decode() == body_blocks_digest(handle, os.path.getsize(path))


def _hashed_at_the_end(monkeypatch) -> list[int]:
    """Records the bytes of each block loose_digest hashes itself (not taken from a writer)."""
    hashed: list[int] = []
    block_digest = placed._block_digest
    monkeypatch.setattr(placed, "_block_digest", lambda fd, start, end, *rest: (
        hashed.append(end - start), block_digest(fd, start, end, *rest))[1])
    return hashed


@pytest.mark.parametrize("direct", ["1", "0"])
def test_placed_tensors_read_back_and_the_one_pass_checksum_equals_a_fresh_read(tmp_path, monkeypatch, direct):
    monkeypatch.setenv("MVC_DIRECT_IO", direct)
    calls = []
    original = placed.PlacedWrites.add
    monkeypatch.setattr(placed.PlacedWrites, "add", lambda self, offset, array: (
        calls.append((self.direct, int(array.nbytes))), original(self, offset, array))[1])
    hashed = _hashed_at_the_end(monkeypatch)
    kicked = []
    kick = placed.start_range_writeback
    monkeypatch.setattr(placed, "start_range_writeback", lambda fd, offset, length: (
        kicked.append((offset, length)), kick(fd, offset, length))[1])
    state = _state()
    with Repo(tmp_path / ".mvc") as repo:
        version = repo.commit(state, "m")
        path = repo.store.layout.snapshot_path(version.id)
        assert is_loose(path)
        if direct == "0":  # each piece of 1 MiB or more handed to the disk once written, not at the fsync
            pieces = [p for o, n in _spans(path) for p in placed._pieces(o, o + n) if p[1] - p[0] >= 1 << 20]
            assert sorted(kicked) == sorted((a, b - a) for a, b in pieces) and pieces
        # the stamped checksum (inner blocks hashed while written) is what a fresh read of the file gives
        assert check_file_checksum(path) is True
        _stamped_is_a_fresh_read(path)
        # the blocks inside the large tensors were hashed while written: the end hashed only the others
        size = os.path.getsize(path)
        inner = sum(len(placed._inner_blocks(o, n)) for o, n in _spans(path))
        assert inner >= 2 and len(hashed) == block_count(size) - inner
        assert repo.verify().ok
        loaded = repo.load_state(version.id)
        assert all(np.array_equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in state.items())
        # plain h5py reads the placed datasets (contiguous, allocated) as the arrays
        with h5py.File(path, "r") as f:
            large = [d for d in f["tensors"].values() if d.size * d.dtype.itemsize >= placed.PLACED_MIN_BYTES]
            assert len(large) == 3
            assert all(d.id.get_offset() is not None and d.chunks is None for d in large)
    sizes = sorted(n for _, n in calls)
    assert sizes == sorted(int(state[k].nbytes) for k in ("big", "half", "bytes"))  # the small ones went to HDF5
    if direct == "0":
        assert not any(d for d, _ in calls)
    elif _direct_io_works(tmp_path):
        assert all(d for d, _ in calls)


def _spans(path) -> list[tuple[int, int]]:
    """(offset, bytes) of the placed (large) datasets of a snapshot file."""
    with h5py.File(path, "r") as f:
        return [(d.id.get_offset(), d.size * d.dtype.itemsize) for d in f["tensors"].values()
                if d.size * d.dtype.itemsize >= placed.PLACED_MIN_BYTES]


def _direct_io_works(folder) -> bool:
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except (OSError, AttributeError):
        return False
    return True


def test_a_flipped_byte_in_a_placed_tensor_is_found(tmp_path):
    with Repo(tmp_path / ".mvc") as repo:
        version = repo.commit(_state(), "m")
        path = repo.store.layout.snapshot_path(version.id)
        with h5py.File(path, "r") as f:
            largest = max(f["tensors"].values(), key=lambda d: d.size * d.dtype.itemsize)
            offset = largest.id.get_offset()
        with open(path, "r+b") as handle:
            handle.seek(offset + 5000)
            byte = handle.read(1)
            handle.seek(offset + 5000)
            handle.write(bytes([byte[0] ^ 0x10]))
        assert check_file_checksum(path) is False
        assert not repo.verify().ok


def test_a_flipped_byte_in_a_block_the_writers_hashed_is_found(tmp_path):
    """A byte inside a block a writer hashed (not one the end re-hashed) changed after the commit:
    the checksum, read back block by block, no longer holds."""
    with Repo(tmp_path / ".mvc") as repo:
        version = repo.commit(_state(), "m")
        path = repo.store.layout.snapshot_path(version.id)
        offset, length = max(_spans(path), key=lambda span: span[1])
        inner = placed._inner_blocks(offset, length)
        assert len(inner) >= 1
        with open(path, "r+b") as handle:
            handle.seek(inner[0] * BLOCK + 12345)
            byte = handle.read(1)
            handle.seek(inner[0] * BLOCK + 12345)
            handle.write(bytes([byte[0] ^ 0x01]))
        assert check_file_checksum(path) is False
        assert not repo.verify().ok


@pytest.mark.parametrize("direct", ["1", "0"])
def test_a_streamed_commit_keeps_a_placed_tensor_only_while_it_is_written(tmp_path, monkeypatch, direct):
    """A merge streams its tensors: the large ones are placed like a loose commit's (not written by
    HDF5, which holds the GIL), one at a time (each earlier one written before the next is taken),
    none kept once written: at the checksum at most the last one is still held, the others' edge
    blocks are read back; the file checks out."""
    from mvc_magics.operations.commit import commit_stream

    monkeypatch.setenv("MVC_DIRECT_IO", direct)
    added, earlier_done, at_checksum = [], [], []
    add, stamp = placed.PlacedWrites.add, snapshot_writer._stamp_checksum

    def add_recorded(self, offset, array):
        earlier = list(self._futures)
        add(self, offset, array)
        added.append(int(array.nbytes))
        earlier_done.append(all(f.done() for f in earlier))

    def stamped(path, loose=False, writes=None):
        at_checksum.append((writes.held, [len(view) for _, view in writes.regions]))
        return stamp(path, loose, writes)

    monkeypatch.setattr(placed.PlacedWrites, "add", add_recorded)
    monkeypatch.setattr(snapshot_writer, "_stamp_checksum", stamped)
    hashed = _hashed_at_the_end(monkeypatch)
    with Repo(tmp_path / ".mvc") as repo:
        state = _state(2)
        version = commit_stream(repo.store, "numpy", None, iter(state.items()), "s")
        assert sorted(added) == sorted(int(state[k].nbytes) for k in ("big", "half", "bytes"))
        assert earlier_done == [True, True, True] and at_checksum in ([("writing", [])], [("writing", [added[-1]])])
        path = repo.store.layout.snapshot_path(version.id)
        assert is_loose(path) and check_file_checksum(path) is True
        _stamped_is_a_fresh_read(path)
        inner = sum(len(placed._inner_blocks(o, n)) for o, n in _spans(path))  # hashed by the writers
        assert inner >= 2 and len(hashed) == block_count(os.path.getsize(path)) - inner
        assert repo.verify().ok
        loaded = repo.load_state(version.id)
        assert all(np.array_equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in state.items())


@pytest.mark.parametrize("direct", [True, False])
def test_a_placed_array_is_let_go_once_written_when_the_writes_keep_none(tmp_path, direct):
    """held="writing": PlacedWrites keeps an array only until its writes and block hashes are done
    (then it is freed), and the checksum, taking those blocks from the writers and the edges from
    the file, is what a fresh read of the file gives."""
    import time
    import weakref

    path = tmp_path / "f"
    size = 5 * BLOCK + 12345
    path.write_bytes(bytes(size))
    writes = placed.PlacedWrites(path, direct=direct, held="writing")
    try:
        arrays = [np.random.default_rng(k).integers(0, 255, 2 * BLOCK + 777, dtype=np.uint8) for k in range(2)]
        refs = [weakref.ref(a) for a in arrays]
        for array, offset in zip(arrays, (1000, 3 * BLOCK - 5000), strict=True):
            writes.add(offset, array)
        del arrays, array
        writes.wait()
        deadline = time.monotonic() + 10
        while (writes.regions or any(ref() is not None for ref in refs)) and time.monotonic() < deadline:
            time.sleep(0.01)  # the release runs on the writer thread that finished last
        assert writes.regions == [] and all(ref() is None for ref in refs)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert placed.loose_digest(fd, size, writes) == placed.loose_digest(fd, size, None)
        finally:
            os.close(fd)
    finally:
        writes.close()


@pytest.mark.parametrize("last", ["large", "small"])
def test_a_streamed_commit_of_many_small_and_large_tensors_stamps_what_a_full_read_gives(tmp_path, monkeypatch,
                                                                                         last):
    """Many tensors, placed ones (unaligned sizes) between ones HDF5 writes, streamed: the checksum
    taken from the last placed tensor in memory and the rest of the file read back is the digest
    of a fresh read of the whole finished file, whichever kind of tensor comes last."""
    from mvc_magics.operations.commit import commit_stream

    monkeypatch.setenv("MVC_DIRECT_IO", "1")
    rng = np.random.default_rng(5)
    state = {}
    for k in range(9):
        state[f"w{k}"] = rng.standard_normal(65_536 + 1000 * k + 3).astype(np.float32)  # placed
        for j in range(4):
            state[f"b{k}_{j}"] = rng.standard_normal(7 + j).astype(np.float32)  # written by HDF5
    if last == "small":
        state["tail"] = rng.standard_normal(5)
    with Repo(tmp_path / ".mvc") as repo:
        version = commit_stream(repo.store, "numpy", None, iter(state.items()), "s")
        path = repo.store.layout.snapshot_path(version.id)
        _stamped_is_a_fresh_read(path)
        assert repo.verify().ok
        loaded = repo.load_state(version.id)
        assert all(loaded[k].tobytes() == v.tobytes() for k, v in state.items())
        assert version.id == repo.commit(state, "again").id  # the same version a loose commit of these writes


def test_a_failed_placed_write_fails_a_streamed_commit_cleanly(tmp_path, monkeypatch):
    """A write of an earlier placed tensor fails while the stream goes on: the error is raised (at
    the next placed tensor or at the checksum), nothing is committed, HEAD stays, no file is left."""
    from mvc_magics.operations.commit import commit_stream

    real, calls = placed._write_all, []

    def failing_once(fd, view, offset):
        calls.append(offset)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(fd, view, offset)

    rng = np.random.default_rng(6)
    state = {f"w{k}": rng.standard_normal(300_001).astype(np.float32) for k in range(3)}
    with Repo(tmp_path / ".mvc") as repo:
        first = repo.commit({"w0": np.ones(5, np.float32)}, "s")
        monkeypatch.setattr(placed, "_write_all", failing_once)
        monkeypatch.setattr(placed.PlacedWrites, "_write_direct",
                            lambda self, piece, offset: placed._write_all(self._fd, piece, offset) or True)
        with pytest.raises(Exception, match=r"(?i)no space left"):
            commit_stream(repo.store, "numpy", None, iter(state.items()), "s")
        assert [v.id for v in repo.log("s")] == [first.id] and repo.head("s").id == first.id
        assert not [p for p in (tmp_path / ".mvc" / "tmp").iterdir()]
        monkeypatch.undo()
        assert repo.verify().ok


def test_the_block_list_checksum_takes_memory_only_where_the_placed_writes_lie_apart(tmp_path):
    """loose_digest equals the digest of the file read back; the bytes it takes from memory are
    the arrays written at their offsets. Regions that overlap, start inside the checksum line or
    pass the end of the file (a bug) are not trusted: every block is read from the file, even
    where the memory now differs from it."""
    path = tmp_path / "f"
    size = 3 * BLOCK + 5000
    data = np.random.default_rng(5).integers(0, 255, size, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    fd = os.open(path, os.O_RDWR)
    try:
        with open(path, "rb") as handle:
            expected = body_blocks_digest(handle, size)
        assert placed.loose_digest(fd, size, None) == expected
        for spans in ([(1000, 2 * BLOCK + 7)], [(1000, 2 * BLOCK + 3), (2 * BLOCK + 4000, BLOCK // 2)]):
            writes = placed.PlacedWrites(path, direct=False)
            try:
                for offset, length in spans:
                    writes.add(offset, data[offset:offset + length].copy())
                assert placed.loose_digest(fd, size, writes) == expected
                assert writes.promised and set(writes.blocks) == writes.promised
            finally:
                writes.close()
        for offset, length, other in ((1000, 2 * BLOCK, (2 * BLOCK, 100)), (10, 100, None), (size - 50, 100, None)):
            writes = placed.PlacedWrites(path, direct=False)
            try:
                writes.spans.append((offset, length))
                writes.regions.append((offset, memoryview(np.zeros(length, np.uint8))))  # not the file's bytes
                if other is not None:
                    writes.spans.append(other)
                assert placed.loose_digest(fd, size, writes) == expected
            finally:
                writes.close()
    finally:
        os.close(fd)


def test_a_failed_placed_write_fails_the_commit_cleanly(tmp_path, monkeypatch):
    """The error of a write in a worker thread is raised by the commit, nothing is committed, and
    the next commit works."""
    original = placed.PlacedWrites._write_direct, placed.PlacedWrites._write_buffered

    def broken(self, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(placed.PlacedWrites, "_write_direct", broken)
    monkeypatch.setattr(placed.PlacedWrites, "_write_buffered", broken)
    monkeypatch.setattr(snapshot_writer, "PLACED_MIN_BYTES", 1 << 20)
    with Repo(tmp_path / ".mvc") as repo:
        first = repo.commit({"w": np.ones(5, np.float32)}, "m")
        with pytest.raises(Exception, match="no space left"):
            repo.commit({"w": np.random.default_rng(0).random(1 << 19)}, "m")
        assert [v.id for v in repo.log("m")] == [first.id]
        assert not [p for p in (tmp_path / ".mvc" / "tmp").iterdir()]
        monkeypatch.setattr(placed.PlacedWrites, "_write_direct", original[0])
        monkeypatch.setattr(placed.PlacedWrites, "_write_buffered", original[1])
        second = repo.commit({"w": np.random.default_rng(0).random(1 << 19)}, "m")
        assert repo.verify().ok and repo.log("m")[0].id == second.id


def test_a_file_system_refusing_the_direct_writes_gets_them_through_the_page_cache(tmp_path, monkeypatch):
    """O_DIRECT opened, but every direct write refused with EINVAL (alignment rules of its own):
    the commit writes those bytes through the page cache instead, and the file is exact."""
    import errno

    direct_fds = set()
    init, write_all = placed.PlacedWrites.__init__, placed._write_all

    def opened(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if self._direct_fd is not None:
            direct_fds.add(self._direct_fd)

    def refusing(fd, view, offset):
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        write_all(fd, view, offset)

    monkeypatch.setenv("MVC_DIRECT_IO", "1")
    monkeypatch.setattr(placed.PlacedWrites, "__init__", opened)
    monkeypatch.setattr(placed, "_write_all", refusing)
    state = _state(3)
    _commit_exact(tmp_path, state)
    if not _direct_io_works(tmp_path):
        pytest.skip("no O_DIRECT here: the refusal was not exercised (the buffered path was)")
    assert direct_fds


def test_writes_run_in_the_caller_once_the_writer_threads_take_no_work(tmp_path, monkeypatch):
    """At interpreter exit thread pools refuse new work; a commit finishing then (a loop's last
    background commit) writes its tensors in its own thread instead of failing."""
    from concurrent.futures import ThreadPoolExecutor

    stopped = ThreadPoolExecutor(max_workers=1)
    stopped.shutdown()
    monkeypatch.setitem(threads._POOLS, "place", (os.getpid(), stopped))
    state = _state(4)
    _commit_exact(tmp_path, state)


def test_large_tensors_are_hashed_and_written_first_and_every_tensor_keeps_its_own_hash(tmp_path):
    """write_order: a state whose first tensors are small (a norm's vectors) gets its large tensors
    into the file first (they start the disk); every tensor is listed under its own hash."""
    from mvc_magics.core.hashing import tensor_hash
    from mvc_magics.storage.snapshots.staging import write_order

    rng = np.random.default_rng(3)
    state = {"norm.weight": np.ones(64, np.float32), "norm.bias": np.zeros(64, np.float32),
             "a.weight": rng.standard_normal((1024, 1100)).astype(np.float32),  # 4.5 MB: hashed in order
             "a.bias": rng.standard_normal(1024).astype(np.float32),
             "b.weight": rng.standard_normal((600, 700)).astype(np.float32)}  # placed, hashed by a second thread
    assert list(write_order(state)) == ["a.weight", "b.weight", "norm.weight", "norm.bias", "a.bias"]
    with Repo(tmp_path / ".mvc") as repo:
        version = repo.commit(state, "m")
        path = repo.store.layout.snapshot_path(version.id)
        manifest = repo.store.manifest(version.id)
        assert {entry.name: entry.hash for entry in manifest} == {k: tensor_hash(v) for k, v in state.items()}
        assert check_file_checksum(path) is True
    with h5py.File(path, "r") as file:
        offsets = {name: file[f"tensors/{tensor_hash(array)}"].id.get_offset() for name, array in state.items()}
    small = ("norm.weight", "norm.bias", "a.bias")
    assert max(offsets["a.weight"], offsets["b.weight"]) < min(offsets[k] for k in small)
    with Repo(tmp_path / ".mvc") as repo:
        loaded = repo.load_state(version.id)
    assert all(np.array_equal(loaded[k], v) for k, v in state.items())
