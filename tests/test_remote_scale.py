"""A remote's cost does not grow with its history: pull with nothing new, push of one new version and
pull of one new version send the same few requests whether the remote holds a few versions or many
(the log, storage/remote/log.py, instead of listing the bucket). Counts, not times: each S3 request
is counted by a botocore hook (TransferReport.requests). benchmarks/remote_scale.py runs 10,000."""

from __future__ import annotations

import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.storage.remote import log as remote_log

# The most requests each operation may take (docs/benchmarks.md lists what they are).
HANDFUL = 10


def tiny(i: int) -> dict[str, np.ndarray]:
    return {"w": np.full(3, i, np.float32)}


def costs(tmp_path, url: str, versions: int, pushes: int) -> dict[str, int]:
    with Repo(tmp_path / "a" / ".mvc") as a:
        a.add_remote("origin", url)
        for i in range(versions):
            a.commit(tiny(i), "m", tags=["production"] if i == 0 else ())
            if (i + 1) % (versions // pushes) == 0:
                a.push(progress=False)
        a.push(progress=False)
        clone = Repo.clone(url, tmp_path / "b" / ".mvc", progress=False)
        counts = {"pull, nothing new": clone.pull(progress=False).requests}
        a.commit(tiny(10_000), "m")
        counts["push one new"] = a.push(progress=False).requests
        report = clone.pull(progress=False)
        assert len(report.versions) == 1
        counts["pull one new"] = report.requests
        assert len(clone.log("m")) == versions + 1 and clone.resolve("production", name="m")
        clone.close()
    return counts


def test_pull_and_push_cost_the_same_few_requests_at_any_history_size(tmp_path, s3, monkeypatch):
    monkeypatch.setattr(remote_log, "CHECKPOINT_EVERY", 2)  # the long history crosses checkpoints
    short = costs(tmp_path / "short", s3.new_url(), versions=2, pushes=1)
    long = costs(tmp_path / "long", s3.new_url(), versions=15, pushes=5)
    assert short == long, (short, long)
    assert max(long.values()) <= HANDFUL, long


def test_clone_requests_are_proportional_to_what_is_fetched(tmp_path, s3, monkeypatch):
    monkeypatch.setattr(remote_log, "CHECKPOINT_EVERY", 2)
    url = s3.new_url()
    with Repo(tmp_path / "a" / ".mvc") as a:
        a.add_remote("origin", url)
        for i in range(5):
            a.commit({f"w{j}": np.full(3, i * 10 + j, np.float32) for j in range(3)}, "m")
            a.push(progress=False)  # 5 segments, checkpoints at 2 and 4
    with Repo(tmp_path / "b" / ".mvc") as b:
        report = b.pull(url, progress=False)
        # one GET per object, plus FORMAT, allowed_signers.json (absent), HEAD, the newest checkpoint, its
        # anchor, one segment, the end probe
        assert report.objects_sent == 5 and report.requests <= 5 + 7, report.requests


def test_a_recreated_remote_is_refused_until_it_is_added_again(tmp_path):
    """A store that has read a remote's log refuses one that does not extend it (like git's fast-forward
    only), naming the segment that differs; removing and adding the remote accepts the new history."""
    import shutil

    from mvc_magics.errors import RemoteHistoryError

    url = (tmp_path / "remote").as_uri()
    with Repo(tmp_path / "a" / ".mvc") as a:
        v1 = a.commit(tiny(1), "m", tags=["production"])
        a.push(url, progress=False)
        with Repo.clone(url, tmp_path / "b" / ".mvc") as b:
            shutil.rmtree(tmp_path / "remote")  # the remote is recreated with other content
            with Repo(tmp_path / "c" / ".mvc") as c:
                v2 = c.commit(tiny(2), "m", tags=["staging"])
                c.push(url, progress=False)
            with pytest.raises(RemoteHistoryError, match="does not extend what this store read: segment 0") as exc:
                b.pull(progress=False)
            assert "\n" not in str(exc.value) and [v.id for v in b.log("m")] == [v1.id]
            b.remove_remote("origin")
            b.add_remote("origin", url)
            report = b.pull(progress=False)
            assert report.versions == [v2.id] and b.resolve("production", name="m").id == v1.id
            assert b.resolve("staging", name="m").id == v2.id
