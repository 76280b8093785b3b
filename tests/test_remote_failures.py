"""Failures of a real distributed store (SeaweedFS, tests/seaweed.py) during push and pull: a volume
server SIGKILLed mid-transfer, the S3 gateway restarting mid-push, wrong credentials, a gateway that
accepts connections and never answers. Each operation completes or fails with one line, a re-run
completes it, and nothing half-visible appears on either side. scripts/remote_soak.py runs the same
with a ~200 MB history."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from test_remote import remote_is_consistent_s3

from mvc_magics import Repo
from mvc_magics.errors import RemoteError
from mvc_magics.storage.remote import store as remote_store

MB = 1 << 20


def history(repo: Repo, versions: int = 5, megabytes: int = 7) -> list[str]:
    """A fine-tune history: each version changes most of the bytes (so each object is ~``megabytes``)."""
    rng = np.random.default_rng(7)
    ids = []
    for i in range(versions):
        w = {f"layer{j}": rng.standard_normal(megabytes * MB // 4 // 2).astype(np.float32) for j in range(2)}
        ids.append(repo.commit(w, "m", metrics={"loss": 1.0 / (i + 1)}).id)
    repo.tag(ids[-1], "production")
    return ids


def on_nth_call(mp: pytest.MonkeyPatch, method: str, n: int, action) -> list[int]:
    """Run ``action`` (in a thread, so it lands during the transfer) when RemoteStore.<method> is called
    the n-th time. The transfer itself is the real one."""
    original = getattr(remote_store.RemoteStore, method)
    calls = [0]

    def wrapper(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            threading.Thread(target=action, daemon=True).start()
            time.sleep(0.05)
        return original(self, *args, **kwargs)

    mp.setattr(remote_store.RemoteStore, method, wrapper)
    return calls


def one_line_or_done(func):
    try:
        func()
    except RemoteError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(("remote ", "permission denied")), str(exc)
        return exc
    return None


def restore(cluster, name: str) -> None:
    if name not in cluster.procs:
        cluster.start_volume(int(name[-1])) if name.startswith("volume") else cluster.start_gateway()
        cluster._wait_volumes()


def test_volume_server_killed_mid_push_then_re_push_completes(tmp_path, seaweed, monkeypatch):
    cluster, url = seaweed.cluster, seaweed.new_url()
    # The gateway keeps retrying the dead replica for minutes before answering 500: our bound decides.
    monkeypatch.setenv("MVC_REMOTE_TIMEOUT", "4")
    with Repo(tmp_path / "a" / ".mvc") as a:
        ids = history(a)
        a.add_remote("origin", url)
        try:
            with pytest.MonkeyPatch.context() as mp:
                on_nth_call(mp, "put_object", 3, lambda: cluster.kill("volume1"))
                one_line_or_done(a.push)
            remote_is_consistent_s3(url)  # whatever is visible is whole, tags only on what is there
        finally:
            restore(cluster, "volume1")
        for _ in range(3):  # the restarted server may take a moment to take writes again
            if one_line_or_done(a.push) is None:
                break
            time.sleep(2)
    assert remote_is_consistent_s3(url) == set(ids)
    with Repo.clone(url, tmp_path / "b" / ".mvc") as b:
        assert b.resolve("production", name="m").id == ids[-1] and b.verify().ok


def test_volume_server_killed_mid_pull_survivor_serves_it(tmp_path, seaweed, monkeypatch):
    cluster, url = seaweed.cluster, seaweed.new_url()
    with Repo(tmp_path / "a" / ".mvc") as a:
        ids = history(a)
        a.push(url, progress=False)
    b = Repo(tmp_path / "b" / ".mvc")
    try:
        with pytest.MonkeyPatch.context() as mp:
            on_nth_call(mp, "get_object", 2, lambda: cluster.kill("volume0"))
            first = one_line_or_done(lambda: b.pull(url, progress=False))
        assert {v.id for v in b.log("m")} <= set(ids) and b.verify().ok  # nothing half-pulled
        if first is not None:
            b.pull(url, progress=False)  # with one volume server still dead: its replica serves
        assert {v.id for v in b.log("m")} == set(ids)
        assert b.resolve("production", name="m").id == ids[-1] and b.verify().ok  # every tensor re-hashed
    finally:
        b.close()
        restore(cluster, "volume0")


def test_gateway_restart_mid_push_then_re_push_completes(tmp_path, seaweed, monkeypatch):
    cluster, url = seaweed.cluster, seaweed.new_url()

    def bounce():
        cluster.kill("s3")
        time.sleep(1.0)
        cluster.start_gateway()

    with Repo(tmp_path / "a" / ".mvc") as a:
        ids = history(a, versions=4, megabytes=3)
        a.add_remote("origin", url)
        try:
            with pytest.MonkeyPatch.context() as mp:
                on_nth_call(mp, "put_object", 2, bounce)
                one_line_or_done(a.push)
        finally:
            deadline = time.monotonic() + 30
            while "s3" not in cluster.procs and time.monotonic() < deadline:
                time.sleep(0.2)
        remote_is_consistent_s3(url)
        a.push()
    assert remote_is_consistent_s3(url) == set(ids)


def test_wrong_credentials_are_one_line(tmp_path, seaweed, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with Repo(tmp_path / ".mvc") as repo:
        repo.commit({"w": np.ones(3, np.float32)}, "m")
        for operation in (repo.push, repo.pull):
            with pytest.raises(RemoteError, match=r"^(remote s3://|permission denied: remote s3://)") as exc:
                operation(seaweed.new_url())
            assert "\n" not in str(exc.value)


def test_a_gateway_that_never_answers_times_out_with_one_line(tmp_path, monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts (the kernel completes the handshake) and never answers
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("MVC_REMOTE_TIMEOUT", "0.5")
    try:
        with Repo(tmp_path / ".mvc") as repo:
            with pytest.raises(RemoteError, match=r"^remote s3://mvc/x: .*(timeout|timed out)") as exc:
                repo.pull("s3://mvc/x")
            assert "\n" not in str(exc.value)
    finally:
        listener.close()
