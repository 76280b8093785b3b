"""Loose commits and the automatic pack: a commit writes its tensors as they are (the user block
says the file is loose); past MVC_PACK_MB of loose files the store codes them in a background
thread after the commit returned, gives the lock back to the user's next write after one file, and
a kill in the middle leaves every version readable and bit-exact."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import run_python

from mvc_magics import Repo, commit_every
from mvc_magics.errors import StoreError
from mvc_magics.operations.autopack import loose_summary
from mvc_magics.operations.commit import commit_later
from mvc_magics.storage.files.checksum import check_file_checksum, is_loose
from mvc_magics.storage.local.writes import StoreWrites
from mvc_magics.storage.snapshots.staging import StagedCommit


def _weights(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    kernel = (rng.standard_normal((256, 160)) * 0.05).astype(np.float32)  # 160 kB
    return {"dense/kernel": kernel + np.float32(step * 1e-4), "dense/bias": np.full(160, step, np.float32)}


def _commit_line(repo: Repo, n: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    return [(repo.commit(w, "net").id, w) for w in (_weights(i) for i in range(n))]


def _intact(repo: Repo, versions) -> None:
    for vid, expected in versions:
        state = repo.load_state(vid)
        assert all(state[k].tobytes() == v.tobytes() for k, v in expected.items())


def test_past_the_threshold_the_loose_files_are_packed_after_the_commit_returned(repo, monkeypatch):
    monkeypatch.setenv("MVC_PACK_MB", "0.5")  # three 160 kB commits pass it
    versions = _commit_line(repo, 2)
    assert loose_summary(repo.store)[0] == 2 and all(is_loose(repo.layout.snapshot_path(v)) for v, _ in versions)
    status = repo.status({})
    assert status.loose_files == 2 and "loose: 2 snapshot file(s)" in str(status)
    versions += _commit_line(repo, 3)[2:]  # 3 x 186 kB: past the threshold
    repo.store.background.wait()  # the pack ran in the store's worker thread
    assert loose_summary(repo.store) == (0, 0)
    assert not any(is_loose(repo.layout.snapshot_path(v)) for v, _ in versions)
    assert all(check_file_checksum(repo.layout.snapshot_path(v)) for v, _ in versions)
    assert "loose" not in str(repo.status({}))
    assert any(entry.op == "repack" for entry in repo.audit_log())
    _intact(repo, versions)
    assert repo.verify().ok


def test_with_automatic_packing_off_files_stay_loose_until_gc_repack(repo, monkeypatch):
    monkeypatch.setenv("MVC_PACK_MB", "off")
    versions = _commit_line(repo, 4)
    repo.store.background.wait()
    assert loose_summary(repo.store)[0] == 4
    assert repo.gc(repack=True).versions_recoded == 4
    assert loose_summary(repo.store) == (0, 0)
    _intact(repo, versions)


def test_a_pack_in_flight_gives_the_lock_to_the_next_commit_after_one_file(repo, monkeypatch):
    monkeypatch.setenv("MVC_PACK_MB", "off")
    versions = _commit_line(repo, 4)
    entered, release, resume, calls = threading.Event(), threading.Event(), threading.Event(), []
    original = StoreWrites.recode_version

    def slow(self, vid, plan):
        if calls:  # a later file waits until the test has counted: once the commit returns, the pack goes on
            resume.wait(30)
        calls.append(vid)
        entered.set()
        release.wait(10)
        return original(self, vid, plan)

    monkeypatch.setattr(StoreWrites, "recode_version", slow)
    monkeypatch.setenv("MVC_PACK_MB", "0.1")
    versions += _commit_line(repo, 5)[4:]  # this commit queues the pack
    assert entered.wait(10)
    stop = repo.store.background.stop  # set by the next commit as it asks for the lock
    threading.Thread(target=lambda: stop.wait(30) and release.set(), daemon=True).start()
    versions.append((repo.commit(_weights(9), "net").id, _weights(9)))  # waits for one file, not the pack
    assert len(calls) == 1  # the pack stopped after the file it was writing
    resume.set()
    repo.store.background.wait()
    _intact(repo, versions)
    assert repo.verify().ok


_KILLED_PACK = r"""
import os, signal, sys
import numpy as np
from mvc_magics import Repo
from mvc_magics.storage.local.writes import StoreWrites
from mvc_magics.storage.snapshots.staging import StagedCommit
sys.path.insert(0, sys.argv[2])
from test_autopack import _weights

original = StoreWrites.recode_version
done = []

def recode_then_die(self, vid, plan):
    result = original(self, vid, plan)
    done.append(vid)
    if len(done) == 1:  # one file re-coded and renamed into place, the rest still loose
        os.kill(os.getpid(), signal.SIGKILL)
    return result

StoreWrites.recode_version = recode_then_die
repo = Repo(sys.argv[1])
for step in range(5):
    repo.commit(_weights(step), "net")
repo.store.background.wait()
print("not killed")
"""


@pytest.mark.timeout(120)
def test_a_kill_during_the_automatic_pack_leaves_every_version_whole(tmp_path):
    store = tmp_path / ".mvc"
    done = run_python(_KILLED_PACK, str(store), str(Path(__file__).parent), MVC_PACK_MB="0.3")
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    with Repo(store) as repo:
        log = repo.log("net")
        assert len(log) >= 2  # the commits before the kill are there (the pack starts at the second)
        by_step = {int(repo.load_state(v.id)["dense/bias"][0]): v.id for v in log}
        _intact(repo, [(vid, _weights(step)) for step, vid in by_step.items()])
        assert repo.verify().ok
        loose_before = loose_summary(repo.store)[0]
        assert 0 < loose_before < len(log)  # some files packed, some still loose
        repo.gc(repack=True)  # the next pack finishes the work
        assert loose_summary(repo.store) == (0, 0)
        _intact(repo, [(vid, _weights(step)) for step, vid in by_step.items()])


# -- commits handed off by training loops --------------------------------------------------------


def test_a_loop_commit_returns_before_writing_and_stores_the_weights_of_its_step(repo):
    weights = _weights(0)
    with commit_every(weights, 1, name="loop", repo=repo) as run:
        for step in range(1, 7):  # more steps than copies in flight: buffers are reused
            weights["dense/bias"][:] = step  # the loop changes the weights in place right after
            pending = run.step(loss=float(step))
            assert isinstance(pending, Future)
            assert len(repo.store.background.pending()) <= 2  # at most two copies wait for the disk
    assert repo.store.background.spare == []  # the copies kept between steps are dropped with the loop
    assert [v.params["step"] for v in run.versions] == [1, 2, 3, 4, 5, 6]
    for version in run.versions:
        assert (repo.load_state(version.id)["dense/bias"] == version.params["step"]).all()
    assert [v.id for v in repo.log("loop")] == [v.id for v in reversed(run.versions)]
    assert repo.verify().ok


def test_status_shows_a_pending_commit_and_its_error_surfaces_on_the_next_write(repo, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    original = StagedCommit.publish

    def blocked_then_fail(self, *args, **kwargs):  # the disk fills up as the snapshot is completed
        entered.set()
        release.wait(10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(StagedCommit, "publish", blocked_then_fail)
    future = commit_later(repo.store, _weights(1), "loop")
    assert entered.wait(10)
    assert repo.store.background.pending() == ["commit loop"]
    threading.Timer(0.3, release.set).start()
    assert "background: waited for commit loop" in repo.status({}).storage_line()  # named, then waited for
    assert future.done() and future.result() is None
    monkeypatch.setattr(StagedCommit, "publish", original)
    with pytest.raises(StoreError, match=r"commit loop in the background failed: cannot write .*no space") as error:
        repo.commit(_weights(2), "loop")
    assert "\n" not in str(error.value)
    assert repo.log("loop") == []  # nothing half-written was kept
    assert repo.commit(_weights(2), "loop").id and len(repo.log("loop")) == 1  # said once, then it works
    assert not list(repo.layout.tmp.iterdir())


_EXIT_WITH_COMMITS_IN_FLIGHT = r"""
import sys
import numpy as np
from mvc_magics import Repo, commit_every
repo = Repo(sys.argv[1])
weights = {"w": np.zeros((512, 512), np.float32)}
run = commit_every(weights, 1, name="loop", repo=repo)
for step in range(4):
    weights["w"] += 1
    run.step()
print(len(run._versions))
"""


def test_the_process_exits_only_after_the_commits_it_handed_off(tmp_path):
    done = run_python(_EXIT_WITH_COMMITS_IN_FLIGHT, str(tmp_path / ".mvc"))
    assert done.returncode == 0, done.stderr[-2000:]
    with Repo(tmp_path / ".mvc") as repo:
        assert [int(repo.load_state(v.id)["w"][0, 0]) for v in repo.log("loop")] == [4, 3, 2, 1]
        assert repo.verify().ok
