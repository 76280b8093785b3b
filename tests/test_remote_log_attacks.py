"""The remote log is tamper-evident (issue 23 §2). Each attack below is what a member can do by writing
to the remote with member rights (files of a shared folder; the member identity of a real SeaweedFS
gateway, tests/seaweed.py), run on both. Each is refused with one line (or has no effect on readers),
the victim store is unchanged, and ``verify_remote`` (``mvc remote verify``) reports it.
docs/remotes.md's threat-model table names these tests."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from s3_servers import use_role
from seaweed import ATTACK_PREFIX, BUCKET
from signing_keys import pem_key_pair

from mvc_magics import Repo
from mvc_magics.errors import RemoteHistoryError, RemotePermissionError, SignatureError
from mvc_magics.operations.remote_check import sign_checkpoint, verify_remote
from mvc_magics.storage.remote.store import RemoteStore
from mvc_magics.storage.remote.trust import ALLOWED_SIGNERS, allowed_signers_file


def weights(i: int) -> dict[str, np.ndarray]:
    return {"w": np.full(4, i, np.float32), "b": np.arange(3, dtype=np.float32) * i}


class FolderRemote:
    """A shared folder: a member may write any file of it (the group's rights)."""

    def __init__(self, root, monkeypatch) -> None:
        self.root, self.url = root, root.as_uri()

    def admin_setup(self, signers: bytes) -> None:
        RemoteStore(self.url).check_format(create=True)
        (self.root / ALLOWED_SIGNERS).write_bytes(signers)

    def as_role(self, role: str) -> None:
        pass  # one user's files: only the signing key differs

    def read(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.exists() else None

    def write(self, key: str, data: bytes) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        (self.root / key).write_bytes(data)


class SeaweedRemote:
    """``s3://mvc/attack`` on SeaweedFS: the member identity may write objects/, notes/ and log/ only."""

    def __init__(self, backend, monkeypatch) -> None:
        self.backend, self.monkeypatch = backend, monkeypatch
        self.url = f"s3://{BUCKET}/{ATTACK_PREFIX}"
        self.clients = {role: backend.client(role) for role in ("admin", "reader", "member")}

    def admin_setup(self, signers: bytes) -> None:
        admin = self.clients["admin"]
        for page in admin.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{ATTACK_PREFIX}/"):
            for item in page.get("Contents", []):  # the previous attack's remote
                admin.delete_object(Bucket=BUCKET, Key=item["Key"])
        use_role(self.monkeypatch, self.backend, "admin")
        RemoteStore(self.url).check_format(create=True)
        admin.put_object(Bucket=BUCKET, Key=f"{ATTACK_PREFIX}/{ALLOWED_SIGNERS}", Body=signers)

    def as_role(self, role: str) -> None:
        use_role(self.monkeypatch, self.backend, role)

    def read(self, key: str) -> bytes | None:
        client = self.clients["reader"]
        try:
            return client.get_object(Bucket=BUCKET, Key=f"{ATTACK_PREFIX}/{key}")["Body"].read()
        except client.exceptions.NoSuchKey:
            return None

    def write(self, key: str, data: bytes) -> None:  # the store lets a member overwrite log files
        self.clients["member"].put_object(Bucket=BUCKET, Key=f"{ATTACK_PREFIX}/{key}", Body=data)


class Scene:
    """Release published v1 then v2 as ``production`` (and v1 as the flagged-protected ``stable``); a
    reader (the victim) cloned it; a member attacks the log."""

    def __init__(self, remote, tmp_path, monkeypatch) -> None:
        self.remote, self.tmp, self.monkeypatch, self.url = remote, tmp_path, monkeypatch, remote.url
        self.keys = {"release": pem_key_pair(tmp_path, "release")[0], "member": pem_key_pair(tmp_path, "member")[0],
                     "reader": tmp_path / "release.pub.pem"}  # the victim checks release's signatures
        remote.admin_setup(allowed_signers_file([("release-ci", (tmp_path / "release.pub.pem").read_bytes())]))
        self.fresh_count = 0

    def become(self, role: str) -> None:
        self.remote.as_role(role)
        self.monkeypatch.setenv("MVC_SIGNING_KEY_FILE", str(self.keys[role]))

    def history(self) -> None:
        self.become("release")
        self.release = Repo(self.tmp / "release" / ".mvc")
        self.release.add_remote("origin", self.url)
        self.v1 = self.release.commit(weights(1), "m", tags=["production"])
        self.release.tag(self.v1.id, "stable", protect=True)
        self.release.push()  # segment 0
        self.v2 = self.release.commit(weights(2), "m")
        self.release.tag(self.v2.id, "production", force=True)
        self.release.push(force=True)  # segment 1
        self.become("reader")
        self.victim = Repo.clone(self.url, self.tmp / "victim" / ".mvc")
        assert self.tag("production") == self.v2.id and self.tag("stable") == self.v1.id
        assert verify_remote(self.victim.store) == []  # a clean remote reports nothing

    def tag(self, tag: str, repo: Repo | None = None) -> str:
        return (repo or self.victim).resolve(tag, name="m").id

    def segment(self, seq: int) -> dict:
        return json.loads(self.remote.read(f"log/{seq:010d}.json"))

    def member_append(self, segment: dict) -> int:
        """Append a segment by hand, chained like a real one (the member can read the log)."""
        seq = 0
        while self.remote.read(f"log/{seq:010d}.json") is not None:
            seq += 1
        prev = hashlib.sha256(self.remote.read(f"log/{seq - 1:010d}.json")).hexdigest()
        self.remote.write(f"log/{seq:010d}.json", json.dumps({**segment, "prev": prev}).encode())
        return seq

    def heads(self):
        return RemoteStore(self.url).state().heads  # a member can compute every tag's entry in force

    def snapshot(self) -> tuple:
        index = self.victim.store.index
        return (sorted(index.query("SELECT id FROM versions")), sorted(index.query("SELECT * FROM tags")))

    def victim_pull_refused(self, error: type, match: str) -> str:
        """The victim pulls: one line naming the attack, nothing changed in its store."""
        self.become("reader")
        before = self.snapshot()
        with pytest.raises(error, match=match) as exc:
            self.victim.pull()
        assert "\n" not in str(exc.value)
        assert self.snapshot() == before
        return str(exc.value)

    def fresh_reader(self) -> Repo:
        self.become("reader")
        self.fresh_count += 1
        return Repo(self.tmp / f"fresh{self.fresh_count}" / ".mvc")

    def verify(self) -> list[str]:
        self.become("reader")
        problems = verify_remote(self.victim.store)
        assert all("\n" not in line for line in problems)
        return problems


@pytest.fixture(params=["file", "seaweedfs"])
def scene(request, tmp_path, monkeypatch) -> Scene:
    if request.param == "file":
        remote = FolderRemote(tmp_path / "remote", monkeypatch)
    else:
        remote = SeaweedRemote(request.getfixturevalue("seaweed_backend"), monkeypatch)
    return Scene(remote, tmp_path, monkeypatch)


def test_a_replayed_tag_signature_is_refused(scene):
    scene.history()
    signed_v1 = next(e for e in scene.segment(0)["tags"] if e["tag"] == "production")
    assert signed_v1["id"] == scene.v1.id and "signature" in signed_v1
    scene.become("member")
    scene.member_append({"tags": [signed_v1]})  # release's own signature, for an older position
    scene.victim_pull_refused(SignatureError, r"replayed signature: the entry of protected tag production \(m\)")
    assert scene.tag("production") == scene.v2.id
    fresh = scene.fresh_reader()
    with pytest.raises(SignatureError, match="replayed signature"):
        fresh.pull(scene.url)
    assert scene.tag("production", fresh) == scene.v2.id  # a new store gets v2 too, not the replayed v1
    assert any("replayed signature" in line and "production" in line for line in scene.verify())


def test_unsigned_unprotect_and_delete_of_protected_tags_are_refused(scene):
    scene.history()
    heads = scene.heads()
    scene.become("member")
    member = Repo(scene.tmp / "member" / ".mvc")
    v3 = member.commit(weights(3), "m")
    member.push(scene.url)  # a member pushes versions as usual
    scene.become("reader")
    scene.victim.pull()
    scene.become("member")
    scene.member_append({"tags": [{"model": "m", "tag": "stable", "id": v3.id, "protected": False,
                                   "prev": heads[("m", "stable")]}]})
    scene.member_append({"tags": [{"model": "m", "tag": "production", "id": None, "protected": False,
                                   "prev": heads[("m", "production")]}]})
    # protection is read from the entry in force, not from the newest entry's own flag
    scene.member_append({"tags": [{"model": "m", "tag": "stable", "id": v3.id, "protected": False,
                                   "prev": scene.heads()[("m", "stable")]}]})
    message = scene.victim_pull_refused(SignatureError, "3 tag entries of its log refused")
    assert "unprotects protected tag stable (m)" in message and "deletes protected tag production (m)" in message
    assert scene.tag("stable") == scene.v1.id and scene.tag("production") == scene.v2.id
    fresh = scene.fresh_reader()
    with pytest.raises(SignatureError, match="deletes protected tag production"):
        fresh.pull(scene.url)
    assert scene.tag("stable", fresh) == scene.v1.id and scene.tag("production", fresh) == scene.v2.id
    problems = scene.verify()
    assert sum("without an allowed signer's signature" in line for line in problems) == 3, problems


def test_removing_the_version_a_protected_tag_names_is_refused(scene):
    scene.history()
    scene.become("member")
    scene.member_append({"removed": [scene.v2.id]})  # would hide production's version from new stores
    scene.victim_pull_refused(SignatureError, "removes version .* which protected tag production")
    fresh = scene.fresh_reader()
    with pytest.raises(SignatureError, match="protected tag production"):
        fresh.pull(scene.url)
    assert scene.tag("production", fresh) == scene.v2.id
    assert any("removes version" in line for line in scene.verify())


def test_a_forged_checkpoint_and_head_far_ahead_are_not_trusted(scene):
    scene.history()
    scene.become("member")
    state = RemoteStore(scene.url).state()
    forged = RemoteStore(scene.url).state()
    forged.tags[("m", "production")] = (scene.v1.id, False)  # production back on v1,
    del forged.objects[scene.v2.id]  # v2 hidden
    forged.seq = 999
    scene.remote.write("log/checkpoint-0000000999.json",
                       json.dumps({"seq": 999, "last": state.last, "state": forged.to_json()}).encode())
    scene.remote.write("log/HEAD", json.dumps({"next": 1000, "checkpoint": 999}).encode())
    forged.seq = state.seq  # and one at the log's real end, naming the right segment
    here = {"seq": state.seq, "last": state.last, "state": forged.to_json()}
    scene.remote.write(f"log/checkpoint-{state.seq:010d}.json", json.dumps(here).encode())
    from mvc_magics.storage.local.signatures import Signer
    from mvc_magics.storage.remote.trust import checkpoint_message, sign

    member_key = Signer.ed25519_from_pem(scene.keys["member"].read_bytes())
    here["signature"] = sign(member_key, checkpoint_message(forged.identity, state.seq, state.last,
                                                            forged.state_digest()))
    scene.remote.write(f"log/checkpoint-{state.seq:010d}-{'0' * 16}.json", json.dumps(here).encode())

    fresh = scene.fresh_reader()
    assert sorted(fresh.pull(scene.url).versions) == sorted([scene.v1.id, scene.v2.id])
    assert scene.tag("production", fresh) == scene.v2.id
    problems = scene.verify()
    assert any("checkpoint 999 is ahead of the log" in line for line in problems), problems
    assert any("log/HEAD names 1000" in line for line in problems), problems
    assert sum(f"checkpoint {state.seq} does not match segments" in line for line in problems) == 2, problems
    scene.become("release")  # release pushes again: later clones follow it, they are not forked
    v3 = scene.release.commit(weights(3), "m")
    scene.release.tag(v3.id, "production", force=True)
    scene.release.push(force=True)
    assert scene.tag("production", Repo.clone(scene.url, scene.tmp / "late" / ".mvc")) == v3.id
    assert json.loads(scene.remote.read("log/HEAD"))["next"] == state.seq + 1  # the forged hint is replaced
    scene.become("reader")
    scene.victim.pull(force=True)  # tags are not fast-forwarded (docs/remotes.md): take release's move
    assert scene.tag("production") == v3.id
    assert not any("log/HEAD" in line for line in scene.verify())


def test_a_rewritten_segment_is_refused_by_fresh_and_cached_readers(scene):
    scene.history()
    scene.become("member")
    member = Repo(scene.tmp / "member" / ".mvc")
    member.commit(weights(3), "m")
    member.push(scene.url)  # segment 2
    scene.become("reader")
    scene.victim.pull()
    before = scene.snapshot()
    one = scene.segment(1)
    one["tags"] = []  # the move of production to v2 is gone
    scene.become("member")
    scene.remote.write("log/0000000001.json", json.dumps(one).encode())
    fresh = scene.fresh_reader()
    with pytest.raises(RemoteHistoryError, match=r"log segment 2 does not follow segment 1") as exc:
        fresh.pull(scene.url)
    assert "\n" not in str(exc.value) and fresh.store.index.count() == 0
    scene.become("reader")
    scene.victim.pull()  # its state ends past the rewrite, whose content it already checked: not fooled
    assert scene.snapshot() == before
    assert any("segment 2 does not follow segment 1" in line for line in scene.verify())

    two = scene.segment(2)
    two["prev"] = hashlib.sha256(scene.remote.read("log/0000000001.json")).hexdigest()
    scene.become("member")
    scene.remote.write("log/0000000002.json", json.dumps(two).encode())
    scene.victim_pull_refused(RemoteHistoryError, "does not extend what this store read: segment 1 differs")
    assert any("segment 1 differs" in line for line in scene.verify())


def test_a_signed_checkpoint_anchors_fresh_clones_against_a_rewrite(scene, capsys):
    from mvc_magics.apps.cli import run

    scene.history()
    scene.become("member")  # a member's key is not an allowed signer
    with pytest.raises(RemotePermissionError, match="only its allowed signers sign checkpoints"):
        sign_checkpoint(scene.release.store)
    scene.become("release")
    assert run(["--store", str(scene.tmp / "release" / ".mvc"), "remote", "checkpoint"]) == 0
    assert "signed checkpoint log/checkpoint-0000000002-" in capsys.readouterr().out
    scene.become("member")
    member = Repo(scene.tmp / "member" / ".mvc")
    v3 = member.commit(weights(3), "m")
    member.push(scene.url)
    fresh = scene.fresh_reader()
    fresh.pull(scene.url)  # from the signed checkpoint on
    assert scene.tag("production", fresh) == scene.v2.id and fresh.resolve(v3.id).id == v3.id
    one = scene.segment(1)
    one["tags"] = []
    scene.become("member")
    scene.remote.write("log/0000000001.json", json.dumps(one).encode())
    two = scene.segment(2)
    two["prev"] = hashlib.sha256(scene.remote.read("log/0000000001.json")).hexdigest()
    scene.remote.write("log/0000000002.json", json.dumps(two).encode())
    fresh = scene.fresh_reader()
    with pytest.raises(RemoteHistoryError, match="release-ci signed checkpoint 2, but log segment 1") as exc:
        fresh.pull(scene.url)
    assert "\n" not in str(exc.value) and fresh.store.index.count() == 0
    scene.victim_pull_refused(RemoteHistoryError, "segment 1 differs")
    problems = scene.verify()
    assert any("checkpoint 2 (signed by release-ci) does not match" in line for line in problems), problems


def test_a_member_signature_pushed_first_does_not_shadow_release(scene):
    scene.history()
    scene.become("member")
    member = Repo(scene.tmp / "member" / ".mvc")
    shadow = member.commit(weights(7), "m")  # signed with the member's key
    member.push(scene.url)
    scene.become("release")
    assert scene.release.commit(weights(7), "m").id == shadow.id  # the same content, signed by release
    scene.release.push()
    records = RemoteStore(scene.url).state().signatures[shadow.id]
    assert len(records) == 2  # both kept
    scene.become("reader")
    scene.victim.pull()
    assert scene.victim.signature_status(shadow.id).state == "valid"  # release's record, checked with its key
    scene.victim.checkout(shadow.id, require_signature=True)
    # A store that pulled without a key kept the member's record (the first); once it has release's key,
    # the next pull keeps release's valid record beside it.
    scene.monkeypatch.delenv("MVC_SIGNING_KEY_FILE")
    keyless = Repo(scene.tmp / "keyless" / ".mvc")
    keyless.pull(scene.url)
    scene.become("reader")
    assert keyless.signature_status(shadow.id).state == "bad"  # signed with another key (the member's)
    keyless.pull(scene.url)
    assert keyless.signature_status(shadow.id).state == "valid"
    assert any("pushed beside release-ci's valid one" in line for line in scene.verify())



def test_without_allowed_signers_a_checkpoint_far_ahead_is_not_trusted_either(tmp_path):
    """A remote without allowed signers uses the checkpoint log/HEAD names only when the segment before
    it hashes to the checkpoint's ``last``: one far ahead of the log is ignored (and reported)."""
    url = (tmp_path / "remote").as_uri()
    with Repo(tmp_path / "a" / ".mvc") as a:
        v1 = a.commit(weights(1), "m", tags=["production"])
        a.push(url)
        v2 = a.commit(weights(2), "m")
        a.tag(v2.id, "production", force=True)
        a.push(url, force=True)
    forged = RemoteStore(url).state()
    forged.tags[("m", "production")] = (v1.id, False)
    del forged.objects[v2.id]
    forged.seq = 999
    log = tmp_path / "remote" / "log"
    (log / "checkpoint-0000000999.json").write_text(json.dumps({"seq": 999, "last": forged.last,
                                                                "state": forged.to_json()}))
    (log / "HEAD").write_text(json.dumps({"next": 1000, "checkpoint": 999}))
    with Repo(tmp_path / "b" / ".mvc") as b:
        b.add_remote("origin", url)
        assert sorted(b.pull().versions) == sorted([v1.id, v2.id])
        assert b.resolve("production", name="m").id == v2.id
        problems = verify_remote(b.store)
        assert any("checkpoint 999 is ahead of the log" in line for line in problems), problems
        assert any("log/HEAD names 1000" in line for line in problems), problems
