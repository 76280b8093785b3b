"""Kills during tag moves and gc, disk full during gc, and an audit log cut short or re-chained:
every ref change is audited or not made, gc is finished by the next lock holder, and the index
never sends a commit to bytes that are gone."""

from __future__ import annotations

import json
import resource
import signal

import h5py
import numpy as np
import pytest
from reliability_helpers import run_python

from mvc_magics import Repo

_SETUP = r"""
import os, signal, sys
import numpy as np
from mvc_magics import Repo
from mvc_magics.storage.local import audit, collection, journal, layout, writes
from mvc_magics.storage.snapshots import retired
from mvc_magics.storage.files import safe_files

store, point = sys.argv[1], sys.argv[2]
repo = Repo(store)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after(owner, name, when=lambda *a, **k: True):
    original = getattr(owner, name)
    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            die()
        return result
    setattr(owner, name, wrapped)

def before(owner, name):
    def wrapped(*args, **kwargs):
        die()
    setattr(owner, name, wrapped)
"""

_TAG = _SETUP + r"""
v1 = repo.commit({"w": np.ones(4, np.float32)}, "m")
v2 = repo.commit({"w": np.zeros(4, np.float32)}, "m")
repo.tag(v1.id, "production", name="m", protect=True)
print(v1.id, v2.id, flush=True)
if point == "after-journal":
    after(journal.Journal, "begin")
elif point == "after-tag-file":
    after(layout.StoreLayout, "write_tag")
elif point == "before-audit":
    before(audit.AuditLog, "write")
elif point == "torn-audit":
    def torn(self, entry):
        with open(self.path, "ab") as handle:
            handle.write(b'{"seq": 99, "ti')
        die()
    audit.AuditLog.write = torn
elif point == "after-audit":
    after(audit.AuditLog, "write")
repo.tag(v2.id, "production", name="m", force=True, protect=True)
"""

_TAG_POINTS = ["after-journal", "after-tag-file", "before-audit", "torn-audit", "after-audit"]


@pytest.mark.parametrize("point", _TAG_POINTS)
def test_killed_tag_move_is_audited_or_not_made(tmp_path, point):
    store = tmp_path / ".mvc"
    result = run_python(_TAG, str(store), point)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    v1, v2 = result.stdout.split()
    with Repo(store) as repo:
        target = repo.layout.read_tag("m", "production")
        moves = [e for e in repo.audit.entries() if e.op == "tag" and e.ids == [v2]]
        assert not repo.layout.files.exists(repo.layout.journal_path)
        assert repo.verify().ok, str(repo.verify())
        if point == "after-journal":
            assert target == (v1, True) and moves == []  # not made, not audited
        else:
            assert target == (v2, True) and len(moves) == 1  # made, audited exactly once
            assert repo.resolve("production", name="m").id == v2


_CHECKOUT = _SETUP + r"""
v1 = repo.commit({"w": np.ones(4, np.float32)}, "m")
v2 = repo.commit({"w": np.zeros(4, np.float32)}, "m")
print(v1.id, v2.id, flush=True)
if point == "head-temporary-fsynced":  # HEAD's temporary, fsynced beside the journal: not placed yet
    after(safe_files.SafeFiles, "prepare")
elif point == "after-journal":
    after(journal.Journal, "begin")
elif point == "after-head-placed":
    after(safe_files.SafeFiles, "place")
repo.checkout(v1.id, {"w": np.zeros(4, np.float32)}, name="m")
"""


@pytest.mark.parametrize("point", ["head-temporary-fsynced", "after-journal", "after-head-placed"])
def test_killed_checkout_moves_head_audited_or_not_at_all(tmp_path, point):
    store = tmp_path / ".mvc"
    result = run_python(_CHECKOUT, str(store), point)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    v1, v2 = result.stdout.split()
    with Repo(store) as repo:
        head = repo.layout.read_head("m")
        moves = [e for e in repo.audit.entries() if e.op == "checkout" and e.ids == [v1]]
        assert not repo.layout.files.exists(repo.layout.journal_path)
        assert not list(repo.layout.tmp.iterdir())  # HEAD's temporary is removed by the next holder
        assert repo.verify().ok, str(repo.verify())
        assert (head, len(moves)) in ((v2, 0), (v1, 1))  # not moved and not audited, or both
        assert repo.head("m").id == head
        if point == "after-head-placed":
            assert head == v1


def test_a_journal_without_lock_owner_is_still_resolved(tmp_path):
    # lock.owner is not fsynced (it only names the holder): after a power cut it may be gone while
    # the fsynced journal is there. The journal alone must trigger the repair.
    store = tmp_path / ".mvc"
    result = run_python(_TAG, str(store), "after-tag-file")
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    _v1, v2 = result.stdout.split()
    (store / "lock.owner").unlink()
    with Repo(store) as repo:
        assert not repo.layout.files.exists(repo.layout.journal_path)
        assert [e.ids for e in repo.audit.entries() if e.op == "tag"][-1] == [v2]
        assert repo.verify().ok


_GC = _SETUP + r"""
rng = np.random.default_rng(1)
shared = np.zeros(4, np.float32)                              # a zero bias many versions share
v1 = repo.commit({"bias": shared, "w": rng.standard_normal(64).astype(np.float32)}, "m")
v2 = repo.commit({"bias": shared, "w": rng.standard_normal(64).astype(np.float32)}, "m")
v3 = repo.commit({"only3": np.full(8, 3.0, np.float32)}, "m")
repo.remove(v1.id)          # its file keeps "bias" for v2: gc rewrites it
repo.remove(v3.id)          # nothing else uses it: gc deletes it
print(v1.id, v2.id, v3.id, flush=True)
is_object = lambda files, path, *a, **k: "objects" in str(path)
if point == "after-index":
    before(collection, "held_hashes")
elif point == "after-delete":
    after(safe_files.SafeFiles, "unlink", when=is_object)
elif point == "after-rewrite":
    after(collection, "write_retired")
elif point == "before-audit":
    original = writes.StoreWrites._audit
    def audit_gc(self, op, *args, **kwargs):
        if op == "gc":
            die()
        return original(self, op, *args, **kwargs)
    writes.StoreWrites._audit = audit_gc
repo.gc()
"""

_GC_POINTS = ["after-index", "after-delete", "after-rewrite", "before-audit"]


def _tensor_rows_hold_their_bytes(repo):
    for digest, obj in repo.index.query("SELECT hash, object FROM tensors"):
        path = repo.layout.snapshot_path(obj)
        assert path.exists(), f"tensor {digest[:12]} located in {obj[:12]}, whose file is gone"
        with h5py.File(path, "r") as f:
            assert digest in f["tensors"], f"tensor {digest[:12]} not in {obj[:12]}"


@pytest.mark.parametrize("point", _GC_POINTS)
def test_killed_gc_is_finished_and_never_leaves_rows_at_missing_bytes(tmp_path, point):
    store = tmp_path / ".mvc"
    result = run_python(_GC, str(store), point)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    _v1, v2, v3 = result.stdout.split()
    with Repo(store) as repo:
        assert not repo.layout.files.exists(repo.layout.journal_path)
        gcs = [e for e in repo.audit.entries() if e.op == "gc"]
        assert len(gcs) == 1 and gcs[0].detail.get("recovered") is True
        assert not repo.layout.snapshot_path(v3).exists()
        _tensor_rows_hold_their_bytes(repo)
        assert repo.verify().ok, str(repo.verify())
        # New commits sharing the zero bias and the removed version's unique tensor load bit-exactly.
        model = {"bias": np.zeros(4, np.float32), "only3": np.full(8, 3.0, np.float32)}
        v4 = repo.commit(model, "m")
        state = repo.load_state(v4.id)
        assert all(np.array_equal(state[k], model[k]) for k in model)
        assert np.array_equal(repo.load_state(v2)["bias"], np.zeros(4, np.float32))


def test_a_commit_never_counts_on_bytes_it_has_not_seen(repo):
    model = {"b": np.zeros(4, np.float32), "w": np.ones(4, np.float32)}
    first = repo.commit(model, "m")
    repo.commit({"w": np.full(4, 2.0, np.float32)}, "m")
    repo.remove(first.id)
    repo.layout.snapshot_path(first.id).unlink()  # bytes gone behind the index's back (an old gc crash)
    again = repo.commit({"b": np.zeros(4, np.float32), "x": np.ones(2, np.float32)}, "m")
    assert all(e.object == again.id for e in repo.manifest(again.id))  # written anew, not reused
    assert np.array_equal(repo.load_state(again.id)["b"], np.zeros(4, np.float32))


_GC_FULL = r"""
import json, resource, signal, sys
import numpy as np
from mvc_magics import Repo
from mvc_magics.errors import MVCError
repo = Repo(sys.argv[1])
rng = np.random.default_rng(0)
keep = rng.standard_normal(256 * 1024).astype(np.float32)         # 1 MiB a live version still uses
v1 = repo.commit({"keep": keep, "drop": rng.standard_normal(1024).astype(np.float32)}, "m")
v2 = repo.commit({"keep": keep, "new": np.ones(3, np.float32)}, "m")
repo.remove(v1.id)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, resource.RLIM_INFINITY))  # the rewrite cannot fit
try:
    repo.gc()
    outcome = "collected"
except MVCError as exc:
    outcome = f"{type(exc).__name__}: {exc}"
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
state = repo.load_state(v2.id)
report = repo.gc()
print(json.dumps({"outcome": outcome, "intact": bool(np.array_equal(state["keep"], keep)),
                  "verify": repo.verify().ok, "second": report.files_rewritten}))
"""


def test_gc_meeting_a_full_disk_says_so_in_one_line(tmp_path):
    if resource.getrlimit(resource.RLIMIT_FSIZE)[1] != resource.RLIM_INFINITY:
        pytest.skip("the hard file size limit is already set here")
    # MVC_GIT=nodiff: the index must stay the same size whatever uncommitted diff the tree has.
    result = run_python(_GC_FULL, str(tmp_path / ".mvc"), MVC_GIT="nodiff")
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["outcome"].startswith("StoreError: cannot write to the store")
    assert "file size limit" in row["outcome"] and "run gc again" in row["outcome"]
    assert "\n" not in row["outcome"] and "OSError" not in row["outcome"]
    assert row["intact"] and row["verify"] and row["second"] == 1


# -- the audit log cut short or rewritten --------------------------------------------------------


@pytest.fixture
def busy(repo):
    v1 = repo.commit({"w": np.ones(3, np.float32)}, "m")
    v2 = repo.commit({"w": np.zeros(3, np.float32)}, "m")
    repo.tag(v1.id, "production", name="m", protect=True)
    repo.tag(v2.id, "production", name="m", force=True, protect=True)  # a forced move of a protected tag
    repo.remove(v1.id, force=True)
    return repo


def _lines(repo):
    return repo.audit.path.read_bytes().splitlines(keepends=True)


def test_dropping_the_last_entries_is_detected(busy):
    lines = _lines(busy)
    busy.audit.path.write_bytes(b"".join(lines[:-2]))  # the forced move and the removal vanish
    problems = [p.message for p in busy.verify().problems]
    assert any("last entries were removed" in m for m in problems), problems


def test_a_torn_looking_last_line_is_detected(busy):
    lines = _lines(busy)
    busy.audit.path.write_bytes(b"".join(lines[:-1]) + lines[-1][:20])  # "a kill tore it"
    report = busy.verify()
    assert any("last entries were removed" in p.message for p in report.problems), str(report)


def test_a_re_chained_log_is_detected(busy):
    from mvc_magics.storage.local.audit import GENESIS, entry_hash

    entries = [json.loads(line) for line in _lines(busy)]
    kept = [e for e in entries if not (e["op"] == "tag" and e["detail"].get("force"))]
    prev = GENESIS
    rewritten = []
    for seq, entry in enumerate(kept, start=1):  # a perfectly valid chain, one entry shorter
        entry.update(seq=seq, prev=prev)
        entry["hash"] = entry_hash(prev, entry)
        prev = entry["hash"]
        rewritten.append(json.dumps(entry, sort_keys=True) + "\n")
    assert len(kept) < len(entries)
    busy.audit.path.write_text("".join(rewritten))
    problems = [p.message for p in busy.verify().problems]
    assert any("rewritten or re-chained" in m or "last entries were removed" in m for m in problems), problems
