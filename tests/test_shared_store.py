"""A store shared by several OS users (docs/reliability.md, "A store shared by several users"):
two real team members and a reader, created for the test and run with setpriv."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from reliability_helpers import ROOT

from mvc_magics import Repo

GROUP = "mvcteam14"
ALICE, BOB, READER = "mvcalice14", "mvcbob14", "mvcreader14"

_PRELUDE = r"""
import json, os, sys
os.umask(int(os.environ["MVC_TEST_UMASK"], 8))
import numpy as np
from mvc_magics import Repo
from mvc_magics.errors import MVCError
store = sys.argv[1]
def model(n):
    return {"w": np.full(4, float(n), np.float32), "b": np.zeros(2, np.float32)}
def attempt(call):
    try:
        call()
        return "ok"
    except MVCError as exc:
        return str(exc)
"""


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


@pytest.fixture(scope="module")
def users():
    if os.geteuid() != 0:
        pytest.skip("creating OS users needs root")
    if not all(shutil.which(tool) for tool in ("useradd", "usermod", "userdel", "groupadd", "groupdel", "setpriv")):
        pytest.skip("useradd/groupadd/setpriv are not installed")
    created = []
    _run("groupadd", "-f", GROUP)
    for user, groups in ((ALICE, [GROUP]), (BOB, [GROUP]), (READER, [])):
        if subprocess.run(["id", user], capture_output=True).returncode != 0:
            _run("useradd", "-M", "-U", "-s", "/usr/sbin/nologin", *(["-G", ",".join(groups)] if groups else []), user)
            created.append(user)
        elif groups:  # left by a killed run, whose team group was deleted and made again since
            _run("usermod", "-a", "-G", ",".join(groups), user)
    yield
    for user in created:
        subprocess.run(["userdel", user], capture_output=True)
    subprocess.run(["groupdel", GROUP], capture_output=True)


def as_user(user: str, code: str, store: Path, umask: str = "002") -> dict:
    """Run ``code`` as OS user ``user`` (its own uid, gid and groups; no capabilities)."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": "/tmp", "USER": user, "PYTHONPATH": str(ROOT),
           "PYTHONDONTWRITEBYTECODE": "1", "MVC_TEST_UMASK": umask, "MVC_LOCK_TIMEOUT": "60"}
    result = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--",
                             sys.executable, "-c", _PRELUDE + code, str(store)],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{user}: {result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def team_folder(users):
    """A folder of the team: group-owned, group-writable, setgid (new files keep the group)."""
    folder = Path(tempfile.mkdtemp(prefix="mvc-shared-", dir="/tmp"))
    shutil.chown(folder, group=GROUP)
    folder.chmod(0o2775)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _owned_by(store: Path, user: str) -> list[str]:
    found = subprocess.run(["find", str(store), "-user", user], capture_output=True, text=True).stdout
    return found.split()


_COMMIT = r"""
repo = Repo(store)
out = {"commit": attempt(lambda: repo.commit(model(int(sys.argv[2]) if len(sys.argv) > 2 else 1), "m"))}
out["log"] = len(repo.log("m"))
out["verify"] = repo.verify().ok
print(json.dumps(out))
"""

_MEMBER = r"""
repo = Repo(store)
n = len(repo.log("m")) + 1
out = {"commit": attempt(lambda: repo.commit(model(n), "m", tags=[f"{os.environ['USER']}-{n}"]))}
out["tag"] = attempt(lambda: repo.tag("HEAD", "current", name="m", force=True))
out["log"] = len(repo.log("m"))
out["verify"] = repo.verify().ok
out["uids"] = sorted({e.uid for e in repo.audit.entries() if e.uid is not None})
print(json.dumps(out))
"""

_READ = r"""
repo = Repo(store)
versions = repo.log("m")
state = repo.load_state(versions[0].id)
out = {"log": len(versions), "loaded": bool(np.array_equal(state["w"], model(len(versions))["w"])),
       "verify": repo.verify().ok, "commit": attempt(lambda: repo.commit(model(99), "m"))}
repo.close()
print(json.dumps(out))
"""


def test_two_members_and_a_reader_share_one_store(team_folder):
    store = team_folder / ".mvc"
    assert as_user(ALICE, _MEMBER, store) == {"commit": "ok", "tag": "ok", "log": 1, "verify": True,
                                              "uids": [_uid(ALICE)]}
    bob = as_user(BOB, _MEMBER, store)
    assert bob["commit"] == "ok" and bob["tag"] == "ok" and bob["log"] == 2 and bob["verify"]
    assert bob["uids"] == sorted([_uid(ALICE), _uid(BOB)])  # who did what, by OS user id
    alice = as_user(ALICE, _MEMBER, store)  # the owner still writes everything bob created
    assert alice["commit"] == "ok" and alice["log"] == 3
    before = sorted(p.name for p in store.rglob("*"))
    reader = as_user(READER, _READ, store)
    assert reader["log"] == 3 and reader["loaded"] and reader["verify"]
    assert "read-only" in reader["commit"] and "\n" not in reader["commit"]
    assert _owned_by(store, READER) == []  # a reader leaves nothing behind (no -wal/-shm of its own)
    assert sorted(p.name for p in store.rglob("*")) == before
    assert as_user(BOB, _MEMBER, store)["log"] == 4  # and writers go on after the reader
    for path in [store, *store.rglob("*")]:
        assert path.group() == GROUP, path  # setgid: everything stays in the team's group


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def test_a_member_who_may_not_write_the_files_is_a_reader_and_leaves_nothing(team_folder):
    store = team_folder / ".mvc"
    as_user(ALICE, _COMMIT, store, umask="022")  # alice's files are not group-writable...
    store.chmod(0o2775)  # ...but the folder is
    bob = as_user(BOB, _READ, store)
    assert bob["log"] == 1 and bob["loaded"] and bob["verify"]
    assert "read-only" in bob["commit"] and "index.sqlite" in bob["commit"]
    assert _owned_by(store, BOB) == []
    assert as_user(ALICE, _COMMIT + "", store, umask="022")["commit"] == "ok"  # the owner is not locked out


def test_a_read_only_copy_with_a_wal_but_no_shm_opens(users, tmp_path):
    import numpy as np

    source = tmp_path / "source" / ".mvc"
    folder = Path(tempfile.mkdtemp(prefix="mvc-ro-", dir="/tmp"))
    copy = folder / ".mvc"
    try:
        with Repo(source) as repo:
            repo.index.query("PRAGMA wal_autocheckpoint=0")
            for n in (1, 2):
                repo.commit({"w": np.full(4, float(n), np.float32), "b": np.zeros(2, np.float32)}, "m")
            wal = Path(f"{repo.layout.index_path}-wal")
            assert wal.stat().st_size > 0
            shutil.copytree(source, copy, ignore=shutil.ignore_patterns("*-shm"))  # as a backup/snapshot would
        assert (copy / "index.sqlite-wal").exists() and not (copy / "index.sqlite-shm").exists()
        folder.chmod(0o755)
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        before = sorted(p.name for p in copy.rglob("*"))
        reader = as_user(READER, _READ, copy)
        assert reader["log"] == 2 and reader["loaded"] and reader["verify"]
        assert "read-only" in reader["commit"]
        assert sorted(p.name for p in copy.rglob("*")) == before
        with sqlite3.connect(f"file:{copy / 'index.sqlite'}?immutable=1", uri=True) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            rows = conn.execute("SELECT count(*) FROM versions").fetchone()[0] if "versions" in tables else 0
        assert rows < 2  # what the reader saw was only in the WAL
    finally:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_commit_refused_by_refs_permissions_leaves_no_empty_object_folder(team_folder):
    """Issue 23 §6: a member without write access to refs/<model> is refused in one line, and the
    objects/<ab>/ folder made for the refused snapshot goes with it."""
    store = team_folder / ".mvc"
    assert as_user(ALICE, _COMMIT, store, umask="002")["commit"] == "ok"
    refs = store / "refs" / "m"
    for path in [refs, *refs.rglob("*")]:  # alice keeps refs/m to herself
        path.chmod(0o755 if path.is_dir() else 0o644)
    before = sorted(str(p.relative_to(store)) for p in (store / "objects").rglob("*"))
    bob = as_user(BOB, _COMMIT.replace("else 1", "else 7"), store)
    assert bob["commit"] != "ok" and "\n" not in bob["commit"], bob
    after = sorted(str(p.relative_to(store)) for p in (store / "objects").rglob("*"))
    assert after == before  # no objects/<ab>/ left empty by the refused commit
    assert [d for d in (store / "objects").iterdir() if d.is_dir() and not any(d.iterdir())] == []
    assert bob["log"] == 1
