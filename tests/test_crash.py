"""Crash safety: SIGKILLed committers, kills at each step of a commit, stale and live locks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from reliability_helpers import ROOT, child_env, load_script, run_python

from mvc_magics import Repo
from mvc_magics.errors import LockTimeoutError
from mvc_magics.storage.files.atomic import TMP_PREFIX


def test_random_sigkills_lose_nothing(tmp_path):
    soak = load_script("crash_soak")
    stats = soak.run_soak(kills=20, store=tmp_path / ".mvc", seed=20261126, max_delay=0.25)
    # run_soak checks every promise after every kill and raises SoakFailure when one breaks.
    assert stats["kills"] == 20
    assert stats["versions_reported"] > 0
    assert stats["interrupted_absent"] + stats["interrupted_complete"] + stats["kills_between_commits"] == 20
    assert stats["versions_in_store"] >= stats["versions_reported"]


@pytest.mark.parametrize("mode", ["tag", "remove", "gc", "push", "pull"])
def test_random_sigkills_during_other_writes_lose_nothing(tmp_path, mode):
    soak = load_script("crash_soak_ops")  # the long run: scripts/crash_soak_ops.py --kills 30
    stats = soak.run_mode(mode, kills=2, folder=tmp_path, seed=20261130, targeted=True)
    # run_mode checks every promise after every kill (audit, stale rows, bit-identity) and raises SoakFailure.
    assert stats["kills"] >= 2 and stats["kills_inside_op"] <= stats["kills"]
    assert stats["verify_problems"] == stats["stale_tensor_rows"] == stats["unaudited_ref_changes"] == 0


# A child commits v1 normally, then dies by SIGKILL at one exact step of its second commit.
_DIE_AT = r"""
import os, signal, sys
import numpy as np
from mvc_magics import Repo
import mvc_magics.storage.snapshots.staging as staging
from mvc_magics.storage.local.audit import AuditLog
import mvc_magics.storage.snapshots.snapshot_writer as snapshot_writer
from mvc_magics.storage.snapshots.snapshot_writer import SnapshotWriter
from mvc_magics.storage.local.layout import StoreLayout
from mvc_magics.storage.files.safe_files import SafeFiles

store, point = sys.argv[1], sys.argv[2]
repo = Repo(store)
model = {"w": np.arange(6, dtype=np.float32), "b": np.ones(2, np.float64)}
repo.commit(model, "m", tags=["first"])

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after(owner, name):
    original = getattr(owner, name)
    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        die()
        return result
    setattr(owner, name, wrapped)

if point == "in-snapshot-write":  # the temporary snapshot is complete but not renamed yet
    after(SnapshotWriter, "finish")
elif point == "after-early-writeback":  # the disk was told to start writing the temporary: not durable yet
    snapshot_writer.WRITEBACK_BYTES = 1
    after(SnapshotWriter, "_start_writeback")
elif point == "in-placed-write":  # a loose tensor's bytes handed to the placed writers, maybe not written
    snapshot_writer.PLACED_MIN_BYTES = 1
    from mvc_magics.storage.files.placed import PlacedWrites
    after(PlacedWrites, "add")
elif point == "in-parallel-coding":  # a worker thread has coded a tensor the writer has not written
    staging.PARALLEL_MIN_BYTES = 0
    after(SnapshotWriter, "prepare")
elif point == "after-snapshot":
    after(staging, "publish")
elif point == "after-first-tag":
    after(StoreLayout, "write_tag")
elif point == "after-head":  # HEAD's file, fsynced beside the snapshot, renamed into place after it
    place = SafeFiles.place
    def placed(self, tmp, final, **options):
        place(self, tmp, final, **options)
        if final.name == "HEAD":
            die()
    SafeFiles.place = placed
elif point == "head-file-ready":  # HEAD's temporary is fsynced; the snapshot may or may not be placed yet
    after(SafeFiles, "prepare")
elif point == "before-audit":
    AuditLog.append = lambda *a, **k: die()
elif point == "torn-audit":
    def torn(self, *args, **kwargs):
        with open(self.path, "ab") as handle:
            handle.write(b'{"seq": 3, "time": "2026-')
            handle.flush()
        die()
    AuditLog.append = torn
model["w"] = model["w"] + 1
repo.commit(model, "m", tags=["second", "third"], metrics={"loss": 0.5})
"""

_ABSENT = ("in-snapshot-write", "after-early-writeback", "in-placed-write", "in-parallel-coding")
_EITHER = ("head-file-ready",)  # the kill races the snapshot's rename: absent or complete, both fine
_POINTS = [*_ABSENT, *_EITHER, "after-snapshot", "after-first-tag", "after-head", "before-audit", "torn-audit"]


@pytest.mark.parametrize("point", _POINTS)
def test_kill_at_each_step_of_a_commit_leaves_it_absent_or_complete(tmp_path, point):
    store = tmp_path / ".mvc"
    result = run_python(_DIE_AT, str(store), point)
    assert result.returncode == -signal.SIGKILL, result.stderr
    first_model = {"w": np.arange(6, dtype=np.float32), "b": np.ones(2, np.float64)}
    with Repo(store) as repo:
        assert not list((store / "tmp").iterdir()), "stray temporaries were not cleaned"
        assert not (store / "lock.owner").exists()
        report = repo.verify()
        assert report.ok, str(report)
        first = repo.resolve("first", name="m")
        state = repo.load_state(first)
        assert all(np.array_equal(state[k], first_model[k]) for k in first_model)
        versions = repo.log("m")
        if point in _ABSENT or (point in _EITHER and len(versions) == 1):
            assert len(versions) == 1  # absent: never renamed into place
            assert repo.head("m").id == first.id
        else:  # complete: content, both tags, HEAD, metrics and an audit entry
            assert len(versions) == 2
            second = versions[0]
            assert set(second.tags) == {"second", "third"}
            assert repo.head("m").id == second.id
            assert second.metrics == {"loss": 0.5}
            assert np.array_equal(repo.load_state(second)["w"], first_model["w"] + 1)
            assert any(second.id in entry.ids for entry in repo.audit.entries())
        if point == "torn-audit":
            assert any("torn write" in note for note in report.notes)
        # the recovery itself is on record, naming the dead holder
        recover = [e for e in repo.audit.entries() if e.op == "recover"]
        assert recover and "@" in recover[-1].detail["dead_holder"]


def _hold_lock(store):
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "crash_soak.py"), "--hold-lock", str(store)],
                            env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    assert line.startswith("HOLDING"), proc.stderr.read()
    return proc


def test_lock_of_a_killed_holder_is_recovered(tmp_path, weights):
    store = tmp_path / ".mvc"
    Repo(store).close()
    proc = _hold_lock(store)
    assert (store / "lock.owner").read_text().startswith(f"{proc.pid}@")
    proc.kill()
    proc.wait()
    with Repo(store) as repo:
        repo.layout.lock_timeout = 5
        started = time.monotonic()
        version = repo.commit(weights, "model")
        assert time.monotonic() - started < 5
        assert repo.verify().ok
        recover = [e for e in repo.audit.entries() if e.op == "recover"]
        assert recover[-1].detail["dead_holder"].startswith(f"{proc.pid}@")
        assert repo.head("model").id == version.id


# A child holds the lock and dies by SIGKILL while a process it forked (as subprocess does to start git
# for a commit's provenance) still has a copy of the lock's file descriptor: the kernel keeps the
# dead holder's lock until that copy is closed. Here the fork keeps it ~1 s; starting git, ~0-20 ms.
_DIE_WITH_A_FORK = r"""
import os, signal, sys, time
from mvc_magics import Repo

repo = Repo(sys.argv[1])
with repo.layout.locked():
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)  # the parent's pipes close with it: only the lock's descriptor is kept
        time.sleep(1.0)
        os._exit(0)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_opening_recovers_a_dead_holder_whose_fork_still_holds_the_lock(tmp_path):
    store = tmp_path / ".mvc"
    Repo(store).close()
    result = run_python(_DIE_WITH_A_FORK, str(store))
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert (store / "lock.owner").exists()
    with Repo(store) as repo:  # opening waits for the dead holder's lock (a live one is never waited for)
        assert not (store / "lock.owner").exists()
        recover = [e for e in repo.audit.entries() if e.op == "recover"]
        assert recover and "@" in recover[-1].detail["dead_holder"]
        assert repo.verify().ok


def test_live_lock_holder_is_never_broken(tmp_path, weights, monkeypatch):
    store = tmp_path / ".mvc"
    Repo(store).close()
    proc = _hold_lock(store)
    try:
        monkeypatch.setenv("MVC_LOCK_TIMEOUT", "0.5")
        with Repo(store) as repo:  # opening does not need the lock
            with pytest.raises(LockTimeoutError, match=rf"locked by another process \({proc.pid}@.*still alive"):
                repo.commit(weights, "model")
            assert repo.log() == []  # nothing was written
            # lock.owner naming a process that exited while the lock is held (by a child it started):
            # the message says who holds it, not that the dead process is alive.
            dead = subprocess.Popen(["true"])
            dead.wait()
            record = (store / "lock.owner").read_text()
            (store / "lock.owner").write_text(f"{dead.pid}@{socket.gethostname()} 1\n")
            with pytest.raises(LockTimeoutError, match="a process it started still holds the lock"):
                repo.commit(weights, "model")
            (store / "lock.owner").write_text(record)
            assert repo.log() == []
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        vid = out.split("DONE ")[1].split()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with Repo(store) as repo:
        assert repo.log("holder")[0].id == vid  # the holder finished its work under its unbroken lock
        assert not [e for e in repo.audit.entries() if e.op == "recover"]
        assert repo.verify().ok


def test_temporaries_of_dead_writers_are_removed_by_the_next_operation(repo, weights):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = repo.layout.tmp / f"{TMP_PREFIX}{dead.pid}-abc.h5"
        live = repo.layout.tmp / f"{TMP_PREFIX}{alive.pid}-def.h5"
        stale.write_bytes(b"half a snapshot")
        live.write_bytes(b"a write in flight")
        repo.commit(weights, "model")
        assert not stale.exists()
        assert live.exists()
    finally:
        alive.kill()
        alive.wait()


def test_interrupted_commit_in_process_is_undone(repo, weights, monkeypatch):
    """KeyboardInterrupt after the snapshot is placed: the commit is taken back entirely."""
    first = repo.commit(weights, "model", tags=["first"])
    from mvc_magics.storage.files.safe_files import SafeFiles

    place = SafeFiles.place

    def interrupted(self, tmp, final, **options):
        if final.name == "HEAD":  # HEAD's file is renamed into place after the snapshot
            raise KeyboardInterrupt
        place(self, tmp, final, **options)

    monkeypatch.setattr(SafeFiles, "place", interrupted)
    changed = dict(weights, **{"dense/bias": np.ones(4, np.float32)})
    with pytest.raises(KeyboardInterrupt):
        repo.commit(changed, "model", tags=["second"])
    monkeypatch.undo()
    assert [v.id for v in repo.log("model")] == [first.id]
    assert len(list(repo.layout.snapshot_files())) == 1
    assert not (repo.layout.refs / "model" / "tags" / "second").exists()
    assert repo.head("model").id == first.id
    assert repo.verify().ok
    assert os.listdir(repo.layout.tmp) == []


def test_a_failed_recovery_is_retried_by_the_next_operation(tmp_path, weights, monkeypatch):
    store = tmp_path / ".mvc"
    Repo(store).close()
    proc = _hold_lock(store)
    proc.kill()
    proc.wait()
    import mvc_magics.storage.local.recovery as maintenance

    real = maintenance.recover_after_crash
    monkeypatch.setattr(maintenance, "recover_after_crash", lambda repo, holder: (_ for _ in ()).throw(OSError("io")))
    with pytest.raises(OSError):
        Repo(store).commit(weights, "model")
    assert (store / "lock.owner").exists()  # the marker stays: the repair is still owed
    monkeypatch.setattr(maintenance, "recover_after_crash", real)
    with Repo(store) as repo:
        assert [e.op for e in repo.audit.entries()] == ["recover"]
        repo.commit(weights, "model")
        assert repo.verify().ok


# A child commits three versions, then dies by SIGKILL in the middle of streaming their average into
# the merged version's snapshot (after the writer has stored its second tensor).
_DIE_IN_MERGE = r"""
import os, signal, sys
import numpy as np
from mvc_magics import Repo
from mvc_magics.storage.snapshots.snapshot_writer import SnapshotWriter

repo = Repo(sys.argv[1])
rng = np.random.default_rng(0)
for step in range(3):
    repo.commit({f"t{i}": rng.standard_normal(60_000).astype(np.float32) for i in range(5)}, "m")
stored = 0
for name in ("add_tensor", "write_prepared"):
    original = getattr(SnapshotWriter, name)
    def wrapped(self, *args, _original=original, **kwargs):
        global stored
        result = _original(self, *args, **kwargs)
        stored += 1
        if stored == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(SnapshotWriter, name, wrapped)
repo.merge([v.id for v in repo.log("m")], name="m")
"""


def test_kill_in_the_middle_of_a_streamed_merge_leaves_no_version_and_it_can_be_merged_again(tmp_path):
    store = tmp_path / ".mvc"
    result = run_python(_DIE_IN_MERGE, str(store))
    assert result.returncode == -signal.SIGKILL, result.stderr
    with Repo(store) as repo:
        _killed_merge_left_nothing_and_merges_again(repo, store)


def _killed_merge_left_nothing_and_merges_again(repo: Repo, store) -> None:
    """No temporary, no fourth file, a sound store; the merge made again is the exact average."""
    assert not list((store / "tmp").iterdir()), "the half-written soup was not cleaned"
    assert repo.verify().ok
    inputs = repo.log("m")
    assert len(inputs) == 3 and len(list((store / "objects").rglob("*.h5"))) == 3
    merged = repo.merge([v.id for v in inputs], name="m")
    states = [repo.load_state(v) for v in inputs]
    soup = repo.load_state(merged)
    for key in states[0]:
        expected = ((0.0 + sum(s[key].astype(np.float64) for s in states)) / 3).astype(np.float32)
        assert soup[key].tobytes() == expected.tobytes()


# The same with tensors large enough for the one-pass average (both threads summing) and placed
# writes: the child dies right after the second placed tensor is handed to the writers, its
# O_DIRECT writes (and the first's block hashes) possibly still running.
_DIE_IN_PLACED_MERGE = r"""
import os, signal, sys
import numpy as np
from mvc_magics import Repo
from mvc_magics.operations import fused_average
from mvc_magics.storage.files.placed import PlacedWrites

repo = Repo(sys.argv[1])
rng = np.random.default_rng(1)
for step in range(3):
    repo.commit({f"t{i}": rng.standard_normal((1 << 20) + 3 * i).astype(np.float32) for i in range(3)}, "m")
print(repo.head("m").id, flush=True)
original, added = PlacedWrites.add, []
def add(self, offset, array):
    original(self, offset, array)
    added.append(offset)
    if len(added) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
PlacedWrites.add = add
fused = fused_average.fused_mean
def fused_mean(*args):
    print("one pass", flush=True)
    return fused(*args)
fused_average.fused_mean = fused_mean
repo.merge([v.id for v in repo.log("m")], name="m")
"""


def test_kill_while_a_one_pass_merge_places_its_tensors_leaves_the_store_and_head_as_they_were(tmp_path):
    store = tmp_path / ".mvc"
    result = run_python(_DIE_IN_PLACED_MERGE, str(store), MVC_PACK_MB="off")  # the inputs stay loose
    assert result.returncode == -signal.SIGKILL, result.stderr
    head_before, *passes = result.stdout.splitlines()
    assert passes[:2] == ["one pass", "one pass"]  # killed in the one-pass average's placed writes
    with Repo(store) as repo:
        assert repo.head("m").id == head_before
        _killed_merge_left_nothing_and_merges_again(repo, store)
