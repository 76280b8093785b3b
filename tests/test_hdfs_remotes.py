"""What is tested of HDFS remotes without an HDFS server (docs/remotes.md says the rest is untested)."""

from __future__ import annotations

import pytest
from conftest import store_state

from mvc_magics.errors import RemoteError

pytest.importorskip("fsspec")


def test_a_push_to_webhdfs_is_refused_in_one_line_before_any_connection(repo, weights):
    """webhdfs:// cannot create a file only if absent: refused by protocol, nothing contacted (port 9)."""
    repo.commit(weights, "m")
    repo.add_remote("hadoop", "webhdfs://127.0.0.1:9/models")
    before = store_state(repo.path)
    with pytest.raises(RemoteError, match=r"webhdfs:// cannot create a file only if it is absent") as caught:
        repo.push("hadoop")
    assert "\n" not in str(caught.value)
    assert store_state(repo.path) == before


def test_an_unreachable_hdfs_remote_is_a_one_line_error(repo, weights):
    """hdfs:// goes through pyarrow (libhdfs and a JVM); whatever is missing here, the user sees one line."""
    pytest.importorskip("pyarrow")
    repo.commit(weights, "m")
    repo.add_remote("hadoop", "hdfs://127.0.0.1:9/models")
    for action in (repo.push, repo.pull):
        with pytest.raises(RemoteError, match=r"remote hdfs://127\.0\.0\.1:9/models: ") as caught:
            action("hadoop")
        assert "\n" not in str(caught.value)
