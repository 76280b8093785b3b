"""Noise a newcomer should not see (issue 25, item 9): progress bars only on a terminal or in
Jupyter, never as fragments in logs and pipes; a warning points at the user's own line."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from mvc_magics import Repo

ROOT = Path(__file__).resolve().parents[1]


def _mvc(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MVC_DIR", "MVC_PROGRESS")}
    env.update({"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"})
    return subprocess.run([sys.executable, "-m", "mvc_magics.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_transfers_into_a_pipe_draw_no_progress_bars(tmp_path):
    with Repo(tmp_path / "src") as repo:  # a few MiB: above the size that shows a transfer's bar
        rng = np.random.default_rng(0)
        repo.commit({"w": rng.standard_normal((1024, 1024)).astype(np.float32)}, "m")
        repo.commit({"w": rng.standard_normal((1024, 1024)).astype(np.float32)}, "m")
    url = (tmp_path / "remote").as_uri()
    outputs = [_mvc("--store", str(tmp_path / "src"), "push", url),
               _mvc("clone", url, str(tmp_path / "clone")),
               _mvc("--store", str(tmp_path / "clone"), "pull", url)]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        for noise in ("\r", "B/s", "it/s", "%|"):
            assert noise not in result.stderr and noise not in result.stdout, (noise, result.stderr)


def test_the_untracked_variable_warning_points_at_the_users_line(repo):
    tf = pytest.importorskip("tensorflow")

    class Linear(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(1.0)

        def call(self, x):
            return self.w * x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        repo.commit(Linear(), "lin")
    (warning,) = [w for w in caught if "does not track" in str(w.message)]
    assert Path(warning.filename) == Path(__file__) and warning.lineno == line


def test_in_a_notebook_the_warning_points_at_the_cell(ip):
    pytest.importorskip("tensorflow")
    ip.run_cell("import tensorflow as tf\n"
                "class Linear(tf.keras.Model):\n"
                "    def __init__(self):\n"
                "        super().__init__()\n"
                "        self.w = tf.Variable(1.0)\n"
                "    def call(self, x):\n"
                "        return self.w * x\n"
                "model = Linear()")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ip.run_cell("%mvc_commit model")
    (warning,) = [w for w in caught if "does not track" in str(w.message)]
    package = str(ROOT / "mvc_magics")
    assert not warning.filename.startswith(package) and "IPython" not in warning.filename, warning.filename


def test_the_test_extra_pins_boto3_with_the_botocore_s3fs_needs():
    # moto wants any boto3, s3fs's aiobotocore an exact botocore window: unpinned, pip walks back
    # through hundreds of boto3 releases (each pinning its own botocore) before one fits.
    from importlib.metadata import version

    from packaging.requirements import Requirement

    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("\ntest = [", 1)[1].split("\n]", 1)[0]
    pins = {}
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip().rstrip(",").strip('"')
        if line:
            requirement = Requirement(line)
            pins[requirement.name] = requirement.specifier
    for name in ("boto3", "aiobotocore"):
        assert name in pins and any(s.operator in ("<", "<=", "==", "~=") for s in pins[name]), name
        assert pins[name].contains(version(name)), (name, version(name), pins[name])
