"""Bounded memory for hostile coded tensors (issue 23 §4).

A teammate with write access crafts snapshot files that are small on disk but costly to read:
a 4 GiB all-zero tensor (genuine: its hash and the version id hold) in a ~133 KiB object, and
delta chains longer than any writer makes, or whose middle level is not what its name says. Each
is refused in one line before the memory is spent; every other version still arrives."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import blake3
import numpy as np
import pytest
import zstandard

from mvc_magics import Repo
from mvc_magics.core.hashing import tensor_hash, version_id
from mvc_magics.core.manifest import ManifestEntry
from mvc_magics.errors import IntegrityError, RefusedObjectsError, ResourceLimitError
from mvc_magics.storage.codec import coding
from mvc_magics.storage.codec.tensor_decode import MAX_CHAIN
from mvc_magics.storage.snapshots.snapshot import read_content
from mvc_magics.storage.snapshots.snapshot_writer import DeltaBase, SnapshotWriter

BOMB_ELEMENTS = 1 << 30  # float32: 4 GiB decoded


def _meta(repo: Repo, name: str) -> dict:
    """Metadata of the shape a commit writes (taken from a real one), for model ``name``."""
    template = repo.commit({"t": np.zeros(2, np.float32)}, "template")
    meta = dict(read_content(repo.layout.snapshot_path(template.id)).meta)
    repo.remove(template.id, force=True)
    meta.update(name=name, parents=[], tags=[], message="crafted")
    return meta


def _place(repo: Repo, writer: SnapshotWriter, tmp, vid: str, meta: dict, manifest: list) -> str:
    writer.finish(vid, meta, None, manifest)
    final = repo.layout.snapshot_path(vid)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    repo.reindex()
    return vid


def craft_zero_bomb(repo: Repo, tmp_path, name: str = "bomb", n: int = BOMB_ELEMENTS) -> str:
    """A version holding a genuine all-zero float32 tensor of ``n`` elements, coded as four zstd
    frames of zeros: the file is ~33 KiB per GiB declared. Nothing of that size is ever allocated here."""
    chunk = np.zeros(16 << 20, np.uint8)
    hasher = blake3.blake3(f"float32|{n}|".encode(), max_threads=blake3.blake3.AUTO)
    for _ in range(4 * n // chunk.nbytes):
        hasher.update(chunk)
    digest = hasher.hexdigest()
    frame = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(frame, size=n, closefd=False) as stream:
        for _ in range(n // chunk.nbytes):
            stream.write(chunk)
    plane = frame.getvalue()
    coded = coding.Coded(np.frombuffer(plane * 4, np.uint8).copy(),
                         np.array([[coding.ZSTD, len(plane)]] * 4, np.int64), coding.CODING_PLANES)
    vid = version_id(None, [("w", "float32", (n,), digest)])
    tmp = tmp_path / f"{name}.h5"
    writer = SnapshotWriter(tmp)
    writer.write_prepared(digest, (np.empty(0, np.float32), coded, None))
    return _place(repo, writer, tmp, vid, _meta(repo, name),
                  [ManifestEntry("w", "float32", (n,), digest, vid, 4 * n)])


def craft_chain(repo: Repo, tmp_path, deltas: int, n: int, name: str = "chain", mislabel: int | None = None) -> str:
    """A version whose tensor is ``deltas`` XOR deltas deep over a keyframe, every level in one
    file, each a distinct genuine tensor (zeros with one marker) unless ``mislabel`` names the level
    (counted from the keyframe) stored under the hash of another tensor."""
    values = []
    for level in range(deltas + 1):
        value = np.zeros(n, np.float32)
        value[level] = 1.0
        values.append(value)
    hashes = [tensor_hash(v) for v in values]
    if mislabel is not None:
        hashes[mislabel] = tensor_hash(np.full(n, 7.0, np.float32))  # not what the level decodes to
    vid = version_id(None, [("w", "float32", (n,), hashes[-1])])
    tmp = tmp_path / f"{name}.h5"
    writer = SnapshotWriter(tmp)
    writer.write_prepared(hashes[0], (values[0], coding.encode(coding.raw_bytes(values[0]), 4), None))
    for level in range(1, deltas + 1):
        raw = coding.raw_bytes(values[level])
        coded = coding.encode(raw, 4, coding.raw_bytes(values[level - 1]), delta=coding.CODING_DELTA)
        base = DeltaBase(vid, hashes[level - 1], values[level - 1], level - 1)
        writer.write_prepared(hashes[level], (values[level], coded, base))
    return _place(repo, writer, tmp, vid, _meta(repo, name),
                  [ManifestEntry("w", "float32", (n,), hashes[-1], vid, 4 * n)])


@pytest.fixture(scope="module")
def bomb_remote(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bomb")
    remote = tmp_path / "remote"
    with Repo(tmp_path / "attacker" / ".mvc") as a:
        good = {a.commit({"w": np.full(8, float(i), np.float32)}, f"good{i}").id: float(i) for i in range(3)}
        bomb = craft_zero_bomb(a, tmp_path)
        a.push(remote.as_uri())
        size = a.layout.snapshot_path(bomb).stat().st_size
    return remote, good, bomb, size


PULL_UNDER_ULIMIT = textwrap.dedent("""
    import json, resource, sys
    from mvc_magics import Repo
    from mvc_magics.errors import MVCError
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # ulimit -v
    result = {"error": None}
    with Repo(sys.argv[2]) as b:
        try:
            b.pull(sys.argv[1])
        except MVCError as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
            result["refused"] = list(getattr(exc, "refused", {}))
        result["versions"] = sorted(v.id for v in b.log())
    print(json.dumps(result))
""")


def test_a_genuine_4_gib_zero_tensor_in_a_small_object_is_refused_under_ulimit(tmp_path, bomb_remote):
    remote, good, bomb, size = bomb_remote
    assert size < 200 * 1024  # the object is small; what it declares is 4 GiB
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", PULL_UNDER_ULIMIT, remote.as_uri(), str(tmp_path / "b" / ".mvc"),
                           str(3 << 30)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]  # no MemoryError traceback, no kill
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"].startswith("RefusedObjectsError: 3 new version(s)") and "\n" not in result["error"]
    assert result["refused"] == [bomb]
    assert f"version {bomb[:12]} tensor 'w': reading it needs" in result["error"]
    assert sorted(result["versions"]) == sorted(good)


def test_the_tensor_limit_is_configurable_and_refuses_that_version_only(tmp_path, bomb_remote, monkeypatch):
    remote, good, bomb, _ = bomb_remote
    monkeypatch.setenv("MVC_MAX_TENSOR_BYTES", str(1 << 30))
    with Repo(tmp_path / "b" / ".mvc") as b:
        live = {"w": np.full(8, 9.0, np.float32)}
        own = b.commit(live, "mine")
        refusal = r"declares 4\.0 GiB, more than MVC_MAX_TENSOR_BYTES allows"
        with pytest.raises(RefusedObjectsError, match=refusal) as err:
            b.pull(remote.as_uri())
        assert list(err.value.refused) == [bomb] and "\n" not in str(err.value)
        for vid, value in good.items():
            assert b.load_state(vid)["w"].tolist() == [value] * 8
        assert b.head("mine").id == own.id and live["w"].tolist() == [9.0] * 8
        assert b.verify().ok


def test_reading_the_bomb_is_one_line_before_any_allocation(bomb_remote, monkeypatch):
    import tracemalloc

    from mvc_magics.storage.snapshots.snapshot import TensorReader

    remote, _, bomb, _ = bomb_remote
    monkeypatch.setenv("MVC_MAX_TENSOR_BYTES", str(1 << 30))
    path = remote / "objects" / bomb[:2] / f"{bomb}.h5"
    entry = read_content(path).manifest[0]
    tracemalloc.start()
    try:
        with TensorReader(lambda oid: path) as reader, pytest.raises(ResourceLimitError) as err:
            reader.read(entry, owner=bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(err.value) == (f"version {bomb[:12]} tensor 'w': declares 4.0 GiB, more than MVC_MAX_TENSOR_BYTES "
                              "allows (1.0 GiB); refused before reading")
    assert peak < 16 << 20


def test_a_chain_longer_than_any_writer_makes_is_refused_before_decoding(repo, tmp_path):
    vid = craft_chain(repo, tmp_path, deltas=MAX_CHAIN + 1, n=1 << 16)
    with pytest.raises(IntegrityError, match=f"delta chain longer than {MAX_CHAIN}") as err:
        repo.load_state(vid)
    assert "\n" not in str(err.value)


def test_a_chain_as_long_as_writers_make_decodes_in_bounded_memory(repo, tmp_path):
    import tracemalloc

    n = 1 << 21  # 8 MiB a level
    vid = craft_chain(repo, tmp_path, deltas=MAX_CHAIN, n=n)
    assert repo.layout.snapshot_path(vid).stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        state = repo.load_state(vid)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = np.zeros(n, np.float32)
    expected[MAX_CHAIN] = 1.0
    assert state["w"].tobytes() == expected.tobytes()
    # The result, one level's planes and scratch: not one buffer per level (17 levels: 136 MiB).
    assert peak < 4 * 4 * n, peak


def test_a_middle_level_that_is_not_what_its_hash_says_is_refused(repo, tmp_path):
    vid = craft_chain(repo, tmp_path, deltas=3, n=1 << 12, mislabel=1)
    with pytest.raises(IntegrityError, match=r"its delta base .* is damaged") as err:
        repo.load_state(vid)
    assert "\n" not in str(err.value)


def test_a_tensor_over_the_limit_is_one_line_to_read_and_a_note_in_verify(repo, monkeypatch):
    version = repo.commit({"w": np.ones(1 << 18, np.float32)}, "m")  # 1 MiB
    monkeypatch.setenv("MVC_MAX_TENSOR_BYTES", str(1 << 19))
    with pytest.raises(ResourceLimitError, match=r"declares 1\.0 MiB, more than MVC_MAX_TENSOR_BYTES") as err:
        repo.load_state(version.id)
    assert "\n" not in str(err.value)
    report = repo.verify()
    assert report.ok and any("not checked" in note for note in report.notes)
