"""A version in several model histories: ``other`` committed with the content of a version of ``model``.

Version ids are content, so the commit finds the stored version; it must still start ``other``'s
history (log, latest, HEAD, best:, checkout, status, du, retention), in this store, after reindex,
and in a clone, while ``model``'s history stays exactly as it was.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.errors import ProtectedRefError


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"dense/kernel": rng.standard_normal((6, 3)).astype(np.float32), "dense/bias": np.full(3, seed, np.float32)}


def copy(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in state.items()}


@pytest.fixture
def two_histories(repo):
    """``model``: v0 (acc 0.5), v1 (acc 0.7, newest); ``other``: the content of v0, with val_loss."""
    v0 = repo.commit(weights(0), "model", message="first", metrics={"acc": 0.5})
    v1 = repo.commit(weights(1), "model", message="second", metrics={"acc": 0.7})
    joined = repo.commit(copy(weights(0)), "other", metrics={"val_loss": 0.25}, tags=["chosen"])
    return repo, v0, v1, joined


def assert_histories(repo: Repo, v0, v1) -> None:
    """What the issue asks for, checked against any store holding the two histories."""
    assert [v.id for v in repo.log("other")] == [v0.id]
    assert [v.name for v in repo.log("other")] == ["other"]
    for ref in ("latest", "best:val_loss", "best:acc", "chosen"):
        assert repo.resolve(ref, name="other").id == v0.id, ref
    # model's history is unchanged: its log, latest and best: as before the other commit
    assert [v.id for v in repo.log("model")] == [v1.id, v0.id]
    assert repo.resolve("latest", name="model").id == v1.id
    assert repo.resolve("best:acc", name="model").id == v1.id
    assert repo.get(v0.id).metrics == {"acc": 0.5, "val_loss": 0.25}  # attached to the content
    assert repo.models() == ["model", "other"]


def test_commit_of_existing_content_starts_the_other_history(two_histories):
    repo, v0, v1, joined = two_histories
    assert joined.id == v0.id and joined.name == "other" and not joined.stats.new_version
    assert any("now in the history of 'other'" in note for note in joined.stats.notes)
    assert_histories(repo, v0, v1)
    assert repo.resolve("HEAD", name="other").id == v0.id
    assert repo.resolve("HEAD", name="model").id == v1.id
    assert repo.head("other").id == v0.id
    # A tag given with that commit is other's, not model's
    assert repo.get(v0.id, name="other").tags == ("chosen",) and repo.get(v0.id, name="model").tags == ()
    # checkout latest other loads v0 into a live model and moves other's HEAD only
    live = weights(5)
    repo.checkout("latest", live, name="other")
    assert all(np.array_equal(live[k], weights(0)[k]) for k in live)
    assert repo.head("model").id == v1.id
    status = {entry.name: entry for entry in repo.status({"other": live, "model": weights(1)})}
    assert status["other"].head.id == v0.id and status["other"].changed is False
    assert status["model"].changed is False
    # Committing the same content again under other records nothing new
    again = repo.commit(copy(weights(0)), "other")
    assert not any("history" in note for note in again.stats.notes)
    assert len(list((repo.store.layout.notes / v0.id[:2] / v0.id).iterdir())) == 1
    # the next commit of other descends from v0 and is other's latest; model does not see it
    nxt = repo.commit(weights(2), "other")
    assert nxt.parents == (v0.id,) and [v.id for v in repo.log("other")] == [nxt.id, v0.id]
    assert repo.resolve("latest~1", name="other").id == v0.id
    assert [v.id for v in repo.log("model")] == [v1.id, v0.id]
    assert repo.verify().ok


def test_the_history_is_kept_by_reindex_and_a_rebuilt_index(two_histories, store_path):
    repo, v0, v1, _ = two_histories
    repo.reindex()
    assert_histories(repo, v0, v1)
    repo.close()
    for suffix in ("", "-wal", "-shm"):
        (store_path.parent / f".mvc/index.sqlite{suffix}").unlink(missing_ok=True)
    with Repo(store_path) as reopened:
        assert_histories(reopened, v0, v1)
        assert reopened.verify().ok


def test_verify_names_a_membership_the_index_lost_or_invented(two_histories, store_path):
    repo, v0, v1, _ = two_histories
    with sqlite3.connect(store_path / "index.sqlite") as conn:
        conn.execute("DELETE FROM members WHERE name = 'other'")
        conn.execute("INSERT INTO members(name, id, ord) VALUES('model', 'f' || substr(?, 2), 0)", (v0.id,))
    problems = {p.version for p in repo.verify().problems}
    assert any("members other/" in what for what in problems), problems
    assert any("members model/" in what for what in problems), problems
    repo.reindex()
    assert_histories(repo, v0, v1)
    assert repo.verify().ok


def test_hostile_name_records_are_ignored(two_histories):
    repo, v0, v1, _ = two_histories
    folder = repo.store.layout.notes / v1.id[:2] / v1.id
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(["../escape", "HEAD", "latest", 7, ["other"], "a:b", "x" * 300, "bad\x1bname"]):
        (folder / f"{i:020d}-hostile.json").write_text(json.dumps({"name": name, "metrics": {}}))
    missing = repo.store.layout.notes / ("ab" * 32)[:2] / ("ab" * 32)
    missing.mkdir(parents=True)
    (missing / "00000000000000000001-x.json").write_text(json.dumps({"name": "ghost"}))
    repo.reindex()
    assert repo.models() == ["model", "other"]
    assert_histories(repo, v0, v1)
    assert repo.verify().ok


def test_an_index_written_before_histories_is_upgraded(two_histories, store_path):
    repo, v0, v1, _ = two_histories
    repo.close()
    with sqlite3.connect(store_path / "index.sqlite") as conn:
        for trigger in ("members_new", "members_ord", "members_gone"):
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE members")
    from mvc_magics.operations.lookup import load_versions
    from mvc_magics.storage.local.index import Index

    before = (store_path / "index.sqlite").read_bytes()
    index = Index(store_path / "index.sqlite", readonly=True)  # a teammate who may not write the store
    try:
        assert [v.id for v in load_versions(index, "1 = 1", (), history="model")] == [v1.id, v0.id]
    finally:
        index.close()
    assert (store_path / "index.sqlite").read_bytes() == before  # upgraded in a private copy
    with Repo(store_path) as reopened:  # each version in its own history again (old stores had no name records)
        assert [v.id for v in reopened.log("model")] == [v1.id, v0.id]
        reopened.reindex()
        assert_histories(reopened, v0, v1)


def test_retention_of_one_history_never_removes_another_history_s_version(two_histories):
    repo, v0, v1, _ = two_histories
    own = repo.commit(weights(3), "other")  # other: own (newest), v0
    report = repo.gc(keep="last:1", name="other")
    assert report.removed == []  # v0 is model's too: a policy on other does not remove it
    assert [v.id for v in repo.log("model")] == [v1.id, v0.id]
    repo.untag("chosen", name="other")  # neither a tag nor a HEAD may hold v0 for the next run
    report = repo.gc(keep="last:1")  # model keeps v1, other keeps own: v0 is kept by neither
    assert [v.id for v in report.removed] == [v0.id]
    assert [v.id for v in repo.log("model")] == [v1.id] and [v.id for v in repo.log("other")] == [own.id]
    assert repo.verify().ok


def test_du_counts_the_shared_version_in_each_history_and_once_in_total(two_histories):
    repo, v0, v1, _ = two_histories
    report = repo.du()
    by_name = {m.name: m for m in report.models}
    assert by_name["model"].versions == 2 and by_name["other"].versions == 1
    assert by_name["other"].logical == v0.nbytes
    assert report.total.versions == 2 and report.total.logical == v0.nbytes + v1.nbytes


def test_push_and_clone_carry_the_history(two_histories, tmp_path):
    repo, v0, v1, _ = two_histories
    url = (tmp_path / "remote").as_uri()
    repo.add_remote("origin", url)
    repo.push()
    with Repo.clone(url, tmp_path / "clone" / ".mvc") as clone:
        assert_histories(clone, v0, v1)
        assert clone.head("other").id == v0.id
        clone.reindex()
        assert_histories(clone, v0, v1)
        assert clone.verify().ok
    # Pushing only other's latest carries its name record with it
    with Repo(tmp_path / "pulled" / ".mvc") as pulled:
        pulled.add_remote("origin", url)
        pulled.pull(refs=["chosen"])
        assert [v.id for v in pulled.log("other")] == [v0.id]
        assert pulled.resolve("latest", name="other").id == v0.id


def test_a_pull_brings_the_history_a_version_already_here_joined(tmp_path):
    url = (tmp_path / "remote").as_uri()
    with Repo(tmp_path / "a" / ".mvc") as a:
        v0 = a.commit(weights(0), "model")
        a.add_remote("origin", url)
        a.push()
        with Repo.clone(url, tmp_path / "b" / ".mvc") as b:
            assert b.log("other") == []
            a.commit(copy(weights(0)), "other", metrics={"val_loss": 0.25})
            a.push()
            b.pull()
            assert [v.id for v in b.log("other")] == [v0.id] and b.get(v0.id).metrics == {"val_loss": 0.25}
            assert [v.id for v in b.log("model")] == [v0.id] and b.verify().ok


def test_magics_commit_log_checkout_and_status_of_the_other_history(ip, capsys):
    ip.user_ns["model"] = weights(0)
    first = ip.run_line_magic("mvc_commit", "model -m first")
    ip.user_ns["model"] = weights(1)
    second = ip.run_line_magic("mvc_commit", "model -m second")
    ip.user_ns["other"] = copy(weights(0))
    capsys.readouterr()
    joined = ip.run_line_magic("mvc_commit", "other --metric val_loss=0.25")
    out = capsys.readouterr().out
    assert joined.id == first.id and "now in the history of 'other'" in out
    assert [v.id for v in ip.run_line_magic("mvc_log", "other")] == [first.id]
    assert [v.id for v in ip.run_line_magic("mvc_log", "model")] == [second.id, first.id]
    ip.user_ns["other"] = weights(7)
    ip.run_line_magic("mvc_checkout", "latest other")
    assert all(np.array_equal(ip.user_ns["other"][k], weights(0)[k]) for k in weights(0))
    status = {entry.name: entry for entry in ip.run_line_magic("mvc_status", "")}
    assert status["other"].head.id == first.id and status["other"].changed is False
    assert status["model"].head.id == second.id and status["model"].changed is False
    ip.run_line_magic("mvc_checkout", "best:val_loss other")
    assert ip.run_line_magic("mvc_log", "model")[0].id == second.id


def test_a_name_record_whose_commit_was_killed_before_the_index_is_recovered(two_histories, store_path):
    """The note is the truth: written, then the process dies before the index row (a stale lock.owner)."""
    repo, v0, v1, _ = two_histories
    repo.close()
    folder = store_path / "notes" / v1.id[:2] / v1.id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "00000000000000000001-killed00.json").write_text(json.dumps({"name": "third", "metrics": {}}))
    (store_path / "lock.owner").write_text("999999@elsewhere 1\n")  # the holder died
    with Repo(store_path) as reopened:
        assert [v.id for v in reopened.log("third")] == [v1.id]
        assert [v.id for v in reopened.log("model")] == [v1.id, v0.id]
        assert reopened.models() == ["model", "other", "third"]
        assert reopened.verify().ok


def test_removed_content_committed_again_is_back_in_the_histories_its_notes_name(two_histories):
    repo, v0, v1, _ = two_histories
    repo.untag("chosen", name="other")
    with pytest.raises(ProtectedRefError, match=r"histories of 'model', 'other'.*--force"):
        repo.remove(v0.id, name="other")  # removing from one history would take it from model too: refused
    assert [v.id for v in repo.log("model")] == [v1.id, v0.id]
    repo.remove(v0.id, name="other", force=True)  # the version goes: from every history it is in
    assert [v.id for v in repo.log("model")] == [v1.id] and repo.log("other") == [] and repo.verify().ok
    again = repo.commit(copy(weights(0)), "model")
    assert again.id == v0.id and again.stats.new_version
    assert [v.id for v in repo.log("other")] == [v0.id]  # as reindex would say: the name record is a file
    assert repo.get(v0.id).metrics == {"val_loss": 0.25}  # the note's; acc was in the removed metadata
    assert repo.verify().ok


# -- best: over a history (ties, stated directions) ------------------------------------------------


@pytest.mark.parametrize("probe", [2, 1000])
def test_best_ties_go_to_the_newest_whichever_way_they_are_found(repo, monkeypatch, probe):
    from mvc_magics.operations import lookup

    monkeypatch.setattr(lookup, "_TIE_PROBE", probe)  # 2: the newest-first probe and its fallback run
    ids = [repo.commit(weights(i), "model", metrics={"acc": 1.0 if i < 5 else 0.5}).id for i in range(9)]
    other = [repo.commit(weights(100 + i), "noise", metrics={"acc": 1.0}).id for i in range(4)]
    assert repo.resolve("best:acc", name="model").id == ids[4]  # newest of the five ties, older than 4 others
    assert repo.resolve("best:acc", name="noise").id == other[-1]
    newer = repo.commit(weights(50), "model", metrics={"acc": 1.0})
    assert repo.resolve("best:acc", name="model").id == newer.id  # among the newest versions now
    joined = repo.commit(copy(weights(101)), "model")  # noise's second version joins model's history
    assert joined.id == other[1] and repo.resolve("best:acc", name="model").id == newer.id  # order: creation
    assert repo.resolve("best:acc:min", name="model").id == ids[-1]


def test_a_direction_a_version_states_wins_and_survives_reindex(repo):
    from mvc_magics.operations.commit import commit

    low = commit(repo.store, weights(0), "model", metrics={"val_loss": 0.2})
    high = commit(repo.store, weights(1), "model", metrics={"val_loss": 0.9},
                  extra={"metric_directions": {"val_loss": "max", "acc": "sideways", "": 3}})
    assert repo.resolve("best:val_loss", name="model").id == high.id  # stated: higher is better
    assert repo.resolve("best:val_loss:min", name="model").id == low.id  # explicit wins over stated
    repo.reindex()
    assert repo.resolve("best:val_loss", name="model").id == high.id and repo.verify().ok
    # another history holding the low version states nothing: the name's guess holds there
    repo.commit(copy(weights(0)), "other", metrics={})
    assert repo.resolve("best:val_loss", name="other").id == low.id


def test_an_index_written_before_stated_directions_finds_them_on_open(store_path):
    from mvc_magics.operations.commit import commit

    with Repo(store_path) as repo:
        commit(repo.store, weights(0), "model", metrics={"score": 0.2})
        high = commit(repo.store, weights(1), "model", metrics={"score": 0.9},
                      extra={"metric_directions": {"score": "min"}})
        low = repo.log("model")[1]
    with sqlite3.connect(store_path / "index.sqlite") as conn:
        conn.execute("DROP TRIGGER directions_gone")
        conn.execute("DROP TABLE directions")
    with Repo(store_path) as reopened:
        assert reopened.resolve("best:score", name="model").id == low.id != high.id  # "min", as stated
        assert reopened.verify().ok


def test_a_history_keeps_the_order_keys_when_a_parent_arrives_after_its_child(tmp_path):
    """Order is creation and ancestry, never arrival: a key raised for a child pulled before its parent
    is the key every history holding the child sorts by."""
    from mvc_magics.operations.lookup import load_versions
    from mvc_magics.storage.local import histories
    from mvc_magics.storage.local.index import Index

    index = Index(tmp_path / "index.sqlite")
    try:
        def meta(parents, created):
            return {"name": "model", "parents": parents, "created": created, "message": "", "author": "a",
                    "metrics": {}}
        parent, child = "a" * 64, "b" * 64
        with index.transaction() as conn:  # the child first, made on a machine whose clock is behind
            Index.insert_version(conn, child, "model", "2026-01-01T00:00:00", meta([parent], "2026-01-01T00:00:00"),
                                 [], 0)
            histories.add_member(conn, child, "other")
            Index.insert_version(conn, parent, "model", "2026-01-02T00:00:00", meta([], "2026-01-02T00:00:00"), [], 0)
            histories.add_member(conn, parent, "other")
        for name in ("model", "other"):
            assert [v.id for v in load_versions(index, "1 = 1", (), history=name)] == [child, parent]
        assert index.query("SELECT count(*) FROM members m JOIN versions v ON v.id = m.id WHERE m.ord != v.ord") \
            == [(0,)]
    finally:
        index.close()


def test_models_list_the_history_a_version_was_committed_to_before_those_it_joined(repo):
    repo.commit(weights(0), "zeta")
    repo.commit(copy(weights(0)), "alpha")  # starts at zeta's version: same first version, listed after
    assert repo.models() == ["zeta", "alpha"]
    assert [entry.name for entry in repo.status({})] == ["zeta", "alpha"]
