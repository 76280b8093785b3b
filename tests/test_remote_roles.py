"""Roles enforced by the store, not by politeness: SeaweedFS identities (its -s3.config, see
tests/seaweed.py and docs/remotes.md) for reader, member and release on a real cluster, and the
remote's allowed signers for protected tags, which bucket/prefix rights cannot express."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from s3_servers import use_role
from seaweed import BUCKET, TEAM_PREFIX
from signing_keys import pem_key_pair

from mvc_magics import Repo
from mvc_magics.errors import MVCError, RemotePermissionError, SignatureError
from mvc_magics.operations.remote_check import verify_remote
from mvc_magics.operations.remote_removal import remove_remote_versions
from mvc_magics.storage.remote.store import RemoteStore
from mvc_magics.storage.remote.trust import ALLOWED_SIGNERS, allowed_signers_file


def weights(i):
    return {"w": np.full(4, i, np.float32), "b": np.arange(3, dtype=np.float32) * i}


def test_reader_member_release_roles_on_seaweedfs(tmp_path, seaweed, monkeypatch):
    url = f"s3://{BUCKET}/{TEAM_PREFIX}"
    release_key, release_public = pem_key_pair(tmp_path, "release")
    member_key, _ = pem_key_pair(tmp_path, "member")
    # The administrator creates the remote and says who may move protected tags.
    RemoteStore(url).check_format(create=True)
    seaweed.client("admin").put_object(Bucket=BUCKET, Key=f"{TEAM_PREFIX}/{ALLOWED_SIGNERS}",
                                       Body=allowed_signers_file([("release-ci", release_public)]))

    # member: versions and ordinary tags go; a protected tag does not, even signed by the member's key.
    use_role(monkeypatch, seaweed, "member")
    monkeypatch.setenv("MVC_SIGNING_KEY_FILE", str(member_key))
    member = Repo(tmp_path / "member" / ".mvc")
    v1 = member.commit(weights(1), "m", tags=["candidate"])
    member.add_remote("origin", url)
    assert member.push().versions == [v1.id]
    member.tag(v1.id, "production")
    with pytest.raises(RemotePermissionError, match=rf"^permission denied: remote {url} .*production") as exc:
        member.push()
    assert "\n" not in str(exc.value)
    assert ("m", "production") not in RemoteStore(url).tags()
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="AccessDenied"):  # nor can it allow itself: the store refuses
        seaweed.client("member").put_object(Bucket=BUCKET, Key=f"{TEAM_PREFIX}/{ALLOWED_SIGNERS}", Body=b"{}")

    # release: moves production, signed by an allowed key.
    use_role(monkeypatch, seaweed, "release")
    monkeypatch.setenv("MVC_SIGNING_KEY_FILE", str(release_key))
    release = Repo.clone(url, tmp_path / "release" / ".mvc")
    v2 = release.commit(weights(2), "m")
    release.tag(v2.id, "production")
    release.push()
    assert RemoteStore(url).tags()[("m", "production")][0] == v2.id

    # reader: clones and pulls; every push is refused by the store with one line naming the remote.
    use_role(monkeypatch, seaweed, "reader")
    monkeypatch.delenv("MVC_SIGNING_KEY_FILE")
    reader = Repo.clone(url, tmp_path / "reader" / ".mvc")
    assert reader.resolve("production", name="m").id == v2.id and reader.verify().ok
    v3 = reader.commit(weights(3), "m")
    with pytest.raises(RemotePermissionError, match=rf"^permission denied: remote {url} ") as exc:
        reader.push()
    assert "\n" not in str(exc.value)
    assert v3.id not in RemoteStore(url).objects()
    with pytest.raises(RemotePermissionError, match=rf"^permission denied: remote {url} "):  # nor removes
        remove_remote_versions(reader.store, "origin", ["candidate"], force=True)
    assert v1.id in RemoteStore(url).objects()

    # A member who writes a protected tag into the log by hand (the store cannot stop that) is caught:
    # pull refuses the tag and verify reports it.
    use_role(monkeypatch, seaweed, "member")
    seq = RemoteStore(url).state().seq
    last = seaweed.client("member").get_object(Bucket=BUCKET, Key=f"{TEAM_PREFIX}/log/{seq - 1:010d}.json")["Body"]
    forged = {"prev": hashlib.sha256(last.read()).hexdigest(),  # chained like a real append
              "tags": [{"model": "m", "tag": "production", "id": v1.id, "protected": True}]}
    seaweed.client("member").put_object(Bucket=BUCKET, Key=f"{TEAM_PREFIX}/log/{seq:010d}.json",
                                        Body=json.dumps(forged).encode(), IfNoneMatch="*")
    use_role(monkeypatch, seaweed, "reader")
    with pytest.raises(SignatureError, match="production"):
        reader.pull()
    assert reader.resolve("production", name="m").id == v2.id  # not moved here
    problems = verify_remote(reader.store)
    assert len(problems) == 1 and "production" in problems[0] and "allowed signer" in problems[0]
    for repo in (member, release, reader):
        repo.close()


def test_cli_rm_tag_and_remote_subcommands(tmp_path, capsys):
    from mvc_magics.apps.cli import run

    store = tmp_path / ".mvc"
    with Repo(store) as repo:
        v1 = repo.commit(weights(1), "m")
        v2 = repo.commit(weights(2), "m")
    remote = (tmp_path / "remote").as_uri()
    base = ["--store", str(store)]
    assert run([*base, "remote", "add", "origin", remote]) == 0
    assert run([*base, "remote"]) == 0 and f"origin\t{remote}" in capsys.readouterr().out
    assert run([*base, "tag", v1.id[:10], "production", "--protect"]) == 0
    assert run([*base, "push"]) == 0
    assert run([*base, "remote", "verify"]) == 0 and "remote ok" in capsys.readouterr().out
    with pytest.raises(MVCError, match="protected"):
        run([*base, "rm", v1.id[:10]])
    assert run([*base, "rm", v2.id[:10]]) == 0
    assert run([*base, "tag", "--delete", "production", "--force"]) == 0
    assert run([*base, "remote", "remove", "origin"]) == 0
    with Repo(store) as repo:
        assert [v.id for v in repo.log("m")] == [v1.id] and repo.tag_names() == [] and repo.remotes() == {}
    with pytest.raises(MVCError, match="usage: mvc remote add NAME URL"):
        run([*base, "remote", "add", "x"])
