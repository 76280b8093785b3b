"""The fast read of loose tensors (storage/snapshots/mapped_read): used for every tensor a commit
wrote, never trusted for what it loads. Bytes found where HDF5 says a tensor is are hashed against
the manifest: other bytes there (datasets swapped, a flipped byte) are refused by name and the
live model is left exactly as it was; coded tensors still go through the checked path."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from reliability_helpers import flip_tensor_byte

from mvc_magics import Repo
from mvc_magics.core import copying
from mvc_magics.core.hashing import tensor_hash
from mvc_magics.core.manifest import ManifestEntry
from mvc_magics.errors import IntegrityError
from mvc_magics.storage.snapshots import mapped_read
from mvc_magics.storage.snapshots.snapshot import TensorReader


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal((256, 300)).astype(np.float32),  # same size as b: swappable
            "b": rng.standard_normal((300, 256)).astype(np.float32),
            "big": rng.standard_normal(1_200_000).astype(np.float32),  # past the threaded-hash size
            "steps": np.array(7, dtype=np.int64), "empty": np.zeros((0, 3), np.float32),
            "half": rng.standard_normal(33).astype(np.float16)}


def _checked_path_calls(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = TensorReader._read_checked

    def counted(self, entry, where, view=False):
        calls.append(entry.name)
        return original(self, entry, where, view)

    monkeypatch.setattr(TensorReader, "_read_checked", counted)
    return calls


@pytest.mark.parametrize("views", [False, True])
def test_loose_tensors_are_read_from_the_map_exactly(repo: Repo, monkeypatch, views):
    weights = _weights()
    version = repo.commit(dict(weights), "w")
    calls = _checked_path_calls(monkeypatch)
    with TensorReader(repo.layout.snapshot_path) as reader:
        state = reader.read_all(repo.manifest(version.id), owner=version.id, views=views)
        assert {k: (v.dtype, v.shape) for k, v in state.items()} == {k: (v.dtype, v.shape) for k, v in weights.items()}
        assert all(np.array_equal(state[k], v) for k, v in weights.items())
        assert all(not state[k].flags.writeable for k in ("a", "b", "big")) == views  # views of the map
    assert calls == ["empty"]  # only the empty tensor (no bytes to map) took the checked path


def test_coded_tensors_take_the_checked_path(repo: Repo, monkeypatch):
    first = repo.commit(_weights(0), "w")
    second = _weights(0)
    second["big"] = second["big"] + np.float32(1e-3)
    repo.commit(second, "w")
    repo.gc(repack=True)  # the older version's tensors become deltas against the newer
    calls = _checked_path_calls(monkeypatch)
    state = repo.load_state(first.id)
    assert np.array_equal(state["big"], _weights(0)["big"])
    assert "big" in calls


def _swap_datasets(path, first: str, second: str) -> None:
    """Rename two same-sized datasets into each other's place: HDF5 then points each hash at the
    other tensor's bytes (what a stale or crafted offset would do)."""
    with h5py.File(path, "r+") as f:
        tensors = f["tensors"]
        tensors.move(first, "swap")
        tensors.move(second, first)
        tensors.move("swap", second)


def test_bytes_found_at_the_wrong_place_are_refused(repo: Repo):
    version = repo.commit(_weights(), "w")
    entries = {e.name: e for e in repo.manifest(version.id)}
    _swap_datasets(repo.layout.snapshot_path(version.id), entries["a"].hash, entries["b"].hash)
    live = _weights(1)
    before = {k: v.copy() for k, v in live.items()}
    with pytest.raises(IntegrityError, match=r"tensor 'a'.*does not match its hash"):
        repo.checkout(version.id, live)
    assert all(np.array_equal(live[k], v) for k, v in before.items())


def test_a_flipped_byte_in_a_loose_keras_file_leaves_the_model_unchanged(repo: Repo):
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(512), keras.layers.Dense(4)])
    version = repo.commit(model, "k")
    kernel = max(repo.manifest(version.id), key=lambda e: e.nbytes)
    flip_tensor_byte(repo, version.id, kernel.hash, kernel.nbytes // 2, 0x10)
    for variable in model.weights:
        variable.assign(np.ones(variable.shape, np.float32))
    with pytest.raises(IntegrityError, match="does not match its hash"):
        repo.checkout(version.id, model)
    assert all(np.array_equal(v.numpy(), np.ones(v.shape, np.float32)) for v in model.weights)


def test_a_map_never_gives_bytes_outside_it_and_unaligned_bytes_are_copied():
    mapped = memoryview(bytes(range(64)) * 4)  # 256 bytes
    entry = ManifestEntry("t", "float32", (8,), "0" * 64, "0" * 64, 32)
    assert mapped_read.mapped_tensor(mapped, 224, entry) is not None
    assert mapped_read.mapped_tensor(mapped, 225, entry) is None  # past the end
    assert mapped_read.mapped_tensor(mapped, -4, entry) is None
    assert mapped_read.mapped_tensor(mapped, None, entry) is None
    raw = mapped_read.mapped_tensor(mapped, 2, entry)  # not aligned for float32: bytes, copied to hash
    array, digest = mapped_read.hashed(raw, entry, copy=False, verify=True, where="t")
    assert raw.dtype == np.uint8 and array.dtype == np.float32 and array.ctypes.data % 4 == 0
    assert array.tobytes() == bytes(mapped[2:34]) and digest == tensor_hash(array)


def test_copy_all_copies_every_array_in_pieces(monkeypatch):
    monkeypatch.setattr(copying, "PIECE_BYTES", 1000)  # many pieces, several per array
    monkeypatch.setattr(copying, "THREADED_HASH_BYTES", 1)
    rng = np.random.default_rng(3)
    sources = [rng.standard_normal(n).astype(np.float32) for n in (0, 1, 999, 4096)] + [np.array(5, np.int64)]
    targets = [np.zeros_like(s) for s in sources]
    copying.copy_all(list(zip(targets, sources)))
    assert all(np.array_equal(t, s) and t.shape == s.shape for t, s in zip(targets, sources))


def test_a_refused_checkout_moves_no_head_and_leaves_no_journal(repo: Repo):
    """HEAD's move starts only once every tensor is verified (and the model accepted the version):
    a refusal leaves HEAD, the audit log, the journal and the temporary folder as they were, and
    the next checkout moves HEAD as usual."""
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(600, 600), torch.nn.Linear(600, 600))  # 2.9 MB: threaded
    good = repo.commit(model, "net")
    with torch.no_grad():
        model[0].weight.add_(1.0)
    damaged = repo.commit(model, "net")
    kernel = next(e for e in repo.manifest(damaged.id) if e.name == "0.weight")
    flip_tensor_byte(repo, damaged.id, kernel.hash, 5)
    repo.checkout(good.id, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    entries = len(list(repo.audit.entries()))
    with pytest.raises(IntegrityError, match=r"0\.weight"):
        repo.checkout(damaged.id, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert repo.head("net").id == good.id == repo.layout.read_head("net")
    assert len(list(repo.audit.entries())) == entries and not repo.audit.check().problems
    assert not repo.layout.files.exists(repo.layout.journal_path)
    assert not list(repo.layout.tmp.iterdir())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    other = repo.commit(model, "net")
    repo.checkout(good.id, model)
    assert repo.head("net").id == good.id and [e.op for e in repo.audit.entries()][-1] == "checkout"
    report = repo.verify()  # the damage found, and nothing else: the refused checkout changed nothing
    assert other.id != good.id and len(report.problems) == 1 and damaged.id[:12] in str(report)


def test_many_tensors_hash_one_per_thread_to_the_same_digests():
    """A model of several large tensors hashes each on one thread (the pool spreads them); the
    digests are those of the threaded hash."""
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(1_100_000).astype(np.float32) for _ in range(3)]
    entries = [ManifestEntry(f"t{i}", "float32", a.shape, tensor_hash(a), "0" * 64, a.nbytes)
               for i, a in enumerate(arrays)]
    futures = mapped_read.hash_mapped(dict(enumerate(arrays)), entries, copy=False, where=str)
    digests = {index: digest for future in futures for index, _array, digest in future.result()}
    assert digests == {i: e.hash for i, e in enumerate(entries)}
    assert all(tensor_hash(a, threaded=False) == tensor_hash(a) for a in arrays)


def test_maps_closed_later_wait_for_their_views(repo: Repo):
    """A checkout's maps are unmapped on a worker thread: not while a view of them is still used
    (its bytes stay readable), and once the views are dropped."""
    import time

    from mvc_magics.storage.codec.tensor_decode import FileMaps

    version = repo.commit(_weights(), "w")
    with h5py.File(repo.layout.snapshot_path(version.id), "r") as file:
        maps = FileMaps()
        mapped = maps.whole(file)
        view = np.frombuffer(mapped, dtype=np.uint8, count=64)
        expected = view.copy()
        maps.close(later=True)
        time.sleep(0.05)
        assert not mapped.closed and np.array_equal(view, expected)
        del view
        deadline = time.monotonic() + 5
        while not mapped.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mapped.closed


_PIECE = mapped_read.COPY_PIECE


@pytest.mark.parametrize("nbytes", [0, 4, _PIECE - 4, _PIECE, 3 * _PIECE + 8])
def test_a_copy_hashed_piece_by_piece_has_the_tensor_hash(nbytes):
    """Copied out of the map and hashed a piece at a time (each piece still in cache): the same
    bytes and the same digest as copying whole and hashing after, at every piece boundary."""
    source = np.random.default_rng(nbytes).integers(0, 255, nbytes, dtype=np.uint8).view(np.float32)
    entry = ManifestEntry("t", "float32", source.shape, tensor_hash(source), "0" * 64, nbytes)
    array, digest = mapped_read.hashed(source, entry, copy=True, verify=True, where="t", threaded=False)
    assert digest == entry.hash and array.tobytes() == source.tobytes() and array.ctypes.data != source.ctypes.data
    corrupt = source.copy()
    if nbytes:
        corrupt.view(np.uint8)[-1] ^= 1
        assert mapped_read.hashed(corrupt, entry, copy=True, verify=True, where="t", threaded=False)[1] != entry.hash
