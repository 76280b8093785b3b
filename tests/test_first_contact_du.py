"""What a newcomer looks for (issue 25, item 11): ``mvc init`` makes an empty store without
Python, and ``mvc du`` / ``%mvc_du`` say per model how many versions, their logical size, the
bytes stored and what deduplication, coding and deltas saved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mvc_magics import Repo

ROOT = Path(__file__).resolve().parents[1]


def _mvc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MVC_DIR"}
    env.update({"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"})
    return subprocess.run([sys.executable, "-m", "mvc_magics.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=cwd)


def test_mvc_init_makes_an_empty_store(tmp_path):
    result = _mvc("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / ".mvc" / "FORMAT").read_text().startswith("mvc-store")
    assert "0 versions" in result.stdout
    log = _mvc("log", cwd=tmp_path)
    assert log.returncode == 0, log.stderr
    again = _mvc("init", cwd=tmp_path)  # an existing store is opened, never emptied
    assert again.returncode == 0 and "0 versions" in again.stdout


def _history(repo: Repo) -> None:
    steps = np.arange(256 * 256, dtype=np.float32).reshape(256, 256) % 97  # codes well
    frozen = np.ones((128, 64), np.float32)
    for epoch in range(4):  # the frozen layer is the same in every version: stored once
        repo.commit({"head": steps + epoch * 0.5, "frozen": frozen}, "net", message=f"epoch {epoch}")
    repo.commit({"w": np.zeros(1000, np.float64)}, "tiny")


def test_du_counts_versions_logical_stored_and_savings(tmp_path):
    with Repo(tmp_path / ".mvc") as repo:
        _history(repo)
        loose = {m.name: m for m in repo.du().models}
        net = loose["net"]
        head, frozen = 256 * 256 * 4, 128 * 64 * 4
        assert net.versions == 4 and net.logical == 4 * (head + frozen)
        assert net.dedup_saved == 3 * frozen  # the frozen layer, stored once
        assert net.stored == net.unique == 4 * head + frozen  # loose files: stored as they are
        assert net.coding_saved == net.delta_saved == 0
        before = repo.du()
        assert before.loose_files == 5 and "loose: 5 snapshot file(s)" in str(before)
        repo.gc(repack=True)
        report = repo.du()
        assert report.loose_files == report.loose_bytes == 0 and "loose" not in str(report)
        packed = {m.name: m for m in report.models}["net"]
        assert packed.logical == net.logical and packed.dedup_saved == net.dedup_saved
        assert packed.coding_saved > 0 and packed.delta_saved > 0
        assert packed.stored + packed.coding_saved + packed.delta_saved == packed.unique
        assert packed.stored < net.stored / 2
        assert report.total.versions == 5 and report.total.logical == net.logical + 8000
        objects = sum(p.stat().st_size for p in (tmp_path / ".mvc" / "objects").rglob("*.h5"))
        assert report.total.stored <= objects <= report.files_bytes
    text = _mvc("--store", str(tmp_path / ".mvc"), "du")
    assert text.returncode == 0, text.stderr
    assert "deltas saved" in text.stdout and "net" in text.stdout and "tiny" in text.stdout


def test_the_du_magic(ip):
    _history(Repo(".mvc"))
    report = ip.run_line_magic("mvc_du", "   # what does it all take?")
    assert [m.name for m in report.models] == ["net", "tiny"]
    assert "dedup saved" in str(report) and "<table" in report._repr_html_()
