"""gc --repack writes deltas toward keyframes: the newest version of a line stays whole, and so does
its root once the line is longer than MVC_DELTA_DEPTH + 1 (a keyframe every 2 * depth + 1
positions, forward deltas after it, reverse deltas before the next); a short line keeps only its
newest whole; a new commit re-codes only the version it follows (and a second-order delta whose
second base changed); files already as planned are left alone; commit-time chains are re-laid
without loops; gc keeps bases; a damaged base is named for every version built on it."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest

from mvc_magics.core.hashing import tensor_hash
from mvc_magics.errors import IntegrityError
from mvc_magics.operations.autopack import loose_summary


def _step(weights, rng):
    weights["w"] = weights["w"] - (rng.standard_normal(weights["w"].shape) * 1e-4).astype(np.float32)
    weights["b"] = weights["b"] + np.float32(1e-3)


def _line(repo, n, seed=0, weights=None):
    rng = np.random.default_rng(seed)
    weights = weights or {"w": (rng.standard_normal((128, 64)) * 0.05).astype(np.float32),
                          "b": np.zeros(1500, np.float32), "step": np.array(0, np.int64)}
    out = []
    for _ in range(n):
        out.append((repo.commit(weights, "net"), {k: v.copy() for k, v in weights.items()}))
        _step(weights, rng)
    return out, weights, rng


def _coding(repo, vid, array):
    with h5py.File(repo.path / "objects" / vid[:2] / f"{vid}.h5", "r") as f:
        attrs = f["tensors"][tensor_hash(array)].attrs
        text = {k: v.decode() for k, v in attrs.items() if isinstance(v, bytes)}
        return text.get("mvc_coding", "raw"), int(attrs.get("mvc_depth", 0)), text.get("mvc_base", "")


def _intact(repo, versions):
    for version, expected in versions:
        state = repo.load_state(version.id)
        assert all(state[k].tobytes() == v.tobytes() for k, v in expected.items())


@pytest.fixture
def repack(repo, monkeypatch):
    """gc --repack with chains of at most 2 (MVC_DELTA_DEPTH is set only around it: set while
    committing, it would make the commits write deltas too)."""
    def run():
        with monkeypatch.context() as bound:
            bound.setenv("MVC_DELTA_DEPTH", "2")
            return repo.gc(repack=True)
    return run


SECOND_ORDER = {"sub2+planes+zstd", "lin+planes+zstd"}


def _layout(repo, versions):
    """(coding, depth, index of the version its base is in or None) of each version's "w"."""
    index = {v.id: i for i, (v, _) in enumerate(versions)}
    out = []
    for version, weights in versions:
        kind, depth, base = _coding(repo, version.id, weights["w"])
        out.append(("second" if kind in SECOND_ORDER else kind, depth, index[base.split("/")[0]] if base else None))
    return out


def test_a_line_keeps_its_root_and_newest_whole_forward_deltas_after_a_keyframe_reverse_before(repo, repack):
    versions, weights, rng = _line(repo, 7)
    report = repack()
    # depth 2: a keyframe every 5 positions (0 and 5), the newest (6) whole; 1-2 forward deltas
    # against their parent, 3-4 reverse deltas against their child (second-order over two levels)
    assert _layout(repo, versions) == [
        ("planes+zstd", 0, None), ("sub+planes+zstd", 1, 0), ("second", 2, 1), ("second", 2, 4),
        ("sub+planes+zstd", 1, 5), ("planes+zstd", 0, None), ("planes+zstd", 0, None)]
    assert report.versions_recoded == 7 and report.versions_skipped == 0  # commits write loose files
    assert repack().versions_recoded == 0  # nothing to change: no file rewritten
    _intact(repo, versions)

    versions.append((repo.commit(weights, "net"), {k: v.copy() for k, v in weights.items()}))
    again = repack()
    assert again.versions_recoded == 2  # the new (loose) commit and its parent, nothing else
    assert _layout(repo, versions)[6:] == [("sub+planes+zstd", 1, 5), ("planes+zstd", 0, None)]
    _step(weights, rng)
    versions.append((repo.commit(weights, "net"), {k: v.copy() for k, v in weights.items()}))
    third = repack()
    assert third.versions_recoded == 2  # forward deltas never change: only the new commit and its parent
    assert _layout(repo, versions)[6:] == [("sub+planes+zstd", 1, 5), ("second", 2, 6), ("planes+zstd", 0, None)]
    _intact(repo, versions)
    assert repo.verify().ok


def test_a_short_line_keeps_only_its_newest_whole_until_it_outgrows_one_group(repo, repack):
    versions, weights, _ = _line(repo, 3)
    repack()
    assert _layout(repo, versions) == [("second", 2, 1), ("sub+planes+zstd", 1, 2), ("planes+zstd", 0, None)]
    versions.append((repo.commit(weights, "net"), {k: v.copy() for k, v in weights.items()}))
    report = repack()  # 4 versions at depth 2: the root becomes a keyframe, 1-2 forward deltas
    assert report.versions_recoded == 4
    assert _layout(repo, versions) == [
        ("planes+zstd", 0, None), ("sub+planes+zstd", 1, 0), ("second", 2, 1), ("planes+zstd", 0, None)]
    _intact(repo, versions)
    assert repo.verify().ok


def test_ten_epochs_pack_toward_the_root_and_the_newest_automatically_and_by_gc(repo, monkeypatch):
    """Issue 24's layout at the default depth (4): the automatic pack of 10 versions keeps the
    root and the newest whole, 1-4 forward and 5-8 reverse; every version reads back bit-exact
    and verified; gc --repack finds nothing to change."""
    monkeypatch.setenv("MVC_PACK_MB", "off")
    versions, weights, _ = _line(repo, 9)
    # the tenth commit passes the threshold: one pack of the ten loose files, after it returned (a
    # pack running while commits come stops after a file and leaves the rest to a later pack)
    monkeypatch.setenv("MVC_PACK_MB", "0.1")
    versions.append((repo.commit(weights, "net"), {k: v.copy() for k, v in weights.items()}))
    repo.store.background.wait()
    assert loose_summary(repo.store) == (0, 0)
    layout = _layout(repo, versions)
    assert [(depth, base) for _, depth, base in layout] == [
        (0, None), (1, 0), (2, 1), (3, 2), (4, 3), (4, 6), (3, 7), (2, 8), (1, 9), (0, None)]
    assert layout[0][0] == layout[9][0] == "planes+zstd"
    assert layout[1][0] == layout[8][0] == "sub+planes+zstd"
    assert all(kind == "second" for kind, _, _ in layout[2:8])
    _intact(repo, versions)
    assert repo.verify().ok
    assert repo.gc(repack=True).versions_recoded == 0


def test_a_root_keyframe_made_a_delta_of_its_forward_child_is_a_refused_cycle(repo, repack):
    """Forward deltas point at older files: a root edited to point back at its child makes a loop,
    refused in one line for every version on it; the versions of the other keyframe still read."""
    versions, _, _ = _line(repo, 7)
    repack()
    root, weights = versions[0]
    digest = tensor_hash(weights["w"])
    child_digest = tensor_hash(versions[1][1]["w"])
    with h5py.File(repo.path / "objects" / root.id[:2] / f"{root.id}.h5", "r+") as f:
        dataset = f["tensors"][digest]
        assert dataset.attrs["mvc_coding"] == b"planes+zstd"
        dataset.attrs["mvc_coding"] = np.bytes_("sub+planes+zstd")
        dataset.attrs["mvc_base"] = np.bytes_(f"{versions[1][0].id}/{child_digest}")
        dataset.attrs["mvc_depth"] = np.int64(1)
    for version, _ in versions[:3]:
        with pytest.raises(IntegrityError) as refused:
            repo.load_state(version.id)
        assert "\n" not in str(refused.value)
    _intact(repo, versions[3:])


def test_forward_chains_written_at_commit_are_re_laid_without_a_loop(repo, monkeypatch):
    monkeypatch.setenv("MVC_DELTA_DEPTH", "2")  # commits write forward deltas against their parent
    versions, _, _ = _line(repo, 6)
    assert _coding(repo, versions[1][0].id, versions[1][1]["w"])[2].startswith(versions[0][0].id)
    repo.gc(repack=True)
    assert [(depth, base) for _, depth, base in _layout(repo, versions)] == [
        (0, None), (1, 0), (2, 1), (2, 4), (1, 5), (0, None)]
    _intact(repo, versions)
    assert repo.verify().ok


def test_gc_keeps_the_whole_newest_version_its_older_versions_are_built_on(repo, repack):
    versions, _, _ = _line(repo, 3)
    repack()
    newest = versions[-1][0].id
    repo.remove(newest, force=True)
    repo.gc()
    _intact(repo, versions[:-1])
    assert repo.verify().ok


def test_a_damaged_keyframe_is_named_for_every_version_repacked_onto_it(repo, repack):
    versions, _, _ = _line(repo, 3)
    repack()
    newest, newest_weights = versions[-1]
    path = repo.path / "objects" / newest.id[:2] / f"{newest.id}.h5"
    with h5py.File(path, "r") as f:
        dataset = f["tensors"][tensor_hash(newest_weights["w"])]
        offset = dataset.id.get_offset() + dataset.shape[0] // 2
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x40]))
    for version, _ in versions:
        with pytest.raises(IntegrityError):
            repo.load_state(version.id)
    problems = {p.version: p.message for p in repo.verify().problems if p.tensor == "w"}
    assert set(problems) == {v.id for v, _ in versions}
    assert all("delta base" in problems[v.id] for v, _ in versions[:-1])


def test_a_longer_group_only_relabels_the_depth_of_members_whose_bases_stay(repo, monkeypatch):
    versions, weights, _ = _line(repo, 3)

    def repack4():
        with monkeypatch.context() as bound:
            bound.setenv("MVC_DELTA_DEPTH", "4")
            return repo.gc(repack=True)

    repack4()
    versions.append((repo.commit(weights, "net"), {k: v.copy() for k, v in weights.items()}))
    before = (repo.path / "objects" / versions[0][0].id[:2] / f"{versions[0][0].id}.h5").read_bytes()
    report = repack4()
    # the new (loose) commit coded, the new parent re-coded, its parent now second-order, the
    # oldest keeps its bytes at depth 3
    assert report.versions_recoded == 4
    assert [_coding(repo, v.id, w["w"])[:2] for v, w in versions] == [
        ("sub2+planes+zstd", 3), ("sub2+planes+zstd", 2), ("sub+planes+zstd", 1), ("planes+zstd", 0)]
    with h5py.File(repo.path / "objects" / versions[0][0].id[:2] / f"{versions[0][0].id}.h5", "r") as f:
        digest = tensor_hash(versions[0][1]["w"])
        offset, size = f["tensors"][digest].id.get_offset(), f["tensors"][digest].shape[0]
    with h5py.File(io.BytesIO(before), "r") as f:
        old_offset = f["tensors"][digest].id.get_offset()
        assert before[old_offset:old_offset + size] == (repo.path / "objects" / versions[0][0].id[:2]
                                                       / f"{versions[0][0].id}.h5").read_bytes()[offset:offset + size]
    _intact(repo, versions)
    assert repo.verify().ok


def test_a_second_base_that_is_not_the_bases_own_base_is_refused(repo, repack):
    versions, _, _ = _line(repo, 3)
    repack()
    oldest, weights = versions[0]
    digest = tensor_hash(weights["w"])
    with h5py.File(repo.path / "objects" / oldest.id[:2] / f"{oldest.id}.h5", "r+") as f:
        assert f["tensors"][digest].attrs["mvc_coding"] == b"sub2+planes+zstd"
        f["tensors"][digest].attrs["mvc_base2"] = np.bytes_(f"{oldest.id}/{digest}")  # claims itself as its second base
    with pytest.raises(IntegrityError, match="second base"):
        repo.load_state(oldest.id, verify=False)


def test_a_line_whose_steps_shrink_packs_with_a_slope_and_its_second_base_is_checked_too(repo, repack):
    """Steps shrinking by 0.8 a version (momentum fading): the oldest becomes a lin delta (slope
    5/4), smaller than sub2; a lin delta claiming another second base is refused like sub2's."""
    rng = np.random.default_rng(6)
    step = (rng.standard_normal((128, 64)) * 1e-3).astype(np.float32)
    weights = {"w": (rng.standard_normal((128, 64)) * 0.05).astype(np.float32)}
    versions = []
    for k in range(3):
        versions.append((repo.commit(weights, "net"), {"w": weights["w"].copy()}))
        weights["w"] = weights["w"] + step * np.float32(0.8 ** k)
    repack()
    assert [_coding(repo, v.id, w["w"])[:2] for v, w in versions] == [
        ("lin+planes+zstd", 2), ("sub+planes+zstd", 1), ("planes+zstd", 0)]
    _intact(repo, versions)
    assert repo.verify().ok
    oldest, expected = versions[0]
    digest = tensor_hash(expected["w"])
    with h5py.File(repo.path / "objects" / oldest.id[:2] / f"{oldest.id}.h5", "r+") as f:
        assert int(f["tensors"][digest].attrs["mvc_slope"]) == 5
        f["tensors"][digest].attrs["mvc_base2"] = np.bytes_(f"{oldest.id}/{digest}")
    with pytest.raises(IntegrityError, match="second base"):
        repo.load_state(oldest.id, verify=False)


def test_gc_after_a_repack_sees_the_new_bases_of_files_it_read_before(repo, repack):
    """gc remembers each file's base references while the file stays the same; a repack replaces
    files (renamed over the old ones), and the next gc must read the new references."""
    versions, _, _ = _line(repo, 3)
    repo.gc()  # reads (and remembers) every file's references: none yet
    repack()  # the two older versions become deltas against the newest
    newest = versions[-1][0].id
    repo.remove(newest, force=True)
    repo.gc()
    assert (repo.path / "objects" / newest[:2] / f"{newest}.h5").exists()  # it holds their bases
    _intact(repo, versions[:-1])
    assert repo.verify().ok


def test_with_no_bases_kept_in_memory_repack_decodes_them_from_the_store(repo, monkeypatch):
    """MVC_BASE_CACHE_MB=0: every base (child and grandchild) is read back, verified, from the files
    this run wrote; the result is the same layout and the same content."""
    versions, _, _ = _line(repo, 4)
    monkeypatch.setenv("MVC_BASE_CACHE_MB", "0")
    with monkeypatch.context() as bound:
        bound.setenv("MVC_DELTA_DEPTH", "4")
        repo.gc(repack=True)
    assert [_coding(repo, v.id, w["w"])[:2] for v, w in versions] == [
        ("sub2+planes+zstd", 3), ("sub2+planes+zstd", 2), ("sub+planes+zstd", 1), ("planes+zstd", 0)]
    _intact(repo, versions)
    assert repo.verify().ok


@pytest.mark.parametrize("files", [1, 2, 4])
def test_a_re_lay_stopped_after_any_file_leaves_every_version_whole_and_the_next_run_finishes(repo, monkeypatch,
                                                                                              files):
    """A short line packed as reverse deltas grows past one group: its root becomes a keyframe and
    the others forward deltas. Stopped after ``files`` files (as the automatic pack stops for the
    user, or a kill between two renames), every version still reads bit-exact, with no loop
    between the old reverse and the new forward references; the next run gives the full layout."""
    import threading

    from mvc_magics.operations import repack as repack_op

    monkeypatch.setenv("MVC_DELTA_DEPTH", "2")
    versions, weights, rng = _line(repo, 3)
    repo.gc(repack=True)
    for _ in range(3):
        versions.append((repo.commit(weights, "net"), {k: v.copy() for k, v in weights.items()}))
        _step(weights, rng)
    stop = threading.Event()
    recode = repo.store.writes.recode_version
    written = []

    def counted(vid, plan):
        result = recode(vid, plan)
        written.append(vid)
        if len(written) == files:
            stop.set()
        return result

    monkeypatch.setattr(repo.store.writes, "recode_version", counted)
    assert repack_op.repack(repo.store, stop=stop).stopped
    _intact(repo, versions)
    assert repo.verify().ok
    monkeypatch.undo()
    monkeypatch.setenv("MVC_DELTA_DEPTH", "2")
    repo.gc(repack=True)
    assert [(depth, base) for _, depth, base in _layout(repo, versions)] == [
        (0, None), (1, 0), (2, 1), (2, 4), (1, 5), (0, None)]
    _intact(repo, versions)
    assert repo.verify().ok
