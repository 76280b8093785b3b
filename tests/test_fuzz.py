"""Property-based fuzzing: every input works or raises the project's own error, and never writes."""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from reliability_helpers import tree_state

from mvc_magics import Repo
from mvc_magics.core.names import validate_name
from mvc_magics.core.refs import Ref, parse_ref
from mvc_magics.errors import MVCError
from mvc_magics.storage.snapshots.snapshot import TensorReader, read_content

# scripts/fuzz_long.py raises this for the long run (MVC_FUZZ_SCALE=20: twenty times the examples).
SCALE = max(1, int(os.environ.get("MVC_FUZZ_SCALE", "1")))
FAST = settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))

_TOKENS = ["latest", "HEAD", "HEAD~1", "HEAD~", "~", "~~2", "best:loss", "best:acc:max", "best:", "best:x:up",
           "first", "model", "other", "abcd1234", "ABCD", "0" * 64, ":", "::", "/", "..", "\\", "-", "--",
           "--as", "--force", "--delete", "--protect", "--unsafe", "--require-signature", "-n", "0", "-1",
           "--model", "-m", "--tag", "--metric", "--param", "a=1", "=", "'", '"', "\x00", "\x07", " ", "é",
           "\u202e", "\uff0f", "%", "$x", "{}", "9" * 30]
_lines = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(_TOKENS), max_size=6).map(" ".join),
    st.lists(st.one_of(st.sampled_from(_TOKENS), st.text(max_size=6)), max_size=5).map(" ".join),
)


@FAST
@given(_lines)
def test_ref_parser(text):
    try:
        assert isinstance(parse_ref(text), Ref)
    except MVCError:
        pass


@FAST
@given(st.one_of(st.text(max_size=60), st.binary(max_size=20).map(lambda b: b.decode("latin-1"))))
def test_names_stay_inside_their_folder(text):
    try:
        name = validate_name(text)
    except MVCError:
        return
    from pathlib import Path

    base = Path("/store/refs")
    assert (base / name).resolve().parent == base
    assert "/" not in name and "\\" not in name and ".." not in name


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / ".mvc"
    with Repo(path) as repo:
        weights = {"w": np.arange(6, dtype=np.float32), "b": np.zeros(2, np.float64)}
        repo.commit(weights, "model", tags=["first"], metrics={"loss": 0.5})
        repo.commit(dict(weights, b=np.ones(2)), "model", metrics={"loss": 0.2})
        repo.commit({"x": np.ones(3, np.int32)}, "other", tags=["first"])
    return path


@FAST
@given(_lines, st.sampled_from([None, "model", "other"]))
def test_resolve_any_ref_against_a_real_store(fuzz_store, text, name):
    before = tree_state(fuzz_store)
    with Repo(fuzz_store) as repo:
        try:
            repo.resolve(text, name=name)
        except MVCError:
            pass
    assert tree_state(fuzz_store) == before


_MAGICS = ["mvc_log", "mvc_checkout", "mvc_tag", "mvc_audit", "mvc_status", "mvc_commit", "mvc_init"]


@pytest.fixture
def shell_with_store(ip, tmp_path):
    ip.user_ns["model"] = {"w": np.arange(6, dtype=np.float32)}
    ip.run_line_magic("mvc_commit", "model --tag first")
    ip.user_ns["model"] = {"w": np.ones(6, np.float32)}
    ip.run_line_magic("mvc_commit", "model")
    return ip, tmp_path / ".mvc"


@settings(max_examples=250 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(_MAGICS), _lines)
def test_magic_argument_lines(shell_with_store, magic, line):
    ip, store = shell_with_store
    before = tree_state(store)
    namespace = {k: v for k, v in ip.user_ns.items() if not k.startswith("_")}
    if magic == "mvc_init":
        line = "--bogus " + line  # never move the session to another store
    try:
        ip.run_line_magic(magic, line)
    except UsageError:
        assert tree_state(store) == before, f"%{magic} {line!r} failed but wrote to the store"
        after = {k: v for k, v in ip.user_ns.items() if not k.startswith("_")}
        assert after.keys() == namespace.keys()
    ip.user_ns["model"] = {"w": np.ones(6, np.float32)}


@pytest.fixture(scope="module")
def snapshot_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("snap") / ".mvc"
    with Repo(path) as repo:
        version = repo.commit({"w": np.arange(40, dtype=np.float32).reshape(5, 8), "s": np.array(3, np.int64)}, "m")
        return repo.layout.snapshot_path(version.id).read_bytes()


def _read_everything(path):
    content = read_content(path)
    with TensorReader(lambda oid: path) as reader:
        for entry in content.manifest:
            reader.read(entry, verify=True)


@settings(max_examples=200 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_snapshot_reader_on_mutated_files(snapshot_bytes, tmp_path_factory, data):
    raw = bytearray(snapshot_bytes)
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    folder = tmp_path_factory.mktemp("mutated")
    path = folder / "x.h5"
    path.write_bytes(bytes(raw))
    try:
        _read_everything(path)
    except MVCError:
        pass
    assert path.read_bytes() == bytes(raw) and [p.name for p in folder.iterdir()] == ["x.h5"]
    shutil.rmtree(folder)


_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=6), inner, max_size=4), max_leaves=12)
_entry = st.fixed_dictionaries({"name": _json | st.text(max_size=5), "dtype": st.sampled_from(
    ["float32", "int64", "bfloat16", "object", "U5", "nonsense", "V8"]) | _json,
    "shape": st.lists(st.integers(-2, 2**63), max_size=3) | _json, "hash": st.just("ab" * 32) | _json,
    "object": st.just("cd" * 32) | _json, "nbytes": st.integers(-1, 2**64) | _json})


@settings(max_examples=100 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(meta=_json, manifest=st.lists(_entry, max_size=3) | _json,
       vid=st.just("cd" * 32) | st.text(max_size=70).filter(lambda t: "\x00" not in t))
def test_snapshot_reader_on_crafted_metadata(tmp_path_factory, meta, manifest, vid):
    path = tmp_path_factory.mktemp("crafted") / "x.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update({"mvc_format": "mvc-snapshot", "mvc_format_version": 1, "version_id": vid})
        f.create_dataset("meta", data=json.dumps(meta), dtype=h5py.string_dtype())
        f.create_dataset("manifest", data=json.dumps(manifest), dtype=h5py.string_dtype())
        tensors = f.create_group("tensors")
        tensors.create_dataset("ab" * 32, data=np.zeros(4, np.float32))
    try:
        _read_everything(path)
    except MVCError:
        pass


@pytest.fixture(scope="module")
def index_bytes(fuzz_store):
    return (fuzz_store / "index.sqlite").read_bytes()


@settings(max_examples=60 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_index_reader_on_mutated_index(fuzz_store, index_bytes, tmp_path_factory, data):
    store = tmp_path_factory.mktemp("idx") / ".mvc"
    shutil.copytree(fuzz_store, store, ignore=shutil.ignore_patterns("index.sqlite*"))
    raw = bytearray(index_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        start = data.draw(st.integers(0, len(raw) - 1))
        raw[start:start + data.draw(st.integers(1, 64))] = data.draw(st.binary(min_size=1, max_size=64))
    (store / "index.sqlite").write_bytes(bytes(raw))
    try:
        with Repo(store) as repo:
            repo.log()
            repo.resolve("first", name="model")
            if not repo.verify().ok:
                repo.reindex()
            assert len(repo.log()) == 3
    except MVCError:
        pass
    shutil.rmtree(store.parent)
