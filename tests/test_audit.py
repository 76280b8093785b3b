"""The audit log: every operation recorded, shown by %mvc_audit, edits and removals detected."""

from __future__ import annotations

import json

import numpy as np
import pytest
from IPython.core.error import UsageError

from mvc_magics.storage.local.audit import entry_hash


def _changed(weights, value):
    return dict(weights, **{"dense/bias": np.full(4, value, np.float32)})


@pytest.fixture
def busy_repo(repo, weights):
    """A store after one of each operation."""
    repo.commit(weights, "model", tags=["first"])
    repo.commit(_changed(weights, 1.0), "model", metrics={"loss": 0.3})
    repo.commit(weights, "model", metrics={"loss": 0.5})  # stored content again: metrics attached
    repo.checkout("first", weights, name="model")
    repo.tag("latest", "best", name="model")
    repo.tag("first", "best", name="model", force=True)
    repo.untag("best", name="model")
    return repo


def test_every_operation_is_recorded_with_who_and_what(busy_repo, weights):
    entries = list(busy_repo.audit.entries())
    ops = [e.op for e in entries]
    assert ops == ["commit", "commit", "commit-existing", "checkout", "tag", "tag", "untag"]
    first, second = busy_repo.resolve("first", name="model").id, busy_repo.resolve("latest", name="model").id
    assert entries[0].ids == [first] and entries[0].detail["tags"] == ["first"]
    assert entries[1].ids == [second]
    assert entries[3].detail["ref"] == "first"
    assert entries[5].detail == {"tag": "best", "previous": second, "force": True, "protected": False}
    assert all("@" in e.who and e.time and e.name == "model" for e in entries)
    assert [e.seq for e in entries] == list(range(1, 8))


def test_audit_log_api_is_newest_first_and_renders(busy_repo):
    trail = busy_repo.audit_log()
    assert [e.op for e in trail][:2] == ["untag", "tag"]
    assert len(busy_repo.audit_log(limit=3)) == 3
    text = str(trail)
    assert "untag" in text and "checkout" in text and "tag=best" in text
    assert "<table" in trail._repr_html_()


def test_mvc_audit_magic(ip, weights):
    ip.user_ns["model"] = weights
    ip.run_line_magic("mvc_commit", "model --tag first")
    ip.run_line_magic("mvc_tag", "first release")
    trail = ip.run_line_magic("mvc_audit", "")
    assert [e.op for e in trail] == ["tag", "commit"]
    assert [e.op for e in ip.run_line_magic("mvc_audit", "-n 1")] == ["tag"]
    with pytest.raises(UsageError, match="-n must be"):
        ip.run_line_magic("mvc_audit", "-n -2")
    with pytest.raises(UsageError):
        ip.run_line_magic("mvc_audit", "--bogus")


def _lines(repo):
    return repo.audit.path.read_bytes().splitlines(keepends=True)


def test_verify_detects_an_edited_entry(busy_repo):
    assert busy_repo.verify().ok
    lines = _lines(busy_repo)
    entry = json.loads(lines[2])
    entry["who"] = "someone-else@elsewhere"
    lines[2] = (json.dumps(entry, sort_keys=True) + "\n").encode()
    busy_repo.audit.path.write_bytes(b"".join(lines))
    report = busy_repo.verify()
    assert not report.ok
    assert any(p.version == "audit.log" and "line 3" in p.message and "edited" in p.message for p in report.problems)


def test_verify_detects_an_edit_with_a_recomputed_hash(busy_repo):
    lines = _lines(busy_repo)
    entry = json.loads(lines[1])
    entry["detail"]["message"] = "rewritten history"
    entry["hash"] = entry_hash(entry["prev"], entry)
    lines[1] = (json.dumps(entry, sort_keys=True) + "\n").encode()
    busy_repo.audit.path.write_bytes(b"".join(lines))
    problems = [p.message for p in busy_repo.verify().problems]
    assert any("line 3" in m and "does not follow" in m for m in problems)


def test_verify_detects_a_removed_entry(busy_repo):
    lines = _lines(busy_repo)
    del lines[3]
    busy_repo.audit.path.write_bytes(b"".join(lines))
    assert any("does not follow" in p.message for p in busy_repo.verify().problems)


def test_verify_detects_a_removed_last_commit_entry(repo, weights):
    repo.commit(weights, "model")
    latest = repo.commit(_changed(weights, 2.0), "model")
    lines = _lines(repo)
    repo.audit.path.write_bytes(b"".join(lines[:-1]))
    report = repo.verify()
    # Found twice: against the chain head the index recorded, and as a version no entry records.
    assert sorted((p.version, p.tensor) for p in report.problems) == sorted([("audit.log", None), (latest.id, None)])
    assert any("no audit entry" in p.message for p in report.problems)
    assert any("last entries were removed" in p.message for p in report.problems)


def test_torn_last_line_is_tolerated_and_reported(repo, weights):
    repo.commit(weights, "model")
    with open(repo.audit.path, "ab") as handle:
        handle.write(b'{"seq": 2, "time": "2026-11-26T')  # a process killed mid-append
    report = repo.verify()
    assert report.ok
    assert any("line 2 is a torn write" in note for note in report.notes)
    assert [e.op for e in repo.audit_log()] == ["commit"]
    repo.commit(_changed(weights, 3.0), "model")  # the chain continues after the torn line
    report = repo.verify()
    assert report.ok, str(report)
    assert [e.seq for e in repo.audit.entries()] == [1, 2]
    assert any("torn write" in note for note in report.notes)
