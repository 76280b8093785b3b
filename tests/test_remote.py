"""Remotes on file:// URLs: push, pull, clone, conflicts, verification, interruption, magics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from IPython.core.error import UsageError
from keras_models import dense_model, sample_input

from mvc_magics import Repo
from mvc_magics.errors import IntegrityError, InvalidRemoteError, RemoteConflictError
from mvc_magics.storage.remote.store import RemoteStore

ROOT = Path(__file__).resolve().parents[1]


def make_weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"dense/kernel": rng.standard_normal((16, 8)).astype(np.float32),
            "dense/bias": rng.standard_normal(8).astype(np.float32),
            "shared/table": np.arange(64, dtype=np.float32)}


def remote_is_consistent(url: str) -> set[str]:
    """Every visible object is a complete snapshot whose dependencies are there; tags name present ids."""
    store = RemoteStore(url)
    ids = set(store.objects())
    holders = ids | set(store.objects(retired=True))
    for vid in ids:
        path = Path(store.object_key(vid))
        with h5py.File(path, "r") as f:
            manifest = json.loads(f["manifest"][()])
        assert {e["object"] for e in manifest} <= holders, f"{vid[:8]} visible without its tensors"
    for (_, _), (vid, _) in store.tags().items():
        assert vid in ids
    return ids


def remote_is_consistent_s3(url: str) -> set[str]:
    """Every version the remote's log names is a complete object whose id matches; tags name them."""
    import tempfile

    from mvc_magics.storage.snapshots.snapshot import read_content

    store = RemoteStore(url)
    ids = set(store.objects())
    with tempfile.TemporaryDirectory() as tmp:
        for vid in ids:
            local = Path(tmp) / f"{vid}.h5"
            store.get_object(vid, local)
            assert read_content(local).version_id == vid, f"{vid[:8]} is not whole"
    for (_, _), (vid, _) in store.tags().items():
        assert vid in ids
    return ids


@pytest.fixture
def remote_url(tmp_path):
    return (tmp_path / "remote").as_uri()


def test_remote_config_add_list_remove_and_refuse_credentials(repo, remote_url):
    assert repo.add_remote("origin", remote_url) == remote_url
    assert repo.remotes() == {"origin": remote_url}
    saved = json.loads((repo.path / "remotes.json").read_text())
    assert saved == {"remotes": {"origin": {"url": remote_url}}}
    for bad in ("s3://AKIAEXAMPLE:supersecret@bucket/models", "s3://bucket/models?secret=abc"):
        with pytest.raises(InvalidRemoteError):
            repo.add_remote("team", bad)
    assert "supersecret" not in (repo.path / "remotes.json").read_text()
    assert "supersecret" not in (repo.path / "audit.log").read_text()
    with pytest.raises(InvalidRemoteError):
        repo.add_remote("origin", "file:///elsewhere")  # an existing name is not silently changed
    repo.remove_remote("origin")
    assert repo.remotes() == {}
    with pytest.raises(InvalidRemoteError):
        repo.remove_remote("origin")


def test_push_clone_checkout_identical_keras_weights(tmp_path, remote_url):
    model = dense_model(seed=3)
    x, _ = sample_input("dense")
    with Repo(tmp_path / "a" / ".mvc") as a:
        v = a.commit(model, "model", metrics={"val_loss": 0.5}, tags=["baseline"])
        a.add_remote("origin", remote_url)
        first = a.push()
        assert first.versions == [v.id] and first.objects_sent == 1
        again = a.push()  # idempotent: nothing sent the second time
        assert again.objects_sent == 0 and again.objects_skipped == 1 and again.tags == []
    with Repo.clone(remote_url, tmp_path / "b" / ".mvc") as b:
        assert b.remotes() == {"origin": remote_url}
        clone = b.resolve("baseline", name="model")
        assert clone.id == v.id and clone.metrics == {"val_loss": 0.5}
        assert b.head("model").id == v.id
        rebuilt = b.checkout("baseline", name="model")
        live = dense_model(seed=99)
        b.checkout("baseline", live)
        assert b.verify().ok
    for got, want in zip(rebuilt.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(live.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(rebuilt.predict(x, verbose=0), model.predict(x, verbose=0))


def test_shared_tensors_travel_with_the_version_that_needs_them(tmp_path, remote_url):
    with Repo(tmp_path / "a" / ".mvc") as a:
        w = make_weights(0)
        v1 = a.commit(w, "m")
        w["dense/bias"] = w["dense/bias"] + 1
        v2 = a.commit(w, "m", tags=["candidate"])
        assert {e.object for e in a.manifest(v2.id)} == {v1.id, v2.id}
        a.add_remote("origin", remote_url)
        a.push("origin", ["candidate"])  # v2 needs v1's file: both go
    assert remote_is_consistent(remote_url) == {v1.id, v2.id}
    with Repo(tmp_path / "b" / ".mvc") as b:
        b.add_remote("origin", remote_url)
        report = b.pull("origin", ["candidate"])
        assert sorted(report.versions) == sorted([v1.id, v2.id])
        np.testing.assert_array_equal(b.load_state(v2.id)["dense/bias"], w["dense/bias"])
        assert b.resolve("HEAD~1", name="m").id == v1.id
        assert b.pull().versions == []  # nothing new


def test_two_stores_pushing_different_versions_both_survive(tmp_path, remote_url):
    a, b = Repo(tmp_path / "a" / ".mvc"), Repo(tmp_path / "b" / ".mvc")
    va = a.commit(make_weights(1), "m", message="from a")
    vb = b.commit(make_weights(2), "m", message="from b")
    for repo in (a, b):
        repo.add_remote("origin", remote_url)
        repo.push()
    with Repo.clone(remote_url, tmp_path / "c" / ".mvc") as c:
        assert {v.id for v in c.log("m")} == {va.id, vb.id}
        assert {v.message for v in c.log("m")} == {"from a", "from b"}
    a.pull()
    assert {v.id for v in a.log("m")} == {va.id, vb.id}
    assert a.head("m").id == va.id  # pulling never moves an existing HEAD
    a.close()
    b.close()


def test_conflicting_tag_move_is_reported_not_overwritten(tmp_path, remote_url):
    a, b = Repo(tmp_path / "a" / ".mvc"), Repo(tmp_path / "b" / ".mvc")
    va = a.commit(make_weights(1), "m", tags=["production"])
    vb = b.commit(make_weights(2), "m", tags=["production"])
    a.add_remote("origin", remote_url)
    b.add_remote("origin", remote_url)
    a.push()
    with pytest.raises(RemoteConflictError) as info:
        b.push()
    assert info.value.conflicts == [("m", "production", vb.id, va.id)]
    store = RemoteStore(remote_url)
    assert store.tags()[("m", "production")][0] == va.id  # not overwritten
    assert vb.id in store.objects()  # but b's version is there
    with pytest.raises(RemoteConflictError):
        b.pull()
    assert b.resolve("production", name="m").id == vb.id  # local tag kept
    assert va.id in {v.id for v in b.log("m")}  # the rest was pulled
    b.pull(force=True)
    assert b.resolve("production", name="m").id == va.id
    a.push()  # a is in sync: no conflict
    assert [e.op for e in b.audit.entries()][-2:] == ["pull", "pull"]
    a.close()
    b.close()


def test_pull_refuses_a_tampered_object_and_shows_nothing(tmp_path, remote_url):
    with Repo(tmp_path / "a" / ".mvc") as a:
        v = a.commit(make_weights(1), "m", tags=["t"])
        a.add_remote("origin", remote_url)
        a.push()
        digest = next(e.hash for e in a.manifest(v.id) if e.name == "shared/table")
    obj = Path(RemoteStore(remote_url).object_key(v.id))
    with h5py.File(obj, "r+") as f:
        f["tensors"][digest][3] = 1234.0
    target = tmp_path / "b" / ".mvc"
    with pytest.raises(IntegrityError, match="does not match its hash"):
        Repo.clone(remote_url, target)
    assert not target.exists()  # the failed clone left nothing behind
    with Repo(tmp_path / "c" / ".mvc") as c:
        with pytest.raises(IntegrityError):
            c.pull(remote_url)
        assert c.index.count() == 0
        assert list(c.layout.snapshot_files()) == []
        assert list(c.layout.tmp.iterdir()) == []


def test_pull_from_an_empty_or_foreign_remote_is_one_clear_error(repo, tmp_path):
    from mvc_magics.errors import RemoteError

    with pytest.raises(RemoteError, match="no mvc remote"):
        repo.pull((tmp_path / "nothing").as_uri())
    with pytest.raises(InvalidRemoteError, match="none configured"):
        repo.push()


CHILD = textwrap.dedent("""
    import itertools, sys, threading, time
    from mvc_magics import Repo
    from mvc_magics.storage.remote import store as remote_store

    original = remote_store.RemoteStore.put_object
    counter = itertools.count(1)
    this_thread = threading.local()  # uploads run in parallel: only the third one hangs

    def put_object(self, local, version_id, **kwargs):
        if next(counter) != 3:
            return original(self, local, version_id, **kwargs)
        this_thread.hangs = True
        real_put = self.fs.put_file

        def half_put(lpath, rpath, **kwargs):  # write half the bytes, then hang until killed
            if not getattr(this_thread, "hangs", False):
                return real_put(lpath, rpath, **kwargs)
            data = open(lpath, "rb").read()
            with self.fs.open(rpath, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                print("midway", flush=True)
                time.sleep(600)
            real_put(lpath, rpath, **kwargs)

        self.fs.put_file = half_put
        return original(self, local, version_id, **kwargs)

    remote_store.RemoteStore.put_object = put_object
    Repo(sys.argv[1]).push(sys.argv[2])
""")


def run_killed_push(store: Path, url: str, env: dict) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(store), url], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
    try:
        line = child.stdout.readline()
        assert line.strip() == "midway", child.stderr.read()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL


def interrupted_push_then_repush(tmp_path: Path, url: str, env: dict | None = None) -> None:
    with Repo(tmp_path / "a" / ".mvc") as a:
        w = make_weights(5)
        ids = []
        for step in range(4):
            w["dense/kernel"] = w["dense/kernel"] + step
            ids.append(a.commit(w, "m", metrics={"loss": 1.0 / (step + 1)}).id)
        a.tag(ids[-1], "production", protect=True)
        a.add_remote("origin", url)
    run_killed_push(tmp_path / "a" / ".mvc", url, env or {})
    store = RemoteStore(url)
    visible = set(store.objects())
    assert visible <= set(ids[:2])  # the half-written third object is not visible
    assert store.tags() == {}  # tags are written last
    with Repo.clone(url, tmp_path / "partial" / ".mvc") as partial:  # what is visible is whole
        pulled = {v.id for v in partial.log("m")} if visible else set()  # the log names nothing yet
        assert pulled == visible and partial.verify().ok
    with Repo(tmp_path / "a" / ".mvc") as a:
        report = a.push()  # uploads run in parallel: those that finished before the kill are not sent again
        assert report.objects_skipped + report.objects_sent == 4 and report.objects_sent >= 1
    with Repo.clone(url, tmp_path / "full" / ".mvc") as full:
        assert {v.id for v in full.log("m")} == set(ids)
        assert full.resolve("production", name="m").id == ids[-1]
        assert full.resolve("best:loss", name="m").id == ids[-1]
        assert full.verify().ok


def test_interrupted_push_leaves_remote_consistent_and_repush_completes(tmp_path, remote_url):
    interrupted_push_then_repush(tmp_path, remote_url)
    remote_is_consistent(remote_url)


def test_notes_metrics_attached_later_travel(tmp_path, remote_url):
    with Repo(tmp_path / "a" / ".mvc") as a:
        w = make_weights(1)
        v = a.commit(w, "m")
        a.commit(w, "m", metrics={"test_acc": 0.75})  # same content: a note on v
        a.add_remote("origin", remote_url)
        a.push()
    with Repo.clone(remote_url, tmp_path / "b" / ".mvc") as b:
        assert b.get(v.id).metrics == {"test_acc": 0.75}
        b.reindex()
        assert b.get(v.id).metrics == {"test_acc": 0.75}


def test_remote_magics(ip, tmp_path, remote_url, capsys):
    ip.user_ns["w"] = make_weights(1)
    ip.run_line_magic("mvc_commit", "w --tag production")
    ip.run_line_magic("mvc_remote", "list")
    assert "no remotes" in capsys.readouterr().out
    ip.run_line_magic("mvc_remote", f"add origin {remote_url}")
    ip.run_line_magic("mvc_remote", "list")
    listing = capsys.readouterr().out.splitlines()
    assert listing[-1].split() == ["origin", remote_url]
    ip.run_line_magic("mvc_push", "")
    assert len(RemoteStore(remote_url).objects()) == 1
    ip.run_line_magic("mvc_init", str(tmp_path / "other" / ".mvc"))
    ip.run_line_magic("mvc_pull", remote_url)
    from mvc_magics.magics import session_of

    other = session_of(ip).repo
    assert other.path == tmp_path / "other" / ".mvc"
    assert other.resolve("production", name="w").name == "w"
    with pytest.raises(UsageError, match="none configured"):  # this store has no remotes
        ip.run_line_magic("mvc_push", "nowhere")
    with pytest.raises(UsageError, match="credentials"):
        ip.run_line_magic("mvc_remote", "add team s3://KEY:SECRET@bucket/x")
    with pytest.raises(UsageError, match="usage"):
        ip.run_line_magic("mvc_remote", "add onlyname")
    ip.run_line_magic("mvc_remote", f"add backup {remote_url}")
    ip.run_line_magic("mvc_remote", "remove backup")
    assert other.remotes() == {}


def test_push_named_refs_with_default_remote_sends_only_their_history(ip, tmp_path, remote_url):
    ip.user_ns["w"] = make_weights(1)
    v1 = ip.run_line_magic("mvc_commit", "w")
    ip.user_ns["w"] = make_weights(2)
    v2 = ip.run_line_magic("mvc_commit", "w --tag staging")
    ip.user_ns["other"] = make_weights(3)
    v3 = ip.run_line_magic("mvc_commit", "other")
    ip.run_line_magic("mvc_remote", f"add origin {remote_url}")
    ip.run_line_magic("mvc_push", "staging")  # no remote named staging: it is a ref for origin
    store = RemoteStore(remote_url)
    assert set(store.objects()) == {v1.id, v2.id} and v3.id not in store.objects()
    ip.run_line_magic("mvc_init", str(tmp_path / "b" / ".mvc"))
    ip.run_line_magic("mvc_remote", f"add origin {remote_url}")
    ip.run_line_magic("mvc_pull", f"origin {v1.short_id}")
    from mvc_magics.magics import session_of

    assert [v.id for v in session_of(ip).repo.log()] == [v1.id]


def test_push_cleans_stale_upload_temporaries(tmp_path, remote_url):
    with Repo(tmp_path / "a" / ".mvc") as a:
        a.commit(make_weights(1), "m")
        a.add_remote("origin", remote_url)
        a.push()
        leftovers = Path(RemoteStore(remote_url).root) / "tmp"
        stale, fresh = leftovers / "dead-upload.h5", leftovers / "live-upload.h5"
        for path in (stale, fresh):
            path.write_bytes(b"partial")
        os.utime(stale, (1, 1))
        a.commit(make_weights(2), "m")
        a.push()
    assert not stale.exists() and fresh.exists()  # a concurrent push's upload is left alone


def test_progress_bar_for_large_transfers_quiet_for_tiny(tmp_path, remote_url, capsys, monkeypatch):
    import mvc_magics.operations.remotes as remotes

    monkeypatch.setattr(remotes, "interactive", lambda: True)  # as on a terminal (a pipe gets no bar)
    with Repo(tmp_path / "a" / ".mvc") as a:
        a.commit(make_weights(1), "m")
        a.add_remote("origin", remote_url)
        a.push()
        assert "push origin" not in capsys.readouterr().err  # tiny: no bar
        big = {"w": np.random.default_rng(0).standard_normal(400_000).astype(np.float32)}  # 1.6 MB
        a.commit(big, "big")
        a.push()
        assert "push origin" in capsys.readouterr().err


def test_pulling_a_tag_on_a_version_already_here_brings_the_tag(tmp_path, remote_url):
    with Repo(tmp_path / "a" / ".mvc") as a, Repo(tmp_path / "b" / ".mvc") as b:
        v = a.commit(make_weights(1), "m")
        a.add_remote("origin", remote_url)
        a.push()
        b.add_remote("origin", remote_url)
        b.pull()
        a.tag(v.id, "production", protect=True)
        a.push()
        report = b.pull("origin", ["production"])
        assert report.versions == [] and report.tags == ["production"]
        assert b.resolve("production", name="m").protected_tags == ("production",)


PULL_CHILD = textwrap.dedent("""
    import sys, time
    from mvc_magics import Repo
    from mvc_magics.storage.remote import store as remote_store

    import itertools

    original = remote_store.RemoteStore.get_object
    calls = []
    counter = itertools.count(1)

    def get_object(self, version_id, local, **kwargs):
        calls.append(version_id)
        nth = next(counter)  # downloads run in parallel: which call this is, taken at once
        original(self, version_id, local, **kwargs)
        if nth == 2:
            print("midway", flush=True)
            time.sleep(600)

    remote_store.RemoteStore.get_object = get_object
    Repo(sys.argv[1]).pull(sys.argv[2])
""")


def test_killed_pull_shows_no_version_and_a_re_pull_completes(tmp_path, remote_url):
    with Repo(tmp_path / "a" / ".mvc") as a:
        w = make_weights(3)
        for step in range(3):
            w["dense/bias"] = w["dense/bias"] + step
            a.commit(w, "m")
        a.add_remote("origin", remote_url)
        a.push()
    target = tmp_path / "b" / ".mvc"
    Repo(target).close()
    child = subprocess.Popen([sys.executable, "-c", PULL_CHILD, str(target), remote_url], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout.readline().strip() == "midway", child.stderr.read()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert list((target / "tmp").iterdir())  # the dead pull's downloads...
    with Repo(target) as b:
        assert b.index.count() == 0 and list(b.layout.snapshot_files()) == []
        report = b.pull(remote_url)
        assert len(report.versions) == 3 and b.verify().ok
        assert list(b.layout.tmp.iterdir()) == []  # ...were cleaned once the store lock was taken


def test_clone_refuses_a_non_empty_target(tmp_path, remote_url):
    from mvc_magics.errors import StoreError

    with Repo(tmp_path / "a" / ".mvc") as a:
        a.commit(make_weights(1), "m")
        a.push(remote_url)
        with pytest.raises(StoreError, match="not empty"):
            Repo.clone(remote_url, a.path)
        assert a.index.count() == 1 and a.remotes() == {}  # the existing store is untouched
