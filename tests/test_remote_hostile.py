"""A shared file:// remote written by someone else: files that never end, objects larger than
listed, and folders that lead out of the remote."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.errors import MVCError, RefusedObjectsError, RemoteError


@pytest.fixture
def pushed(tmp_path):
    remote = tmp_path / "remote"
    with Repo(tmp_path / "a" / ".mvc") as a:
        a.commit({"w": np.ones(4, np.float32)}, "m", tags=["production"])
        a.push(remote.as_uri())
    return remote


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("name", ["FORMAT", "log/HEAD"])
def test_a_remote_file_linked_to_dev_zero_is_refused(tmp_path, pushed, name):
    path = pushed / name
    path.unlink()
    path.symlink_to("/dev/zero")
    with Repo(tmp_path / "b" / ".mvc") as b, pytest.raises(MVCError) as err:
        b.pull(pushed.as_uri())
    assert name.split("/")[-1] in _one_line(err.value)


def test_a_fifo_on_the_remote_is_refused_not_waited_on(tmp_path, pushed):
    path = pushed / "FORMAT"
    path.unlink()
    os.mkfifo(path)
    with Repo(tmp_path / "b" / ".mvc") as b, pytest.raises(MVCError, match="FORMAT"):
        b.pull(pushed.as_uri())


def test_an_object_larger_than_listed_is_not_downloaded_whole(tmp_path, pushed):
    (obj,) = list((pushed / "objects").rglob("*.h5"))
    listed = obj.stat().st_size
    with open(obj, "ab") as handle:
        handle.write(b"\0" * (4 << 20))  # a teammate's 4 MB more than the log says
    with Repo(tmp_path / "b" / ".mvc") as b:
        with pytest.raises(RefusedObjectsError, match=f"larger than the {listed} bytes"):  # named, the rest pulled
            b.pull(pushed.as_uri())
        assert b.index.count() == 0
        assert sum(p.stat().st_size for p in b.layout.tmp.iterdir()) <= listed  # stopped, then cleaned


def test_push_never_writes_through_a_folder_leading_out_of_the_remote(tmp_path, pushed):
    outside = tmp_path / "outside"
    outside.mkdir()
    with Repo(tmp_path / "a" / ".mvc") as a:
        version = a.commit({"w": np.full(4, 7.0, np.float32)}, "m")
        folder = pushed / "objects" / version.id[:2]
        if folder.exists():
            folder.rename(tmp_path / "moved")
        folder.symlink_to(outside, target_is_directory=True)
        with pytest.raises(RemoteError, match="leads outside the remote"):
            a.push(pushed.as_uri())
    assert list(outside.iterdir()) == []


def test_a_symlinked_log_folder_is_refused(tmp_path, pushed):
    outside = tmp_path / "outside-log"
    (pushed / "log").rename(outside)
    (pushed / "log").symlink_to(outside, target_is_directory=True)
    with Repo(tmp_path / "a" / ".mvc") as a:
        a.commit({"w": np.full(4, 3.0, np.float32)}, "m", tags=["next"])
        with pytest.raises(RemoteError, match="outside the remote"):
            a.push(pushed.as_uri())
    assert sorted(p.name for p in outside.iterdir()) == ["0000000000.json", "HEAD"]


def test_an_s3_object_larger_than_listed_is_refused_before_it_fills_the_disk(tmp_path, s3):
    url = s3.new_url()
    with Repo(tmp_path / "a" / ".mvc") as a:
        version = a.commit({"w": np.ones(4, np.float32)}, "m")
        a.push(url)
        listed = a.layout.snapshot_path(version.id).stat().st_size
    bucket, prefix = url[len("s3://"):].split("/", 1)
    key = f"{prefix}/objects/{version.id[:2]}/{version.id}.h5"
    client = s3.client()
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body + b"\0" * (4 << 20))  # 4 MB more than the log lists
    with Repo(tmp_path / "b" / ".mvc") as b:
        with pytest.raises(RefusedObjectsError, match=f"more than the {listed} this pull accepts"):
            b.pull(url)
        assert b.index.count() == 0 and list(b.layout.tmp.iterdir()) == []
