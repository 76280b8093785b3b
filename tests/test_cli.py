"""The ``mvc`` command, run as a subprocess over a real store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mvc_magics import Repo

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["log", "show", "compare", "verify", "gc", "export", "push", "pull", "clone"]


def mvc(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "MVC_DIR"}
    environment.update({"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    return subprocess.run([sys.executable, "-m", "mvc_magics.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=environment, timeout=300)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / ".mvc"
    with Repo(path) as repo:
        rng = np.random.default_rng(0)
        w = {"k": rng.standard_normal((4, 4)).astype(np.float32), "b": np.zeros(4, np.float32)}
        repo.commit(w, "m", message="first", metrics={"val_loss": 0.5, "acc": 0.8}, tags=["baseline"])
        w["b"] = w["b"] + 1
        v2 = repo.commit(w, "m", message="second", metrics={"val_loss": 0.25})
        repo.tag(v2.id, "production", protect=True)
    return path


def test_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; the project supports 3.10)
    assert '[project.scripts]\nmvc = "mvc_magics.cli:main"' in text


def test_version_comes_from_one_place():
    from mvc_magics._version import __version__

    assert mvc("--version").stdout == f"mvc_magics {__version__}\n"
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and '[tool.hatch.version]\npath = "mvc_magics/_version.py"' in text
    assert "MIT License" in (ROOT / "LICENSE").read_text() and 'license = "MIT"' in text


def test_help_for_every_command():
    top = mvc("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in COMMANDS) and "--store" in top.stdout
    for command in COMMANDS:
        result = mvc(command, "--help")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: mvc {command}")


def test_log_show_compare_verify(store):
    log = mvc("--store", str(store), "log")
    assert log.returncode == 0, log.stderr
    assert "production*" in log.stdout and "baseline" in log.stdout and "second" in log.stdout
    show = mvc("--store", str(store), "show", "production")
    assert show.returncode == 0 and "second" in show.stdout and "metric val_loss" in show.stdout
    compare = mvc("--store", str(store), "compare", "baseline", "production", "--weights", "val_loss=1")
    assert compare.returncode == 0, compare.stderr
    lines = compare.stdout.splitlines()
    assert "best:" in lines[0] and "val_loss" in lines[1]
    assert lines[3].startswith("* 1") and "second" in lines[3]  # the better val_loss ranks first
    bad = mvc("--store", str(store), "compare", "--weights", "val_loss=heavy")
    assert bad.returncode == 1 and "METRIC=NUMBER" in bad.stderr
    verify = mvc("verify", env={"MVC_DIR": str(store)})  # $MVC_DIR picks the store too
    assert verify.returncode == 0 and "OK" in verify.stdout


def test_bad_input_is_one_line_and_exit_code_1(store, tmp_path):
    for args in (["frobnicate"], ["--store", str(store), "show", "nosuchtag"],
                 ["--store", str(tmp_path / "missing"), "log"], ["--store", str(store), "log", "-n", "-1"],
                 ["--store", str(store), "compare", "baseline", "baseline"], ["--store", str(store), "push"]):
        result = mvc(*args)
        assert result.returncode == 1, (args, result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mvc: error:"), (args, result.stderr)
    assert not (tmp_path / "missing").exists()  # a read command never creates a store


def test_verify_exits_1_on_damage(store):
    import h5py

    with Repo(store) as repo:
        entry = next(e for e in repo.manifest(repo.resolve("baseline").id) if e.name == "k")
        path = repo.layout.snapshot_path(entry.object)
    with h5py.File(path, "r+") as f:
        f["tensors"][entry.hash][0, 0] = 42.0
    result = mvc("--store", str(store), "verify")
    assert result.returncode == 1 and "problem" in result.stdout


def test_push_clone_pull_gc(store, tmp_path):
    url = (tmp_path / "remote").as_uri()
    push = mvc("--store", str(store), "push", url)
    assert push.returncode == 0 and "2 new version(s)" in push.stdout, push.stderr
    clone = mvc("clone", url, str(tmp_path / "copy" / ".mvc"))
    assert clone.returncode == 0 and "2 versions" in clone.stdout, clone.stderr
    pull = mvc("--store", str(tmp_path / "copy" / ".mvc"), "pull")  # origin was set by clone
    assert pull.returncode == 0 and "0 new version(s)" in pull.stdout
    with Repo(tmp_path / "copy" / ".mvc") as copy:
        assert copy.resolve("production", name="m").protected_tags == ("production",)
        copy.remove("baseline")
    gc = mvc("--store", str(tmp_path / "copy" / ".mvc"), "gc")
    assert gc.returncode == 0 and gc.stdout.startswith("gc: freed")


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_export_keras(tmp_path):
    from keras_models import dense_model

    model = dense_model(seed=0)
    with Repo(tmp_path / ".mvc") as repo:
        repo.commit(model, "model", tags=["production"])
    result = mvc("--store", str(tmp_path / ".mvc"), "export", "production", str(tmp_path / "m.weights.h5"),
                 "--format", "weights-h5")
    assert result.returncode == 0, result.stderr
    fresh = dense_model(seed=5)
    fresh.load_weights(tmp_path / "m.weights.h5")
    for got, want in zip(fresh.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
