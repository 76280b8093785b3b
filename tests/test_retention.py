"""Retention policies (gc --keep) and repack (gc --repack): what they keep, what they free, the
front ends that accept them, and kills in the middle of either."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from reliability_helpers import child_env

from mvc_magics import Repo
from mvc_magics.apps.cli import run as cli_main
from mvc_magics.core.retention import RetentionPolicy
from mvc_magics.errors import InvalidPolicyError

# Shared with the child processes of the crash tests: a run whose every version is reproducible.
RUN = r"""
import numpy as np

def run_weights(steps):
    rng = np.random.default_rng(11)
    w = {"dense/kernel": (rng.standard_normal((96, 64)) * 0.05).astype(np.float32),
         "dense/bias": np.zeros(64, np.float32)}
    out = []
    for step in range(steps):
        out.append(({k: v.copy() for k, v in w.items()}, {"val_loss": [0.9, 0.5, 0.7, 0.4, 0.8, 0.6][step % 6]}))
        w["dense/kernel"] = w["dense/kernel"] - (rng.standard_normal((96, 64)) * 1e-4).astype(np.float32)
    return out

def commit_run(repo, steps=6):
    return [repo.commit(w, "net", metrics=m).id for w, m in run_weights(steps)]
"""
namespace: dict = {}
exec(RUN, namespace)
run_weights, commit_run = namespace["run_weights"], namespace["commit_run"]


def objects_bytes(repo):
    return sum(p.stat().st_size for p in (repo.path / "objects").rglob("*.h5"))


def assert_versions_intact(repo, ids, steps=6):
    expected = {vid: w for vid, (w, _) in zip(ids, run_weights(steps))}
    for vid in ids:
        if repo.store.has_version(vid):
            state = repo.load_state(vid)
            assert all(state[k].tobytes() == v.tobytes() for k, v in expected[vid].items())
    assert repo.verify().ok


def test_policy_rules_parse_and_refuse_nonsense():
    policy = RetentionPolicy.parse(["best:val_loss:5", "last:3", "tagged", "best:acc:2:min"])
    assert [str(rule) for rule in policy.rules] == ["best:val_loss:5:min", "last:3", "tagged", "best:acc:2:min"]
    for bad in (["best:val_loss"], ["last:0"], ["last:x"], ["newest:3"], ["best:acc:2:up"], []):
        with pytest.raises(InvalidPolicyError):
            RetentionPolicy.parse(bad)


def test_keep_best_and_last_removes_the_rest_never_tags_or_head_and_frees_space(repo):
    ids = commit_run(repo)  # val_loss 0.9 0.5 0.7 0.4 0.8 0.6; the last one is HEAD
    repo.tag(ids[0], "baseline", name="net")
    dry = repo.gc(keep=["best:val_loss:2", "last:1"], dry_run=True)
    assert {v.id for v in dry.removed} == {ids[2], ids[4]} and dry.dry_run and dry.gc is None
    assert len(repo.log("net")) == 6  # nothing removed by a dry run
    before = objects_bytes(repo)
    report = repo.gc(keep=["best:val_loss:2", "last:1"])
    assert [v.id for v in report.removed] == [ids[2], ids[4]]  # oldest first
    assert {v.id for v in repo.log("net")} == {ids[0], ids[1], ids[3], ids[5]}
    assert report.bytes_freed > 0 and objects_bytes(repo) < before
    assert_versions_intact(repo, ids)


def test_gc_magic_and_cli_take_the_policy(ip, tmp_path, capsys):
    with Repo(tmp_path / ".mvc") as repo:
        ids = commit_run(repo)
    ip.run_line_magic("mvc_gc", "--keep last:2 --dry-run")
    out = capsys.readouterr().out
    assert "would remove 4" in out and ids[0][:8] in out
    ip.run_line_magic("mvc_gc", "--keep last:2 --keep best:val_loss:1")
    assert "removed 3" in capsys.readouterr().out
    assert cli_main(["--store", str(tmp_path / ".mvc"), "gc", "--keep", "last:1"]) == 0
    assert "removed 2" in capsys.readouterr().out
    with Repo(tmp_path / ".mvc") as repo:
        assert [v.id for v in repo.log("net")] == [ids[5]]
        assert_versions_intact(repo, ids)


def test_keras_callback_keeps_a_long_run_bounded(tmp_path):
    keras = pytest.importorskip("keras")
    from mvc_magics.keras import CommitCallback

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile("adam", "mse")
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    with Repo(tmp_path / ".mvc") as repo:
        callback = CommitCallback(repo, name="m", monitor="loss", keep=["best:loss:1", "last:2"])
        model.fit(x, x[:, :3], epochs=6, verbose=0, callbacks=[callback])
        assert len(callback.versions) == 6 and 2 <= len(repo.log("m")) <= 3
        assert repo.log("m")[0].id == callback.versions[-1].id


def test_autocommit_applies_the_policy_after_each_commit(ip, capsys):
    ip.run_cell("import numpy as np\nw = {'k': np.zeros(4096, np.float32)}")
    ip.run_line_magic("mvc_autocommit", "w --keep last:2")
    for i in range(4):
        ip.run_cell(f"w['k'] = w['k'] + {i + 1}")
    with Repo(os.path.join(os.getcwd(), ".mvc")) as fresh:
        assert len(fresh.log("w")) == 2
    assert "removed 1 version(s)" in capsys.readouterr().out


def test_repack_turns_a_store_written_without_coding_into_deltas(repo, monkeypatch):
    monkeypatch.setenv("MVC_GIT", "nodiff")  # sizes compared: no uncommitted diff of this tree in them
    monkeypatch.setenv("MVC_CODING", "off")
    ids = commit_run(repo)
    monkeypatch.delenv("MVC_CODING")
    before = objects_bytes(repo)
    report = repo.gc(repack=True)
    assert report.versions_recoded == 6 and report.bytes_after == objects_bytes(repo) < 0.85 * before
    assert_versions_intact(repo, ids)
    again = repo.gc(repack=True)  # nothing left to gain: every file stays as it is or as small
    assert again.bytes_after <= report.bytes_after + 4096
    assert_versions_intact(repo, ids)


CRASH = RUN + r"""
import os, signal, sys
from mvc_magics import Repo
import mvc_magics.storage.snapshots.repacking as repacking
import mvc_magics.storage.local.collection as collection
from mvc_magics.operations import removal

store, point = sys.argv[1], sys.argv[2]
os.environ["MVC_CODING"] = "off"
repo = Repo(store)
commit_run(repo)
del os.environ["MVC_CODING"]

def die_after(owner, name, nth):
    original, calls = getattr(owner, name), [0]
    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(owner, name, wrapped)

if point == "repack-after-2-files":
    die_after(repacking.os, "replace", 2)
elif point == "repack-file-written-not-renamed":
    die_after(repacking, "fsync_path", 5)
elif point == "retention-after-2-removals":
    die_after(removal, "remove_version", 2)
elif point == "retention-in-gc":
    die_after(collection, "write_retired", 1)
print("ready", flush=True)
if point.startswith("repack"):
    repo.gc(repack=True)
else:
    repo.gc(keep=["best:val_loss:1", "last:1"])
print("finished", flush=True)
"""


@pytest.mark.parametrize("point", ["repack-after-2-files", "repack-file-written-not-renamed",
                                   "retention-after-2-removals", "retention-in-gc"])
def test_a_kill_during_repack_or_retention_loses_nothing_and_a_rerun_finishes(tmp_path, point):
    store = tmp_path / ".mvc"
    done = subprocess.run([sys.executable, "-c", CRASH, str(store), point], env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert "ready" in done.stdout and "finished" not in done.stdout, done.stderr[-2000:]
    expected = {tensor_key(w) for w, _ in run_weights(6)}
    with Repo(store) as repo:
        for version in repo.log("net"):
            assert tensor_key(repo.load_state(version.id)) in expected
        assert repo.verify().ok
        if point.startswith("repack"):
            repo.gc(repack=True)
        else:
            repo.gc(keep=["best:val_loss:1", "last:1"])
            assert len(repo.log("net")) == 2
        for version in repo.log("net"):
            assert tensor_key(repo.load_state(version.id)) in expected
        assert repo.verify().ok


def tensor_key(state):
    return state["dense/kernel"].tobytes()
