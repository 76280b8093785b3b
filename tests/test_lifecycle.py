"""Lifecycle aliases (protected tags), removal of versions and gc with shared tensors."""

from __future__ import annotations

import numpy as np
import pytest
from IPython.core.error import UsageError

from mvc_magics import Repo
from mvc_magics.errors import ProtectedRefError, UnknownRefError
from mvc_magics.storage.snapshots.retired import held_hashes, is_retired


def store_bytes(repo: Repo) -> int:
    return sum(p.stat().st_size for p in repo.layout.objects.rglob("*.h5"))


def three_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal(4000).astype(np.float32),   # 16 000 bytes
            "b": rng.standard_normal(2000).astype(np.float32),   # 8 000 bytes
            "c": rng.standard_normal(1000).astype(np.float32)}   # 4 000 bytes


def test_protected_alias_needs_force_to_move_is_audited_and_marked_in_the_log(ip):
    ip.user_ns["w"] = three_tensors(0)
    ip.run_line_magic("mvc_commit", "w -m one")
    v1 = ip.run_line_magic("mvc_commit", "w -m one-again")  # unchanged content: same version
    ip.user_ns["w"] = three_tensors(1)
    v2 = ip.run_line_magic("mvc_commit", "w -m two --tag staging")
    ip.run_line_magic("mvc_tag", f"{v1.short_id} production --protect")
    with pytest.raises(UsageError, match="protected"):
        ip.run_line_magic("mvc_tag", f"{v2.short_id} production")
    with pytest.raises(UsageError, match="protected"):
        ip.run_line_magic("mvc_tag", "production --delete")
    ip.run_line_magic("mvc_tag", f"{v2.short_id} production --force")
    from mvc_magics.magics import session_of

    repo = session_of(ip).repo
    assert repo.resolve("production").id == v2.id
    last = list(repo.audit.entries())[-1]
    assert (last.op, last.ids, last.detail["previous"], last.detail["force"], last.detail["protected"]) == \
        ("tag", [v2.id], v1.id, True, True)  # the protection stays with the alias
    text = str(ip.run_line_magic("mvc_log", ""))
    assert "production*, staging" in text and "staging*" not in text
    assert "tag* = protected" in text
    assert "production" in ip.run_line_magic("mvc_log", "")._repr_html_()
    ip.run_line_magic("mvc_tag", f"{v1.short_id} archived")
    assert repo.get(v1.id).tags == ("archived",) and repo.get(v1.id).protected_tags == ()


def test_remove_refuses_protected_then_moves_head_and_drops_tags(repo, weights):
    v1 = repo.commit(weights, "m", tags=["baseline"])
    weights["dense/bias"] = weights["dense/bias"] + 1
    v2 = repo.commit(weights, "m")
    weights["dense/bias"] = weights["dense/bias"] + 1
    v3 = repo.commit(weights, "m")
    repo.tag(v2.id, "production", protect=True)
    before = (store_bytes(repo), repo.index.count())
    with pytest.raises(ProtectedRefError, match="production"):
        repo.remove(v2.id)
    assert (store_bytes(repo), repo.index.count()) == before
    repo.checkout(v2.id, name="m")  # HEAD on the version being removed
    removed = repo.remove(v2.id, force=True)
    assert removed.id == v2.id
    assert [v.id for v in repo.log("m")] == [v3.id, v1.id]
    assert repo.head("m").id == v1.id  # HEAD moved to the removed version's parent
    with pytest.raises(UnknownRefError):
        repo.resolve("production", name="m")
    assert repo.get(v3.id).parents == (v2.id,)  # children keep their recorded parent
    with pytest.raises(UnknownRefError):
        repo.resolve(f"{v3.id[:12]}~1", name="m")
    assert repo.verify().ok
    assert repo.reindex() == 2  # the files are the truth: the removal survives a rebuild
    assert [v.id for v in repo.log("m")] == [v3.id, v1.id]
    entry = list(repo.audit.entries())[-1]
    assert entry.op == "remove" and entry.detail["force"] and entry.detail["protected"] == ["production"]


def test_gc_keeps_tensors_later_versions_use_and_reports_bytes_freed(repo, monkeypatch):
    monkeypatch.setenv("MVC_CODING", "off")  # raw tensors: the bytes freed are known exactly
    w = three_tensors(0)
    v1 = repo.commit(w, "m")
    w["b"] = w["b"] + 1  # v2 reuses a and c from v1's file
    v2 = repo.commit(w, "m")
    assert {e.name: e.object for e in repo.manifest(v2.id)} == {"a": v1.id, "b": v2.id, "c": v1.id}
    expected = dict(repo.load_state(v2.id))
    assert repo.gc() == 0  # nothing removed yet
    size_before = store_bytes(repo)
    repo.remove(v1.id)
    freed = repo.gc()
    assert freed.files_rewritten == 1 and freed.tensors_dropped == 1 and freed.tensors_kept == 2
    assert 8000 <= freed <= 8000 + 16384  # b's 8 000 bytes plus v1's metadata
    assert store_bytes(repo) == size_before - freed
    retired = repo.layout.snapshot_path(v1.id)
    assert is_retired(retired) and len(held_hashes(retired)) == 2
    state = repo.load_state(v2.id)  # verified read through the retired file
    for key in expected:
        np.testing.assert_array_equal(state[key], expected[key])
    assert repo.verify().ok
    assert repo.gc() == 0  # idempotent
    repo.remove(v2.id)
    freed = repo.gc()
    assert freed.files_deleted == 2 and freed > 0
    assert store_bytes(repo) == 0 and repo.index.count() == 0


def test_gc_never_drops_a_tensor_a_commit_made_after_the_removal_uses(repo):
    w = three_tensors(0)
    v1 = repo.commit(w, "m")
    repo.remove(v1.id)
    w2 = {"a": w["a"], "z": np.ones(3, np.float32)}  # reuses v1's bytes for a
    v2 = repo.commit(w2, "other")
    assert {e.name: e.object for e in repo.manifest(v2.id)}["a"] == v1.id
    repo.gc()
    np.testing.assert_array_equal(repo.load_state(v2.id)["a"], w["a"])
    assert repo.verify().ok
    # Committing the removed content again revives it as a complete version.
    v1_again = repo.commit(w, "m")
    assert v1_again.id == v1.id and not is_retired(repo.layout.snapshot_path(v1.id))
    np.testing.assert_array_equal(repo.load_state(v1.id)["b"], w["b"])
    np.testing.assert_array_equal(repo.load_state(v2.id)["a"], w["a"])
    assert repo.verify().ok and repo.reindex() == 2


def test_a_gc_rewritten_store_pushes_and_clones_consistently(tmp_path):
    with Repo(tmp_path / "a" / ".mvc") as a:
        w = three_tensors(0)
        v1 = a.commit(w, "m")
        w["b"] = w["b"] + 1
        v2 = a.commit(w, "m")
        a.remove(v1.id)
        a.gc()
        a.add_remote("origin", (tmp_path / "remote").as_uri())
        a.push()
    with Repo.clone((tmp_path / "remote").as_uri(), tmp_path / "b" / ".mvc") as b:
        assert [v.id for v in b.log()] == [v2.id]
        np.testing.assert_array_equal(b.load_state(v2.id)["b"], w["b"])
        assert b.verify().ok and b.layout.is_removed(v1.id)


def test_rm_and_gc_magics(ip):
    ip.user_ns["w"] = three_tensors(0)
    v1 = ip.run_line_magic("mvc_commit", "w")
    ip.user_ns["w"] = three_tensors(1)
    ip.run_line_magic("mvc_commit", "w")
    ip.run_line_magic("mvc_tag", f"{v1.short_id} production --protect")
    with pytest.raises(UsageError, match="protected"):
        ip.run_line_magic("mvc_rm", v1.short_id)
    with pytest.raises(UsageError, match="unrecognized arguments"):
        ip.run_line_magic("mvc_gc", "now")
    ip.run_line_magic("mvc_rm", f"{v1.short_id} --force")
    from mvc_magics.magics import session_of

    repo = session_of(ip).repo
    assert repo.index.count() == 1
    before = store_bytes(repo)
    ip.run_line_magic("mvc_gc", "")
    assert store_bytes(repo) < before


def test_removed_version_travels_as_retired_file_and_a_live_copy_still_arrives(tmp_path):
    url = (tmp_path / "remote").as_uri()
    w = three_tensors(0)
    with Repo(tmp_path / "b" / ".mvc") as b:
        vx_b = b.commit(dict(w), "m")  # B keeps this version
    with Repo(tmp_path / "a" / ".mvc") as a:
        vx = a.commit(dict(w), "m")
        w["b"] = w["b"] + 1
        vy = a.commit(dict(w), "m")  # reads a and c from vx's file
        a.remove(vx.id)  # not gc'd: the full file is still here
        a.add_remote("origin", url)
        a.push()
    from mvc_magics.storage.remote.store import RemoteStore

    store = RemoteStore(url)
    assert vx_b.id == vx.id
    assert set(store.objects()) == {vy.id} and set(store.objects(retired=True)) == {vx.id}
    with Repo(tmp_path / "b" / ".mvc") as b:
        b.add_remote("origin", url)
        b.push()  # B's live copy of the same version is not hidden by A's retired file
        assert set(store.objects()) == {vx.id, vy.id}
    with Repo.clone(url, tmp_path / "c" / ".mvc") as c:
        assert {v.id for v in c.log()} == {vx.id, vy.id} and c.verify().ok


def test_a_removal_killed_after_its_tombstone_is_completed_on_open(store_path, weights):
    with Repo(store_path) as repo:
        v1 = repo.commit(weights, "m", tags=["baseline"])
        weights["step"] = np.array(4, np.int64)
        v2 = repo.commit(weights, "m")
        repo.layout.write_tombstone(v1.id, {"id": v1.id})  # the commit point of remove(), then "killed"
    with Repo(store_path) as repo:
        assert [v.id for v in repo.log("m")] == [v2.id]
        assert repo.index.query("SELECT count(*) FROM tags")[0][0] == 0
        assert repo.verify().ok
