"""Shared fixtures: a fresh store per test, a real IPython shell with the extension loaded."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest

from mvc_magics import Repo


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, at most 4 (each worker holds TensorFlow, PyTorch and JAX, and
    starts its own S3 servers)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / ".mvc"


@pytest.fixture
def repo(store_path):
    with Repo(store_path) as repo:
        yield repo


@pytest.fixture
def ip(tmp_path, monkeypatch):
    """A real InteractiveShell with history off and mvc_magics loaded on a store in tmp_path."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.testing.globalipapp import get_ipython  # noqa: F401 - sets up a test-safe shell

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MVC_DIR", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    shell = InteractiveShell.instance()
    shell.history_manager.enabled = False
    shell.run_line_magic("load_ext", "mvc_magics")
    yield shell
    shell.run_line_magic("unload_ext", "mvc_magics")
    for name in list(shell.user_ns):
        if not name.startswith("_") and name not in shell.user_ns_hidden:
            del shell.user_ns[name]


@pytest.fixture
def weights():
    """A small framework-free model: a dict of numpy arrays."""
    rng = np.random.default_rng(0)
    return {
        "dense/kernel": rng.standard_normal((8, 4)).astype(np.float32),
        "dense/bias": np.zeros(4, np.float32),
        "out/kernel": rng.standard_normal((4, 1)).astype(np.float32),
        "step": np.array(3, np.int64),
    }


def store_state(path):
    """Every durable file of a store with its content hash, plus the index's rows.

    Two equal states mean an operation left the store exactly as it was (lock files and the
    SQLite WAL side files are not state).
    """
    import sqlite3

    import blake3

    files = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel in {"lock", "lock.owner"} or rel.startswith("index.sqlite") or rel.startswith("tmp/"):
            continue
        files[rel] = blake3.blake3(file.read_bytes()).hexdigest()
    rows = {}
    index = path / "index.sqlite"
    if index.exists():
        conn = sqlite3.connect(index)
        for table in ("versions", "metrics", "tags", "heads", "tensors"):
            rows[table] = sorted(map(repr, conn.execute(f"SELECT * FROM {table}").fetchall()))
        conn.close()
    return files, rows


from s3_servers import moto_backend, s3, seaweed, seaweed_backend  # noqa: E402, F401 - S3 servers for remote tests
