"""Environment faults: disk full, file size limit, permission denied, read-only store, odd paths.

Each fault runs in a child process: a real full tmpfs (in a user+mount namespace, where the machine
allows one), a real RLIMIT_FSIZE, real permission checks (as root the child drops its capabilities
with setpriv, since root ignores file modes). After each failure: a clear one-line error, nothing
committed half-way, earlier versions intact.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
from reliability_helpers import child_env, run_python, tree_state
from test_crash import _DIE_AT

from mvc_magics import Repo

# The child's checks after every failed commit; prints one JSON line per attempt.
_CHECKS = r"""
import json, os, sys
import numpy as np
from mvc_magics import Repo
from mvc_magics.errors import MVCError

def attempt(repo, model, expected_versions):
    try:
        repo.commit(model, "model")
        outcome = "committed"
    except MVCError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    versions = repo.log("model")
    report = repo.verify()
    first = repo.load_state(versions[-1].id)
    print(json.dumps({
        "outcome": outcome, "versions": len(versions), "verify_ok": report.ok, "verify": str(report),
        "snapshots": len(list(repo.layout.snapshot_files())), "tmp": os.listdir(repo.layout.tmp),
        "first_intact": bool(np.array_equal(first["w"], np.arange(1000, dtype=np.float32))),
    }), flush=True)
    return outcome
"""

_DISK_FULL = _CHECKS + r"""
store = sys.argv[1]
repo = Repo(store)
repo.commit({"w": np.arange(1000, dtype=np.float32)}, "model")
rng = np.random.default_rng(0)
attempt(repo, {"w": rng.standard_normal(2_000_000).astype(np.float32)}, 1)   # 8 MB on a 3 MB disk
free = os.statvfs(store).f_bavail * os.statvfs(store).f_frsize
filler = os.path.join(os.path.dirname(store), "filler")
for leave in (0, 4096, 16384, 40960, 81920):   # fail at different steps: snapshot, refs, index, audit
    with open(filler, "wb") as handle:
        handle.truncate(0)
    free = os.statvfs(store).f_bavail * os.statvfs(store).f_frsize
    with open(filler, "wb") as handle:
        try:
            handle.write(b"\0" * max(0, free - leave))
        except OSError:
            pass
    attempt(repo, {"w": rng.standard_normal(2000).astype(np.float32)}, None)
os.unlink(filler)
# Another process fills the disk right after the snapshot is placed: refs, index or audit fail.
import mvc_magics.storage.snapshots.staging as staging
place = staging.publish
def place_then_fill(*args, **kwargs):
    place(*args, **kwargs)
    with open(filler, "wb") as handle:
        try:
            handle.write(b"\0" * (4 << 20))
        except OSError:
            pass
staging.publish = place_then_fill
attempt(repo, {"w": rng.standard_normal(2000).astype(np.float32)}, None)
staging.publish = place
os.unlink(filler)
attempt(repo, {"w": rng.standard_normal(2000).astype(np.float32)}, None)
"""


def _results(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def _assert_clean(row):
    assert row["verify_ok"], row["verify"]
    assert row["first_intact"]
    assert row["tmp"] == []
    assert row["snapshots"] == row["versions"]


def _can_unshare():
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs unprivileged user+mount namespaces for a small tmpfs")
def test_disk_full_on_a_real_tmpfs(tmp_path):
    mount = tmp_path / "small disk"
    mount.mkdir()
    script = tmp_path / "disk_full.py"
    script.write_text(_DISK_FULL)
    shell = (f'mount -t tmpfs -o size=3m tmpfs "{mount}" && '
             f'exec "{sys.executable}" "{script}" "{mount}/.mvc"')
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell],
                            env=child_env(), capture_output=True, text=True, timeout=300)
    rows = _results(result)
    assert "no space left on the device" in rows[0]["outcome"]
    assert "nothing was committed" in rows[0]["outcome"]
    failures = [r for r in rows if r["outcome"] != "committed"]
    assert len(failures) >= 3
    for row in rows:
        _assert_clean(row)
        assert row["outcome"] == "committed" or row["outcome"].startswith("StoreError: cannot write")
    assert "no space left" in rows[-2]["outcome"]  # the disk filled up in the middle of the commit
    assert rows[-1]["outcome"] == "committed"  # space again: committing works again


_FILE_SIZE = _CHECKS + r"""
import resource, signal
store = sys.argv[1]
repo = Repo(store)
repo.commit({"w": np.arange(1000, dtype=np.float32)}, "model")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
attempt(repo, {"w": np.random.default_rng(0).random(1_000_000, dtype=np.float32)}, 1)  # noise: no coding fits it
attempt(repo, {"w": np.ones(1000, np.float32)}, 2)
"""


def test_file_size_limit(tmp_path):
    rows = _results(run_python(_FILE_SIZE, str(tmp_path / ".mvc")))
    assert "file size limit" in rows[0]["outcome"] and "nothing was committed" in rows[0]["outcome"]
    assert rows[0]["versions"] == 1
    assert rows[1]["outcome"] == "committed" and rows[1]["versions"] == 2
    for row in rows:
        _assert_clean(row)


def _unprivileged(code, *args):
    """Run ``code`` where file modes apply (as root: without capabilities)."""
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: file modes cannot be enforced")
        prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]
    return subprocess.run([*prefix, sys.executable, "-c", code, *args], env=child_env(), capture_output=True,
                          text=True, timeout=120)


def _chmod_tree(folder, writable):
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~bits)


def test_permission_denied(tmp_path):
    store = tmp_path / ".mvc"
    with Repo(store) as repo:
        repo.commit({"w": np.arange(1000, dtype=np.float32)}, "model")
    _chmod_tree(store / "objects", writable=False)
    try:
        code = _CHECKS + "attempt(Repo(sys.argv[1]), {'w': np.ones(5, np.float32)}, 1)"
        rows = _results(_unprivileged(code, str(store)))
    finally:
        _chmod_tree(store / "objects", writable=True)
    # Found up front (objects/ is not writable for this user), so nothing was even attempted.
    assert "no write permission on" in rows[0]["outcome"] and "nothing was changed" in rows[0]["outcome"]
    assert rows[0]["versions"] == 1
    _assert_clean(rows[0])


_READ_ONLY = r"""
import json, sys
import numpy as np
from mvc_magics import Repo
from mvc_magics.errors import MVCError

repo = Repo(sys.argv[1])
out = {"log": [v.message for v in repo.log("model")], "verify_ok": repo.verify().ok}
live = {"w": np.zeros(1000, np.float32)}
repo.checkout("first", live, name="model")
out["checked_out"] = bool(np.array_equal(live["w"], np.arange(1000, dtype=np.float32)))
for name, call in [("commit", lambda: repo.commit({"w": np.ones(3)}, "model")),
                   ("tag", lambda: repo.tag("latest", "x", name="model")),
                   ("reindex", repo.reindex)]:
    try:
        call()
        out[name] = "worked"
    except MVCError as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""


def test_read_only_store_reads_but_refuses_writes(tmp_path):
    store = tmp_path / ".mvc"
    with Repo(store) as repo:
        repo.commit({"w": np.arange(1000, dtype=np.float32)}, "model", message="one", tags=["first"])
        repo.commit({"w": np.ones(1000, np.float32)}, "model", message="two")
    before = tree_state(store)
    _chmod_tree(store, writable=False)
    try:
        result = _unprivileged(_READ_ONLY, str(store))
    finally:
        _chmod_tree(store, writable=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["log"] == ["two", "one"] and out["verify_ok"] and out["checked_out"]
    for name in ("commit", "tag", "reindex"):
        assert "is read-only" in out[name] and "nothing was changed" in out[name]
    assert tree_state(store) == before


@pytest.mark.parametrize("folder", ["my models", "modèles ü 模型", "tab\tand 'quote'"])
def test_store_on_a_path_with_spaces_and_unicode(tmp_path, ip, folder):
    store = tmp_path / folder / "the store"
    ip.user_ns["model"] = {"w": np.arange(6, dtype=np.float32)}
    quoted = str(store).replace("\\", "\\\\").replace('"', '\\"')
    ip.run_line_magic("mvc_init", f'"{quoted}"')
    ip.run_line_magic("mvc_commit", "model --tag first")
    ip.user_ns["model"] = {"w": np.ones(6, np.float32)}
    ip.run_line_magic("mvc_commit", "model")
    ip.run_line_magic("mvc_checkout", "first")
    assert np.array_equal(ip.user_ns["model"]["w"], np.arange(6, dtype=np.float32))
    with Repo(store) as repo:
        assert len(repo.log()) == 2 and repo.verify().ok
        assert repo.reindex() == 2


def test_crash_recovery_on_a_unicode_path(tmp_path):
    store = tmp_path / "données à l'abri" / ".mvc"
    result = run_python(_DIE_AT, str(store), "after-snapshot")
    assert result.returncode < 0
    with Repo(store) as repo:
        assert repo.verify().ok and len(repo.log("m")) == 2
        assert set(repo.log("m")[0].tags) == {"second", "third"}
