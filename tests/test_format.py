"""docs/FORMAT.md is true: its plain-h5py reader reads real versions; the layout is as documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import blake3
import h5py
import numpy as np
from keras_models import BUILDERS

from mvc_magics.core.hashing import canonical_json, tensor_hash
from mvc_magics.storage.codec import coding

DOC = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"


def documented_reader(name: str = "read_version"):
    code = re.search(r"## Reading a version with plain h5py.*?```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)
    return namespace[name]


def test_the_documented_reader_reads_structures_stored_once_and_inline(repo, monkeypatch):
    """Format 3 (structure stored once, referenced by later versions) and format 1 (inside the file)."""
    read_structure = documented_reader("read_structure")
    model = BUILDERS["conv_bn"]()
    first = repo.commit(model, "cnn")
    model.weights[0].assign(model.weights[0].numpy() + 1)
    second = repo.commit(model, "cnn")
    with h5py.File(repo.path / "objects" / second.id[:2] / f"{second.id}.h5", "r") as f:
        assert int(f.attrs["mvc_format_version"]) == 3 and f.attrs["mvc_structure"].decode().startswith(first.id)
    assert read_structure(repo.path, second.id) == repo.store.structure(second.id) is not None
    monkeypatch.setenv("MVC_CODING", "off")
    model.weights[0].assign(model.weights[0].numpy() + 1)
    inline = repo.commit(model, "cnn")
    assert read_structure(repo.path, inline.id) == repo.store.structure(second.id)
    assert read_structure(repo.path, repo.commit({"w": np.ones(2, np.float32)}, "plain").id) is None


def test_the_documented_reader_reads_every_version(repo, weights):
    read_version = documented_reader()
    first = repo.commit(weights, "net", message="a")
    weights["out/kernel"] = weights["out/kernel"] * 2  # second version shares three tensors with the first
    second = repo.commit(weights, "net", message="b")
    for version, expected in ((second, weights),):
        meta, tensors = read_version(repo.path, version.id)
        assert meta["message"] == "b" and meta["parents"] == [first.id]
        assert tensors.keys() == expected.keys()
        for name in expected:
            np.testing.assert_array_equal(tensors[name], expected[name])


def test_keras_version_read_with_h5py_matches_the_model(repo):
    read_version = documented_reader()
    model = BUILDERS["conv_bn"]()
    version = repo.commit(model, "cnn")
    meta, tensors = read_version(repo.path, version.id)
    assert meta["framework"] == "keras"
    assert any(n.endswith("/moving_variance") for n in tensors) and len(tensors) == len(repo.manifest(version.id))
    for variable in model.weights:
        matches = [n for n in tensors if n.endswith("/" + variable.name) and tensors[n].shape == tuple(variable.shape)]
        assert any(np.array_equal(tensors[n], variable.numpy()) for n in matches)


def test_layout_ids_and_hashes_are_as_documented(repo, weights):
    version = repo.commit(weights, "net")
    root = repo.path
    assert (root / "FORMAT").read_text() == "mvc-store 1\n"
    path = root / "objects" / version.id[:2] / f"{version.id}.h5"
    assert (root / "refs" / "net" / "HEAD").read_text().strip() == version.id
    with h5py.File(path, "r") as f:
        assert f.attrs["mvc_format"] == b"mvc-snapshot" and int(f.attrs["mvc_format_version"]) == 2
        assert h5py.check_string_dtype(f["manifest"].dtype).length is not None  # fixed-length: no global heap
        manifest = json.loads(f["manifest"][()])
        assert "structure" not in f  # dict models have no structure
    # tensor hash: BLAKE3 over "<dtype>|<shape>|" + bytes
    kernel = weights["dense/kernel"]
    expected = blake3.blake3(b"float32|8,4|" + kernel.tobytes()).hexdigest()
    assert tensor_hash(kernel) == expected
    assert tensor_hash(weights["step"]) == blake3.blake3(b"int64||" + weights["step"].tobytes()).hexdigest()
    # version id: BLAKE3 over canonical {"structure", "tensors": sorted [name, dtype, shape, hash]}
    listing = sorted([e["name"], e["dtype"], e["shape"], e["hash"]] for e in manifest)
    assert blake3.blake3(canonical_json({"structure": None, "tensors": listing}).encode()).hexdigest() == version.id


def test_the_documented_reader_decodes_coded_tensors_and_delta_chains(repo, monkeypatch):
    """Tensors large enough to code, committed as a chain of small updates: planes+zstd for the
    first version, integer-difference deltas (a chain up to MVC_DELTA_DEPTH, then a keyframe) for
    the next."""
    monkeypatch.setenv("MVC_DELTA_DEPTH", "2")
    read_version = documented_reader()
    rng = np.random.default_rng(7)
    weights = {"w": (rng.standard_normal((256, 64)) * 0.05).astype(np.float32),
               "h": rng.standard_normal(4096).astype(np.float16), "step": np.array(3, dtype=np.int64)}
    committed = []
    for _ in range(4):
        committed.append((repo.commit(weights, "net"), {k: v.copy() for k, v in weights.items()}))
        weights["w"] = weights["w"] + (rng.standard_normal(weights["w"].shape) * 1e-4).astype(np.float32)
        weights["h"] = weights["h"] + np.float16(0.01)
    codings = []
    for version, expected in committed:
        path = repo.path / "objects" / version.id[:2] / f"{version.id}.h5"
        with h5py.File(path, "r") as f:
            attrs = f["tensors"][tensor_hash(expected["w"])].attrs
            codings.append((attrs["mvc_coding"].decode(), int(attrs.get("mvc_depth", 0))))
        _, tensors = read_version(repo.path, version.id)
        for name, array in expected.items():
            assert tensors[name].dtype == array.dtype and tensors[name].tobytes() == array.tobytes()
    assert codings == [("planes+zstd", 0), ("sub+planes+zstd", 1), ("sub+planes+zstd", 2), ("planes+zstd", 0)]


def test_the_documented_reader_and_the_store_read_xor_deltas_older_versions_wrote(repo, monkeypatch):
    """XOR deltas (what mvc_magics wrote before integer differences) stay readable, also under a
    chain that continues with integer differences."""
    monkeypatch.setenv("MVC_DELTA_DEPTH", "4")
    read_version = documented_reader()
    rng = np.random.default_rng(8)
    weights = {"w": (rng.standard_normal((256, 64)) * 0.05).astype(np.float32)}
    committed = []
    for step in range(4):
        with monkeypatch.context() as older:
            if step < 2:
                older.setattr(coding, "delta_coding", lambda itemsize: coding.CODING_DELTA)
            committed.append((repo.commit(weights, "net"), weights["w"].copy()))
        weights["w"] = weights["w"] + (rng.standard_normal(weights["w"].shape) * 1e-4).astype(np.float32)
    codings = []
    for version, expected in committed:
        with h5py.File(repo.path / "objects" / version.id[:2] / f"{version.id}.h5", "r") as f:
            codings.append(f["tensors"][tensor_hash(expected)].attrs["mvc_coding"].decode())
        assert read_version(repo.path, version.id)[1]["w"].tobytes() == expected.tobytes()
        assert repo.load_state(version)["w"].tobytes() == expected.tobytes()
    assert codings == ["planes+zstd", "xor+planes+zstd", "sub+planes+zstd", "sub+planes+zstd"]
    assert repo.verify().ok
    repo.gc(repack=True)  # reverse deltas, second-order ones included, read by the same script
    codings = []
    for version, expected in committed:
        with h5py.File(repo.path / "objects" / version.id[:2] / f"{version.id}.h5", "r") as f:
            codings.append(f["tensors"][tensor_hash(expected)].attrs["mvc_coding"].decode())
        assert read_version(repo.path, version.id)[1]["w"].tobytes() == expected.tobytes()
    assert codings == ["sub2+planes+zstd", "sub2+planes+zstd", "sub+planes+zstd", "planes+zstd"]


def test_the_documented_reader_reads_second_order_deltas_with_a_slope(repo):
    """A line whose steps shrink as momentum fades (each 0.8 of the one before): repack codes the
    older versions against an extrapolation with a slope of 5/4 (lin), which the documented reader
    and the store both read back exactly."""
    read_version = documented_reader()
    rng = np.random.default_rng(9)
    step = (rng.standard_normal((256, 64)) * 1e-3).astype(np.float32)
    w = (rng.standard_normal((256, 64)) * 0.05).astype(np.float32)
    committed = []
    for k in range(4):
        committed.append((repo.commit({"w": w}, "net"), w.copy()))
        w = w + step * np.float32(0.8 ** k)
    repo.gc(repack=True)
    found = []
    for version, expected in committed:
        with h5py.File(repo.path / "objects" / version.id[:2] / f"{version.id}.h5", "r") as f:
            attrs = f["tensors"][tensor_hash(expected)].attrs
            found.append((attrs["mvc_coding"].decode(), int(attrs.get("mvc_slope", 4))))
        assert read_version(repo.path, version.id)[1]["w"].tobytes() == expected.tobytes()
        assert repo.load_state(version)["w"].tobytes() == expected.tobytes()
    assert found[:2] == [("lin+planes+zstd", 5), ("lin+planes+zstd", 5)]
    assert found[2:] == [("sub+planes+zstd", 4), ("planes+zstd", 4)]
