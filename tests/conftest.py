"""Shared fixtures: a fresh store per test, a real IPython shell with the extension loaded."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mvc_magics import Repo  # noqa: E402


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
