"""One bad object on a shared remote never blocks the rest (issue 23 §3): a teammate with write
access plants a missing, oversized, symlinked, non-HDF5 and FIFO object among good ones; pull and
clone refuse each by name (one line each in the report, one line in the error) and import every
good version; a clone keeps what arrived; the puller's own store and live model are unchanged."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.apps import cli
from mvc_magics.errors import RefusedObjectsError

ATTACKS = ("missing", "oversized", "symlink", "not-hdf5", "fifo")


def _plant(remote, vid, attack, tmp_path):
    obj = next((remote / "objects").rglob(f"{vid}.h5"))
    os.chmod(obj, 0o644)
    if attack == "missing":
        obj.unlink()
    elif attack == "oversized":  # 4 MB more than the log lists
        with open(obj, "ab") as handle:
            handle.write(b"\0" * (4 << 20))
    elif attack == "symlink":  # to a copy outside the remote (same bytes: only the link is wrong)
        outside = tmp_path / f"outside-{vid[:8]}.h5"
        outside.write_bytes(obj.read_bytes())
        obj.unlink()
        obj.symlink_to(outside)
    elif attack == "not-hdf5":
        size = obj.stat().st_size
        obj.write_bytes((b"not an hdf5 file\n" * (size // 17 + 1))[:size])
    elif attack == "fifo":
        obj.unlink()
        os.mkfifo(obj)


@pytest.fixture
def planted(tmp_path):
    """A remote with 3 good versions and one bad object per attack."""
    remote = tmp_path / "remote"
    good, bad = {}, {}
    with Repo(tmp_path / "a" / ".mvc") as a:
        for i in range(3):
            w = np.full(16, float(i), np.float32)
            good[a.commit({"w": w}, f"good{i}").id] = w
        for i, attack in enumerate(ATTACKS):
            bad[a.commit({"w": np.full(16, 100.0 + i, np.float32)}, f"bad{i}").id] = attack
        a.push(remote.as_uri())
    for vid, attack in bad.items():
        _plant(remote, vid, attack, tmp_path)
    return remote, good, bad


def _check_refusal(exc: RefusedObjectsError, good: dict, bad: dict) -> None:
    assert "\n" not in str(exc)
    assert set(exc.refused) == set(bad)
    for vid in bad:
        assert vid[:12] in str(exc)
    lines = str(exc.report).splitlines()
    assert lines[0].endswith(f"{len(bad)} refused:") and "3 new version(s)" in lines[0]
    refused_lines = lines[1:]
    assert len(refused_lines) == len(bad)  # one line per refused object, each naming it
    for vid, attack in bad.items():
        (line,) = [x for x in refused_lines if vid[:12] in x]
        expected = {"missing": "missing", "oversized": "larger than", "symlink": "symbolic link",
                    "not-hdf5": "not a readable HDF5 file", "fifo": "not a regular file"}[attack]
        assert expected in line


def _imported(repo: Repo, good: dict, bad: dict) -> None:
    for vid, w in good.items():
        assert repo.load_state(vid)["w"].tobytes() == w.tobytes()
    assert not any(repo.store.has_version(vid) for vid in bad)
    assert list(repo.layout.tmp.iterdir()) == []
    assert repo.verify().ok


def test_pull_refuses_each_bad_object_by_name_and_imports_every_good_version(tmp_path, planted):
    remote, good, bad = planted
    with Repo(tmp_path / "b" / ".mvc") as b:
        live = {"w": np.arange(16, dtype=np.float32)}
        own = b.commit(live, "mine")
        own_bytes = b.layout.snapshot_path(own.id).read_bytes()
        with pytest.raises(RefusedObjectsError) as err:
            b.pull(remote.as_uri())
        _check_refusal(err.value, good, bad)
        _imported(b, good, bad)
        assert b.layout.snapshot_path(own.id).read_bytes() == own_bytes  # the victim's own store unchanged
        assert live["w"].tobytes() == np.arange(16, dtype=np.float32).tobytes()
        assert b.head("mine").id == own.id
        with pytest.raises(RefusedObjectsError):  # pulling again: the same refusals, nothing new
            b.pull(remote.as_uri())
        assert b.index.count() == 4


def test_clone_keeps_what_arrived_and_names_what_was_refused(tmp_path, planted):
    remote, good, bad = planted
    target = tmp_path / "clone"
    with pytest.raises(RefusedObjectsError) as err:
        Repo.clone(remote.as_uri(), target)
    assert err.value.path == target and str(err.value).startswith(f"cloned into {target}: 3 new version(s)")
    _check_refusal(err.value, good, bad)
    with Repo(target, create=False) as c:
        _imported(c, good, bad)
        assert c.remotes() == {"origin": remote.as_uri()}


def test_cli_clone_prints_one_line_per_refused_object_and_exits_1(tmp_path, planted, capsys):
    remote, _good, bad = planted
    with pytest.raises(SystemExit) as exit_:
        cli.main(["clone", remote.as_uri(), str(tmp_path / "c")])
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert len([line for line in out.splitlines() if line.startswith("  refused remote object")]) == len(bad)
    assert err.count("\n") == 1 and err.startswith("mvc: error: cloned into")


def test_a_clone_from_a_place_that_is_no_remote_leaves_nothing(tmp_path):
    target = tmp_path / "clone"
    with pytest.raises(Exception, match="no mvc remote"):
        Repo.clone((tmp_path / "nothing").as_uri(), target)
    assert not target.exists()


def test_on_s3_a_missing_and_a_non_hdf5_object_cost_only_their_versions(tmp_path, s3):
    url = s3.new_url()
    with Repo(tmp_path / "a" / ".mvc") as a:
        good = {a.commit({"w": np.full(16, float(i), np.float32)}, f"good{i}").id: i for i in range(3)}
        missing = a.commit({"w": np.full(16, 50.0, np.float32)}, "gone").id
        garbage = a.commit({"w": np.full(16, 60.0, np.float32)}, "junk").id
        a.push(url)
    bucket, prefix = url[len("s3://"):].split("/", 1)
    client = s3.client()

    def key(vid):
        return f"{prefix}/objects/{vid[:2]}/{vid}.h5"

    size = len(client.get_object(Bucket=bucket, Key=key(garbage))["Body"].read())
    client.delete_object(Bucket=bucket, Key=key(missing))
    client.put_object(Bucket=bucket, Key=key(garbage), Body=(b"not an hdf5 file\n" * size)[:size])
    with Repo(tmp_path / "b" / ".mvc") as b:
        with pytest.raises(RefusedObjectsError) as err:
            b.pull(url)
        assert set(err.value.refused) == {missing, garbage} and "\n" not in str(err.value)
        assert "missing" in err.value.refused[missing] and "HDF5" in err.value.refused[garbage]
        _imported(b, {vid: np.full(16, float(i), np.float32) for vid, i in good.items()}, {missing, garbage})
