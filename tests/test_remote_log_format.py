"""Remotes written before the log was a hash chain: a version 2 remote (segments without ``prev``) is
read, its old tag signatures checked in their old form, and new segments are chained from where they
start; a version 1 remote (no log) is upgraded by the first push. docs/remotes.md, "Layout"."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mvc_magics import Repo
from mvc_magics.errors import RemoteHistoryError
from mvc_magics.operations.remote_check import verify_remote
from mvc_magics.storage.local.signatures import Signer
from mvc_magics.storage.remote.trust import ALLOWED_SIGNERS, allowed_signers_file, legacy_tag_message, sign


def weights(i: int) -> dict[str, np.ndarray]:
    return {"w": np.full(4, i, np.float32)}


def _release_key(tmp_path, monkeypatch) -> Signer:
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    (tmp_path / "release.pem").write_bytes(pem)
    monkeypatch.setenv("MVC_SIGNING_KEY_FILE", str(tmp_path / "release.pem"))
    return Signer.ed25519_from_pem(pem)


def test_a_version_2_remote_is_read_and_extended_with_a_chain(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    url = remote.as_uri()
    signer = _release_key(tmp_path, monkeypatch)
    public = signer._public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with Repo(tmp_path / "a" / ".mvc") as a:
        v1 = a.commit(weights(1), "m", tags=["production"])
        a.push(url)
    # As a version 2 writer left it: no "prev", no identity, the tag signed over tag:<model>/<tag>:<id>.
    (remote / "FORMAT").write_text("mvc-remote 2\n")
    (remote / ALLOWED_SIGNERS).write_bytes(allowed_signers_file([("release-ci", public)]))
    first = json.loads((remote / "log" / "0000000000.json").read_text())
    del first["prev"], first["remote"]
    first["tags"][0]["signature"] = sign(signer, legacy_tag_message("m", "production", v1.id))
    del first["tags"][0]["prev"]
    (remote / "log" / "0000000000.json").write_text(json.dumps(first))
    shutil.rmtree(tmp_path / "a")

    with Repo(tmp_path / "b" / ".mvc") as b:
        b.add_remote("origin", url)
        assert b.pull().versions == [v1.id] and b.resolve("production", name="m").id == v1.id
        with Repo(tmp_path / "c" / ".mvc") as c:
            v2 = c.commit(weights(2), "m")
            c.push(url)  # segment 1: chained to the last unchained one
        second = json.loads((remote / "log" / "0000000001.json").read_text())
        assert second["prev"] == hashlib.sha256((remote / "log" / "0000000000.json").read_bytes()).hexdigest()
        assert b.pull().versions == [v2.id]
        assert verify_remote(b.store) == []
        # An older writer appends a segment without "prev" after the chain started: refused.
        (remote / "log" / "0000000002.json").write_text(json.dumps({"objects": {}, "tags": []}))
        with pytest.raises(RemoteHistoryError, match="segment 2 does not name the segment before it") as exc:
            b.pull()
        assert "\n" not in str(exc.value)
        assert any("segment 2 does not name" in line for line in verify_remote(b.store))


def test_a_version_3_remote_needs_the_chain_from_segment_0(tmp_path):
    remote = tmp_path / "remote"
    with Repo(tmp_path / "a" / ".mvc") as a:
        a.commit(weights(1), "m")
        a.push(remote.as_uri())
    first = json.loads((remote / "log" / "0000000000.json").read_text())
    del first["prev"]  # an unchained segment 0 on a version 3 remote
    (remote / "log" / "0000000000.json").write_text(json.dumps(first))
    with Repo(tmp_path / "b" / ".mvc") as b, pytest.raises(RemoteHistoryError, match="segment 0 does not name"):
        b.pull(remote.as_uri())


def test_a_version_1_remote_is_upgraded_by_the_first_push(tmp_path):
    remote = tmp_path / "remote"
    with Repo(tmp_path / "a" / ".mvc") as a:
        v1 = a.commit(weights(1), "m")
        source = a.layout.snapshot_path(v1.id)
        (remote / "objects" / v1.id[:2]).mkdir(parents=True)
        shutil.copy(source, remote / "objects" / v1.id[:2] / f"{v1.id}.h5")
    (remote / "refs" / "m" / "tags").mkdir(parents=True)
    (remote / "refs" / "m" / "tags" / "best").write_text(json.dumps({"id": v1.id}))
    (remote / "FORMAT").write_text("mvc-remote 1\n")
    with Repo(tmp_path / "b" / ".mvc") as b:
        assert b.pull(remote.as_uri()).versions == [v1.id] and b.resolve("best", name="m").id == v1.id
        v2 = b.commit(weights(2), "m")
        b.push(remote.as_uri())
    assert (remote / "FORMAT").read_text().split() == ["mvc-remote", "3"]
    assert json.loads((remote / "log" / "0000000000.json").read_text())["prev"] is None
    with Repo.clone(remote.as_uri(), tmp_path / "c" / ".mvc") as c:
        assert {v.id for v in c.log("m")} == {v1.id, v2.id} and c.resolve("best", name="m").id == v1.id
