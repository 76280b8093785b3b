"""A damaged global heap never reaches libhdf5 (it loops forever decoding one).

``tests/data/damaged-global-heap.h5`` is a snapshot with a few changed bytes that tests/test_fuzz.py
produced: plain h5py hangs reading its ``mvc_format`` attribute (``H5HG__cache_heap_deserialize``).
Snapshots are now written with fixed-length strings only; variable-length ones (files of earlier
versions) are read only once the file's checksum holds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
import pytest
from keras_models import BUILDERS

from mvc_magics import Repo
from mvc_magics.errors import IntegrityError
from mvc_magics.storage.snapshots.snapshot import read_content
from mvc_magics.storage.snapshots.snapshot_writer import _stamp_checksum

DAMAGED = Path(__file__).parent / "data" / "damaged-global-heap.h5"


def _read_in_child(path: Path, timeout: float = 60) -> str:
    code = ("import sys\nfrom pathlib import Path\nfrom mvc_magics.storage.snapshots.snapshot import read_content\n"
            "from mvc_magics.errors import MVCError\n"
            "try:\n    read_content(Path(sys.argv[1]))\nexcept MVCError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_the_file_that_hung_libhdf5_is_refused_in_one_line(tmp_path):
    copy = tmp_path / "x.h5"
    copy.write_bytes(DAMAGED.read_bytes())
    message = _read_in_child(copy)  # a hang would end in TimeoutExpired
    assert message == "snapshot x.h5 is damaged (its checksum does not match)"
    assert copy.read_bytes() == DAMAGED.read_bytes()


def _as_older_versions_wrote(path: Path) -> None:
    """Rewrite a snapshot's strings as variable-length ones (global heap), as before 2026-11-30."""
    with h5py.File(path, "r+") as f:
        for name in ("mvc_format", "version_id"):
            value = f.attrs[name].decode()
            del f.attrs[name]
            f.attrs[name] = value  # a Python str: variable-length
        for name in ("meta", "manifest"):
            text = f[name][()].decode()
            del f[name]
            f.create_dataset(name, data=text, dtype=h5py.string_dtype("utf-8"))
    _stamp_checksum(path)


def test_new_files_hold_no_variable_length_string_and_older_ones_stay_readable(tmp_path):
    with Repo(tmp_path / ".mvc") as repo:
        version = repo.commit({"w": np.arange(12, dtype=np.float32)}, "m", message="héllo")
        path = repo.layout.snapshot_path(version.id)
    with h5py.File(path, "r") as f:
        kinds = [f.attrs.get_id(k).dtype.kind for k in f.attrs] + [f[k].dtype.kind for k in ("meta", "manifest")]
        assert "O" not in kinds
    before = read_content(path)
    _as_older_versions_wrote(path)
    with h5py.File(path, "r") as f:
        assert f["meta"].dtype.kind == "O"
    older = read_content(path)
    assert (older.version_id, older.meta, older.manifest) == (before.version_id, before.meta, before.manifest)
    assert older.meta["message"] == "héllo"


def test_an_older_file_with_a_changed_byte_is_refused_before_its_heap_is_parsed(tmp_path):
    with Repo(tmp_path / ".mvc") as repo:
        path = repo.layout.snapshot_path(repo.commit({"w": np.arange(12, dtype=np.float32)}, "m").id)
    _as_older_versions_wrote(path)
    raw = bytearray(path.read_bytes())
    heap = raw.index(b"GCOL")  # the global heap collection's signature
    raw[heap + 20] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="checksum does not match"):
        read_content(path)


def test_no_file_of_a_store_holds_a_variable_length_value(tmp_path, monkeypatch):
    """Every kind of file the store writes (coded tensors, deltas, raw-bits dtypes, a structure
    stored once, repacked files) keeps its strings out of the global heap."""
    monkeypatch.setenv("MVC_DELTA_DEPTH", "3")
    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal(20_000).astype(np.float32),
               "b": rng.standard_normal(4096).astype(np.float16)}
    with Repo(tmp_path / ".mvc") as repo:
        for _ in range(3):
            repo.commit(weights, "net")
            weights["w"] = weights["w"] + np.float32(1e-3)
        repo.commit({"h": rng.standard_normal(64).astype(ml_dtypes.bfloat16)}, "half")
        model = BUILDERS["conv_bn"]()
        repo.commit(model, "cnn")
        model.weights[0].assign(model.weights[0].numpy() + 1)
        repo.commit(model, "cnn")
        repo.gc(repack=True)
        files = sorted((tmp_path / ".mvc" / "objects").rglob("*.h5"))
    found = []

    def visit(name, obj):
        kinds = [obj.attrs.get_id(k).dtype.kind for k in obj.attrs]
        if isinstance(obj, h5py.Dataset):
            kinds.append(obj.dtype.kind)
        if "O" in kinds:
            found.append(name)

    for path in files:
        with h5py.File(path, "r") as f:
            visit("/", f)
            f.visititems(visit)
    assert len(files) == 6 and found == []
