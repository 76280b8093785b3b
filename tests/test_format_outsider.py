"""docs/FORMAT.md is enough for an outsider (issue 25, item 14): a reader written from it alone
(tests/format_outsider_reader.py: h5py, numpy, zstandard, blake3) reads every kind of file a store
holds, exactly, and recomputes every version id."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from format_outsider_reader import Reader

from mvc_magics import Repo
from mvc_magics.storage.codec import coding

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")


def test_the_reader_imports_nothing_of_the_project():
    tree = ast.parse((Path(__file__).parent / "format_outsider_reader.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "json", "pathlib", "blake3", "h5py", "numpy", "zstandard"}


def test_an_outsider_reads_every_kind_of_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    with Repo(tmp_path / ".mvc") as repo:
        # format 3, structure stored once: three versions of a PyTorch module, then repacked into
        # a whole newest version, a sub delta and a second-order (sub2) delta
        net = torch.nn.Linear(64, 64)
        for _ in range(3):
            repo.commit(net, "net")
            with torch.no_grad():
                net.weight.add_(torch.from_numpy((rng.standard_normal((64, 64)) * 1e-4).astype(np.float32)))
        # a line whose steps shrink (momentum fading): its oldest version a lin delta with a slope
        step = (rng.standard_normal(4096) * 1e-3).astype(np.float32)
        w = {"w": (rng.standard_normal(4096) * 0.05).astype(np.float32)}
        for k in range(3):
            repo.commit(w, "fading")
            w = {"w": w["w"] + step * np.float32(0.8 ** k)}
        repo.gc(repack=True)
        # format 2 (coded, no structure) with raw-bytes bfloat16, XOR deltas (older writers) and sub deltas
        monkeypatch.setenv("MVC_DELTA_DEPTH", "4")
        w = {"w": (rng.standard_normal((128, 64)) * 0.05).astype(np.float32),
             "h": rng.standard_normal(2048).astype(ml_dtypes.bfloat16)}
        for step in range(3):
            with monkeypatch.context() as older:
                if step < 2:
                    older.setattr(coding, "delta_coding", lambda itemsize: coding.CODING_DELTA)
                repo.commit(w, "dict")
            w = {"w": w["w"] + (rng.standard_normal((128, 64)) * 1e-4).astype(np.float32), "h": w["h"]}
        monkeypatch.delenv("MVC_DELTA_DEPTH")
        repo.commit({"h": rng.standard_normal(64).astype(ml_dtypes.bfloat16)}, "bf16")  # loose: raw bytes
        # loose, its tensor (2.8 MB) written at its offset: a block-list checksum over three blocks
        repo.commit({"big": rng.standard_normal(700_000).astype(np.float32)}, "big")
        # format 1: coding off, the structure inside the file
        monkeypatch.setenv("MVC_CODING", "off")
        repo.commit(torch.nn.Linear(8, 3), "old")
        monkeypatch.delenv("MVC_CODING")
        # a retired file: the removed version's file keeps the tensor its child still reads
        shared = rng.standard_normal((64, 32)).astype(np.float32)
        first = repo.commit({"shared": shared, "own": np.zeros(1024, np.float32)}, "r")
        repo.commit({"shared": shared, "own": np.ones(1024, np.float32)}, "r")
        repo.remove(first.id, name="r")
        repo.gc()
        expected = {v.id: {k: np.ascontiguousarray(a).tobytes() for k, a in repo.load_state(v).items()}
                    for v in repo.log(None, limit=None)}
    reader = Reader(tmp_path / ".mvc")
    versions = reader.read_store()
    assert set(versions) == set(expected)
    for vid, (_meta, tensors) in versions.items():
        assert tensors == expected[vid], vid
    assert {"format 1", "format 2", "format 3", "stored as it is", "raw bytes", "coded", "planes+zstd",
            "sub+planes+zstd", "sub2+planes+zstd", "lin+planes+zstd", "xor+planes+zstd", "retired file",
            "tensor read from a retired file", "structure stored once", "block-list checksum"} <= reader.seen, \
        reader.seen


def test_the_spec_says_what_an_outsider_had_to_guess():
    text = (Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md").read_text()
    assert "64 lowercase hexadecimal digits" in text
    assert "ensure_ascii=True" in text and "\\uXXXX" in text and "repr" in text
    assert "need not be canonical" in text  # formats 1 and 2: parse, then write canonically
    assert "**decoded** bytes" in text  # a manifest's nbytes
    assert "written\nwithout a user block" in text or "written without a user block" in text.replace("\n", " ")
    assert "dataset's dtype and shape must equal the manifest's" not in text
