"""Tensor coding in snapshot files: byte planes + zstd, XOR deltas against the parent, bounded
chains; bit-exact round trips, damage detection, gc keeping bases alive, push/pull of coded files."""

from __future__ import annotations

import h5py
import ml_dtypes
import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.core.hashing import tensor_hash
from mvc_magics.errors import IntegrityError, StoreFormatError
from mvc_magics.storage.codec import coding
from mvc_magics.storage.files.checksum import check_file_checksum, is_loose
from mvc_magics.storage.snapshots import snapshot
from mvc_magics.storage.snapshots.snapshot_writer import _stamp_checksum


def training_run(repo, steps=4, seed=0, name="net"):
    """Versions of a model changing a little every step, as epoch checkpoints do."""
    rng = np.random.default_rng(seed)
    weights = {"dense/kernel": (rng.standard_normal((128, 96)) * 0.05).astype(np.float32),
               "dense/bias": np.zeros(96, np.float32), "step": np.array(0, np.int64)}
    versions = []
    for step in range(steps):
        versions.append((repo.commit(weights, name), {k: v.copy() for k, v in weights.items()}))
        weights["dense/kernel"] = weights["dense/kernel"] - (rng.standard_normal((128, 96)) * 1e-4).astype(np.float32)
        weights["step"] = np.array(step + 1, np.int64)
    return versions


@pytest.fixture(autouse=True)
def deltas_at_commit(monkeypatch):
    """These tests make delta chains at commit time, which MVC_DELTA_DEPTH turns on (by default a
    commit codes each tensor alone and `gc --repack` makes the deltas)."""
    monkeypatch.setenv("MVC_DELTA_DEPTH", "4")


def test_by_default_a_commit_writes_loose_and_repack_codes_and_makes_the_deltas(repo, monkeypatch):
    monkeypatch.delenv("MVC_DELTA_DEPTH")
    versions = training_run(repo, steps=3)
    kinds = [stored(repo, v.id, tensor_hash(w["dense/kernel"])).get("mvc_coding") for v, w in versions]
    assert kinds == [None] * 3  # loose: the bytes as they are, checkout copies them out of the file
    assert all(is_loose(repo.layout.snapshot_path(v.id)) for v, _ in versions)
    assert all(check_file_checksum(repo.layout.snapshot_path(v.id)) for v, _ in versions)
    report = repo.gc(repack=True)  # reverse deltas: the newest stays whole, older ones point at their child
    kinds = [(stored(repo, v.id, tensor_hash(w["dense/kernel"]))["mvc_coding"],
              int(stored(repo, v.id, tensor_hash(w["dense/kernel"])).get("mvc_depth", 0))) for v, w in versions]
    assert report.versions_recoded == 3 and report.versions_skipped == 0  # every loose file was packed
    assert not any(is_loose(repo.layout.snapshot_path(v.id)) for v, _ in versions)
    assert repo.gc(repack=True).versions_recoded == 0  # packed files stay as they are
    # a second-order delta (sub2, or lin with the slope that codes a sample of it smallest)
    assert kinds[0] in {("sub2+planes+zstd", 2), ("lin+planes+zstd", 2)}
    assert kinds[1:] == [("sub+planes+zstd", 1), ("planes+zstd", 0)]
    for version, expected in versions:
        state = repo.load_state(version)
        assert all(state[k].tobytes() == v.tobytes() for k, v in expected.items())


def stored(repo, vid, digest):
    with h5py.File(repo.path / "objects" / vid[:2] / f"{vid}.h5", "r") as f:
        return {k: v.decode() if isinstance(v, bytes) else v for k, v in f["tensors"][digest].attrs.items()}


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int64", "int8", "bool",
                                   "bfloat16", "float8_e4m3fn", "int4"])
def test_coding_round_trips_the_raw_bytes_of_every_dtype(dtype):
    rng = np.random.default_rng(1)
    values = rng.standard_normal(20000) * 0.1
    dtype = np.dtype(getattr(ml_dtypes, dtype)) if not hasattr(np, dtype) else np.dtype(dtype)
    array = (values > 0) if dtype == np.bool_ else values.astype(dtype) if dtype.kind == "f" or dtype.kind == "V" \
        else (values * 7).astype(dtype)
    raw = coding.raw_bytes(np.ascontiguousarray(array))
    base = coding.raw_bytes(np.ascontiguousarray(np.roll(array, 1)))
    second = coding.raw_bytes(np.ascontiguousarray(np.roll(array, 2)))
    for reference, delta, further in ((None, None, None), (base, coding.CODING_SUB, None),
                                      (base, coding.CODING_DELTA, None), (base, coding.CODING_SUB, second)):
        coded = coding.encode(raw, dtype.itemsize, reference, delta, second=further)
        assert coded is not None and coded.nbytes < raw.nbytes  # these all compress
        assert coded.coding == (coding.CODING_SUB2 if further is not None else delta or coding.CODING_PLANES)
        out = np.empty_like(raw)
        coding.decode_into(out, coded.data, coding.check_table(coded.planes, dtype.itemsize, coded.nbytes,
                                                               raw.nbytes), reference, coded.coding, further)
        assert out.tobytes() == raw.tobytes()


def test_integer_differences_wrap_and_keep_the_sign_in_the_low_bit():
    a = np.array([0, 1, 0xFFFFFFFF, 0x3F800000, 5], np.uint32)
    b = np.array([1, 0, 0, 0x3F7FFFFF, 5], np.uint32)
    z = coding.sub_bytes(a.view(np.uint8), b.view(np.uint8), 4).view(np.uint32)
    assert z.tolist() == [1, 2, 1, 2, 0]  # -1, +1, -1 (wrapped), +1 across a mantissa carry, 0
    out = np.empty(a.nbytes, np.uint8)
    coding.add_back(out, z.view(np.uint8).copy(), b.view(np.uint8), 4)
    assert out.view(np.uint32).tolist() == a.tolist()


def test_a_chain_mixing_xor_and_integer_difference_levels_decodes_bottom_up():
    rng = np.random.default_rng(3)
    v0 = (rng.standard_normal(8192) * 0.1).astype(np.float32)
    v1 = v0 + (rng.standard_normal(8192) * 1e-4).astype(np.float32)
    v2 = v1 - (rng.standard_normal(8192) * 1e-4).astype(np.float32)
    raw = [coding.raw_bytes(v) for v in (v0, v1, v2)]
    key = coding.encode(raw[0], 4)
    mid = coding.encode(raw[1], 4, raw[0], coding.CODING_DELTA)  # as older mvc_magics wrote
    top = coding.encode(raw[2], 4, raw[1], coding.CODING_SUB)
    out = np.empty_like(raw[2])
    coding.decode_chain(out, [(c.data, c.planes, c.coding) for c in (top, mid, key)], 4)
    assert out.tobytes() == raw[2].tobytes()


def test_noise_stays_raw_and_small_tensors_are_not_coded():
    noise = np.random.default_rng(2).integers(0, 256, 1 << 16, dtype=np.uint8)
    assert coding.encode(noise, 1) is None
    assert coding.encode(np.zeros(100, np.uint8), 1) is None


def test_commits_are_coded_then_chained_as_deltas_with_keyframes(repo, monkeypatch):
    monkeypatch.setenv("MVC_GIT", "nodiff")  # sizes compared: no uncommitted diff of this tree in them
    monkeypatch.setenv("MVC_DELTA_DEPTH", "2")
    versions = training_run(repo, steps=5)
    kinds = []
    for version, expected in versions:
        attrs = stored(repo, version.id, tensor_hash(expected["dense/kernel"]))
        kinds.append((attrs["mvc_coding"], int(attrs.get("mvc_depth", 0))))
        state = repo.load_state(version)
        assert all(state[k].tobytes() == v.tobytes() for k, v in expected.items())
    assert kinds == [("planes+zstd", 0), ("sub+planes+zstd", 1), ("sub+planes+zstd", 2), ("planes+zstd", 0),
                     ("sub+planes+zstd", 1)]
    sizes = [(repo.path / "objects" / v.id[:2] / f"{v.id}.h5").stat().st_size for v, _ in versions]
    assert sizes[1] < 0.75 * sizes[0]  # a delta of a small update is far smaller than the coded tensor


def test_coding_off_writes_format_version_1_that_a_coding_store_still_reads(repo, monkeypatch):
    monkeypatch.setenv("MVC_CODING", "off")
    old, old_weights = training_run(repo, steps=1)[0]
    with h5py.File(repo.path / "objects" / old.id[:2] / f"{old.id}.h5", "r") as f:
        assert int(f.attrs["mvc_format_version"]) == 1
        assert not any("mvc_coding" in d.attrs for d in f["tensors"].values())
    monkeypatch.delenv("MVC_CODING")
    old_weights["dense/kernel"] = old_weights["dense/kernel"] + np.float32(1e-3)
    new = repo.commit(old_weights, "net")
    assert stored(repo, new.id, tensor_hash(old_weights["dense/kernel"]))["mvc_coding"] == "sub+planes+zstd"
    assert repo.load_state(new)["dense/kernel"].tobytes() == old_weights["dense/kernel"].tobytes()
    assert repo.verify().ok


def test_a_reader_of_version_1_refuses_a_coded_file_with_a_clear_message(repo, monkeypatch):
    version, _ = training_run(repo, steps=1)[0]
    monkeypatch.setattr(snapshot, "READABLE_VERSIONS", frozenset({1}))
    with pytest.raises(StoreFormatError, match=r"snapshot format version 2.*upgrade mvc_magics"):
        snapshot.read_content(repo.path / "objects" / version.id[:2] / f"{version.id}.h5")


def _flip_inside(path, digest, at=0.5):
    with h5py.File(path, "r") as f:
        offset = f["tensors"][digest].id.get_offset() + int(f["tensors"][digest].shape[0] * at)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x40]))


def test_a_damaged_base_fails_and_is_named_for_every_version_built_on_it(repo):
    versions = training_run(repo, steps=4)
    (first, first_weights) = versions[0]
    _flip_inside(repo.path / "objects" / first.id[:2] / f"{first.id}.h5", tensor_hash(first_weights["dense/kernel"]))
    for version, _ in versions:
        with pytest.raises(IntegrityError):
            repo.load_state(version)
    report = repo.verify()
    damaged = {p.version for p in report.problems if p.tensor == "dense/kernel"}
    assert damaged == {v.id for v, _ in versions}
    assert any("delta base" in p.message for p in report.problems if p.version == versions[3][0].id)


def test_hostile_plane_tables_and_base_cycles_are_refused(repo):
    (version, weights), = training_run(repo, steps=1)
    path = repo.path / "objects" / version.id[:2] / f"{version.id}.h5"
    digest = tensor_hash(weights["dense/kernel"])
    with h5py.File(path, "r+") as f:  # claim a zstd plane is raw and as long as the whole tensor
        table = f["tensors"][digest].attrs["mvc_planes"]
        table[-1] = [0, table[-1][1] + 1]
        f["tensors"][digest].attrs["mvc_planes"] = table
    with pytest.raises(IntegrityError, match="plane table"):
        repo.load_state(version, verify=False)
    with h5py.File(path, "r+") as f:  # a delta whose base is itself: a cycle
        dataset = f["tensors"][digest]
        dataset.attrs["mvc_planes"] = np.array([[0, 128 * 96]] * 4, np.int64)[:, :] * [1, 1]
        dataset.attrs["mvc_coding"] = "xor+planes+zstd"
        dataset.attrs["mvc_base"] = f"{version.id}/{digest}"
    with pytest.raises(IntegrityError):
        repo.load_state(version, verify=False)


def test_gc_keeps_every_base_a_remaining_version_needs(repo):
    versions = training_run(repo, steps=4)
    for version, _ in versions[:3]:
        repo.remove(version.id, force=True)
    report = repo.gc()
    last, expected = versions[3]
    assert report.files_rewritten >= 1
    state = repo.load_state(last)
    assert all(state[k].tobytes() == v.tobytes() for k, v in expected.items())
    assert repo.verify().ok
    repo.remove(last.id, force=True)
    repo.gc()
    assert not any((repo.path / "objects").rglob("*.h5"))  # nothing needs the bases any more


def test_push_and_clone_move_coded_files_as_they_are_and_verify_them(tmp_path, monkeypatch):
    with Repo(tmp_path / "a" / ".mvc") as a:
        versions = training_run(a, steps=3)
        a.remove(versions[1][0].id, force=True)  # the middle base now lives in a removed version's file
        a.add_remote("origin", (tmp_path / "remote").as_uri())
        a.push()
        local = {p.name: p.read_bytes() for p in (a.path / "objects").rglob("*.h5")}
    with Repo(tmp_path / "b" / ".mvc") as b:
        b.add_remote("origin", (tmp_path / "remote").as_uri())
        b.pull()
        last, expected = versions[2]
        state = b.load_state(last.id)
        assert all(state[k].tobytes() == v.tobytes() for k, v in expected.items())
        assert b.verify().ok
        pulled = {p.name: p.read_bytes() for p in (b.path / "objects").rglob("*.h5")}
    assert pulled[f"{last.id}.h5"] == local[f"{last.id}.h5"]  # not re-coded on the way


def test_a_base_remembered_from_the_last_commit_is_rechecked_so_shared_memory_cannot_corrupt(repo):
    """A framework may hand out arrays that share memory with the live model (PyTorch's numpy()):
    the array kept from the last commit changes as the model trains. The next commit re-hashes it
    before coding against it, and falls back to the stored bytes."""
    rng = np.random.default_rng(5)
    live = (rng.standard_normal((128, 64)) * 0.05).astype(np.float32)
    first = repo.commit({"w": live}, "net")  # `live` itself is what the commit kept in memory
    expected_first = live.copy()
    live -= np.float32(1e-4)  # trained in place after the commit
    second = repo.commit({"w": live}, "net")
    attrs = stored(repo, second.id, tensor_hash(live))
    assert attrs["mvc_coding"] == "sub+planes+zstd" and attrs["mvc_base"].startswith(first.id)
    assert repo.load_state(first)["w"].tobytes() == expected_first.tobytes()
    assert repo.load_state(second)["w"].tobytes() == live.tobytes()
    assert repo.verify().ok


def test_a_second_order_delta_with_a_slope_predicts_in_wrapping_words_and_round_trips():
    """lin+planes+zstd: p = b + ((s * (b - g)) >> 2), wrapping, the shift on signed words; the
    packer keeps the slope whose sample codes smallest (5/4 for steps shrinking by 0.8)."""
    b = np.array([10, 0, 0x7FFFFFFF, 0xFFFFFFF0], np.uint32)
    g = np.array([6, 8, 0xFFFFFFFF, 0x10], np.uint32)
    got = coding.predict(b.view(np.uint8), g.view(np.uint8), 4, 5).view(np.uint32)
    wide = b.astype(np.int64) + (((5 * (b.astype(np.int64) - g.astype(np.int64))) & 0xFFFFFFFF).astype(np.uint32)
                                .view(np.int32).astype(np.int64) >> 2)
    assert got.tolist() == (wide & 0xFFFFFFFF).tolist()
    assert coding.predict(b.view(np.uint8), g.view(np.uint8), 4).view(np.uint32).tolist() == \
        ((2 * b.astype(np.int64) - g.astype(np.int64)) & 0xFFFFFFFF).tolist()
    rng = np.random.default_rng(4)
    step = (rng.standard_normal(1 << 15) * 1e-3).astype(np.float32)
    v2 = (rng.standard_normal(1 << 15) * 0.05).astype(np.float32)
    v1 = v2 - step * np.float32(0.8)
    v0 = v1 - step
    raw = [coding.raw_bytes(v) for v in (v0, v1, v2)]
    coded = coding.encode(raw[0], 4, raw[1], second=raw[2], slopes=coding.SLOPE_CANDIDATES)
    assert (coded.coding, coded.slope) == (coding.CODING_LIN, 5)
    plain = coding.encode(raw[0], 4, raw[1], second=raw[2], slopes=(coding.SLOPE_ONE,))
    assert plain.coding == coding.CODING_SUB2 and coded.nbytes < 0.8 * plain.nbytes
    out = np.empty_like(raw[0])
    coding.decode_into(out, coded.data, coded.planes, raw[1], coded.coding, raw[2], coded.slope)
    assert out.tobytes() == raw[0].tobytes()
    mid = coding.encode(raw[1], 4, raw[2])
    key = coding.encode(raw[2], 4)
    levels = [(coded.data, coded.planes, coded.coding, coded.slope), (mid.data, mid.planes, mid.coding, 4),
              (key.data, key.planes, key.coding, 4)]
    out[:] = 0
    coding.decode_chain(out, levels, 4)
    assert out.tobytes() == raw[0].tobytes()


@pytest.mark.parametrize("slope", [0, 17, -1, "5", 2.5, None])
def test_a_slope_outside_what_writers_make_is_refused(repo, slope):
    rng = np.random.default_rng(5)
    step = (rng.standard_normal(4096) * 1e-3).astype(np.float32)
    w = (rng.standard_normal(4096) * 0.05).astype(np.float32)
    versions = []
    for k in range(3):
        versions.append(repo.commit({"w": w}, "net"))
        w = w + step * np.float32(0.8 ** k)
    repo.gc(repack=True)
    oldest = versions[0]
    path = repo.path / "objects" / oldest.id[:2] / f"{oldest.id}.h5"
    with h5py.File(path, "r+") as f:
        dataset = next(iter(f["tensors"].values()))
        assert dataset.attrs["mvc_coding"].decode() == coding.CODING_LIN
        del dataset.attrs["mvc_slope"]
        if slope is not None:
            dataset.attrs["mvc_slope"] = slope
    _stamp_checksum(path)  # a teammate's file: whole, only its slope is wrong
    with pytest.raises(IntegrityError, match="slope"):
        repo.load_state(oldest, verify=False)
    assert not repo.verify().ok  # the store says so too
