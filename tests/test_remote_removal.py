"""Removing versions on a remote (`mvc rm --remote`): on a file:// remote and on S3 servers (moto and
SeaweedFS, see s3_servers.py). The version's file stays there while other versions read tensors from it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from s3_servers import use_role
from test_remote import make_weights

from mvc_magics import Repo
from mvc_magics.errors import ProtectedRefError
from mvc_magics.operations.remote_removal import remove_remote_versions
from mvc_magics.storage.remote.store import RemoteStore


@pytest.fixture(params=["file", "moto", "seaweedfs"])
def url(request, tmp_path, monkeypatch):
    if request.param == "file":
        return (tmp_path / "remote").as_uri()
    backend = request.getfixturevalue("moto_backend" if request.param == "moto" else "seaweed_backend")
    use_role(monkeypatch, backend, "admin")
    return backend.new_url()


def two_versions(repo: Repo):
    """v1 tagged staging, v2 its child reading the unchanged tensors from v1's file."""
    w = make_weights(1)
    v1 = repo.commit(w, "m", tags=["staging"])
    w["dense/bias"] = w["dense/bias"] + 1
    v2 = repo.commit(w, "m", tags=["newest"])
    return w, v1, v2


def test_removal_hides_the_version_keeps_shared_tensors_and_is_audited(tmp_path, url):
    a = Repo(tmp_path / "a" / ".mvc")
    w, v1, v2 = two_versions(a)
    a.add_remote("origin", url)
    a.push()
    with pytest.raises(ProtectedRefError, match="tag staging"):  # a tag names it: delete or move it first
        remove_remote_versions(a.store, "origin", [v1.id[:10]])
    assert v1.id in RemoteStore(url).objects()
    assert remove_remote_versions(a.store, "origin", [v1.id[:10]], force=True) == [v1.id]
    remote = RemoteStore(url)
    assert v1.id not in remote.objects() and ("m", "staging") not in remote.tags()
    assert remote.exists(remote.object_key(v1.id))  # kept: v2 reads its tensors from that file
    entry = list(a.audit.entries())[-1]
    assert (entry.op, entry.ids, entry.detail["tags_deleted"]) == ("remote-remove", [v1.id], ["m/staging"])

    b = Repo.clone(url, tmp_path / "b" / ".mvc")
    assert [v.id for v in b.log("m")] == [v2.id]
    np.testing.assert_array_equal(b.load_state(b.resolve("newest", name="m"))["shared/table"], w["shared/table"])
    assert a.pull().versions == [] and a.resolve(v1.id).id == v1.id  # the local copy stays
    a.push()  # a still has v1: a push does not bring it back on the remote
    assert v1.id not in RemoteStore(url).objects()
    assert not any(v.id == v1.id for v in Repo.clone(url, tmp_path / "c" / ".mvc").log("m"))
    a.close()
    b.close()


def test_protected_tag_blocks_removal_even_with_force(tmp_path, url):
    a = Repo(tmp_path / "a" / ".mvc")
    _, v1, _ = two_versions(a)
    a.tag(v1.id, "production", name="m")
    a.add_remote("origin", url)
    a.push()
    with pytest.raises(ProtectedRefError, match="protected tag production") as info:
        remove_remote_versions(a.store, "origin", ["production"], force=True)
    assert "\n" not in str(info.value)
    remote = RemoteStore(url)
    assert v1.id in remote.objects() and remote.tags()[("m", "production")][0] == v1.id
    a.close()


def test_cli_rm_remote(tmp_path):
    a = Repo(tmp_path / ".mvc")
    _, v1, v2 = two_versions(a)
    url = (tmp_path / "remote").as_uri()
    a.add_remote("origin", url)
    a.push()
    a.close()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}

    def mvc(*args):
        return subprocess.run([sys.executable, "-m", "mvc_magics.cli", "--store", str(tmp_path / ".mvc"), *args],
                              capture_output=True, text=True, env=env)

    refused = mvc("rm", "--remote", "origin", "newest")
    assert refused.returncode != 0 and "tag newest" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    done = mvc("rm", "--remote", "origin", "newest", "--force")
    assert done.returncode == 0, done.stderr
    assert f"removed {v2.id[:12]} on remote origin" in done.stdout
    assert set(RemoteStore(url).objects()) == {v1.id}
