"""Remotes on real S3 APIs on 127.0.0.1, reached through s3fs like AWS: every test runs against moto
(an S3 emulation) and SeaweedFS (a distributed object store: master, two replicated volume servers,
filer, S3 gateway), see s3_servers.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_remote import interrupted_push_then_repush, make_weights

from mvc_magics import Repo
from mvc_magics.errors import RemoteConflictError
from mvc_magics.storage.remote.store import RemoteStore


@pytest.fixture
def s3_url(s3):
    return s3.new_url()


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_s3_push_clone_pull_and_credentials_never_stored(tmp_path, s3_url, s3):
    a = Repo(tmp_path / "a" / ".mvc")
    w = make_weights(1)
    v1 = a.commit(w, "m", metrics={"loss": 0.5}, tags=["staging"])
    a.add_remote("origin", s3_url)
    assert a.push().versions == [v1.id]
    assert a.push().objects_sent == 0
    b = Repo.clone(s3_url, tmp_path / "b" / ".mvc")
    np.testing.assert_array_equal(b.load_state(b.resolve("staging", name="m"))["dense/kernel"], w["dense/kernel"])
    w["dense/bias"] = w["dense/bias"] * 2
    v2 = b.commit(w, "m", metrics={"loss": 0.25})
    b.push()
    report = a.pull()
    assert report.versions == [v2.id]
    assert a.resolve("best:loss", name="m").id == v2.id
    assert a.verify().ok and b.verify().ok
    for repo in (a, b):
        repo.close()
        stored = all_bytes(repo.path)
        key, secret = s3.keys["admin"]
        assert secret.encode() not in stored and key.encode() not in stored
    assert s3_url.split("/")[3] in (tmp_path / "a" / ".mvc" / "audit.log").read_text()  # the URL is recorded


def test_s3_two_users_and_a_conflicting_tag_move(tmp_path, s3_url):
    a, b = Repo(tmp_path / "a" / ".mvc"), Repo(tmp_path / "b" / ".mvc")
    va = a.commit(make_weights(1), "m", tags=["production"])
    vb = b.commit(make_weights(2), "m", tags=["production"])
    for repo in (a, b):
        repo.add_remote("origin", s3_url)
    a.push()
    with pytest.raises(RemoteConflictError, match="production"):
        b.push()
    store = RemoteStore(s3_url)
    assert set(store.objects()) == {va.id, vb.id}
    assert store.tags()[("m", "production")] == (va.id, False)
    b.push(force=True)
    assert store.tags()[("m", "production")][0] == vb.id
    a.close()
    b.close()


def test_s3_conditional_writes_are_enforced_by_the_server(s3_url):
    """The primitive the log relies on: create-if-absent (If-None-Match: *) refused by the server."""
    store = RemoteStore(s3_url)
    store.check_format(create=True)
    key = store.key("log", "0000000000.json")
    assert store.create_exclusive(key, b'{"tags": []}')
    assert not store.create_exclusive(key, b'{"objects": {}}')  # exists: refused, content kept
    assert store.read_bytes(key) == b'{"tags": []}'
    with pytest.raises(OSError):
        store.fs.pipe_file(key, b"{}", mode="create")  # the raw request fails too: the server enforces it


def test_log_appends_race_each_writer_sees_the_other(s3_url):
    """Two writers holding the same state: the second to append catches up and builds on the first."""
    from mvc_magics.storage.remote.log import RemoteLog

    RemoteStore(s3_url).check_format(create=True)
    one, two = RemoteLog(RemoteStore(s3_url)), RemoteLog(RemoteStore(s3_url))
    stale = two.read()
    tag = {"model": "m", "tag": "production", "protected": True}
    one.append(lambda st: {"tags": [{**tag, "id": "1" * 64}]} if ("m", "production") not in st.tags else None)
    seen = []

    def build(state):
        seen.append(state.seq)
        return None if ("m", "production") in state.tags else {"tags": [{**tag, "id": "2" * 64}]}

    two.append(build, stale)
    assert seen == [0, 1]  # built on the empty state, lost the race, rebuilt on one's segment
    assert RemoteStore(s3_url).tags() == {("m", "production"): ("1" * 64, True)}


def test_s3_interrupted_push_is_invisible_and_repush_completes(tmp_path, s3_url, s3):
    interrupted_push_then_repush(tmp_path, s3_url, env=s3.env())


def test_concurrent_pushes_of_one_tag_exactly_one_wins(tmp_path, s3_url):
    import threading

    url = s3_url
    repos = [Repo(tmp_path / name / ".mvc") for name in ("a", "b")]
    ids = [repo.commit(make_weights(seed), "m", tags=["production"]).id for seed, repo in enumerate(repos)]
    for repo in repos:
        repo.add_remote("origin", url)
    RemoteStore(url).check_format(create=True)
    barrier, outcomes = threading.Barrier(2), {}

    def push(index: int) -> None:
        barrier.wait()
        try:
            repos[index].push()
            outcomes[index] = "ok"
        except RemoteConflictError:
            outcomes[index] = "conflict"

    threads = [threading.Thread(target=push, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes.values()) == ["conflict", "ok"]
    winner = ids[next(i for i, o in outcomes.items() if o == "ok")]
    store = RemoteStore(url)
    assert store.tags()[("m", "production")][0] == winner
    assert set(store.objects()) == set(ids)  # the loser's version is there too
    for repo in repos:
        repo.close()


def test_s3_missing_bucket_is_a_one_line_remote_error(tmp_path, s3):
    from mvc_magics.errors import RemoteError

    with Repo(tmp_path / ".mvc") as repo:
        repo.commit(make_weights(1), "m")
        with pytest.raises(RemoteError, match="remote s3://no-such-bucket-here/x"):
            repo.push("s3://no-such-bucket-here/x")
        with pytest.raises(RemoteError):
            repo.pull("s3://no-such-bucket-here/x")
